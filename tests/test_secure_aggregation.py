"""Secure aggregation (SecAgg+): the protocol in this process with hospitals dropping out at
any stages (exact stays-weighted average of the right hospitals, no weights in the clear), and
in simulation: the same model as plain aggregation, and a clear failure when too few remain."""

import copy
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from fedicu.client.client_app import app as hospital_app
from fedicu.client.client_app import train as hospital_train
from fedicu.client.secure_aggregation import secure_aggregation_mod
from fedicu.server.federated_run import LogProgress
from fedicu.server.replies import sort_replies
from fedicu.server.secure_aggregation import secure_train
from fedicu.shared import compat
from fedicu.shared.config import RunConfig
from fedicu.shared.contract import TrainReply
from fedicu.shared.federation import prepare
from fedicu.shared.run_dir import FINAL_MODEL, RunDirectory
from fedicu.simulations.inprocess import run_in_process

SMALL = dict(hospitals=3, synthetic_stays=900, rounds=1, seed=5)
STAGES = compat.secagg_stages()
SETUP, SHARE_KEYS, COLLECT_MASKED_VECTORS, UNMASK = STAGES
SERVER_NODE = 1  # the node id Flower's grid gives the server


class InProcessSites:
    """A grid whose hospitals answer in this process through the real client mod; hospital i
    stops answering from stage `gone_from[i]` on, and hospital j dies uploading its reply at
    stage `lost_at[j]` (the grid then replies for it, as Flower's does, with an error from the
    server's own node). Messages are copied as a network would."""

    def __init__(self, hospitals: int, gone_from: dict[int, str], seed: int = 0, lost_at: dict[int, str] | None = None):
        rng = np.random.default_rng(seed)
        self.nodes = [1000 + 17 * i for i in range(hospitals)]
        self.weights = {n: rng.normal(0, 0.3, (6, 4)).astype(np.float32) for n in self.nodes}
        self.stays = {n: int(rng.integers(40, 400)) for n in self.nodes}
        self.gone_from = {self.nodes[i]: STAGES.index(stage) for i, stage in gone_from.items()}
        self.lost_at = {self.nodes[i]: stage for i, stage in (lost_at or {}).items()}
        self.contexts = {n: Context(1, n, {}, RecordDict(), {}) for n in self.nodes}
        self.replies: dict[str, Message | None] = {}  # message id -> reply (None: never comes)

    def train(self, msg: Message, context: Context) -> Message:
        node = context.node_id
        content = {
            "arrays": ArrayRecord({"w": Array(self.weights[node])}),
            "metrics": MetricRecord({"num-examples": self.stays[node]}),
            "site": ConfigRecord({"hospital": f"hospital-{node}"}),
        }
        return Message(RecordDict(content), reply_to=msg)  # type: ignore[arg-type]  # records, as RecordDict takes

    pull_interval = 0.001

    def push_messages(self, messages):
        ids: list[str] = []
        for msg in messages:
            ids.append(f"message-{len(self.replies) + len(ids)}")
            compat.set_message_id(msg, ids[-1])  # as Flower's grids number them
            node, stage = msg.metadata.dst_node_id, compat.secagg_stage(msg)
            if self.lost_at.get(node) == stage:
                self.replies[ids[-1]] = _upload_lost(ids[-1])
                self.gone_from[node] = STAGES.index(str(stage))
            elif STAGES.index(str(stage)) < self.gone_from.get(node, len(STAGES)):
                reply = secure_aggregation_mod(copy.deepcopy(msg), self.contexts[node], self.train)
                self.replies[ids[-1]] = copy.deepcopy(reply)
            else:
                self.replies[ids[-1]] = None
        return ids

    def pull_messages(self, message_ids):
        return [self.replies[i] for i in message_ids if self.replies.get(i) is not None]

    def instructions(self) -> list[Message]:
        start = ArrayRecord({"w": Array(np.zeros((6, 4), np.float32))})
        return [
            Message(
                RecordDict({"arrays": start, "config": ConfigRecord({"server-round": 1})}),
                dst_node_id=n,
                message_type="train",
            )
            for n in self.nodes
        ]

    def average_of(self, indices: list[int]) -> np.ndarray:
        nodes = [self.nodes[i] for i in indices]
        return np.sum([self.weights[n] * self.stays[n] for n in nodes], axis=0) / sum(self.stays[n] for n in nodes)


def _upload_lost(message_id: str) -> Any:
    """What Flower's grid returns for a reply whose contents never arrived."""
    error = SimpleNamespace(code=ErrorCode.MESSAGE_UNAVAILABLE, reason="Reply message objects are unavailable.")
    metadata = SimpleNamespace(src_node_id=SERVER_NODE, reply_to_message_id=message_id)
    return SimpleNamespace(metadata=metadata, error=error, has_error=lambda: True)


@pytest.fixture
def in_a_task():
    """Flower builds messages only inside a task: give this process a task identity."""
    with compat.in_a_task():
        yield


@pytest.mark.parametrize(
    "hospitals, gone_from, summed",
    [
        (3, {}, [0, 1, 2]),
        (5, {1: SETUP, 2: COLLECT_MASKED_VECTORS}, [0, 3, 4]),
        (5, {1: SHARE_KEYS, 2: COLLECT_MASKED_VECTORS}, [0, 3, 4]),
        (5, {1: SHARE_KEYS, 2: UNMASK}, [0, 2, 3, 4]),  # 2's masked weights had arrived
        (4, {1: SHARE_KEYS, 2: COLLECT_MASKED_VECTORS}, None),  # 2 of 4 left: not more than half
        (5, {1: COLLECT_MASKED_VECTORS, 2: COLLECT_MASKED_VECTORS, 3: UNMASK}, None),
    ],
)
def test_the_server_learns_the_weighted_average_of_the_hospitals_that_stayed_and_no_weights(
    in_a_task, hospitals, gone_from, summed
):
    sites = InProcessSites(hospitals, gone_from)
    secure = secure_train(cast(Any, sites), sites.instructions(), 1, max_weight=400.0, timeout=1.0)
    average, replies = secure.average, secure.replies

    if summed is None:
        assert average is None
    else:
        assert average is not None
        got = average.content.array_records["arrays"]["w"].numpy()
        assert np.allclose(got, sites.average_of(summed), atol=1e-5)
    for reply in replies:  # whatever the stage, no weights travel in the clear
        assert all(len(record) == 0 for record in reply.content.array_records.values())
        assert {"arrays", "fitres.parameters"} >= set(reply.content.array_records)


def test_a_hospital_that_dies_uploading_its_key_shares_is_named_and_the_others_are_summed(in_a_task):
    sites = InProcessSites(3, {}, lost_at={1: SHARE_KEYS})
    instructions = sites.instructions()
    secure = secure_train(cast(Any, sites), instructions, 1, max_weight=400.0, timeout=1.0)

    assert secure.average is not None
    assert np.allclose(secure.average.content.array_records["arrays"]["w"].numpy(), sites.average_of([0, 2]), atol=1e-5)
    lost = [m for m in secure.replies if m.has_error()]
    names = {n: f"hospital-{n}" for n in sites.nodes}
    trained = sort_replies(lost, instructions, TrainReply, "no reply", "round 1", 0, names, secure.senders)
    assert trained.failures[names[sites.nodes[1]]].startswith("Reply message objects are unavailable")
    assert f"node {SERVER_NODE}" not in trained.failures


def crashing(partitions: set[int], stage: str = COLLECT_MASKED_VECTORS) -> ClientApp:
    """The hospital app, except that some hospitals crash at one stage of the protocol (at
    their training, in a run without secure aggregation)."""
    app = ClientApp()

    def outage(msg, context, call_next):
        protocol_stage = compat.secagg_stage(msg)
        at_stage = protocol_stage == stage if protocol_stage else True
        if at_stage and context.node_config["partition-id"] in partitions:
            raise RuntimeError("simulated site outage")
        return call_next(msg, context)

    @app.query("feature_stats")
    def stats(msg, context):
        return hospital_app(msg, context)

    @app.train(mods=[outage, secure_aggregation_mod])
    def train(msg, context):
        return hospital_train(msg, context)  # the handler: the whole app would apply the mod twice

    @app.evaluate()
    def evaluate(msg, context):
        return hospital_app(msg, context)

    return app


def run(path, client_app, **overrides) -> RunDirectory:
    config = RunConfig(**{**SMALL, **overrides})
    run_dir = RunDirectory(path).create()
    run_in_process(config, prepare(config), run_dir, LogProgress(), client_app=client_app)
    return run_dir


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> dict[str, dict]:
    """Final weights of plain-aggregation runs: all three hospitals, and without hospital 1."""
    path = tmp_path_factory.mktemp("plain")
    return {
        "all": run(path / "all", crashing(set())).load_model(FINAL_MODEL)["state_dict"],
        "without 1": run(path / "without-1", crashing({1})).load_model(FINAL_MODEL)["state_dict"],
    }


@pytest.mark.parametrize(
    "stage, trained, expected",
    [
        (SETUP, 2, "without 1"),
        (SHARE_KEYS, 2, "without 1"),
        (COLLECT_MASKED_VECTORS, 2, "without 1"),
        (UNMASK, 3, "all"),  # its masked weights had arrived: it stays in the sum
    ],
)
def test_secure_average_equals_the_plain_one_whatever_stage_a_hospital_drops_out_in(
    tmp_path, plain, stage, trained, expected
):
    secure = run(tmp_path / "secure", crashing({1}, stage), secagg=True)

    row = secure.read_json("metrics.json")[0]
    assert (row["hospitals_trained"], row["hospitals_failed"]) == (trained, 3 - trained)
    # Masks cancel and a dropped hospital's are removed: only quantization error (~1e-5) remains.
    weights = secure.load_model(FINAL_MODEL)["state_dict"]
    for name, value in plain[expected].items():
        assert torch.allclose(weights[name], value, atol=5e-5), name
    assert not torch.equal(weights["head.weight"], plain[expected]["head.weight"])  # it went through quantization


def test_secure_aggregation_works_with_fedadam_and_dp_sgd(tmp_path):
    settings = dict(strategy="fedadam", dp=True, target_epsilon=8.0)
    plain = run(tmp_path / "plain", crashing(set()), **settings)
    secure = run(tmp_path / "secure", crashing(set()), secagg=True, **settings)

    plain_weights, weights = (r.load_model(FINAL_MODEL)["state_dict"] for r in (plain, secure))
    for name, value in plain_weights.items():  # the server's Adam step moves both alike
        assert torch.allclose(weights[name], value, atol=5e-5), name
    ledgers = [r.read_json("privacy.json") for r in (plain, secure)]
    assert ledgers[0] == ledgers[1] and len(ledgers[1]) == 3  # the hospitals' accounting travels as before


def test_too_few_hospitals_left_stop_secure_aggregation_clearly(tmp_path):
    with pytest.raises(RuntimeError, match="stopped, fewer than 2 of 3 hospitals stayed to the end of the round"):
        run(tmp_path / "run", crashing({0, 2}), secagg=True)
    assert (tmp_path / "run" / "run.json").exists()
    assert not (tmp_path / "run" / "model_card.json").exists()
