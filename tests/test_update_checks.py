"""Bad updates never reach the global model: the server's checks of each hospital's weights
(`server/update_checks.py`), and robust aggregation against a hospital that sends harm."""

import math

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedTrimmedAvg

from fedicu.client.client_app import app as hospital_app
from fedicu.server.strategies import fit_to_replies, make_strategy
from fedicu.server.update_checks import update_problems
from fedicu.shared.config import RunConfig
from fedicu.shared.contract import ARRAYS
from tests.test_faults import run


def _record(**arrays) -> ArrayRecord:
    return ArrayRecord({name: Array(np.asarray(value, dtype=np.float32)) for name, value in arrays.items()})


SENT = _record(w=np.zeros((2, 3)), b=np.zeros(3))


def _moved(step: float, **changes) -> ArrayRecord:
    arrays = {"w": np.full((2, 3), step), "b": np.full(3, step)} | changes
    return _record(**arrays)


def test_honest_updates_pass_and_broken_or_outsized_ones_are_rejected_with_the_reason():
    trained = {"a": _moved(0.10), "b": _moved(0.12), "c": _moved(0.09), "nan": _moved(0.1, b=[0.1, math.nan, 0.1]),
               "shape": _moved(0.1, w=np.zeros((3, 2))), "scaled": _moved(-10.0)}  # fmt: skip
    problems = update_problems(trained, SENT, factor=10.0)
    assert set(problems) == {"nan", "shape", "scaled"}
    assert "b holds NaN or infinite values" in problems["nan"]
    assert "w is float32[3, 2], the model's is float[2, 3]" in problems["shape"]
    assert "x as long per local step as the median of the other hospitals'" in problems["scaled"]
    assert set(update_problems(trained, SENT, factor=0.0)) == {"nan", "shape"}  # no norm bound
    assert update_problems({"alone": _moved(50.0)}, SENT, factor=10.0) == {}  # nobody to compare with


def test_the_norm_bound_compares_steps_and_needs_others_that_moved():
    big, small = _moved(1.0), _moved(0.05)  # 20 x as far, in 20 x the steps: the same per step
    assert (
        update_problems({"big": big, "small": small, "mid": _moved(0.1)}, SENT, 10.0, {"big": 40, "small": 2, "mid": 4})
        == {}
    )
    assert update_problems({"a": _moved(0.1), "idle": _moved(0.0)}, SENT, 10.0) == {}  # idle: no scale to judge by
    wide = ArrayRecord({"w": Array(np.zeros((2, 3))), "b": Array(np.array([1e39, 0.0, 0.0]))})  # float64
    beyond = update_problems({"a": _moved(0.1), "b": wide}, SENT, 0.0)
    assert "beyond what the model's float32 weights hold" in beyond["b"] and "a" not in beyond


def test_trimmed_mean_trims_by_the_hospitals_that_replied():
    strategy = make_strategy(RunConfig(strategy="trimmed-mean", hospitals=5, synthetic_stays=1500), 5)
    fit_to_replies(strategy, 4)  # one hospital missing: still one cut at each end
    assert isinstance(strategy, FedTrimmedAvg) and int(strategy.beta * 4) == 1
    with pytest.raises(ValueError, match="needs at least 3 hospitals"):
        make_strategy(RunConfig(strategy="krum", hospitals=2), 2)


def test_missing_and_unknown_tensors_are_rejected():
    trained = {"a": _record(w=np.zeros((2, 3))), "b": _record(w=np.zeros((2, 3)), b=np.zeros(3), extra=[0.0])}
    problems = update_problems(trained, SENT, factor=10.0)
    assert problems["a"] == "update rejected: weights missing ['b'], unknown []"
    assert problems["b"] == "update rejected: weights missing [], unknown ['extra']"


def attacking(partition: int, attack: str) -> ClientApp:
    """The hospital app, except that one hospital sends harm instead of its trained weights:
    `nan` weights, or its update sign-flipped and scaled x100 (`flip`)."""
    app = ClientApp()

    @app.query("feature_stats")
    def stats(msg, context):
        return hospital_app(msg, context)

    @app.query("cross_site")
    def cross_site(msg, context):
        return hospital_app(msg, context)

    @app.train()
    def train(msg, context):
        reply = hospital_app(msg, context)
        if context.node_config["partition-id"] != partition:
            return reply
        sent, trained = msg.content.array_records[ARRAYS], reply.content.array_records[ARRAYS]
        harmed = {}
        for name, array in trained.items():
            start, new = sent[name].numpy(), array.numpy()
            harmful = np.full_like(new, np.nan) if attack == "nan" else start - 100 * (new - start)
            harmed[name] = Array(harmful)
        reply.content.array_records[ARRAYS] = ArrayRecord(harmed)
        return reply

    @app.evaluate()
    def evaluate(msg, context):
        return hospital_app(msg, context)

    return app


def _final(run_dir) -> dict:
    return run_dir.read_json("metrics.json")[-1]


FIVE = dict(hospitals=5, synthetic_stays=1500)  # one bad hospital in five: within what the robust ones tolerate


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    return _final(run(tmp_path_factory.mktemp("clean")))


@pytest.fixture(scope="module")
def clean_five(tmp_path_factory):
    return _final(run(tmp_path_factory.mktemp("clean-five"), **FIVE))


def test_a_hospital_sending_nan_is_rejected_every_round_and_the_model_stays_whole(tmp_path, clean):
    run_dir = run(tmp_path, attacking(1, "nan"))
    rows = run_dir.read_json("metrics.json")
    assert [(r["hospitals_trained"], r["hospitals_failed"]) for r in rows] == [(2, 1), (2, 1)]
    rejected = [r for r in run_dir.read_json("hospital_metrics.json") if r["status"] != "ok"]
    assert len(rejected) == 2 and all("holds NaN or infinite values" in r["status"] for r in rejected)
    assert math.isfinite(rows[-1]["test_loss"]) and rows[-1]["test_auroc"] > clean["test_auroc"] - 0.05


def test_a_rejected_hospital_s_dp_sgd_spending_is_still_accounted(tmp_path):
    run_dir = run(tmp_path, attacking(1, "nan"), dp=True, noise_multiplier=1.0)
    ledgers = {row["hospital"]: row for row in run_dir.read_json("privacy.json")}
    assert len(ledgers) == 3 and all(row["epsilon"] > 0 for row in ledgers.values())
    rejected = [r for r in run_dir.read_json("hospital_metrics.json") if r["status"] != "ok"]
    assert len(rejected) == 2 and all(r["epsilon"] > 0 for r in rejected)


def test_a_flipped_update_scaled_x100_ruins_fedavg_unchecked_and_harms_no_guarded_model(tmp_path, clean_five):
    """Guarded: within 0.03 AUROC of the clean FedAvg run (measured: 0.000-0.007 below it)."""
    flipped = attacking(1, "flip")
    ruined = _final(run(tmp_path / "fedavg", flipped, max_update_ratio=0.0, **FIVE))
    assert ruined["test_auroc"] < 0.6 < clean_five["test_auroc"] - 0.2
    checked = run(tmp_path / "checked", flipped, **FIVE)  # the default norm bound rejects it
    assert all(r["hospitals_failed"] == 1 for r in checked.read_json("metrics.json"))
    guarded = {"fedavg, norm bound": _final(checked)}
    for strategy in ("fedmedian", "trimmed-mean", "krum"):  # no norm bound: the aggregation alone
        guarded[strategy] = _final(run(tmp_path / strategy, flipped, strategy=strategy, max_update_ratio=0.0, **FIVE))
    for name, final in guarded.items():
        assert final["test_auroc"] > clean_five["test_auroc"] - 0.03, (name, final["test_auroc"], clean_five)


def test_robust_strategies_are_refused_under_secure_aggregation():
    for strategy in ("fedmedian", "trimmed-mean", "krum"):
        with pytest.raises(ValueError, match=f"--strategy {strategy} needs each hospital's weights"):
            RunConfig(secagg=True, strategy=strategy)
