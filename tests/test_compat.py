"""The places where fedicu relies on Flower, Opacus and Ray internals (shared/compat.py):
each test fails, naming the entry, when an upgrade changes what the entry relies on."""

import inspect
import os
import sys
import threading
import time
from pathlib import Path
from queue import Queue
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedicu.shared import compat
from fedicu.shared.compat import PromptDispatch


class _LinkState:
    """The one call the dispatcher makes, on messages waiting per node."""

    def __init__(self, waiting: dict[int, list[str]]):
        self.waiting = waiting
        self.sweeps: list[dict[int, list[str]]] = []
        self.calls = 0
        self.lock = threading.Lock()

    def store(self, node_id: int, message: str) -> str:
        with self.lock:
            self.waiting[node_id].append(message)
        return message

    def get_message_ins(self, node_id: int, limit: int) -> list[str]:
        with self.lock:
            self.calls += 1
            if node_id == min(self.waiting):
                self.sweeps.append({})
            taken, self.waiting[node_id] = self.waiting[node_id][:limit], self.waiting[node_id][limit:]
            self.sweeps[-1][node_id] = taken
            return taken


def test_flowers_dispatcher_is_replaced_inside_the_block_only():
    engine = compat.vce_api()
    original, dispatch = engine.add_messages_to_queue, PromptDispatch()
    assert list(inspect.signature(original).parameters) == compat.FLOWER_DISPATCHER_PARAMETERS, (
        "PromptDispatch: Flower's simulation dispatcher changed its parameters; review shared/compat.py"
    )
    with dispatch.installed():
        assert engine.add_messages_to_queue == dispatch.dispatch
    assert engine.add_messages_to_queue is original


def test_every_message_is_handed_over_once_in_order_and_one_per_node_per_sweep():
    state = _LinkState({1: ["a1", "a2", "a3"], 2: ["b1"], 3: []})
    handed = _dispatching(state, PromptDispatch(), lambda queue: [queue.get(timeout=30) for _ in range(4)])
    assert sorted(handed) == ["a1", "a2", "a3", "b1"]
    assert [m for m in handed if m.startswith("a")] == ["a1", "a2", "a3"]
    assert all(len(taken) <= 1 for sweep in state.sweeps for taken in sweep.values())


def test_a_send_wakes_the_dispatcher_at_once(monkeypatch):
    monkeypatch.setattr(compat, "SWEEP_INTERVAL_SECONDS", 3600.0)  # no periodic sweep would find it
    state, dispatch = _LinkState({1: ["a1"], 2: []}), PromptDispatch()
    grid = SimpleNamespace(push_messages=lambda messages: [state.store(2, m) for m in messages])
    dispatch.wake_on_send(grid)

    def send_after_idle(queue):
        first = queue.get(timeout=30)
        while state.calls < 4:  # two sweeps of two nodes: a1 found, then nothing; now it waits
            threading.Event().wait(0.01)
        assert grid.push_messages(["b1"]) == ["b1"]
        return [first, queue.get(timeout=30)]

    assert _dispatching(state, dispatch, send_after_idle) == ["a1", "b1"]


def _dispatching(state: _LinkState, dispatch: PromptDispatch, work):
    """`work(queue)` while `dispatch` runs in a thread, as in Flower's engine; then stop it."""
    queue: Queue = Queue()
    stop = threading.Event()
    nodes = {node: partition for partition, node in enumerate(state.waiting)}
    thread = threading.Thread(target=dispatch.dispatch, args=(state, queue, nodes, stop))
    thread.start()
    try:
        result = work(queue)
    finally:
        stop.set()
        dispatch.sent.set()  # an idle sweep waits on this, then sees the stop
        thread.join(timeout=30)
    assert not thread.is_alive() and queue.empty()
    return result


def test_the_secagg_workflow_still_has_the_stage_and_state_the_fix_rewrites():
    flowers: Any = compat.secagg_workflow_class().__mro__[1]
    assert flowers.__name__ == "SecAggPlusWorkflow"
    assert callable(getattr(flowers, "_check_threshold", None)), "SecAggPlusWorkflow: _check_threshold is gone"
    assert list(inspect.signature(flowers.share_keys_stage).parameters) == ["self", "grid", "context", "state"]
    rewritten = {"sampled_node_ids", "active_node_ids", "nid_to_neighbours"}
    assert rewritten <= compat.secagg_state_fields(), "SecAgg+ workflow state renamed the fields the fix rewrites"


def test_legacy_fit_instructions_carry_the_named_model_and_config_both_ways():
    arrays = ArrayRecord({"w": Array(np.arange(6, dtype=np.float32).reshape(2, 3)), "b": Array(np.ones(2))})
    fit = compat.legacy_fit_ins(arrays, ConfigRecord({"lr": 0.1}))
    assert fit.config[compat.ARRAY_NAMES] == ["w", "b"] and fit.config["lr"] == 0.1
    tensors = compat.legacy_ndarrays(fit.parameters)
    assert [t.tolist() for t in tensors] == [arrays["w"].numpy().tolist(), arrays["b"].numpy().tolist()]
    assert isinstance(compat.secagg_configs_record(), str)


def test_fedadams_moments_survive_a_restore():
    from flwr.serverapp.strategy import FedAdam

    def replies(value: float) -> list[Message]:
        content = RecordDict(
            {"arrays": ArrayRecord({"w": Array(np.full(3, value))}), "metrics": MetricRecord({"num-examples": 5})}
        )
        return [Message(content, dst_node_id=1, message_type="train")]

    with compat.in_a_task():
        strategy = FedAdam(eta=0.1, eta_l=0.1, min_train_nodes=1, min_available_nodes=1)
        strategy.configure_train(
            1,
            ArrayRecord({"w": Array(np.zeros(3))}),
            ConfigRecord(),
            cast(Any, SimpleNamespace(get_node_ids=lambda: [1])),
        )
        strategy.aggregate_train(1, replies(1.0))
        state = compat.strategy_state(strategy)
        assert set(state) == set(compat.STRATEGY_STATE), "FedAdam no longer keeps its moments in m_t and v_t"
        restored = FedAdam(eta=0.1, eta_l=0.1, min_train_nodes=1, min_available_nodes=1)
        restored.current_arrays = strategy.current_arrays
        compat.restore_strategy_state(restored, state)
        expected, _ = strategy.aggregate_train(2, replies(2.0))
        got, _ = restored.aggregate_train(2, replies(2.0))
    assert expected is not None and got is not None
    assert np.allclose(expected["w"].numpy(), got["w"].numpy())


def test_messages_can_be_built_and_numbered_inside_a_task():
    with compat.in_a_task(run_id=3, node_id=0):
        msg = Message(RecordDict(), dst_node_id=7, message_type="train")
        compat.set_message_id(msg, "message-1")
        assert msg.metadata.message_id == "message-1" and msg.metadata.run_id == 3
        reply = Message(RecordDict(), reply_to=msg)
    assert reply.metadata.reply_to_message_id == "message-1" and reply.metadata.src_node_id == 7


def test_opacus_reads_per_sample_gradients_where_they_are_stored():
    from opacus.optimizers import DPOptimizer

    weight = torch.nn.Parameter(torch.zeros(2))
    optimizer = DPOptimizer(
        torch.optim.SGD([weight], lr=1.0), noise_multiplier=0.0, max_grad_norm=100.0, expected_batch_size=2
    )
    compat.store_grad_sample(weight, torch.tensor([[1.0, 0.0], [3.0, 2.0]]))
    weight.grad = torch.zeros(2)  # Opacus checks that a backward pass ran
    optimizer.step()
    assert torch.allclose(weight.detach(), torch.tensor([-2.0, -1.0])), "DPOptimizer no longer reads param.grad_sample"
    with pytest.raises(RuntimeError, match="still stored"):
        compat.store_grad_sample(weight, torch.ones(2, 2))
    optimizer.zero_grad()  # Opacus clears the per-sample gradients here
    compat.store_grad_sample(weight, torch.ones(2, 2))


def test_ray_still_reads_the_variable_that_quiets_it():
    import ray._private.worker as worker

    compat.quiet_ray()
    assert "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO" in inspect.getsource(worker), (
        "Ray renamed the accelerator notice switch"
    )


def test_ray_still_has_the_switches_that_keep_the_sigterm_handler():
    from ray._private import ray_constants, utils

    assert callable(utils.set_sigterm_handler), "Ray no longer sets its SIGTERM handler through utils"
    assert isinstance(ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER, bool), "Ray renamed its crash-reporter switch"
    before = ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER
    with compat.ray_keeps_sigterm_handler():
        assert ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER is True
    assert ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER is before
    import ray._raylet  # where the driver's core worker reads the switch as it connects

    assert b"RAY_DISABLE_FAILURE_SIGNAL_HANDLER" in Path(ray._raylet.__file__).read_bytes(), (
        "Ray's driver no longer reads its crash-reporter switch"
    )


def test_run_config_text_is_read_as_flwr_run_reads_it():
    assert compat.parse_run_config("rounds=5 dp=true out='/tmp/x'") == {"rounds": 5, "dp": True, "out": "/tmp/x"}


def test_a_long_lived_clientapp_speaks_the_runtime_api_as_flowers_one_task_process_does(monkeypatch):
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.constant import TaskType
    from flwr.supernode.runtime import run_clientapp as flower

    assert compat.CLIENT_APP_TASK == TaskType.CLIENT_APP
    assert "supported_task_types" in AcquireTaskRequest.DESCRIPTOR.fields_by_name
    for name, parameters in [
        ("pull_task_input", ["client"]),
        ("push_message", ["client", "message", "context"]),
        ("push_task_output", ["client", "context", "sub_status", "details"]),
    ]:
        assert list(inspect.signature(getattr(flower, name)).parameters) == parameters, (
            f"SuperNodeTasks: Flower's {name} changed its parameters; review shared/compat.py"
        )
    # the first retry of a message's missing part is shortened where pull_task_input looks it up
    assert "pull_and_inflate_object_from_tree" in flower.pull_task_input.__code__.co_names
    monkeypatch.setattr(flower, "pull_and_inflate_object_from_tree", flower.pull_and_inflate_object_from_tree)
    original = flower.pull_and_inflate_object_from_tree
    compat.SuperNodeTasks("127.0.0.1:1")  # connects on its first call only
    compat.SuperNodeTasks("127.0.0.1:1")
    pull = flower.pull_and_inflate_object_from_tree
    assert pull.func is original and pull.keywords == {  # type: ignore[attr-defined]
        "initial_backoff": compat.PULL_RETRY_SECONDS,
        "backoff_cap": compat.PULL_RETRY_SECONDS,
    }, "SuperNodeTasks: wrapped more than once, or not at all"
    assert {"initial_backoff", "backoff_cap"} <= set(inspect.signature(original).parameters)


def test_a_revoked_task_token_fails_the_task_and_does_not_signal_the_process(monkeypatch):
    import httpx

    request = httpx.Request("POST", "http://127.0.0.1:1/v1/runtime/push-task-output")

    def status(code: int) -> httpx.HTTPStatusError:
        return httpx.HTTPStatusError("", request=request, response=httpx.Response(code, request=request))

    signalled: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "kill", lambda pid, signum: signalled.append((pid, signum)))
    monkeypatch.setattr(time, "sleep", lambda seconds: None)  # Flower's waits for the signal to land
    from flwr.supercore.retry import make_simple_http_retry_invoker

    flower_gives_up = cast(Any, make_simple_http_retry_invoker().should_giveup)
    assert flower_gives_up(status(401)) is False and signalled, (
        "Flower no longer signals its own process on a 401; review compat.task_retry_invoker"
    )
    signalled.clear()
    ours = compat.task_retry_invoker()
    assert ours.should_giveup(status(401)) is True and signalled == []
    assert ours.should_giveup(status(503)) is False  # retried, as by Flower
    assert ours.should_giveup(status(404)) is True


def test_the_supernodes_waits_are_cut_where_its_loop_looks_time_up(monkeypatch):
    import time

    from flwr.supernode import start_client_internal

    assert start_client_internal.time is time or isinstance(start_client_internal.time, compat._ShortWaits)
    source = inspect.getsource(start_client_internal)
    assert "time.sleep(3)" in source and "time.sleep(0.5)" in source, (
        "run_supernode: Flower's SuperNode no longer waits with time.sleep; review shared/compat.py"
    )
    waited: list[float] = []
    monkeypatch.setattr(time, "sleep", waited.append)
    waits = compat._ShortWaits()
    for _ in range(5):  # no message: ask ever less often
        waits.sleep(3)
    waits.sleep(0.5)  # a message came: its reply is looked for, and the next message soon
    waits.sleep(3)
    waits.sleep(0.05)
    assert waited == [0.2, 0.4, 0.8, 1.0, 1.0, 0.2, 0.2, 0.05]
    assert (compat.SUPERNODE_WAIT_SECONDS, compat.SUPERNODE_IDLE_WAIT_MAX_SECONDS) == (0.2, 1.0)
    assert waits.monotonic is time.monotonic  # everything else is the time module's own


def test_the_superlinks_database_connections_wait_longer_for_a_lock(monkeypatch, tmp_path):
    import sqlite3

    from flwr.supercore import sql_mixin
    from flwr.superlink import cli

    assert "busy_timeout" in dict(sql_mixin.SQLITE_PRAGMAS), (
        "run_superlink: Flower's SQLite settings no longer set busy_timeout; review shared/compat.py"
    )
    started: list[list[str]] = []
    monkeypatch.setattr(cli, "flower_superlink", lambda: started.append(list(sys.argv)))
    monkeypatch.setattr(sql_mixin, "SQLITE_PRAGMAS", sql_mixin.SQLITE_PRAGMAS)  # restored after the test
    monkeypatch.setattr(sys, "argv", sys.argv)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    compat.run_superlink(["--insecure", "--database", "state.db"])
    assert started == [["flower-superlink", "--insecure", "--database", "state.db"]]
    assert os.environ["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)  # flower-superexec's
    connection = sqlite3.connect(tmp_path / "state.db")
    sql_mixin._set_sqlite_pragmas(connection, None)  # what Flower runs on every new connection
    assert connection.execute("PRAGMA busy_timeout").fetchone() == (compat.SUPERLINK_BUSY_TIMEOUT_MS,)
    assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)  # the rest is Flower's
    connection.close()
