"""How simulated hospitals get their messages: the prompt dispatcher and the order of hospitals."""

import threading
from queue import Queue

from flwr.server.superlink.fleet.vce import vce_api

from shared.config import RunConfig
from shared.federation import load_hospital, prepare, save
from simulations.simulate import _dispatch_promptly, _replaceable_dispatcher, prompt_dispatch


class _LinkState:
    """The one call the dispatcher makes, on messages waiting per node."""

    def __init__(self, waiting: dict[int, list[str]]):
        self.waiting = waiting
        self.sweeps: list[dict[int, list[str]]] = []
        self.lock = threading.Lock()

    def get_message_ins(self, node_id: int, limit: int) -> list[str]:
        with self.lock:
            if node_id == min(self.waiting):
                self.sweeps.append({})
            taken, self.waiting[node_id] = self.waiting[node_id][:limit], self.waiting[node_id][limit:]
            self.sweeps[-1][node_id] = taken
            return taken


def test_flowers_dispatcher_is_replaced_inside_the_block_only():
    original = vce_api.add_messages_to_queue
    assert _replaceable_dispatcher(), "Flower's dispatcher changed: review simulations/simulate.py"
    with prompt_dispatch():
        assert vce_api.add_messages_to_queue is _dispatch_promptly
    assert vce_api.add_messages_to_queue is original


def test_every_message_is_handed_over_once_in_order_and_one_per_node_per_sweep():
    state = _LinkState({1: ["a1", "a2", "a3"], 2: ["b1"], 3: []})
    queue: Queue = Queue()
    stop = threading.Event()
    dispatcher = threading.Thread(target=_dispatch_promptly, args=(state, queue, {1: 0, 2: 1, 3: 2}, stop))
    dispatcher.start()
    try:
        handed = [queue.get(timeout=30) for _ in range(4)]
    finally:
        stop.set()
        dispatcher.join(timeout=30)
    assert not dispatcher.is_alive()
    assert queue.empty()
    assert sorted(handed) == ["a1", "a2", "a3", "b1"]
    assert [m for m in handed if m.startswith("a")] == ["a1", "a2", "a3"]
    assert all(len(taken) <= 1 for sweep in state.sweeps for taken in sweep.values())


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
