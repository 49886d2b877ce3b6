import numpy as np
import pytest
from sklearn import metrics as skm

from fedicu.shared.metrics import ScoreHistogram, auroc, best_threshold, binary_metrics, event1


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
