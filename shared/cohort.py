"""One representation of ICU stays for every data source.

A `Cohort` is two tables:

- `stays`, one row per ICU stay, indexed by `stay_id` (int64), with columns
  `age`, `gender`, `height`, `weight`, `icu_type` (float64, NaN = not recorded;
  gender 0 = female, 1 = male), `label` (int8, 1 = in-hospital death),
  `hospital` (str: the stay's natural site, e.g. a synthetic hospital or a
  PhysioNet set) and `source` (str: where the record came from).
- `measurements`, one row per observation, with columns `stay_id` (int64),
  `minute` (int32, minutes since ICU admission, 0..2880), `variable`
  (categorical over `shared.variables.TIME_SERIES`) and `value` (float32, raw
  units). A stay may have no measurements at all: it is kept, with an
  all-missing series.

A cohort also says which `task` its `label` column answers (see `shared.tasks`)
and which input rows its reader skipped (`skipped`: rows whose variable is empty
or not one the federation models, counted per name with the first place each
occurs), so that a command can report them and `--strict` can refuse them.

Datasets build cohorts; preprocessing and partitioning only read them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from fedicu.shared.errors import DataError
from fedicu.shared.tasks import DEFAULT_TASK
from fedicu.shared.variables import TIME_SERIES

STAY_COLUMNS: tuple[str, ...] = (
    "age", "gender", "height", "weight", "icu_type", "label", "hospital", "source",
)  # fmt: skip
MEASUREMENT_COLUMNS: tuple[str, ...] = ("stay_id", "minute", "variable", "value")
VARIABLE_DTYPE = pd.CategoricalDtype(categories=list(TIME_SERIES), ordered=False)
MAX_MINUTE = 48 * 60  # measurements lie in the first 48 hours of a stay


@dataclass(frozen=True)
class SkippedRows:
    """Input rows skipped because of their variable `name`: empty, unknown, unmapped, or (MEDS)
    a mapped code without a numeric value."""

    name: str
    count: int
    path: str  # the file of the first such row
    line: int | None  # and its line, where the format has lines

    @property
    def where(self) -> str:
        return self.path if self.line is None else f"{self.path}:{self.line}"

    def to_dict(self) -> dict:
        return {"name": self.name, "count": self.count, "first": self.where}

    def error(self) -> DataError:
        """What `--strict` raises for these rows."""
        what = "an empty variable name" if not self.name else f"variable {self.name!r}, unknown or without a value"
        message = f"row with {what} ({self.count:,} such rows in all); without --strict they are skipped"
        return DataError(message, self.path, self.line)


def merge_skipped(*groups: tuple[SkippedRows, ...]) -> tuple[SkippedRows, ...]:
    """One entry per name, counts added up, the first place kept (groups in reading order)."""
    merged: dict[str, SkippedRows] = {}
    for group in groups:
        for rows in group:
            seen = merged.get(rows.name)
            merged[rows.name] = rows if seen is None else replace(seen, count=seen.count + rows.count)
    return tuple(merged.values())


def skipped_summary(skipped: tuple[SkippedRows, ...]) -> str:
    """One line for a user: `skipped 12 rows (empty, unknown or valueless variable): '' 10 (first f:3), ...`."""
    total = sum(rows.count for rows in skipped)
    shown = ", ".join(f"{rows.name!r} {rows.count:,} (first {rows.where})" for rows in skipped[:5])
    more = ", ..." if len(skipped) > 5 else ""
    return f"skipped {total:,} rows (empty, unknown or valueless variable): {shown}{more}"


@dataclass(frozen=True)
class Cohort:
    """ICU stays with static descriptors, irregular measurements and labels."""

    stays: pd.DataFrame
    measurements: pd.DataFrame
    task: str = DEFAULT_TASK
    skipped: tuple[SkippedRows, ...] = ()  # in reading order of their first row

    def __post_init__(self) -> None:
        missing = [c for c in STAY_COLUMNS if c not in self.stays.columns]
        if missing:
            raise ValueError(f"stays table lacks columns {missing}")
        if self.stays.index.name != "stay_id" or not self.stays.index.is_unique:
            raise ValueError("stays must be indexed by a unique 'stay_id'")
        if tuple(self.measurements.columns) != MEASUREMENT_COLUMNS:
            raise ValueError(f"measurements columns must be {MEASUREMENT_COLUMNS}")
        if self.measurements["variable"].dtype != VARIABLE_DTYPE:
            raise ValueError("measurements.variable must use cohort.VARIABLE_DTYPE")

    def __len__(self) -> int:
        return len(self.stays)

    @property
    def mortality(self) -> float:
        return float(self.stays["label"].mean()) if len(self) else float("nan")

    def subset(self, stay_ids: np.ndarray | pd.Index) -> Cohort:
        """The stays with these ids (in this order) and their measurements."""
        stays = self.stays.loc[stay_ids]
        keep = self.measurements["stay_id"].isin(stays.index)
        return replace(self, stays=stays, measurements=self.measurements[keep].reset_index(drop=True))

    def only_variables(self, variables: tuple[str, ...]) -> Cohort:
        """The same stays with the measurements of these time series only."""
        keep = self.measurements["variable"].isin(variables).to_numpy()
        return replace(self, measurements=self.measurements[keep].reset_index(drop=True))

    def strict(self) -> Cohort:
        """This cohort, or the `DataError` of its first skipped rows (`--strict`)."""
        if self.skipped:
            raise self.skipped[0].error()
        return self

    @staticmethod
    def concat(cohorts: list[Cohort]) -> Cohort:
        tasks = {c.task for c in cohorts}
        if len(tasks) > 1:
            raise ValueError(f"cohorts of different tasks ({', '.join(sorted(tasks))}) cannot be combined")
        stays = pd.concat([c.stays for c in cohorts])
        if not stays.index.is_unique:
            raise ValueError("cohorts share stay ids; they cannot be combined")
        measurements = pd.concat([c.measurements for c in cohorts], ignore_index=True)
        measurements["variable"] = measurements["variable"].astype(VARIABLE_DTYPE)
        skipped = merge_skipped(*(c.skipped for c in cohorts))
        return Cohort(stays=stays, measurements=measurements, task=cohorts[0].task, skipped=skipped)


def measurement_arrays(cohort: Cohort, stay_ids: np.ndarray) -> tuple[np.ndarray, ...]:
    """(stay position in `stay_ids`, minute, variable code, float32 value) of every measurement,
    checked as a writer needs them: known stays, minutes in 0..2880, a variable, finite values."""
    measurements = cohort.measurements
    position = pd.Index(stay_ids).get_indexer(measurements["stay_id"].to_numpy())
    if (position < 0).any():
        raise ValueError("measurements refer to stays that are not in cohort.stays")
    minute = measurements["minute"].to_numpy(dtype=np.int64)
    if len(minute) and (minute.min() < 0 or minute.max() > MAX_MINUTE):
        raise ValueError(f"measurement minutes must lie in 0..{MAX_MINUTE}, the input window")
    codes = np.asarray(measurements["variable"].cat.codes)
    if (codes < 0).any():
        raise ValueError("measurements have a missing variable")
    values = measurements["value"].to_numpy(dtype=np.float32)
    if not np.isfinite(values).all():
        raise ValueError("measurement values must be finite (NaN is not a measurement)")
    return position, minute, codes, values


def empty_measurements() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "stay_id": pd.Series(dtype="int64"),
            "minute": pd.Series(dtype="int32"),
            "variable": pd.Series(dtype=VARIABLE_DTYPE),
            "value": pd.Series(dtype="float32"),
        }
    )
