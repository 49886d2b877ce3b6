"""The federation in this one process: each hospital's ClientApp answers on its own thread.

The server's round loop and the hospitals' ClientApp are the ones every other runtime runs;
only the transport is gone (no Ray, no SuperLink, nothing serialized but a copy of each
message, as a network would make). It starts in milliseconds, so tests of the round logic
(failures, timeouts, the contract) need not start Ray.

Hospitals answer one message at a time, in the order sent: they share this process's torch
random generator (dropout), so running them side by side would make a run depend on thread
timing. A hospital can be made a straggler whose training replies arrive only once an event is set.
"""

from __future__ import annotations

import copy
import itertools
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor

from flwr.app import Context, Error, Message, MessageType, RecordDict

from fedicu.client.client_app import app as hospital_app
from fedicu.server.federated_run import Progress, RunState
from fedicu.server.server_app import serve
from fedicu.shared import compat
from fedicu.shared.config import RunConfig
from fedicu.shared.federation import Federation
from fedicu.shared.run_dir import RunDirectory

CLIENT_APP_RAISED = 1001  # the error code a SuperNode gives a ClientApp's exception


class InProcessGrid:
    """A grid whose nodes are ClientApps in this process (node config `partition-id` i, as
    the Simulation Engine gives its virtual SuperNodes)."""

    pull_interval = 0.001

    def __init__(
        self,
        client_app: Callable[[Message, Context], Message],
        hospitals: int,
        slow_training: dict[int, threading.Event] | None = None,
    ):
        self.client_app = client_app
        self.contexts = {
            1000 + i: Context(1, 1000 + i, {"partition-id": i}, RecordDict(), {}) for i in range(hospitals)
        }
        # node -> when its training replies arrive
        self.slow_training = {1000 + i: event for i, event in (slow_training or {}).items()}
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="hospitals")
        self.numbers = itertools.count()
        self.pending: dict[str, Future[Message]] = {}

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        ids = []
        for msg in messages:
            message_id = f"message-{next(self.numbers)}"
            compat.set_message_id(msg, message_id)
            node = msg.metadata.dst_node_id
            self.pending[message_id] = self.worker.submit(self._answer, node, copy.deepcopy(msg))
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        done = [i for i in message_ids if i in self.pending and self._arrived(self.pending[i])]
        return [copy.deepcopy(self.pending.pop(i).result()) for i in done]

    def _arrived(self, answer: Future[Message]) -> bool:
        if not answer.done():
            return False
        reply = answer.result()
        late = self.slow_training.get(reply.metadata.src_node_id)
        return late is None or late.is_set() or reply.metadata.message_type != MessageType.TRAIN

    def _answer(self, node: int, msg: Message) -> Message:
        try:
            return self.client_app(msg, self.contexts[node])
        except Exception as error:  # a SuperNode sends a ClientApp's exception back as an error
            return Message(Error(CLIENT_APP_RAISED, f"{type(error).__name__}: {error}"), reply_to=msg)

    def close(self) -> None:
        """Stop taking messages; answers still being computed finish on their threads."""
        self.worker.shutdown(wait=False, cancel_futures=True)


def run_in_process(
    config: RunConfig,
    federation: Federation,
    run_dir: RunDirectory,
    progress: Progress,
    client_app: Callable[[Message, Context], Message] = hospital_app,
    resume: RunState | None = None,
    slow_training: dict[int, threading.Event] | None = None,
) -> dict:
    """Run the remaining rounds with every hospital in this process; return the final metrics row.

    `slow_training`: hospitals (by partition) whose training replies arrive only once their event is set."""
    grid = InProcessGrid(client_app, len(federation.hospitals), slow_training)
    try:
        with compat.in_a_task():
            return serve(grid, config, federation, run_dir, progress, resume)  # type: ignore[arg-type]
    finally:
        grid.close()
