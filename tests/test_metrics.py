import numpy as np
import pytest
from sklearn import metrics as skm

from fedicu.shared import metrics as M
from fedicu.shared.metrics import (
    ScoreHistogram,
    auroc,
    best_threshold,
    binary_metrics,
    bootstrap_intervals,
    event1,
    mean_bootstrap_intervals,
)


@pytest.fixture
def predictions():
    rng = np.random.default_rng(0)
    labels = (rng.random(2000) < 0.15).astype(int)
    scores = np.clip(rng.normal(0.2 + 0.3 * labels, 0.15), 0, 1)
    return labels, scores


def test_binary_metrics_match_scikit_learn(predictions):
    labels, scores = predictions
    m = binary_metrics(labels, scores, threshold=0.4)
    assert m["auroc"] == pytest.approx(skm.roc_auc_score(labels, scores))
    assert m["auprc"] == pytest.approx(skm.average_precision_score(labels, scores))
    assert m["brier"] == pytest.approx(skm.brier_score_loss(labels, scores), rel=1e-6)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(labels, scores >= 0.4))
    se = skm.recall_score(labels, scores >= 0.4)
    ppv = skm.precision_score(labels, scores >= 0.4)
    assert m["event1"] == pytest.approx(min(se, ppv))


def test_auroc_is_scikit_learns_and_undefined_for_one_class(predictions):
    labels, scores = predictions
    assert auroc(labels, scores) == skm.roc_auc_score(labels, scores)
    assert np.isnan(auroc(np.zeros(5), np.linspace(0, 1, 5)))
    assert np.isnan(binary_metrics(np.ones(5), np.linspace(0, 1, 5), threshold=0.5)["auroc"])


def test_event1_is_min_of_sensitivity_and_ppv():
    labels = np.array([1, 1, 0, 0, 0, 1])
    scores = np.array([0.9, 0.2, 0.8, 0.1, 0.3, 0.7])
    score, se, ppv = event1(labels, scores, 0.5)
    assert (se, ppv) == pytest.approx((2 / 3, 2 / 3)) and score == pytest.approx(2 / 3)


def test_best_threshold_maximizes_event1(predictions):
    labels, scores = predictions
    t = best_threshold(labels, scores)
    best = event1(labels, scores, t)[0]
    for candidate in np.unique(scores):
        assert event1(labels, scores, candidate)[0] <= best + 1e-12


def test_pooled_histograms_match_exact_pooled_metrics(predictions):
    labels, scores = predictions
    parts = [slice(0, 300), slice(300, 1100), slice(1100, 2000)]
    pooled = ScoreHistogram.sum([ScoreHistogram.of(labels[p], scores[p]) for p in parts])
    exact = skm.roc_auc_score(labels, scores)
    assert abs(pooled.auroc() - exact) <= pooled.auroc_tie_bound() + 1e-12
    assert pooled.auroc_tie_bound() < 0.002
    assert pooled.auprc() == pytest.approx(skm.average_precision_score(labels, scores), abs=0.005)
    t = pooled.best_threshold()
    assert pooled.event1(t) == pytest.approx(event1(labels, scores, t)[0])
    assert pooled.event1(t) == pytest.approx(event1(labels, scores, best_threshold(labels, scores))[0], abs=0.01)


# --- Bootstrap intervals --------------------------------------------------------------------


def synthetic(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Scores of a model with AUROC about 0.8 on n stays, 15 % positive, rounded so that some tie."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.15).astype(int)
    return labels, np.round(np.clip(rng.normal(0.2 + 0.2 * labels, 0.15), 0, 1), 3)


def test_the_bootstrap_is_scikit_learn_on_stratified_resamples(monkeypatch):
    """The vectorized intervals equal a plain loop: draw each class's stays with replacement, as
    many as it has, score the resample with scikit-learn, take the percentiles. (Resamples are
    drawn in chunks of `CI_CHUNK`, first the positives' draws of a chunk, then the negatives'.)"""
    monkeypatch.setattr(M, "CI_RESAMPLES", 200)
    monkeypatch.setattr(M, "CI_CHUNK", 80)  # two whole chunks and a partial one
    labels, scores = synthetic(300)
    positives, negatives = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    rng = np.random.default_rng(7)
    draws: list[tuple[np.ndarray, np.ndarray]] = []
    for rows in (80, 80, 40):
        chunk = (
            rng.integers(0, len(positives), (rows, len(positives))),
            rng.integers(0, len(negatives), (rows, len(negatives))),
        )
        draws += zip(*chunk, strict=True)
    values: dict[str, list[float]] = {"auroc": [], "auprc": []}
    for pos, neg in draws:
        stays = np.r_[positives[pos], negatives[neg]]
        assert labels[stays].sum() == len(positives) and len(stays) == len(labels)  # each class keeps its count
        values["auroc"].append(skm.roc_auc_score(labels[stays], scores[stays]))
        values["auprc"].append(skm.average_precision_score(labels[stays], scores[stays]))
    expected = {
        key: bound
        for metric, v in values.items()
        for key, bound in zip(M.ci_keys(metric), np.quantile(v, [0.025, 0.975]), strict=True)
    }
    assert bootstrap_intervals(labels, scores, seed=7) == pytest.approx(expected, abs=1e-12)


def test_intervals_hold_the_point_estimate_and_narrow_with_more_stays():
    widths = []
    for n in (400, 4000):
        labels, scores = synthetic(n)
        ci = bootstrap_intervals(labels, scores, seed=0)
        point = binary_metrics(labels, scores, threshold=0.5)
        for metric in ("auroc", "auprc"):
            low, high = (ci[k] for k in M.ci_keys(metric))
            assert low < point[metric] < high, (n, metric)
        widths.append(ci["auroc_ci_high"] - ci["auroc_ci_low"])
    assert widths[1] < 0.5 * widths[0]  # ten times the stays: about a third of the width


def test_intervals_are_reproducible_by_seed():
    labels, scores = synthetic(1000)
    first = bootstrap_intervals(labels, scores, seed=3)
    assert bootstrap_intervals(labels, scores, seed=3) == first
    assert bootstrap_intervals(labels, scores, seed=4) != first
    assert set(first) == set(M.CI_KEYS)


def test_stratification_keeps_a_rare_class_in_every_resample():
    """Three deaths among 500 stays: an unstratified resample would lack all three one time in
    twenty, and its AUROC would not exist; a stratified one always has them."""
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(3, int), np.zeros(497, int)]
    ci = bootstrap_intervals(labels, rng.random(500) + labels * 0.3, seed=0)
    assert all(np.isfinite(v) for v in ci.values())


@pytest.mark.parametrize(
    "labels",
    [np.zeros(50, int), np.ones(50, int), np.r_[1, np.zeros(49, int)], np.array([], int)],
    ids=["no-positive", "no-negative", "one-positive", "no-stay"],
)
def test_degenerate_cases_give_nan_bounds(labels):
    scores = np.linspace(0, 1, len(labels))
    assert all(np.isnan(v) for v in bootstrap_intervals(labels, scores, seed=0).values())
    assert all(np.isnan(v) for v in ScoreHistogram.of(labels, scores).bootstrap_intervals(seed=0).values())


def test_histogram_intervals_are_close_to_the_exact_ones():
    """1000 bins: the pooled validation intervals, from counts alone, match the exact scores'."""
    rng = np.random.default_rng(1)
    labels = (rng.random(3000) < 0.15).astype(int)
    scores = np.clip(rng.normal(0.2 + 0.2 * labels, 0.15), 0, 1)
    parts = [slice(0, 500), slice(500, 1800), slice(1800, 3000)]
    pooled = ScoreHistogram.sum([ScoreHistogram.of(labels[p], scores[p]) for p in parts])
    from_counts, exact = pooled.bootstrap_intervals(seed=0), bootstrap_intervals(labels, scores, seed=0)
    assert from_counts == pytest.approx(exact, abs=0.005)
    assert from_counts["auroc_ci_low"] < pooled.auroc() < from_counts["auroc_ci_high"]
    assert from_counts["auprc_ci_low"] < pooled.auprc() < from_counts["auprc_ci_high"]


def test_the_mean_of_models_is_a_paired_bootstrap():
    labels, first = synthetic(1000)
    second = np.random.default_rng(5).permutation(first)  # a model no better than chance
    one = bootstrap_intervals(labels, first, seed=0)
    assert mean_bootstrap_intervals(labels, np.array([first, first]), seed=0) == pytest.approx(one, abs=1e-12)
    mean = mean_bootstrap_intervals(labels, np.array([first, second]), seed=0)
    mean_auroc = (auroc(labels, first) + auroc(labels, second)) / 2
    assert mean["auroc_ci_low"] < mean_auroc < mean["auroc_ci_high"]


def test_the_record_of_the_method_and_the_table_text():
    assert M.ci_method(4) == {"method": M.CI_METHOD, "level": 0.95, "resamples": M.CI_RESAMPLES, "seed": 4}
    assert M.ci_keys("test_auroc") == ("test_auroc_ci_low", "test_auroc_ci_high")
    row = {"test_auroc": 0.8042, "test_auroc_ci_low": 0.7815, "test_auroc_ci_high": 0.8264}
    assert M.interval_text(row, "test_auroc") == "(0.78–0.83)"
    assert M.interval_text({**row, "test_auroc_ci_low": None}, "test_auroc") == ""  # null in JSON
    assert M.interval_text({"test_auroc": 0.8}, "test_auroc") == ""  # a row from before intervals
