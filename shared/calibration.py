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

from dataclasses import dataclass, fields

import numpy as np
from sklearn.isotonic import IsotonicRegression
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
    fit = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(_logit(risks), labels)
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


CALIBRATION_FIELDS = tuple(f.name for f in fields(Calibration))  # the row keys, after a prefix

# ---- Recalibration at a site ---------------------------------------------------------------
#
# A hospital fits a map from the global model's risk to its own observed risk on its validation
# stays, applies it to its test stays and reports the calibration before and after; the map
# stays at the hospital. Under DP-SGD the map is fitted on validation stays, which never train
# the model: it is post-processing of the released model on other data, so the training stays'
# (epsilon, delta) guarantee is untouched (the validation stays themselves are not protected by
# it, and the map never leaves the site).

RECALIBRATION_METHODS = ("platt", "isotonic")


def recalibrated(method: str, val_labels: np.ndarray, val_risks: np.ndarray, risks: np.ndarray) -> np.ndarray:
    """`risks` through the map `method` fits on the validation stays: Platt scaling (a logistic
    fit on the logit of the risk) or isotonic regression (monotone, clipped to the fitted range).
    Validation stays of one class leave the risks unchanged: there is nothing to fit."""
    val_labels = np.asarray(val_labels).astype(int)
    if len(np.unique(val_labels)) < 2:
        return np.asarray(risks, dtype=np.float64)
    if method == "platt":
        fit = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(_logit(val_risks), val_labels)
        return fit.predict_proba(_logit(risks))[:, 1]
    if method == "isotonic":
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(val_risks, val_labels)
        return np.asarray(iso.predict(risks), dtype=np.float64)
    raise ValueError(f"recalibration method must be one of {', '.join(RECALIBRATION_METHODS)}, not {method!r}")


def _logit(risks: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(risks, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p / (1 - p)).reshape(-1, 1)
