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
import time
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
# The dispatcher's pause after a sweep that found nothing: `SWEEP_PAUSE_FACTOR` times the
# sweep's own time (a sweep costs nodes x stored messages in Flower's link state), kept
# between 2 ms and Flower's own 0.1 s, so it is never slower to hand messages over than Flower.
MIN_SWEEP_PAUSE_SECONDS = 0.002
MAX_SWEEP_PAUSE_SECONDS = 0.1
SWEEP_PAUSE_FACTOR = 8


def _dispatch_promptly(state, queue: Queue[Message], nodes_mapping: dict, f_stop: threading.Event) -> None:
    """Hand queued messages to the virtual hospitals as soon as the server sends them.

    Flower's engine sweeps the nodes for messages every 0.1 s, so each exchange waited up to
    0.1 s before any hospital started: at four hospitals about a fifth of a round. Here a
    sweep that found messages is followed by another at once, and an empty one by a short
    pause. As in Flower's own sweep, a node gets at most one message per sweep."""
    while not f_stop.is_set():
        started = time.perf_counter()
        found = False
        for node_id in nodes_mapping:
            for message in state.get_message_ins(node_id=node_id, limit=1):
                queue.put(message)
                found = True
        if not found:
            pause = SWEEP_PAUSE_FACTOR * (time.perf_counter() - started)
            f_stop.wait(min(MAX_SWEEP_PAUSE_SECONDS, max(MIN_SWEEP_PAUSE_SECONDS, pause)))


def _replaceable_dispatcher() -> bool:
    """Whether the installed Flower's dispatcher is the one `_dispatch_promptly` stands in for."""
    original = getattr(vce_api, "add_messages_to_queue", None)
    return original is not None and list(inspect.signature(original).parameters) == list(
        inspect.signature(_dispatch_promptly).parameters
    )


@contextmanager
def prompt_dispatch():
    """Use `_dispatch_promptly` for simulations run inside this block (if Flower's matches)."""
    if not _replaceable_dispatcher():
        yield
        return
    original = vce_api.add_messages_to_queue
    vce_api.add_messages_to_queue = _dispatch_promptly
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

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        # The engine's grid checks for replies every 0.1 s: two exchanges a round made every
        # round at least 0.2 s long. Polling in-memory state every 5 ms costs nothing.
        grid.pull_interval = REPLY_POLL_SECONDS
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
    with quiet_flower(), prompt_dispatch():
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=len(federation.hospitals),
            backend_config=backend_config,
        )
    if not result:
        raise RuntimeError(f"the simulation ended without completing; see {run_dir.path}/run.json")
    return result
