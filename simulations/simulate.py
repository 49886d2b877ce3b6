"""Run the federation on one machine with Flower's Simulation Engine.

The ServerApp logic and the ClientApp are the ones a real deployment runs; only
the transport differs: every hospital is a virtual SuperNode whose ClientApp
runs in a worker process, one CPU core each.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager, nullcontext
from typing import Any

from flwr.app import Context
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation

from fedicu.client.client_app import app as hospital_app
from fedicu.server.federated_run import Progress, RunState
from fedicu.server.server_app import serve
from fedicu.shared import stopping
from fedicu.shared.compat import PromptDispatch, quiet_ray, ray_keeps_sigterm_handler
from fedicu.shared.config import RunConfig
from fedicu.shared.federation import Federation
from fedicu.shared.run_dir import RunDirectory
from fedicu.shared.training import torch_threads

REPLY_POLL_SECONDS = 0.005


def stop_when_asked(grid: Grid) -> None:
    """Every wait for hospitals' replies (the rounds', SecAgg+'s) polls the grid: each poll
    first checks whether the process was asked to stop."""
    pull = grid.pull_messages

    def pull_unless_stopped(message_ids):
        stopping.check()
        return pull(message_ids)

    grid.pull_messages = pull_unless_stopped  # type: ignore[method-assign]


@contextmanager
def quiet_flower():
    """Flower and Ray log every message; the command line shows progress instead. Once the
    process was asked to stop, Flower is silent: until it exits, Flower would log an error for
    each hospital whose work was abandoned."""
    logger = logging.getLogger("flwr")
    level = logger.level
    logger.setLevel(logging.ERROR)
    logger.addFilter(_unless_stopping)
    quiet_ray()
    try:
        yield
    finally:
        logger.setLevel(level)
        if not stopping.stop_requested():
            logger.removeFilter(_unless_stopping)


def _unless_stopping(record: logging.LogRecord) -> bool:
    return not stopping.stop_requested()


def _ray_cluster() -> dict[str, Any]:
    """Where the simulated hospitals run: the Ray cluster at `RAY_ADDRESS` (Ray's own variable,
    which `--ray-address` sets), its size its own; otherwise a local Ray on every core."""
    address = os.environ.get("RAY_ADDRESS")
    return {"address": address} if address else {"num_cpus": os.cpu_count() or 1}


def simulate(
    config: RunConfig,
    federation: Federation,
    run_dir: RunDirectory,
    progress: Progress,
    resume: RunState | None = None,
    client_app: ClientApp = hospital_app,
) -> dict:
    """Run the remaining rounds in-process; return the final metrics row."""
    result: dict = {}
    server_app = ServerApp()
    dispatch = PromptDispatch()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        # The engine's grid checks for replies every 0.1 s: two exchanges a round made every
        # round at least 0.2 s long. Polling in-memory state every 5 ms costs nothing.
        grid.pull_interval = REPLY_POLL_SECONDS  # type: ignore[attr-defined]  # read by messaging.collect
        dispatch.wake_on_send(grid)
        stop_when_asked(grid)
        # The server scores the test split while the hospitals train the next round on every
        # core: on one thread it takes the least from them. (Secure aggregation rounds do not
        # overlap, so there the server keeps all cores.)
        with torch_threads(1) if not config.secagg else nullcontext():
            result.update(serve(grid, config, federation, run_dir, progress, resume))

    backend_config: dict[str, Any] = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {**_ray_cluster(), "logging_level": "error", "log_to_driver": False},
    }
    # A stop request ends the server's round (StopRequested, raised again here by the engine).
    with quiet_flower(), dispatch.installed(), ray_keeps_sigterm_handler(), stopping.noticed_by_flag():
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=len(federation.hospitals),
            backend_config=backend_config,
        )
    if not result:
        raise RuntimeError(f"the simulation ended without completing; see {run_dir.path}/run.json")
    return result
