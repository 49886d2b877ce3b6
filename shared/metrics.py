"""Discrimination, calibration and the PhysioNet 2012 Event-1 score.

`binary_metrics` scores predictions exactly with scikit-learn. `ScoreHistogram`
is what a hospital shares in federated evaluation: counts of its positive and
negative stays per score bin. Summed over hospitals it gives the pooled
validation metrics without revealing any stay's score. Pooled AUROC from
histograms is exact for the binned scores; it can differ from the exact pooled
AUROC only through positive/negative pairs that share a bin, which count as
ties, so the error is at most `auroc_tie_bound()`.

Every AUROC and AUPRC gets a 95 % confidence interval from a stratified
percentile bootstrap (`bootstrap_intervals`, `ScoreHistogram.bootstrap_intervals`):
positives and negatives are resampled separately, with replacement, each keeping
its count, `CI_RESAMPLES` times from a seeded generator; the bounds are the
2.5th and 97.5th percentiles of the resampled values. Resampling a histogram's
stays is the same as drawing each class's count multinomially over the bins, so
pooled validation metrics get an interval without any stay's score.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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


CI_LEVEL = 0.95
CI_RESAMPLES = 1000
CI_METHOD = "stratified percentile bootstrap (positives and negatives resampled separately, each keeping its count)"
# With a single stay of a class, resampling cannot vary it: the interval would ignore that class's sampling error.
CI_MIN_PER_CLASS = 2
CI_CHUNK = 100  # resamples drawn and scored at a time, so memory grows with the stays, not also with the resamples
AREA_METRICS = ("auroc", "auprc")


def ci_keys(metric: str) -> tuple[str, str]:
    """The keys of `metric`'s interval bounds in a row: `test_auroc` -> `test_auroc_ci_low`, `test_auroc_ci_high`."""
    return f"{metric}_ci_low", f"{metric}_ci_high"


CI_KEYS = tuple(key for metric in AREA_METRICS for key in ci_keys(metric))


def ci_method(seed: int) -> dict[str, object]:
    """How every interval of a run was computed, to record once beside its metrics."""
    return {"method": CI_METHOD, "level": CI_LEVEL, "resamples": CI_RESAMPLES, "seed": seed}


CI_CAPTION = f"(a–b): {CI_LEVEL * 100:g} % CI, stratified bootstrap, {CI_RESAMPLES} resamples"  # a table's footnote


def interval_text(row: Mapping[str, Any], metric: str) -> str:
    """`metric`'s interval in `row` as a table shows it, "(0.78–0.83)"; "" where the row has none
    (NaN, null in JSON, or a row from before intervals were recorded)."""
    bounds = [row.get(key) for key in ci_keys(metric)]
    if not all(isinstance(b, float) and math.isfinite(b) for b in bounds):
        return ""
    return f"({bounds[0]:.2f}–{bounds[1]:.2f})"


def bootstrap_intervals(labels: np.ndarray, scores: np.ndarray, seed: int) -> dict[str, float]:
    """`CI_KEYS` of the AUROC and AUPRC (average precision, as scikit-learn defines it) of
    `scores`: the stratified percentile bootstrap of the module docstring; NaN with fewer than
    `CI_MIN_PER_CLASS` stays of either class."""
    return mean_bootstrap_intervals(labels, np.asarray(scores)[None], seed)


def mean_bootstrap_intervals(labels: np.ndarray, scores_per_model: np.ndarray, seed: int) -> dict[str, float]:
    """`CI_KEYS` of the mean AUROC and AUPRC of several models (`[models, stays]`) scored on the
    same stays: each resample draws one set of stays and averages the models' values on it
    (a paired bootstrap, so the models' shared test-set luck is not counted once per model)."""
    labels = np.asarray(labels).astype(int)
    models = [_score_levels(labels, scores) for scores in np.asarray(scores_per_model, dtype=np.float64)]
    return _intervals(models, seed)


def _score_levels(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Each positive's and each negative's rank among the distinct scores (ties share one), runs
    of negatives merged (`_merge_negative_runs`), and the number of ranks."""
    levels = np.unique(scores, return_inverse=True)[1].ravel()
    return _merge_negative_runs(levels[labels == 1], levels[labels == 0], int(levels.max(initial=0)) + 1)


def _merge_negative_runs(
    positives: np.ndarray, negatives: np.ndarray, n_levels: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """The same levels with each run of levels holding no positive merged into one. AUROC and
    average precision depend only on where negatives lie relative to positives, and fewer levels
    make the resampled counts several times cheaper (for 4000 test stays, ~850 levels instead of 4000)."""
    has_positive = np.zeros(n_levels, dtype=bool)
    has_positive[positives] = True
    starts = has_positive | np.r_[True, has_positive[:-1]]
    merged = np.cumsum(starts) - 1
    return merged[positives], merged[negatives], int(merged[-1]) + 1


def _intervals(models: list[tuple[np.ndarray, np.ndarray, int]], seed: int) -> dict[str, float]:
    """Percentile bounds of the models' mean AUROC and AUPRC over stratified resamples; each model
    is its positives' and negatives' levels, the same stays in the same order for every model."""
    n_positive, n_negative = len(models[0][0]), len(models[0][1])
    if min(n_positive, n_negative) < CI_MIN_PER_CLASS:
        return dict.fromkeys(CI_KEYS, float("nan"))
    rng = np.random.default_rng(seed)
    chunks = [min(CI_CHUNK, CI_RESAMPLES - start) for start in range(0, CI_RESAMPLES, CI_CHUNK)]
    values = np.concatenate([_resampled_means(models, rng, rows) for rows in chunks], axis=1)
    tails = ((1 - CI_LEVEL) / 2, (1 + CI_LEVEL) / 2)
    bounds = {metric: np.quantile(row, tails) for metric, row in zip(AREA_METRICS, values, strict=True)}
    return {key: float(b) for metric in AREA_METRICS for key, b in zip(ci_keys(metric), bounds[metric], strict=True)}


def _resampled_means(
    models: list[tuple[np.ndarray, np.ndarray, int]], rng: np.random.Generator, rows: int
) -> np.ndarray:
    """`[2, rows]`: the models' mean AUROC and AUPRC on `rows` resamples, each drawing as many
    positives and as many negatives as there are, with replacement."""
    n_positive, n_negative = len(models[0][0]), len(models[0][1])
    drawn = rng.integers(0, n_positive, (rows, n_positive)), rng.integers(0, n_negative, (rows, n_negative))
    return np.mean([_resampled_areas(pos[drawn[0]], neg[drawn[1]], n) for pos, neg, n in models], axis=0)


def _resampled_areas(positives: np.ndarray, negatives: np.ndarray, n_levels: int) -> np.ndarray:
    """`[2, resamples]`: AUROC and AUPRC of each row of drawn positive and negative levels."""
    pos, neg = _level_counts(positives, n_levels), _level_counts(negatives, n_levels)
    return np.stack([_auroc_of_counts(pos, neg), _auprc_of_counts(pos, neg)])


def _level_counts(levels: np.ndarray, n_levels: int) -> np.ndarray:
    """`[rows, n_levels]`: how often each level occurs in each row of `levels`."""
    rows = len(levels)
    flat = (levels + np.arange(rows)[:, None] * n_levels).ravel()
    return np.bincount(flat, minlength=rows * n_levels).reshape(rows, n_levels)


def _auroc_of_counts(positives: np.ndarray, negatives: np.ndarray) -> np.ndarray:
    """AUROC per row of per-level counts (levels in ascending score); pairs in one level are ties."""
    negatives_below = np.cumsum(negatives, axis=1) - negatives
    wins = np.sum(positives * (negatives_below + 0.5 * negatives), axis=1)
    return wins / (positives.sum(axis=1) * negatives.sum(axis=1))


def _auprc_of_counts(positives: np.ndarray, negatives: np.ndarray) -> np.ndarray:
    """Average precision per row of per-level counts, one threshold per level, as scikit-learn's
    `average_precision_score`: the sum over levels of recall gained x precision at that level."""
    tp = np.cumsum(positives[:, ::-1], axis=1)[:, ::-1]
    predicted = tp + np.cumsum(negatives[:, ::-1], axis=1)[:, ::-1]
    precision = np.divide(tp, predicted, out=np.zeros(tp.shape), where=predicted > 0)
    return np.sum(positives * precision, axis=1) / positives.sum(axis=1)


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
        return float(_auroc_of_counts(self.positives[None], self.negatives[None])[0])

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
        if self.positives.sum() == 0:
            return float("nan")
        return float(_auprc_of_counts(self.positives[None], self.negatives[None])[0])

    def bootstrap_intervals(self, seed: int) -> dict[str, float]:
        """`CI_KEYS` of `auroc()` and `auprc()`, by the stratified bootstrap of the module docstring
        over the histogram's stays (each stay stands for its bin)."""
        bins = np.arange(len(self.positives))
        positives, negatives = np.repeat(bins, self.positives), np.repeat(bins, self.negatives)
        return _intervals([_merge_negative_runs(positives, negatives, len(bins))], seed)

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
