"""Every place where fedicu relies on what Flower, Opacus or Ray do not promise to keep.

Nothing else in fedicu imports from these libraries beyond their public APIs (`flwr.app`,
`flwr.clientapp`, `flwr.serverapp`, `flwr.simulation`, Flower's strategies and mods,
Opacus's optimizers and accountants). `tests/test_compat.py` checks each entry below against
the installed versions and fails, naming the entry, when an upgrade changes what it relies on.

Flower
- `PromptDispatch`: the Simulation Engine's message sweep (`vce_api.add_messages_to_queue`),
  replaced so that hospitals get their messages as soon as the server sends them.
- `SecAggPlusWorkflow`: Flower's SecAgg+ workflow with a fix for hospitals that leave before
  sharing their keys; it rewrites the workflow's state and calls its `_check_threshold`.
- `legacy_*`: SecAgg+ speaks Flower's legacy `FitIns`/`FitRes` layout and context.
- `parse_run_config`: `--run-config` text read as `flwr run` reads it.
- `strategy_state` / `restore_strategy_state`: FedAdam keeps its moments in `m_t` and `v_t`.
- `in_a_task` / `set_message_id`: building messages outside Flower's runtime (the in-process
  grid of tests), which Flower allows only inside a task.
- `SuperNodeTasks`: a SuperNode's Runtime API (`--isolation process`) spoken by one long-lived
  process for every task, as Flower's one-task `flwr-clientapp` speaks it
  (`flwr.supernode.runtime.run_clientapp`), retrying a message's missing parts sooner than
  Flower does; `task_retry_invoker`, Flower's HTTP retries, which answer a 401 by sending
  SIGINT to their own process; and `watch_parent`, Flower's parent monitor.
- `run_supernode`: Flower's `flower-supernode`, its waits for messages and replies (3 s and
  0.5 s in `flwr.supernode.start_client_internal`) cut to `SUPERNODE_WAIT_SECONDS`, the wait
  for a message growing while none comes.
- `run_superlink`: Flower's `flower-superlink`, its SQLite connections set to wait up to
  `SUPERLINK_BUSY_TIMEOUT_MS` for a lock (`SQLITE_PRAGMAS` of `flwr.supercore.sql_mixin`).
Opacus
- `store_grad_sample`: per-stay gradients go to `param.grad_sample`, where `DPOptimizer` reads them.
Ray
- `quiet_ray`: the environment variable that keeps Ray from printing an accelerator notice.
- `ray_keeps_sigterm_handler`: `ray.init` replaces the process's SIGTERM handler through
  `ray._private.utils.set_sigterm_handler`, and in C++ unless
  `ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER` is set when the driver connects.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from queue import Queue
from typing import TYPE_CHECKING, Any, cast

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, RecordDict

if TYPE_CHECKING:  # torch only where it is used: a SuperNode started through here never loads it
    import numpy as np
    import torch

# ---- Flower: the Simulation Engine's dispatcher ----------------------------------------------

# Flower's engine sweeps for messages this often; the dispatcher below also sweeps on every send.
SWEEP_INTERVAL_SECONDS = 0.1
FLOWER_DISPATCHER_PARAMETERS = ["state", "queue", "nodes_mapping", "f_stop"]


def vce_api() -> Any:
    """The Simulation Engine's module that sweeps messages to virtual nodes."""
    from flwr.server.superlink.fleet.vce import vce_api  # imports Ray: only simulations pay

    return vce_api


class PromptDispatch:
    """Hands messages to the virtual hospitals as soon as the server sends them.

    Flower's engine sweeps the nodes for messages every 0.1 s, so each exchange waited up to
    0.1 s before any hospital started: at four hospitals about a fifth of a round. This sweep
    makes the same calls, and is woken by the server's grid whenever it sends
    (`wake_on_send`); otherwise it sweeps every 0.1 s, as Flower's does. A node gets at most
    one message per sweep, as in Flower's; a sweep that found messages is followed by another
    at once."""

    def __init__(self) -> None:
        self.sent = threading.Event()

    def wake_on_send(self, grid: Any) -> None:
        push = grid.push_messages

        def push_and_wake(messages: Iterable[Message]) -> Iterable[str]:
            ids = push(messages)
            self.sent.set()  # after the messages are stored, so the woken sweep finds them
            return ids

        grid.push_messages = push_and_wake

    def dispatch(self, state: Any, queue: Queue[Message], nodes_mapping: dict, f_stop: threading.Event) -> None:
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
    def installed(self) -> Iterator[None]:
        """Flower's engine uses `dispatch` inside this block, if its own dispatcher still has
        the parameters this one was written for (otherwise Flower's runs, unchanged)."""
        engine = vce_api()
        original = getattr(engine, "add_messages_to_queue", None)
        if original is None or list(inspect.signature(original).parameters) != FLOWER_DISPATCHER_PARAMETERS:
            yield
            return
        engine.add_messages_to_queue = self.dispatch
        try:
            yield
        finally:
            engine.add_messages_to_queue = original


# ---- Flower: SecAgg+ through the legacy workflow ---------------------------------------------


def secagg_workflow_class() -> type:
    """Flower's SecAgg+ workflow, with hospitals that leave before sharing their keys out of
    the round.

    No hospital holds key shares of such a hospital or masks with it, so it must not be
    unmasked as a drop-out, nor counted as a neighbour whose pairwise mask is removed when
    another hospital drops out later. Flower's workflow does both: it asks for shares nobody
    got (the round fails although enough hospitals remain) or removes masks never added
    (a wrong average)."""
    from flwr.server.workflow import SecAggPlusWorkflow

    class SecAggPlusWithEarlyLeavers(SecAggPlusWorkflow):
        def share_keys_stage(self, grid: Any, context: Any, state: Any) -> bool:
            super().share_keys_stage(grid, context, state)
            state.sampled_node_ids = set(state.active_node_ids)
            state.nid_to_neighbours = {
                node: neighbours & state.active_node_ids
                for node, neighbours in state.nid_to_neighbours.items()
                if node in state.active_node_ids
            }
            return self._check_threshold(state)

    return SecAggPlusWithEarlyLeavers


def secagg_state_fields() -> set[str]:
    """The fields of the SecAgg+ workflow's state (the fix above rewrites three of them)."""
    from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState

    return set(WorkflowState.__dataclass_fields__)


def legacy_context(server_round: int, arrays: ArrayRecord, strategy: Any) -> Any:
    """The legacy context SecAgg+'s workflow runs in: the round, the global model, a strategy."""
    from flwr.server.compat.legacy_context import LegacyContext
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key

    state = RecordDict(
        {MAIN_CONFIGS_RECORD: ConfigRecord({Key.CURRENT_ROUND: server_round}), MAIN_PARAMS_RECORD: arrays}
    )
    return LegacyContext(Context(0, 0, {}, state, {}), strategy=strategy)


# Legacy parameters are unnamed: the arrays' names travel in the config under this key.
ARRAY_NAMES = "array-names"


def legacy_fit_ins(arrays: ArrayRecord, config: ConfigRecord) -> Any:
    from flwr.common import FitIns
    from flwr.compat.common.recorddict_compat import arrayrecord_to_parameters

    legacy_config: dict[str, Any] = {**config, ARRAY_NAMES: list(arrays.keys())}
    return FitIns(arrayrecord_to_parameters(arrays, keep_input=True), legacy_config)


def legacy_ndarrays(parameters: Any) -> list[np.ndarray]:
    from flwr.common import bytes_to_ndarray

    return [bytes_to_ndarray(t) for t in parameters.tensors]


def secagg_configs_record() -> str:
    """The config record that marks a message of the SecAgg+ protocol."""
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

    return RECORD_KEY_CONFIGS


def secagg_stages() -> list[str]:
    """SecAgg+'s stages in order: set-up, key sharing, collecting masked vectors, unmasking."""
    from flwr.common.secure_aggregation.secaggplus_constants import Stage

    return list(Stage.all())


def secagg_stage(msg: Message) -> str | None:
    """The SecAgg+ stage a message belongs to (None: not a message of the protocol)."""
    from flwr.common.secure_aggregation.secaggplus_constants import Key

    protocol = msg.content.config_records.get(secagg_configs_record())
    return str(protocol[Key.STAGE]) if protocol is not None else None


def legacy_fit_instructions(msg: Message) -> tuple[ConfigRecord, ArrayRecord]:
    """The config and the named global model of a legacy fit message."""
    from flwr.compat.common.recorddict_compat import arrayrecord_to_parameters

    config = msg.content.config_records["fitins.config"]
    tensors = legacy_ndarrays(
        arrayrecord_to_parameters(msg.content.array_records["fitins.parameters"], keep_input=True)
    )
    names = [str(name) for name in config[ARRAY_NAMES]]  # type: ignore[union-attr]  # a list, as legacy_fit_ins writes it
    return config, ArrayRecord({n: Array(t) for n, t in zip(names, tensors, strict=True)})


def add_legacy_fit_reply(reply: Message, arrays: ArrayRecord, num_examples: int) -> None:
    """Add the legacy fit result that SecAgg+'s client mod masks to `reply`."""
    from flwr.common import Code, FitRes, Status
    from flwr.compat.common.recorddict_compat import arrayrecord_to_parameters, fitres_to_recorddict

    fit = FitRes(Status(Code.OK, ""), arrayrecord_to_parameters(arrays, keep_input=True), num_examples, {})
    for key, record in fitres_to_recorddict(fit, keep_input=True).items():
        reply.content[key] = record


# ---- Flower: run configuration on the command line -----------------------------------------


def parse_run_config(text: str) -> dict[str, Any]:
    """`--run-config` text ('rounds=5 dp=true') as `flwr run` reads it."""
    from flwr.common.config import parse_config_args

    return dict(parse_config_args([text]))


# ---- Flower: strategy state ------------------------------------------------------------------

# Strategy attributes that carry state from round to round (FedAdam's moments).
STRATEGY_STATE = ("m_t", "v_t")


def strategy_state(strategy: Any) -> dict[str, dict[str, torch.Tensor]]:
    import numpy as np
    import torch

    return {
        name: {k: torch.from_numpy(np.asarray(v)) for k, v in value.items()}
        for name in STRATEGY_STATE
        if (value := getattr(strategy, name, None))
    }


def restore_strategy_state(strategy: Any, state: dict[str, dict[str, torch.Tensor]]) -> None:
    for name, value in state.items():
        setattr(strategy, name, {k: v.numpy() for k, v in value.items()})


# ---- Flower: messages outside its runtime ----------------------------------------------------


@contextmanager
def in_a_task(run_id: int = 1, node_id: int = 0) -> Iterator[None]:
    """Flower builds messages only inside a task: give this thread a task identity."""
    from flwr.supercore.task_identity import TaskIdentity

    names = {"_run_id": run_id, "_task_id": 1, "_node_id": node_id}
    before: dict[str, Any] = {name: getattr(TaskIdentity, name, None) for name in names}
    for name, value in names.items():
        setattr(TaskIdentity, name, value)
    try:
        yield
    finally:
        for name, value in before.items():
            setattr(TaskIdentity, name, value)


def set_message_id(msg: Message, message_id: str) -> None:
    """Number a message as a grid does when it stores it."""
    msg.metadata.__dict__["_message_id"] = message_id


# ---- Flower: a SuperNode's tasks, run by one long-lived process ------------------------------

CLIENT_APP_TASK = "flwr-clientapp"  # Flower's TaskType.CLIENT_APP
# A task is claimable before the SuperNode holds all of its message: Flower retries a missing
# part after 1 s, then 2, 4, …; a process that claims at once retries every 20 ms instead.
PULL_RETRY_SECONDS = 0.02


class SuperNodeTasks:
    """The Runtime API of a SuperNode started with `--isolation process`, on loopback.

    Flower's `flwr-clientapp` runs one task and exits, so every message paid a new process:
    importing torch and the app, reading the site's data. `next_token` claims a pending task
    as Flower's SuperExec does; `run` does what `flwr-clientapp` does for it (pull the
    message, context and app; run the ClientApp; push the reply and the context), in this
    process, so the app's module and what it keeps in memory live on to the next task."""

    def __init__(self, address: str):
        from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
        from flwr.supercore.retry import make_simple_http_retry_invoker
        from flwr.supercore.runtime import RuntimeHttpClient
        from flwr.supernode.runtime import run_clientapp as flower

        pull = flower.pull_and_inflate_object_from_tree
        if not isinstance(pull, functools.partial):  # once per process
            flower.pull_and_inflate_object_from_tree = functools.partial(
                pull, initial_backoff=PULL_RETRY_SECONDS, backoff_cap=PULL_RETRY_SECONDS
            )
        self.address = address
        self._installed: set[str] = set()  # app packages (FABs) installed by this process
        self._claims = RuntimeHttpClient.from_server_address(
            server_address=address, insecure=True, root_certificates=None,
            interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")],
            retry_invoker=make_simple_http_retry_invoker(),
        )  # fmt: skip

    def next_token(self) -> str | None:
        """Claim the oldest pending ClientApp task; its token, or None when there is none."""
        from flwr.proto.runtime_pb2 import AcquireTaskRequest

        answer = self._claims.AcquireTask(AcquireTaskRequest(supported_task_types=[CLIENT_APP_TASK]))
        return str(answer.token) if answer.HasField("task") and answer.token else None

    def run(self, token: str) -> None:
        """Run the claimed task; an exception of the ClientApp becomes an error reply, as in
        Flower's own runtime, and ends nothing but the task."""
        from flwr.clientapp.utils import get_load_client_app_fn
        from flwr.common.constant import ErrorCode, SubStatus
        from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
        from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
        from flwr.supercore.runtime import RuntimeHttpClient
        from flwr.supernode.runtime import run_clientapp as flower

        client = RuntimeHttpClient.from_server_address(
            server_address=self.address, insecure=True, root_certificates=None,
            interceptors=[RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                          RuntimeTokenHttpInterceptor(token)],
            retry_invoker=task_retry_invoker(),
        )  # fmt: skip
        heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
        context, status, details = None, SubStatus.FAILED, "the ClientApp did not finish"
        heartbeat.start()
        try:
            message, context, run, fab = flower.pull_task_input(client)
            self._install(fab)
            app = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)(
                run.fab_id, run.fab_version, fab.hash_str
            )
            try:
                reply = app(message=message, context=context)
                status, details = SubStatus.COMPLETED, ""
            except Exception as error:  # the server gets it as the reply, as from Flower's runtime
                logging.getLogger(__name__).exception("the ClientApp raised an exception")
                details = f"{type(error)}:<'{error}'>"
                reply = Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, details), reply_to=message)
            flower.push_message(client, reply, context)
        finally:
            try:
                if heartbeat.is_running:  # not once a 401 (the token revoked) ended it
                    heartbeat.stop()
                flower.push_task_output(client=client, context=context, sub_status=status, details=details)
            finally:
                client.close()

    def _install(self, fab: Any) -> None:
        from flwr.cli.install import install_from_fab

        if fab.hash_str not in self._installed:
            install_from_fab(fab.content, skip_prompt=True)
            self._installed.add(fab.hash_str)


def task_retry_invoker() -> Any:
    """Flower's retries of Runtime API calls, except when the SuperNode no longer knows the
    task's token (401: it dropped the message, e.g. after the SuperLink failed to hand over its
    content): Flower's then ends the whole process (SIGINT to itself), right for a process that
    runs one task; here that task alone fails and the process goes on to the next."""
    import httpx
    from flwr.supercore.retry import make_simple_http_retry_invoker

    invoker = make_simple_http_retry_invoker()
    flower_gives_up = cast(Callable[[Exception], bool], invoker.should_giveup)  # set by Flower's factory

    def gives_up(error: Exception) -> bool:
        revoked = isinstance(error, httpx.HTTPStatusError) and error.response.status_code == httpx.codes.UNAUTHORIZED
        return revoked or flower_gives_up(error)

    invoker.should_giveup = gives_up
    return invoker


def watch_parent(pid: int) -> None:
    """SIGINT to this process once process `pid` has ended (Flower's monitor, as its own
    processes use it): a SuperNode killed with -9 takes its ClientApp with it."""
    from flwr.supercore.app_utils import start_parent_process_monitor

    start_parent_process_monitor(pid)


# ---- Flower: the SuperNode's waits ------------------------------------------------------------

# Flower's SuperNode asks the SuperLink for a message every 3 s when it has none, and checks
# for the ClientApp's reply every 0.5 s: a deployed round waited about 3 s per exchange for
# nothing. Here it looks for the reply every 0.2 s, and asks for a message 0.2 s after the last
# one, then ever less often while none comes (each request is signed with the site's key: twelve
# SuperNodes asking 5 times a second took most of a core), at most once a second.
SUPERNODE_WAIT_SECONDS = 0.2
SUPERNODE_IDLE_WAIT_MAX_SECONDS = 1.0
FLOWER_IDLE_WAIT_SECONDS = 3  # Flower's wait after finding no message; its others are shorter


class _ShortWaits:
    """Stands in for the `time` module inside Flower's SuperNode loop: its waits, shortened."""

    def __init__(self) -> None:
        self._idle_wait = SUPERNODE_WAIT_SECONDS

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        if seconds >= FLOWER_IDLE_WAIT_SECONDS:
            time.sleep(self._idle_wait)
            self._idle_wait = min(2 * self._idle_wait, SUPERNODE_IDLE_WAIT_MAX_SECONDS)
        else:  # waiting for a reply: a message came, the next may follow soon
            self._idle_wait = SUPERNODE_WAIT_SECONDS
            time.sleep(min(seconds, SUPERNODE_WAIT_SECONDS))


def run_supernode(argv: list[str]) -> None:
    """Flower's `flower-supernode` with the arguments `argv`, its waits as in `_ShortWaits`."""
    import sys

    from flwr.supernode import start_client_internal
    from flwr.supernode.cli import flower_supernode

    start_client_internal.time = _ShortWaits()  # type: ignore[assignment]
    sys.argv = ["flower-supernode", *argv]
    flower_supernode()


# ---- Flower: the SuperLink's database ---------------------------------------------------------

# Flower's SuperLink lets a request wait 5 s for SQLite's write lock, then answers 500 ("database
# is locked"). Every SuperNode and the ServerApp write to it several times a second; on a busy
# coordinator the holder of the lock can be off the CPU for longer, and a 500 loses a message, or
# ends the ServerApp's heartbeat (Flower retries neither), so the run fails a minute later.
SUPERLINK_BUSY_TIMEOUT_MS = 60_000


def run_superlink(argv: list[str]) -> None:
    """Flower's `flower-superlink` with the arguments `argv`, waiting up to
    `SUPERLINK_BUSY_TIMEOUT_MS` for its database's lock. The SuperExec it starts by name is
    found beside this interpreter, whatever PATH the service manager gave."""
    import sys
    from pathlib import Path

    from flwr.supercore import sql_mixin
    from flwr.superlink import cli

    sql_mixin.SQLITE_PRAGMAS = superlink_pragmas()  # type: ignore[assignment]
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    sys.argv = ["flower-superlink", *argv]
    cli.flower_superlink()


def superlink_pragmas() -> tuple[tuple[str, str], ...]:
    """Flower's SQLite settings, with the longer wait for a lock."""
    from flwr.supercore import sql_mixin

    return tuple(
        (name, str(SUPERLINK_BUSY_TIMEOUT_MS) if name == "busy_timeout" else value)
        for name, value in sql_mixin.SQLITE_PRAGMAS
    )


# ---- Opacus ----------------------------------------------------------------------------------

GRAD_SAMPLE = "grad_sample"  # where Opacus's DPOptimizer reads a parameter's per-sample gradients


def store_grad_sample(param: torch.Tensor, grad_sample: torch.Tensor) -> None:
    if not param.requires_grad:
        return
    if getattr(param, GRAD_SAMPLE, None) is not None:
        raise RuntimeError(
            "per-stay gradients from an earlier backward pass are still stored; call "
            "optimizer.zero_grad() before the next backward pass"
        )
    setattr(param, GRAD_SAMPLE, grad_sample)


# ---- Ray -------------------------------------------------------------------------------------


def quiet_ray() -> None:
    """CPU only: without this Ray prints a notice about accelerator environment variables."""
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")


@contextmanager
def ray_keeps_sigterm_handler() -> Iterator[None]:
    """`ray.init` (which Flower's engine calls in the main thread) replaces the SIGTERM handler
    twice: in Python, with one that exits the main thread at once (leaving the server thread
    waiting for replies that will never come), and in C++, with a crash reporter that prints a
    stack and, once Ray shuts down, aborts the process. Inside this block the command line's
    own handler stays (and the driver prints no C++ stack for a crash either)."""
    from ray._private import ray_constants, utils

    replace, crash_reporter_off = utils.set_sigterm_handler, ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER
    utils.set_sigterm_handler = lambda handler: None
    ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True  # read when the driver connects
    try:
        yield
    finally:
        utils.set_sigterm_handler = replace
        ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = crash_reporter_off
