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

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from fedicu.shared.files import atomic_write_bytes
from fedicu.shared.metrics import best_threshold

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


@dataclass(frozen=True)
class RecalibrationMap:
    """A map from the global model's risk to a hospital's observed risk, fitted on that
    hospital's validation stays: Platt scaling (a logistic fit on the logit of the risk) or
    isotonic regression (monotone, clipped to the fitted range). Both keep the stays' order, so
    discrimination is unchanged; the decision threshold moves with the risks (`threshold`: the
    one maximizing Event-1 on the recalibrated validation risks). The parameters are plain
    numbers, so the map is kept as JSON and applied without scikit-learn's objects."""

    method: str
    parameters: dict[str, list[float]]  # platt: slope, intercept; isotonic: the step points x, y
    threshold: float

    @staticmethod
    def fit(method: str, val_labels: np.ndarray, val_risks: np.ndarray) -> RecalibrationMap:
        """Validation stays of one class leave the risks unchanged: there is nothing to fit."""
        if method not in RECALIBRATION_METHODS:
            raise ValueError(f"recalibration method must be one of {', '.join(RECALIBRATION_METHODS)}, not {method!r}")
        val_labels = np.asarray(val_labels).astype(int)
        if len(np.unique(val_labels)) < 2:
            parameters = (
                {"slope": [1.0], "intercept": [0.0]} if method == "platt" else {"x": [0.0, 1.0], "y": [0.0, 1.0]}
            )
        elif method == "platt":
            fit = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(_logit(val_risks), val_labels)
            parameters = {"slope": [float(fit.coef_[0, 0])], "intercept": [float(fit.intercept_[0])]}
        else:
            iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(val_risks, val_labels)
            parameters = {"x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()}
        unfitted = RecalibrationMap(method, parameters, threshold=0.5)
        mapped = unfitted.apply(val_risks)
        return replace(unfitted, threshold=best_threshold(val_labels, mapped) if len(mapped) else 0.5)

    def apply(self, risks: np.ndarray) -> np.ndarray:
        p = self.parameters
        if self.method == "platt":
            logits = p["slope"][0] * _logit(risks)[:, 0] + p["intercept"][0]
            return 0.5 * (1.0 + np.tanh(0.5 * logits))  # the logistic function, without exp's overflow
        # Linear between the step points and constant beyond them, as scikit-learn predicts.
        return np.interp(np.asarray(risks, dtype=np.float64), p["x"], p["y"])

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(values: dict) -> RecalibrationMap:
        method, parameters = str(values["method"]), values["parameters"]
        needed = {"platt": ("slope", "intercept"), "isotonic": ("x", "y")}.get(method)
        if needed is None:
            raise ValueError(f"method must be one of {', '.join(RECALIBRATION_METHODS)}, not {method!r}")
        for key in needed:
            if not (isinstance(parameters.get(key), list) and parameters[key]):
                raise ValueError(f"{method} map lacks its parameter {key!r}")
        if method == "isotonic" and len(parameters["x"]) != len(parameters["y"]):
            raise ValueError("isotonic map: x and y differ in length")
        clean = {k: [float(v) for v in parameters[k]] for k in needed}
        return RecalibrationMap(method, clean, float(values["threshold"]))


# Platt's two parameters hold on a few hundred validation stays; isotonic steps overfit them.
DEFAULT_RECALIBRATION = "platt"


@dataclass(frozen=True)
class SiteRecalibration:
    """What a hospital keeps, and never sends, for the model its run selected: both maps,
    fitted on its validation stays, and which one its scoring uses (`use`). `model_sha256`
    (`shared.model.fingerprint`) ties the file to that model: another model's risks would be
    mapped wrongly, so applying it to one is refused."""

    hospital: str
    model_sha256: str
    validation_stays: int
    validation_deaths: int
    maps: dict[str, RecalibrationMap]
    use: str = DEFAULT_RECALIBRATION

    @staticmethod
    def fit(hospital: str, model_sha256: str, val_labels: np.ndarray, val_risks: np.ndarray) -> SiteRecalibration:
        maps = {m: RecalibrationMap.fit(m, val_labels, val_risks) for m in RECALIBRATION_METHODS}
        return SiteRecalibration(hospital, model_sha256, len(val_labels), int(np.sum(val_labels)), maps)

    @property
    def chosen(self) -> RecalibrationMap:
        return self.maps[self.use]

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        values = asdict(self) | {"maps": {m: r.to_dict() for m, r in self.maps.items()}, "fitted_on": FITTED_ON}
        atomic_write_bytes(path, (json.dumps(values, indent=2) + "\n").encode())

    @staticmethod
    def load(path: Path) -> SiteRecalibration:
        try:
            values = json.loads(path.read_text())
            maps = {m: RecalibrationMap.from_dict(values["maps"][m]) for m in RECALIBRATION_METHODS}
            use = str(values.get("use", DEFAULT_RECALIBRATION))
            if use not in maps:
                raise ValueError(f"'use' must be one of {', '.join(RECALIBRATION_METHODS)}, not {use!r}")
            return SiteRecalibration(
                str(values["hospital"]), str(values["model_sha256"]), int(values["validation_stays"]),
                int(values["validation_deaths"]), maps, use,
            )  # fmt: skip
        except OSError as error:
            raise ValueError(f"--recalibration {path}: cannot read it: {error.strerror or error}") from error
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"--recalibration {path}: not a site's recalibration file ({error})") from error


FITTED_ON = (
    "the site's validation stays, which never train the model: post-processing of the released model, so "
    "under DP-SGD the training stays' (epsilon, delta) guarantee holds unchanged; the file never leaves the site"
)


def recalibrated(method: str, val_labels: np.ndarray, val_risks: np.ndarray, risks: np.ndarray) -> np.ndarray:
    """`risks` through the map `method` fits on the validation stays."""
    return RecalibrationMap.fit(method, val_labels, val_risks).apply(risks)


def _logit(risks: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(risks, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p / (1 - p)).reshape(-1, 1)
