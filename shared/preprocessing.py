"""From irregular measurements to model inputs: cleaning, hourly sequences, normalization.

1. `clean` turns values outside `PHYSIOLOGICAL_LIMITS` into missing values and
   counts them per variable.
2. `to_sequences` bins the first 48 hours into hourly steps (mean of the
   observations in each hour), keeps an observation mask, forward-fills, and
   records the hours since each variable was last observed.
3. `FeatureStats` holds per-channel counts, sums and sums of squares, and per time
   series a histogram over fixed public bins (`reference_edges`). A hospital
   computes them on its own training stays; the server adds them up. Because
   these are sufficient statistics, the sum equals the statistics of the pooled
   data exactly: no row ever leaves a hospital. Runs with DP-SGD use
   `Normalization.reference()` instead, built from clinical reference ranges,
   since these statistics would reveal the training stays outside the guarantee.
   The summed histogram travels with the model as the training reference of
   drift monitoring (`Normalization.histogram`; None under DP-SGD).
4. `to_features` standardizes with those statistics and lays out one
   `[stays, 48, n_features(variables)]` float32 tensor for the time series a
   model reads (all 37 by default; `--variables` chooses a subset).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from fedicu.shared.cohort import Cohort
from fedicu.shared.variables import ICU_TYPES, LOG_TRANSFORMED, PHYSIOLOGICAL_LIMITS, REFERENCE_RANGES, TIME_SERIES

HOURS = 48
MAX_MINUTE = HOURS * 60
STATIC_NUMERIC: tuple[str, ...] = ("age", "height", "weight")
# Channels standardized with federated statistics: each time-series value, then age, height, weight.
NORMALIZED_CHANNELS: tuple[str, ...] = TIME_SERIES + STATIC_NUMERIC
_LOG_MASK = np.array([v in LOG_TRANSFORMED for v in TIME_SERIES])


def feature_names(variables: tuple[str, ...] = TIME_SERIES) -> tuple[str, ...]:
    """The model's input channels for these time series, in `to_features` order."""
    return (
        variables
        + tuple(f"{v}:observed" for v in variables)
        + tuple(f"{v}:hours_since" for v in variables)
        + STATIC_NUMERIC
        + tuple(f"{s}:missing" for s in STATIC_NUMERIC)
        + ("gender:female", "gender:male")
        + tuple(f"icu_type:{k}" for k in ICU_TYPES)
    )


def n_features(variables: tuple[str, ...] = TIME_SERIES) -> int:
    return len(feature_names(variables))


def clean(cohort: Cohort) -> tuple[Cohort, dict[str, int]]:
    """Drop physiologically impossible values; return the cleaned cohort and counts per variable."""
    m = cohort.measurements
    codes = m["variable"].cat.codes.to_numpy()
    low = np.array([PHYSIOLOGICAL_LIMITS[v][0] for v in TIME_SERIES])[codes]
    high = np.array([PHYSIOLOGICAL_LIMITS[v][1] for v in TIME_SERIES])[codes]
    values = m["value"].to_numpy()
    bad = ~((values >= low) & (values <= high))  # NaN counts as bad too
    removed = dict.fromkeys((*TIME_SERIES, *STATIC_NUMERIC), 0)
    for code, count in zip(*np.unique(codes[bad], return_counts=True), strict=True):
        removed[TIME_SERIES[code]] = int(count)

    stays = cohort.stays.copy()
    for column in STATIC_NUMERIC:
        low, high = PHYSIOLOGICAL_LIMITS[column.capitalize()]
        values = stays[column].to_numpy(dtype=np.float64, copy=True)
        out = ~np.isnan(values) & ~((values >= low) & (values <= high))
        removed[column] = int(out.sum())
        if out.any():
            values[out] = np.nan
            stays[column] = values
    measurements = m[~bad].reset_index(drop=True)
    return replace(cohort, stays=stays, measurements=measurements), {k: v for k, v in removed.items() if v}


@dataclass(frozen=True)
class Sequences:
    """Hourly sequences of some stays, in raw units, before normalization.

    `values` holds the forward-filled hourly means (NaN before a variable's first
    observation), `observed` whether the variable was measured in that hour, and
    `hours_since` the hours since it was last measured (HOURS if never yet).
    """

    stay_ids: np.ndarray  # [n] int64
    values: np.ndarray  # [n, HOURS, V] float32
    observed: np.ndarray  # [n, HOURS, V] bool
    hours_since: np.ndarray  # [n, HOURS, V] uint8
    static: np.ndarray  # [n, 5] float32: age, height, weight, gender, icu_type (NaN = missing)
    labels: np.ndarray  # [n] int8

    def __len__(self) -> int:
        return len(self.stay_ids)

    def take(self, index: np.ndarray) -> Sequences:
        return Sequences(*(getattr(self, f)[index] for f in self.__dataclass_fields__))

    @staticmethod
    def concat(parts: list[Sequences]) -> Sequences:
        fields = Sequences.__dataclass_fields__
        return Sequences(*(np.concatenate([getattr(p, f) for p in parts]) for f in fields))


def to_sequences(cohort: Cohort) -> Sequences:
    """Bin a (cleaned) cohort into hourly sequences; stays keep the cohort's order."""
    n, n_vars = len(cohort), len(TIME_SERIES)
    m = cohort.measurements
    position = cohort.stays.index.get_indexer(m["stay_id"])
    if (position < 0).any():
        raise ValueError("measurements refer to stays missing from the stays table")
    hour = np.minimum(m["minute"].to_numpy() // 60, HOURS - 1)  # 48:00 closes the last hour
    cell = (position * HOURS + hour) * n_vars + m["variable"].cat.codes.to_numpy()
    size = n * HOURS * n_vars
    counts = np.bincount(cell, minlength=size).reshape(n, HOURS, n_vars)
    sums = np.bincount(cell, weights=m["value"].to_numpy(np.float64), minlength=size)
    observed = counts > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        hourly = (sums.reshape(n, HOURS, n_vars) / counts).astype(np.float32)
    filled, hours_since = fill_forward(hourly, observed)
    stays = cohort.stays
    static = stays[["age", "height", "weight", "gender", "icu_type"]].to_numpy(np.float32)
    return Sequences(
        stay_ids=stays.index.to_numpy(np.int64),
        values=filled,
        observed=observed,
        hours_since=hours_since,
        static=static,
        labels=stays["label"].to_numpy(np.int8),
    )


def fill_forward(hourly: np.ndarray, observed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`Sequences.values` and `.hours_since` from the hourly means (read where `observed`)."""
    steps = np.arange(HOURS)[None, :, None]
    last_seen = np.maximum.accumulate(np.where(observed, steps, -1), axis=1)
    filled = np.take_along_axis(hourly, np.maximum(last_seen, 0), axis=1)
    filled[last_seen < 0] = np.nan
    hours_since = np.where(last_seen < 0, HOURS, steps - last_seen).astype(np.uint8)
    return filled, hours_since


def _normalized_channels(seqs: Sequences) -> tuple[np.ndarray, np.ndarray]:
    """Values on the modelling scale (log for skewed labs) for time series and static numerics."""
    series = seqs.values.astype(np.float64)
    series[..., _LOG_MASK] = np.log1p(series[..., _LOG_MASK])
    return series, seqs.static[:, :3].astype(np.float64)


REFERENCE_BINS = 20


def reference_edges() -> np.ndarray:
    """[len(TIME_SERIES), REFERENCE_BINS + 1] equal-width bin edges of each time series between
    its physiological limits, on the modelling scale: public, the same at every hospital."""
    bounds = np.array([PHYSIOLOGICAL_LIMITS[v] for v in TIME_SERIES], dtype=np.float64)
    bounds[_LOG_MASK] = np.log1p(bounds[_LOG_MASK])
    return np.linspace(bounds[:, 0], bounds[:, 1], REFERENCE_BINS + 1, axis=1)


def reference_histogram(seqs: Sequences) -> np.ndarray:
    """[len(TIME_SERIES), REFERENCE_BINS] observed hours per `reference_edges` bin (values beyond
    the edges in the outer bins)."""
    series = _normalized_channels(seqs)[0]
    variable = np.broadcast_to(np.arange(len(TIME_SERIES)), series.shape)[seqs.observed]
    edges = reference_edges()
    low, width = edges[:, 0], (edges[:, -1] - edges[:, 0]) / REFERENCE_BINS
    bins = np.clip(((series[seqs.observed] - low[variable]) / width[variable]).astype(np.int64), 0, REFERENCE_BINS - 1)
    counts = np.bincount(variable * REFERENCE_BINS + bins, minlength=len(TIME_SERIES) * REFERENCE_BINS)
    return counts.reshape(len(TIME_SERIES), REFERENCE_BINS).astype(np.float64)


@dataclass(frozen=True)
class FeatureStats:
    """Count, sum and sum of squares per channel in `NORMALIZED_CHANNELS`, and per time series
    the count of observed hours in each `reference_edges` bin.

    Time-series channels count the hours in which the variable was observed;
    static channels count stays where it was recorded.
    """

    count: np.ndarray
    total: np.ndarray
    total_sq: np.ndarray
    histogram: np.ndarray  # [len(TIME_SERIES), REFERENCE_BINS]

    @staticmethod
    def of(seqs: Sequences) -> FeatureStats:
        series, static = _normalized_channels(seqs)
        series = np.where(seqs.observed, series, np.nan)
        stacked = [series.reshape(-1, len(TIME_SERIES)), static]
        count = np.concatenate([np.sum(~np.isnan(a), axis=0) for a in stacked]).astype(np.float64)
        total = np.concatenate([np.nansum(a, axis=0) for a in stacked])
        total_sq = np.concatenate([np.nansum(a * a, axis=0) for a in stacked])
        return FeatureStats(count, total, total_sq, reference_histogram(seqs))

    @staticmethod
    def sum(parts: list[FeatureStats]) -> FeatureStats:
        return FeatureStats(
            count=np.sum([p.count for p in parts], axis=0),
            total=np.sum([p.total for p in parts], axis=0),
            total_sq=np.sum([p.total_sq for p in parts], axis=0),
            histogram=np.sum([p.histogram for p in parts], axis=0),
        )

    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        """Pooled mean and (population) standard deviation; an unseen channel gets 0 and 1."""
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(self.count > 0, self.total / self.count, 0.0)
            var = np.where(self.count > 0, self.total_sq / self.count - mean**2, 1.0)
        std = np.sqrt(np.maximum(var, 0.0))
        return mean, np.where(std > 1e-8, std, 1.0)


@dataclass(frozen=True)
class Normalization:
    """The mean and standard deviation a model's inputs are standardized with, and the training
    stays' histogram of each time series (`FeatureStats.histogram`; None when built otherwise)."""

    mean: np.ndarray
    std: np.ndarray
    histogram: np.ndarray | None = None

    @staticmethod
    def from_stats(stats: FeatureStats) -> Normalization:
        return Normalization(*stats.mean_std(), histogram=stats.histogram)

    @staticmethod
    def reference() -> Normalization:
        """Data-independent scales from `REFERENCE_RANGES`: nothing about any stay goes in."""
        names = (*TIME_SERIES, "Age", "Height", "Weight")
        bounds = np.array([REFERENCE_RANGES[v] for v in names], dtype=np.float64)
        logged = np.array([v in LOG_TRANSFORMED for v in names])
        bounds[logged] = np.log1p(bounds[logged])
        low, high = bounds[:, 0], bounds[:, 1]
        return Normalization((low + high) / 2, (high - low) / 4)

    def to_dict(self) -> dict[str, list]:
        values: dict[str, list] = {"mean": self.mean.tolist(), "std": self.std.tolist()}
        if self.histogram is not None:
            values["histogram"] = self.histogram.tolist()
        return values

    @staticmethod
    def from_dict(d: dict) -> Normalization:
        mean, std = np.asarray(d["mean"], np.float64), np.asarray(d["std"], np.float64)
        if mean.shape != (len(NORMALIZED_CHANNELS),) or std.shape != mean.shape:
            raise ValueError(f"normalization needs {len(NORMALIZED_CHANNELS)} channels")
        histogram = np.asarray(d["histogram"], np.float64) if d.get("histogram") is not None else None
        if histogram is not None and histogram.shape != (len(TIME_SERIES), REFERENCE_BINS):
            raise ValueError(f"the normalization's histogram needs {len(TIME_SERIES)} x {REFERENCE_BINS} bins")
        return Normalization(mean, std, histogram)


def to_features(seqs: Sequences, norm: Normalization, variables: tuple[str, ...] = TIME_SERIES) -> np.ndarray:
    """Model input `[n, HOURS, n_features(variables)]` (float32), laid out as in `feature_names`.

    Standardized values are 0 (the mean) where nothing was observed yet; the mask
    and hours-since channels tell the model which zeros are real.
    """
    n_all = len(TIME_SERIES)
    channel = np.array([TIME_SERIES.index(v) for v in variables], dtype=np.int64)
    n_vars = len(channel)
    series, static_num = _normalized_channels(seqs)
    series = (series[..., channel] - norm.mean[channel]) / norm.std[channel]
    static_z = (static_num - norm.mean[n_all:]) / norm.std[n_all:]
    gender, icu_type = seqs.static[:, 3], seqs.static[:, 4]
    static = np.concatenate(
        [
            np.nan_to_num(static_z, nan=0.0),
            np.isnan(static_num),
            np.stack([gender == 0, gender == 1], axis=1),
            np.stack([icu_type == k for k in ICU_TYPES], axis=1),
        ],
        axis=1,
    ).astype(np.float32)
    n = len(seqs)
    out = np.empty((n, HOURS, n_features(variables)), dtype=np.float32)
    out[..., :n_vars] = np.nan_to_num(series, nan=0.0)
    out[..., n_vars : 2 * n_vars] = seqs.observed[..., channel]
    out[..., 2 * n_vars : 3 * n_vars] = seqs.hours_since[..., channel] / HOURS
    out[..., 3 * n_vars :] = static[:, None, :]
    return out


def describe(seqs: Sequences) -> dict[str, float | int]:
    """A small data summary (for model cards and site reports)."""
    return {
        "stays": len(seqs),
        "deaths": int(seqs.labels.sum()),
        "mortality": float(seqs.labels.mean()) if len(seqs) else float("nan"),
        "observed_fraction": float(seqs.observed.mean()) if len(seqs) else float("nan"),
    }
