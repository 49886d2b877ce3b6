"""How messages reach hospitals: the order of hospitals, collecting replies, and the next round
sent before the server's own work on the last one. (The simulation's dispatcher: test_compat.py.)"""

from types import SimpleNamespace
from typing import Any

from fedicu.server import federated_run, messaging
from fedicu.server.federated_run import LogProgress
from fedicu.server.messaging import collect, send
from fedicu.shared.config import RunConfig
from fedicu.shared.federation import load_hospital, prepare, save
from fedicu.shared.run_dir import CHECKPOINT, RunDirectory
from fedicu.simulations.inprocess import run_in_process


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
    """Replies to message i arrive at pull number `arrivals[i]` (None: never); each pull moves
    `clock` (when given) on by `pull_seconds`."""

    pull_interval = 0.001

    def __init__(self, arrivals: list[int | None], clock: list[float] | None = None, pull_seconds: float = 0.0):
        self.arrivals, self.pulls, self.clock, self.pull_seconds = arrivals, 0, clock, pull_seconds

    def push_messages(self, messages):
        for i, message in enumerate(messages):
            message.metadata.message_id = f"m{i}"
        return [m.metadata.message_id for m in messages]

    def pull_messages(self, ids):
        self.pulls += 1
        if self.clock is not None:
            self.clock[0] += self.pull_seconds
        return [
            SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i))
            for i in ids
            if self.arrivals[int(i[1:])] == self.pulls
        ]


def _messages(n: int) -> list[Any]:
    return [SimpleNamespace(metadata=SimpleNamespace(message_id="", dst_node_id=100 + i)) for i in range(n)]


def test_collect_waits_for_every_reply_or_the_deadline_and_asks_at_least_once():
    grid: Any = _Grid([1, 3, 2])
    sent = send(grid, _messages(3), timeout=60)
    replies = collect(grid, sent)
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["m0", "m1", "m2"] and grid.pulls == 3
    assert sent.senders == {"m0": 100, "m1": 101, "m2": 102}

    grid = _Grid([1, None])
    replies = collect(grid, send(grid, _messages(2), timeout=0.05))
    assert [r.metadata.reply_to_message_id for r in replies] == ["m0"] and grid.pulls > 1

    grid = _Grid([1])
    replies = collect(grid, send(grid, _messages(1), timeout=0))
    assert len(replies) == 1 and grid.pulls == 1


def test_replies_that_came_while_a_pull_outlasted_the_deadline_are_taken(monkeypatch):
    # Flower's grid can block minutes on a reply whose sender died uploading it; the replies
    # that arrived meanwhile are on time and must not be lost.
    clock = [0.0]
    monkeypatch.setattr(messaging.time, "monotonic", lambda: clock[0])
    grid: Any = _Grid([1, 2, None], clock, pull_seconds=100.0)
    replies = collect(grid, send(grid, _messages(3), timeout=40))
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["m0", "m1"] and grid.pulls == 2


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
    run_in_process(config, prepare(config), RunDirectory(tmp_path / "run").create(), LogProgress())
    order = [e for e in events if e[:2] in {("send", "train"), ("save", CHECKPOINT)}]
    assert order == [("send", "train", 1), ("send", "train", 2), ("save", CHECKPOINT, 1), ("save", CHECKPOINT, 2)]
