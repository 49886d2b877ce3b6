"""Discrimination, calibration and the PhysioNet 2012 Event-1 score.

`binary_metrics` scores predictions exactly with scikit-learn. `ScoreHistogram`
is what a hospital shares in federated evaluation: counts of its positive and
negative stays per score bin. Summed over hospitals it gives the pooled
validation metrics without revealing any stay's score. Pooled AUROC from
histograms is exact for the binned scores; it can differ from the exact pooled
AUROC only through positive/negative pairs that share a bin, which count as
ties, so the error is at most `auroc_tie_bound()`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn import metrics as skm

N_BINS = 1000


def event1(labels: np.ndarray, scores: np.ndarray, threshold: float) -> tuple[float, float, float]:
    """(min(Se, +P), sensitivity, positive predictivity) when `scores >= threshold` is positive."""
    predicted = scores >= threshold
    tp = float(np.sum(predicted & (labels == 1)))
    se = tp / max(float(np.sum(labels == 1)), 1.0)
    ppv = tp / float(np.sum(predicted)) if predicted.any() else 0.0
    return min(se, ppv), se, ppv


def best_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold that maximizes the Event-1 score min(Se, +P)."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    tp = np.cumsum(y == 1)
    predicted = np.arange(1, len(s) + 1)
    last_of_tie = np.r_[s[1:] != s[:-1], True]  # a threshold admits all tied scores
    se = tp / max(int(np.sum(y == 1)), 1)
    score = np.where(last_of_tie, np.minimum(se, tp / predicted), -1.0)
    return float(s[int(np.argmax(score))]) if len(s) else 0.5


BINARY_METRICS = ("auroc", "auprc", "brier", "loss", "accuracy", "event1", "sensitivity", "ppv")


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve; NaN when the labels hold only one class."""
    labels = np.asarray(labels).astype(int)
    return float(skm.roc_auc_score(labels, scores)) if len(np.unique(labels)) == 2 else float("nan")


def binary_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """`n` and BINARY_METRICS of scores against labels; the threshold makes the decisions."""
    labels = np.asarray(labels).astype(int)
    scores = np.clip(np.asarray(scores, dtype=np.float64), 1e-7, 1 - 1e-7)
    both = len(np.unique(labels)) == 2
    e1, se, ppv = event1(labels, scores, threshold)
    return {
        "n": float(len(labels)),
        "auroc": auroc(labels, scores),
        "auprc": float(skm.average_precision_score(labels, scores)) if both else float("nan"),
        "brier": float(skm.brier_score_loss(labels, scores)),
        "loss": float(skm.log_loss(labels, scores, labels=[0, 1])),
        "accuracy": float(skm.accuracy_score(labels, scores >= threshold)),
        "event1": e1,
        "sensitivity": se,
        "ppv": ppv,
    }


@dataclass(frozen=True)
class ScoreHistogram:
    """Counts of positive and negative stays per equal-width score bin on [0, 1]."""

    positives: np.ndarray
    negatives: np.ndarray

    @staticmethod
    def of(labels: np.ndarray, scores: np.ndarray, bins: int = N_BINS) -> ScoreHistogram:
        index = np.minimum((np.asarray(scores) * bins).astype(int), bins - 1)
        labels = np.asarray(labels)
        return ScoreHistogram(
            np.bincount(index[labels == 1], minlength=bins).astype(np.int64),
            np.bincount(index[labels == 0], minlength=bins).astype(np.int64),
        )

    @staticmethod
    def sum(parts: list[ScoreHistogram]) -> ScoreHistogram:
        return ScoreHistogram(
            np.sum([p.positives for p in parts], axis=0),
            np.sum([p.negatives for p in parts], axis=0),
        )

    def _pairs(self) -> float:
        return float(self.positives.sum()) * float(self.negatives.sum())

    def auroc(self) -> float:
        """AUROC of the binned scores (pairs within one bin count as ties)."""
        if self._pairs() == 0:
            return float("nan")
        negatives_below = np.cumsum(self.negatives) - self.negatives
        wins = np.sum(self.positives * (negatives_below + 0.5 * self.negatives))
        return float(wins / self._pairs())

    def auroc_tie_bound(self) -> float:
        """Largest possible gap between `auroc()` and the exact AUROC of the raw scores."""
        if self._pairs() == 0:
            return float("nan")
        return float(0.5 * np.sum(self.positives * self.negatives) / self._pairs())

    def _above(self) -> tuple[np.ndarray, np.ndarray]:
        """True and all positives when each bin's lower edge is the threshold."""
        tp = np.cumsum(self.positives[::-1])[::-1]
        return tp, tp + np.cumsum(self.negatives[::-1])[::-1]

    def auprc(self) -> float:
        """Average precision with one threshold per bin edge."""
        p = float(self.positives.sum())
        if p == 0:
            return float("nan")
        tp, predicted = self._above()
        precision = np.divide(tp, predicted, out=np.zeros(len(tp)), where=predicted > 0)
        return float(np.sum(self.positives * precision) / p)

    def _event1_per_edge(self) -> np.ndarray:
        tp, predicted = self._above()
        se = tp / max(float(self.positives.sum()), 1.0)
        ppv = np.divide(tp, predicted, out=np.zeros(len(tp)), where=predicted > 0)
        return np.minimum(se, ppv)

    def best_threshold(self) -> float:
        """The bin edge maximizing Event-1 on this histogram."""
        return float(np.argmax(self._event1_per_edge()) / len(self.positives))

    def event1(self, threshold: float) -> float:
        """Event-1 at a bin-edge threshold: exact, since the edge separates whole bins."""
        return float(self._event1_per_edge()[round(threshold * len(self.positives))])
