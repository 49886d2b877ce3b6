"""Do the stays a site scores still look like the ones the model learnt from?

The reference is the training stays' histogram of every time series, over fixed public bins
(`shared.preprocessing.reference_edges`: equal-width on the modelling scale between the
physiological limits): each hospital counted its own observed hours, the federation added the
counts up, and the model card carries the sum. The service counts the stays it scores the same
way (each stay once, as it stood when last scored), and the population stability index (PSI) compares the two over `PSI_BINS` bins
(pairs of the reference's): the sum over bins of (observed share - reference share) *
ln(observed share / reference share). Past `PSI_FLAG` (0.2, the usual line for a shift that
matters) a variable is flagged, once `MIN_STAYS` stays measured it: a stay's values move
together, so fewer stays give a PSI that is mostly noise. The share of stays in which a variable was never measured is reported
beside it. Values the model ignores (outside the physiological limits) are not counted.

A model trained with DP-SGD has no reference: its hospitals sent nothing computed from their
training stays but the weights, so there is no PSI, only the counts and missing shares.
"""

from __future__ import annotations

import numpy as np

from fedicu.shared.preprocessing import REFERENCE_BINS, Normalization
from fedicu.shared.variables import TIME_SERIES

PSI_FLAG = 0.2
PSI_BINS = REFERENCE_BINS // 2
MIN_STAYS = 100
_FLOOR = 1e-4  # an empty bin's share, so that the logarithm stays finite


def psi(counts: np.ndarray, reference: np.ndarray) -> float:
    """PSI of binned counts against the reference's counts in the same bins."""
    if counts.sum() == 0 or reference.sum() == 0:
        return float("nan")
    counts, reference = counts.reshape(PSI_BINS, -1).sum(axis=1), reference.reshape(PSI_BINS, -1).sum(axis=1)
    observed = np.maximum(counts / counts.sum(), _FLOOR)
    expected = np.maximum(reference / reference.sum(), _FLOOR)
    return float(np.sum((observed - expected) * np.log(observed / expected)))


def report(
    norm: Normalization, counts: dict[str, np.ndarray], stays: int, stays_measured: dict[str, int], dp: bool
) -> dict:
    """The monitoring answer: per variable its values seen, PSI, whether flagged, missing share."""
    variables = []
    for index, variable in enumerate(TIME_SERIES):
        seen = counts.get(variable, np.zeros(REFERENCE_BINS, dtype=np.int64))
        value = float("nan") if norm.histogram is None else psi(seen, norm.histogram[index])
        variables.append(
            {
                "variable": variable,
                "values": int(seen.sum()),
                "psi": None if np.isnan(value) else value,
                "stays_measured": stays_measured.get(variable, 0),
                "flagged": bool(stays_measured.get(variable, 0) >= MIN_STAYS and value > PSI_FLAG),
                "missing_share": None if stays == 0 else 1 - stays_measured.get(variable, 0) / stays,
            }
        )
    return {
        "stays": stays,
        "reference": _reference(norm, dp),
        "psi_flag": PSI_FLAG,
        "min_stays": MIN_STAYS,
        "flagged": [v["variable"] for v in variables if v["flagged"]],
        "variables": variables,
    }


def _reference(norm: Normalization, dp: bool) -> str:
    if norm.histogram is not None:
        return "the training stays' histograms, summed over the federation's hospitals"
    if dp:
        return "none: a DP-SGD model's hospitals sent nothing computed from their training stays"
    return "none: this model's card records no training histograms (trained before they were kept)"
