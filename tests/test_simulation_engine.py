"""How messages reach hospitals: the order of hospitals, collecting replies, and the next round
sent before the server's own work on the last one. (The simulation's dispatcher: test_compat.py.)"""

from types import SimpleNamespace
from typing import Any

from fedicu.server import federated_run
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
    messages: list[Any] = ["a", "b", "c"]  # the grid never looks inside them
    grid: Any = _Grid([1, 3, 2])
    replies = collect(grid, send(grid, messages, timeout=60))
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["m0", "m1", "m2"] and grid.pulls == 3

    grid = _Grid([1, None])
    replies = collect(grid, send(grid, messages[:2], timeout=0.05))
    assert [r.metadata.reply_to_message_id for r in replies] == ["m0"] and grid.pulls > 1

    grid = _Grid([1])
    replies = collect(grid, send(grid, messages[:1], timeout=0))
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
    run_in_process(config, prepare(config), RunDirectory(tmp_path / "run").create(), LogProgress())
    order = [e for e in events if e[:2] in {("send", "train"), ("save", CHECKPOINT)}]
    assert order == [("send", "train", 1), ("send", "train", 2), ("save", CHECKPOINT, 1), ("save", CHECKPOINT, 2)]
