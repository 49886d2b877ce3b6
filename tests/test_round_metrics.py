"""A federated round's rows: every AUROC and AUPRC carries its bootstrap interval."""

import math

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord

from fedicu.server.replies import Replies
from fedicu.server.round_metrics import round_metrics
from fedicu.shared.contract import EvaluateReply, SiteTest, TrainReply
from fedicu.shared.metrics import CI_KEYS, ScoreHistogram, binary_metrics, bootstrap_intervals, ci_keys
from fedicu.shared.model import ModelConfig, MortalityLSTM
from fedicu.shared.preprocessing import HOURS
from fedicu.shared.training import predict

HOSPITALS = ["hospital-1", "hospital-2", "hospital-3"]


@pytest.fixture(scope="module")
def round_inputs():
    """Three hospitals' replies (hospital-3 failed to evaluate) and a server test split."""
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    model = MortalityLSTM(ModelConfig(n_features=6, hidden_size=8))
    trained, evaluated, failures = {}, {}, {"hospital-3": "no reply within 5 s"}
    for name in HOSPITALS:
        labels = (rng.random(400) < 0.2).astype(int)
        scores = np.clip(rng.normal(0.3 + 0.25 * labels, 0.15), 0, 1)
        m = binary_metrics(labels, scores, threshold=0.5)
        trained[name] = TrainReply(
            hospital=name, weights=ArrayRecord(model.state_dict()), train_stays=1000, train_loss=0.4,
            local_val_auroc=m["auroc"],
        )  # fmt: skip
        if name not in failures:
            evaluated[name] = EvaluateReply(
                hospital=name, val_stays=len(labels), auroc=m["auroc"], auprc=m["auprc"], brier=m["brier"],
                loss=m["loss"], histogram=ScoreHistogram.of(labels, scores),
                test=SiteTest.of(labels[:100], scores[:100], 0),
                test_platt=SiteTest.of(labels[:100], scores[:100] * 0.9, 0),
                test_isotonic=SiteTest.of(labels[:100], scores[:100] * 0.8, 0),
            )  # fmt: skip
    x_test = rng.normal(size=(600, HOURS, 6)).astype(np.float32)
    y_test = (x_test[:, -1, 0] + rng.normal(size=600) > 1.0).astype(int)
    return (
        model,
        Replies({}, trained, {}),
        Replies({}, evaluated, failures),
        ArrayRecord(model.state_dict()),
        (x_test, y_test),
    )


def test_pooled_validation_and_test_metrics_carry_their_intervals(round_inputs):
    model, trained, evaluated, arrays, test = round_inputs
    row, _ = round_metrics(1, HOSPITALS, trained, evaluated, model, arrays, test, seed=3)
    pooled = ScoreHistogram.sum([r.histogram for r in evaluated.replies.values()])
    assert {k: row[f"val_{k}"] for k in CI_KEYS} == pooled.bootstrap_intervals(3)  # from counts alone
    exact = bootstrap_intervals(test[1], predict(model, test[0]), seed=3)
    assert {k: row[f"test_{k}"] for k in CI_KEYS} == exact
    for metric in ("val_auroc", "val_auprc", "test_auroc", "test_auprc"):
        low, high = (row[k] for k in ci_keys(metric))
        assert low <= row[metric] <= high, metric
    other, _ = round_metrics(1, HOSPITALS, trained, evaluated, model, arrays, test, seed=4)
    assert other["test_auroc_ci_low"] != row["test_auroc_ci_low"]  # seeded by the run's seed


def test_each_hospital_row_has_intervals_from_its_histogram(round_inputs):
    model, trained, evaluated, arrays, test = round_inputs
    _, rows = round_metrics(1, HOSPITALS, trained, evaluated, model, arrays, test, seed=0)
    ok, failed = [r for r in rows if r["status"] == "ok"], [r for r in rows if r["status"] != "ok"]
    assert [r["hospital"] for r in failed] == ["hospital-3"]
    for r in ok:
        assert r["val_auroc_ci_low"] < r["val_auroc"] < r["val_auroc_ci_high"]
        assert r["val_auprc_ci_low"] < r["val_auprc"] < r["val_auprc_ci_high"]
    assert all(math.isnan(failed[0][f"val_{k}"]) for k in CI_KEYS)


def test_without_a_server_test_split_the_test_bounds_are_nan(round_inputs):
    model, trained, evaluated, arrays, _ = round_inputs
    row, _ = round_metrics(1, HOSPITALS, trained, evaluated, model, arrays, None, seed=0)
    assert all(math.isnan(row[f"test_{k}"]) for k in CI_KEYS)
    assert not math.isnan(row["val_auroc_ci_low"])
