"""Run the federation on one machine with Flower's Simulation Engine.

The ServerApp logic and the ClientApp are the ones a real deployment runs; only
the transport differs: every hospital is a virtual SuperNode whose ClientApp
runs in a worker process, one CPU core each.
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
from contextlib import contextmanager, nullcontext
from queue import Queue

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.server.superlink.fleet.vce import vce_api
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation

from client.client_app import app as hospital_app
from server.federated_run import Progress, RunState
from server.run_dir import RunDirectory
from server.server_app import serve
from shared.config import RunConfig
from shared.federation import Federation
from shared.training import torch_threads


REPLY_POLL_SECONDS = 0.005
# Flower's engine sweeps for messages this often; the dispatcher below also sweeps on every send.
SWEEP_INTERVAL_SECONDS = 0.1
_FLOWER_DISPATCHER_PARAMETERS = ["state", "queue", "nodes_mapping", "f_stop"]


class PromptDispatch:
    """Hands messages to the virtual hospitals as soon as the server sends them.

    Flower's engine sweeps the nodes for messages every 0.1 s (`add_messages_to_queue` in
    `flwr/server/superlink/fleet/vce/vce_api.py`), so each exchange waited up to 0.1 s before
    any hospital started: at four hospitals about a fifth of a round. This sweep makes the same
    calls, and is woken by the server's grid whenever it sends (`wake_on_send`); otherwise it
    sweeps every 0.1 s, as Flower's does. A node gets at most one message per sweep, as in
    Flower's; a sweep that found messages is followed by another at once."""

    def __init__(self):
        self.sent = threading.Event()

    def wake_on_send(self, grid: Grid) -> None:
        push = grid.push_messages

        def push_and_wake(messages):
            ids = push(messages)
            self.sent.set()  # after the messages are stored, so the woken sweep finds them
            return ids

        grid.push_messages = push_and_wake

    def dispatch(self, state, queue: Queue[Message], nodes_mapping: dict, f_stop: threading.Event) -> None:
        while not f_stop.is_set():
            found = False
            for node_id in nodes_mapping:
                for message in state.get_message_ins(node_id=node_id, limit=1):
                    queue.put(message)
                    found = True
            if not found:
                self.sent.wait(SWEEP_INTERVAL_SECONDS)
                self.sent.clear()

    @contextmanager
    def installed(self):
        """Flower's engine uses `dispatch` inside this block, if its own dispatcher still has
        the parameters this one was written for (otherwise Flower's runs, unchanged)."""
        original = getattr(vce_api, "add_messages_to_queue", None)
        if original is None or list(inspect.signature(original).parameters) != _FLOWER_DISPATCHER_PARAMETERS:
            yield
            return
        vce_api.add_messages_to_queue = self.dispatch
        try:
            yield
        finally:
            vce_api.add_messages_to_queue = original


@contextmanager
def quiet_flower():
    """Flower and Ray log every message; the command line shows progress instead."""
    logger = logging.getLogger("flwr")
    level = logger.level
    logger.setLevel(logging.ERROR)
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # CPU only; silences a notice
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
        grid.pull_interval = REPLY_POLL_SECONDS
        dispatch.wake_on_send(grid)
        # The server scores the test split while the hospitals train the next round on every
        # core: on one thread it takes the least from them. (Secure aggregation rounds do not
        # overlap, so there the server keeps all cores.)
        with torch_threads(1) if not config.secagg else nullcontext():
            result.update(serve(grid, config, federation, run_dir, progress, resume))

    cores = os.cpu_count() or 1
    backend_config = {
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
