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
from fedicu.shared.compat import PromptDispatch, quiet_ray
from fedicu.shared.config import RunConfig
from fedicu.shared.federation import Federation
from fedicu.shared.run_dir import RunDirectory
from fedicu.shared.training import torch_threads

REPLY_POLL_SECONDS = 0.005


@contextmanager
def quiet_flower():
    """Flower and Ray log every message; the command line shows progress instead."""
    logger = logging.getLogger("flwr")
    level = logger.level
    logger.setLevel(logging.ERROR)
    quiet_ray()
    try:
        yield
    finally:
        logger.setLevel(level)


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
        # The server scores the test split while the hospitals train the next round on every
        # core: on one thread it takes the least from them. (Secure aggregation rounds do not
        # overlap, so there the server keeps all cores.)
        with torch_threads(1) if not config.secagg else nullcontext():
            result.update(serve(grid, config, federation, run_dir, progress, resume))

    cores = os.cpu_count() or 1
    backend_config: dict[str, Any] = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": cores, "logging_level": "error", "log_to_driver": False},
    }
    with quiet_flower(), dispatch.installed():
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=len(federation.hospitals),
            backend_config=backend_config,
        )
    if not result:
        raise RuntimeError(f"the simulation ended without completing; see {run_dir.path}/run.json")
    return result
