"""How messages reach hospitals: the prompt dispatcher of simulations, the order of hospitals,
collecting replies, and the next round sent before the server's own work on the last one."""

import threading
from queue import Queue
from types import SimpleNamespace

from flwr.server.superlink.fleet.vce import vce_api

from server import federated_run
from server.federated_run import LogProgress
from server.messaging import collect, send
from server.run_dir import CHECKPOINT, RunDirectory
from shared.config import RunConfig
from shared.federation import load_hospital, prepare, save
from simulations import simulate as simulate_module
from simulations.simulate import PromptDispatch, simulate


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
    original, dispatch = vce_api.add_messages_to_queue, PromptDispatch()
    with dispatch.installed():
        assert vce_api.add_messages_to_queue == dispatch.dispatch, "Flower's dispatcher changed: review simulate.py"
    assert vce_api.add_messages_to_queue is original


def test_every_message_is_handed_over_once_in_order_and_one_per_node_per_sweep():
    state = _LinkState({1: ["a1", "a2", "a3"], 2: ["b1"], 3: []})
    handed = _dispatching(state, PromptDispatch(), lambda queue: [queue.get(timeout=30) for _ in range(4)])
    assert sorted(handed) == ["a1", "a2", "a3", "b1"]
    assert [m for m in handed if m.startswith("a")] == ["a1", "a2", "a3"]
    assert all(len(taken) <= 1 for sweep in state.sweeps for taken in sweep.values())


def test_a_send_wakes_the_dispatcher_at_once(monkeypatch):
    monkeypatch.setattr(simulate_module, "SWEEP_INTERVAL_SECONDS", 3600.0)  # no periodic sweep would find it
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


def test_the_prepared_federation_lists_the_largest_hospital_first_with_its_own_stays(tmp_path):
    federation = prepare(RunConfig(synthetic_stays=600))
    save(federation, tmp_path / "federation.npz")
    loaded = [load_hospital(str(tmp_path / "federation.npz"), i) for i in range(len(federation.hospitals))]
    sizes = [len(h.train) for h in loaded]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) > 1
    by_name = {h.name: h for h in federation.hospitals}
    for hospital in loaded:
        assert (hospital.train.stay_ids == by_name[hospital.name].train.stay_ids).all()
        assert (hospital.val.stay_ids == by_name[hospital.name].val.stay_ids).all()


class _Grid:
    """Replies to message i arrive at pull number `arrivals[i]` (None: never)."""

    pull_interval = 0.001

    def __init__(self, arrivals: list[int | None]):
        self.arrivals, self.pulls = arrivals, 0

    def push_messages(self, messages):
        return [f"m{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, ids):
        self.pulls += 1
        return [
            SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i))
            for i in ids
            if self.arrivals[int(i[1:])] == self.pulls
        ]


def test_collect_waits_for_every_reply_or_the_deadline_and_asks_at_least_once():
    grid = _Grid([1, 3, 2])
    replies = collect(grid, send(grid, ["a", "b", "c"], timeout=60))
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["m0", "m1", "m2"] and grid.pulls == 3

    grid = _Grid([1, None])
    replies = collect(grid, send(grid, ["a", "b"], timeout=0.05))
    assert [r.metadata.reply_to_message_id for r in replies] == ["m0"] and grid.pulls > 1

    grid = _Grid([1])
    replies = collect(grid, send(grid, ["a"], timeout=0))
    assert len(replies) == 1 and grid.pulls == 1


def test_the_next_rounds_training_is_sent_before_the_round_is_scored_and_checkpointed(tmp_path, monkeypatch):
    events = []

    def recording_send(grid, messages, timeout):
        messages = list(messages)
        config = messages[0].content.config_records.get("config", {})
        events.append(("send", messages[0].metadata.message_type, config.get("server-round")))
        return send(grid, messages, timeout)

    def recording_save(self, name, state):
        events.append(("save", name, state.get("completed")))
        return save_model(self, name, state)

    save_model = RunDirectory.save_model
    monkeypatch.setattr(federated_run, "send", recording_send)
    monkeypatch.setattr(RunDirectory, "save_model", recording_save)
    config = RunConfig(hospitals=2, synthetic_stays=200, rounds=2)
    simulate(config, prepare(config), RunDirectory(tmp_path / "run").create(), LogProgress())
    order = [e for e in events if e[:2] in {("send", "train"), ("save", CHECKPOINT)}]
    assert order == [("send", "train", 1), ("send", "train", 2), ("save", CHECKPOINT, 1), ("save", CHECKPOINT, 2)]
