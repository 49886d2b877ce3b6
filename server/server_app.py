"""The ServerApp: prepares the federation, runs the rounds, writes the run directory."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from server.federated_run import LogProgress, Progress, RunState, run_federated
from server.run_dir import RunDirectory
from shared.config import RunConfig
from shared.federation import Federation, prepare

app = ServerApp()


def default_run_dir() -> Path:
    return Path("runs") / time.strftime("%Y%m%d-%H%M%S")


def serve(
    grid: Grid,
    config: RunConfig,
    federation: Federation,
    run_dir: RunDirectory,
    progress: Progress,
    resume: RunState | None = None,
) -> dict:
    """Run the whole federation into `run_dir`; mark it failed if anything goes wrong."""
    try:
        with tempfile.TemporaryDirectory(prefix="fedicu-") as tmp:
            data_file = str(Path(tmp) / "federation.npz")
            return run_federated(grid, config, federation, data_file, run_dir, progress, resume)
    except BaseException as error:
        run_dir.set_status("failed", error=f"{type(error).__name__}: {error}")
        raise


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = RunConfig.from_flower(dict(context.run_config))
    run_dir = RunDirectory(Path(config.out).resolve() if config.out else default_run_dir().resolve())
    serve(grid, config, prepare(config), run_dir.create(), LogProgress())
