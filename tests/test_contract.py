"""The server-hospital contract: every message survives a round trip through Flower's records,
broken or foreign-version messages are refused by name, and FedProx, FedAdam, DP-SGD and SecAgg+
each run end to end through it."""

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message
from flwr.clientapp import ClientApp

from fedicu.client.client_app import app as hospital_app
from fedicu.server.federated_run import LogProgress
from fedicu.shared import compat, contract
from fedicu.shared.config import RunConfig
from fedicu.shared.contract import (
    CONTRACT_REFUSAL,
    ContractError,
    ContractMismatch,
    CrossSiteReply,
    CrossSiteRequest,
    EvaluateReply,
    EvaluateRequest,
    FeatureStatsReply,
    FeatureStatsRequest,
    PersonalizeReply,
    PersonalizeRequest,
    RestorePrivacyReply,
    RestorePrivacyRequest,
    SiteTest,
    TrainReply,
    TrainRequest,
)
from fedicu.shared.federation import prepare
from fedicu.shared.metrics import ScoreHistogram
from fedicu.shared.model import ModelConfig
from fedicu.shared.preprocessing import FeatureStats
from fedicu.shared.run_dir import RunDirectory
from fedicu.simulations.inprocess import run_in_process

RUN: dict[str, Any] = dict(
    seed=4,
    task="los_over_3d",
    test_fraction=0.15,
    val_fraction=0.25,
    dp=True,
    delta=1e-5,
    accountant="prv",
    prepared_data="/tmp/federation.npz",
)
EVALUATE: dict[str, Any] = dict(
    RUN,
    server_round=3,
    norm_mean=[0.5, -1.0],
    norm_std=[2.0, 1.5],
    model=ModelConfig(n_features=3 * 2 + 12, variables="HR,Temp"),
)
TRAIN: dict[str, Any] = dict(
    EVALUATE,
    local_epochs=2,
    lr=0.01,
    batch_size=32,
    planned_rounds=10,
    target_epsilon=4.0,
    noise_multiplier=0.0,
    max_grad_norm=1.2,
    proximal_mu=0.1,
    freeze_body=True,
    augment_mask=0.1,
    augment_shift=2,
    member=3,
    ditto_lambda=0.2,
    finetune_epochs=4,
    site_dir="/tmp/run/sites",
)
rng = np.random.default_rng(0)
EVERY_MESSAGE = [
    FeatureStatsRequest(**RUN),
    RestorePrivacyRequest(**RUN, ledger='{"history": []}'),
    EvaluateRequest(**EVALUATE),
    TrainRequest(**TRAIN),
    TrainRequest(**TRAIN, correction=ArrayRecord({"w": Array(rng.normal(size=(2, 3)))})),  # SCAFFOLD
    CrossSiteRequest(**EVALUATE, model_name="local/north", threshold=0.3, keep_recalibration=False),
    CrossSiteRequest(
        **EVALUATE, model_name="federated/best", threshold=0.2, keep_recalibration=True, site_dir="/tmp/run/sites"
    ),
    PersonalizeRequest(**TRAIN, method="finetune"),
    FeatureStatsReply(
        hospital="north",
        train_stays=120,
        stats=FeatureStats(
            count=rng.normal(size=5),
            total=rng.normal(size=5),
            total_sq=rng.normal(size=5),
            histogram=rng.integers(0, 9, (2, 4)).astype(float),
        ),
    ),
    FeatureStatsReply(hospital="north", train_stays=120),  # under DP-SGD: no statistics
    RestorePrivacyReply(hospital="north", train_stays=120),
    TrainReply(
        hospital="north",
        weights=ArrayRecord({"w": Array(rng.normal(size=(2, 3)))}),
        train_stays=120,
        train_loss=0.4,
        local_val_auroc=0.8,
    ),
    TrainReply(hospital="north", weights=ArrayRecord({"w": Array(np.zeros(2))}), train_stays=120, ledger="{}"),
    TrainReply(
        hospital="north",
        weights=ArrayRecord({"w": Array(np.zeros(2))}),
        train_stays=120,
        control=ArrayRecord({"w": Array(rng.normal(size=2))}),
    ),
    EvaluateReply(
        hospital="north",
        val_stays=30,
        auroc=0.7,
        auprc=0.3,
        brier=0.1,
        loss=0.35,
        histogram=ScoreHistogram(rng.integers(0, 5, 10), rng.integers(0, 5, 10)),
        test=SiteTest.of(np.r_[np.zeros(30), np.ones(10)], rng.random(40), seed=1),
        test_platt=SiteTest.of(np.r_[np.zeros(30), np.ones(10)], rng.random(40), seed=2),
        test_isotonic=SiteTest.of(np.r_[np.zeros(30), np.ones(10)], rng.random(40), seed=3),
    ),
    CrossSiteReply(
        hospital="north",
        model_name="local/north",
        test=SiteTest.of(np.r_[np.zeros(8), np.ones(4)], rng.random(12), 0),
        event1=0.5,
    ),
    CrossSiteReply(
        hospital="north",
        model_name="federated/best",
        test=SiteTest.of(np.r_[np.zeros(8), np.ones(4)], rng.random(12), 0),
        event1=0.5,
        event1_site_threshold=0.6,
    ),
    PersonalizeReply(
        hospital="north",
        method="finetune",
        epochs=3,
        val_auroc_global=0.7,
        val_auroc=0.75,
        test=SiteTest.of(np.r_[np.zeros(8), np.ones(4)], rng.random(12), 0),
        event1=0.5,
    ),
    PersonalizeReply(  # fine-tuned under DP-SGD: with the ledger after it
        hospital="north",
        method="finetune",
        epochs=0,
        val_auroc_global=0.7,
        val_auroc=0.7,
        test=SiteTest.of(np.r_[np.zeros(8), np.ones(4)], rng.random(12), 0),
        event1=0.5,
        ledger='{"history": []}',
    ),
]


def _same(a, b) -> bool:
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, ArrayRecord):
            if set(x) != set(y) or any(not np.array_equal(x[k].numpy(), y[k].numpy()) for k in x):
                return False
        elif dataclasses.is_dataclass(x) and not isinstance(x, ModelConfig):
            if any(not np.array_equal(getattr(x, g.name), getattr(y, g.name)) for g in dataclasses.fields(x)):
                return False
        elif x != y:
            return False
    return True


@pytest.mark.parametrize("message", EVERY_MESSAGE, ids=lambda m: type(m).__name__)
def test_every_message_survives_a_round_trip_through_flowers_records(message):
    back = type(message).from_content(message.to_content())
    assert _same(back, message)


def test_keys_are_derived_from_the_fields_and_flowers_strategies_find_theirs():
    content = TrainRequest(**TRAIN).to_content()
    config = content[contract.CONFIG]
    assert config["proximal-mu"] == 0.1 and config["server-round"] == 3 and config["model-n-features"] == 18
    reply = TrainReply(hospital="h", weights=ArrayRecord({"w": Array(np.zeros(1))}), train_stays=9).to_content()
    assert reply[contract.METRICS][contract.WEIGHT] == 9 and contract.ARRAYS in reply.array_records


def test_a_missing_field_or_a_wrong_type_is_named():
    content = TrainRequest(**TRAIN).to_content()
    del content.config_records[contract.CONFIG]["lr"]
    with pytest.raises(ContractError, match="train request: config lacks 'lr'"):
        TrainRequest.from_content(content)
    content = TrainRequest(**TRAIN).to_content()
    content.config_records[contract.CONFIG]["batch-size"] = "many"
    with pytest.raises(ContractError, match="'batch-size' must be int"):
        TrainRequest.from_content(content)


def test_another_contract_version_is_refused_naming_both_versions():
    content = FeatureStatsRequest(**RUN).to_content()
    content.config_records[contract.CONFIG]["contract-version"] = contract.CONTRACT_VERSION + 1
    content.config_records[contract.CONFIG]["fedicu-version"] = "9.9.9"
    with pytest.raises(ContractMismatch) as refused:
        FeatureStatsRequest.from_content(content)
    text = str(refused.value)
    assert f"contract version {contract.CONTRACT_VERSION + 1} (fedicu 9.9.9)" in text
    assert f"{contract.CONTRACT_VERSION} (fedicu {contract.FEDICU_VERSION})" in text


SMALL = dict(hospitals=3, synthetic_stays=600, rounds=2, seed=2)


def _run(tmp_path, client_app: Callable[[Message, Any], Message] = hospital_app, **overrides) -> RunDirectory:
    config = RunConfig(**{**SMALL, **overrides})
    run_dir = RunDirectory(tmp_path / "run").create()
    run_in_process(config, prepare(config), run_dir, LogProgress(), client_app=client_app)
    return run_dir


def test_a_hospital_of_another_version_is_refused_at_first_contact(tmp_path, monkeypatch):
    def old_hospital(msg: Message, context) -> Message:
        with monkeypatch.context() as old:  # this hospital runs a fedicu of the next contract version
            old.setattr(contract, "CONTRACT_VERSION", contract.CONTRACT_VERSION + 1)
            old.setattr(contract, "FEDICU_VERSION", "9.9.9")
            return hospital_app(msg, context)

    with pytest.raises(
        RuntimeError,
        match=rf"refused the server: .*contract version {contract.CONTRACT_VERSION} \(fedicu .*\), "
        rf"this side {contract.CONTRACT_VERSION + 1} \(fedicu 9\.9\.9\)",
    ):
        _run(tmp_path, old_hospital)
    assert RunDirectory(tmp_path / "run").status == "failed"


def _spy(seen: list[TrainRequest]) -> ClientApp:
    """The hospital app, recording every train request as the hospital reads it."""
    app = ClientApp()

    @app.query(FeatureStatsRequest.action)
    def stats(msg, context):
        return hospital_app(msg, context)

    @app.train()
    def train(msg, context):
        seen.append(TrainRequest.from_content(msg.content))
        return hospital_app(msg, context)

    @app.evaluate()
    def evaluate(msg, context):
        return hospital_app(msg, context)

    return app


def test_fedprox_reaches_the_hospitals_and_changes_their_training(tmp_path):
    seen: list[TrainRequest] = []
    prox = _run(tmp_path / "prox", _spy(seen), strategy="fedprox", proximal_mu=5.0)
    avg = _run(tmp_path / "avg", strategy="fedavg")
    assert {r.proximal_mu for r in seen} == {5.0} and len(seen) == 6
    # A strong pull towards the global model keeps the hospitals' updates small: another model.
    assert prox.read_json("metrics.json")[-1]["train_loss"] != avg.read_json("metrics.json")[-1]["train_loss"]


def test_each_round_sends_the_learning_rate_of_its_schedule(tmp_path):
    seen: list[TrainRequest] = []
    _run(tmp_path, _spy(seen), rounds=3, lr=0.01, lr_schedule="cosine")
    assert [r.lr for r in seen] == [
        RunConfig(rounds=3, lr=0.01, lr_schedule="cosine").round_lr(r) for r in (1, 1, 1, 2, 2, 2, 3, 3, 3)
    ]
    assert seen[0].lr > seen[3].lr > seen[6].lr


def test_fedavg_sends_no_proximal_term(tmp_path):
    seen: list[TrainRequest] = []
    _run(tmp_path, _spy(seen), strategy="fedavg", rounds=1)  # the default mu (0.01) stays FedProx's
    assert RunConfig().proximal_mu > 0 and {r.proximal_mu for r in seen} == {0.0}


@pytest.mark.parametrize(
    "settings",
    [dict(strategy="fedadam"), dict(dp=True, target_epsilon=8.0), dict(secagg=True)],
    ids=["fedadam", "dp-sgd", "secagg"],
)
def test_each_strategy_and_protection_runs_end_to_end_through_the_contract(tmp_path, settings):
    run_dir = _run(tmp_path, **settings)
    rows = run_dir.read_json("metrics.json")
    assert run_dir.status == "complete" and [r["hospitals_trained"] for r in rows] == [3, 3]
    if not settings.get("dp"):  # two noisy rounds on 600 stays need not beat chance
        assert all(0.5 < r["test_auroc"] <= 1 for r in rows)
    else:
        ledgers = run_dir.read_json("privacy.json")
        assert len(ledgers) == 3 and all(0 < ledger["epsilon"] <= 8.0 for ledger in ledgers)


def test_messages_need_a_task_identity_which_the_in_process_grid_provides():
    with compat.in_a_task():
        msg = FeatureStatsRequest(**RUN).message(5)
    assert msg.metadata.message_type == FeatureStatsRequest.message_type and msg.metadata.dst_node_id == 5
    assert CONTRACT_REFUSAL != contract.PRIVACY_REFUSAL
