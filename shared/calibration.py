"""Calibration: do the predicted risks match the observed mortality at a hospital?

Discrimination (AUROC) can hold at a new site while calibration breaks: a model may rank the
stays well and still predict twice the deaths that occur. Three numbers say how:

- expected calibration error (ECE): over `ECE_BINS` equal-width bins of predicted probability,
  the mean |observed rate - mean predicted risk| weighted by the share of stays in each bin;
- calibration slope and intercept: the logistic fit of the outcome on the logit of the
  predicted risk (slope 1 and intercept 0 when calibrated; a slope below 1 means too extreme);
- observed / expected deaths: the number of positive stays over the sum of predicted risks.

A hospital computes them on its own stays and sends only these numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression

ECE_BINS = 10
ECE_BINNING = f"{ECE_BINS} equal-width bins of predicted risk on [0, 1], weighted by stays"
_EPS = 1e-7  # risks are clipped to (eps, 1 - eps) before taking logits


def expected_calibration_error(labels: np.ndarray, risks: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE over `bins` equal-width bins; a risk of exactly 1 falls in the last bin."""
    labels, risks = np.asarray(labels, dtype=np.float64), np.asarray(risks, dtype=np.float64)
    if len(labels) == 0:
        return float("nan")
    which = np.minimum((risks * bins).astype(np.int64), bins - 1)
    counts = np.bincount(which, minlength=bins)
    gaps = np.abs(np.bincount(which, labels, bins) - np.bincount(which, risks, bins))
    return float(gaps.sum() / counts.sum())


def calibration_line(labels: np.ndarray, risks: np.ndarray) -> tuple[float, float]:
    """(slope, intercept) of the unpenalized logistic fit of `labels` on logit(`risks`);
    NaN when the stays hold only one class."""
    labels = np.asarray(labels).astype(int)
    if len(np.unique(labels)) < 2:
        return float("nan"), float("nan")
    p = np.clip(np.asarray(risks, dtype=np.float64), _EPS, 1 - _EPS)
    logit = np.log(p / (1 - p)).reshape(-1, 1)
    fit = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(logit, labels)
    return float(fit.coef_[0, 0]), float(fit.intercept_[0])


@dataclass(frozen=True)
class Calibration:
    ece: float
    calibration_slope: float
    calibration_intercept: float
    observed_expected: float  # positive stays / sum of predicted risks

    @staticmethod
    def of(labels: np.ndarray, risks: np.ndarray) -> Calibration:
        slope, intercept = calibration_line(labels, risks)
        expected = float(np.sum(risks))
        observed = float(np.sum(labels))
        return Calibration(
            ece=expected_calibration_error(labels, risks),
            calibration_slope=slope,
            calibration_intercept=intercept,
            observed_expected=observed / expected if expected > 0 else float("nan"),
        )
