"""The ServerApp: prepares the federation, runs the rounds, writes the run directory.

Simulation (run-config `sites = 0`, `flwr run .` or `fedicu simulate`): the server
prepares the cohort and hands each virtual hospital its part. Deployment (`sites = N`):
the server holds no hospital data; it waits for N SuperNodes, each reading its own
folder, and tests on `test-dir` if given.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedicu.server.checkpoint import interrupted_run
from fedicu.server.federated_run import LogProgress, Progress, RunState, ServerData, run_federated
from fedicu.shared.config import RunConfig
from fedicu.shared.federation import Federation, load_folder, prepare, save
from fedicu.shared.preprocessing import describe
from fedicu.shared.run_dir import STAYS_FILE, RunDirectory

app = ServerApp()


def default_run_dir() -> Path:
    return Path("runs") / time.strftime("%Y%m%d-%H%M%S")


def serve(
    grid: Grid,
    config: RunConfig,
    federation: Federation | None,
    run_dir: RunDirectory,
    progress: Progress,
    resume: RunState | None = None,
) -> dict:
    """Run the whole federation into `run_dir`; mark it failed if anything goes wrong.

    `federation`: the simulated hospitals' data; None in a deployment."""
    try:
        with tempfile.TemporaryDirectory(prefix="fedicu-") as tmp:
            if federation is None:
                test_data = replace(config.data_source(), data_dir=config.test_dir)
                test = load_folder(test_data, "run-config test-dir")[0] if config.test_dir else None
                data = ServerData(config.sites, test, {"test": describe(test) if test is not None else None})
            else:
                data_file = Path(tmp) / "federation.npz"
                save(federation, data_file)
                run_dir.write_json(STAYS_FILE, federation.stays_used())
                data = ServerData(
                    len(federation.hospitals), federation.test, federation.summary(), str(data_file),
                    federation.test_hospitals(),
                )  # fmt: skip
            return run_federated(grid, config, data, run_dir, progress, resume)
    except BaseException as error:
        run_dir.record_ending(error)
        raise


# Run-config key of `flwr run` alone: the run directory of an interrupted run to continue after
# its last completed round, with its own configuration (the other keys are ignored then).
RESUME = "resume"


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_config = dict(context.run_config)
    state = None
    if resume := str(run_config.pop(RESUME, "")):
        config, run_dir, state = interrupted_run(Path(resume).resolve())
    else:
        config = RunConfig.from_flower(run_config)
        if config.ensemble > 1:  # one flwr run trains one model
            raise ValueError(
                "run-config ensemble: one flwr run trains one model; train each member with run-config member = k "
                "and score them together with fedicu evaluate RUN_DIR..., or use fedicu simulate --ensemble"
            )
        run_dir = RunDirectory(Path(config.out).resolve() if config.out else default_run_dir().resolve()).create()
    federation = prepare(config) if config.sites == 0 else None
    serve(grid, config, federation, run_dir, LogProgress(), state)
