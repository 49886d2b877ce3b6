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

Datasets build cohorts; preprocessing and partitioning only read them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from fedicu.shared.variables import TIME_SERIES

STAY_COLUMNS: tuple[str, ...] = (
    "age", "gender", "height", "weight", "icu_type", "label", "hospital", "source",
)  # fmt: skip
MEASUREMENT_COLUMNS: tuple[str, ...] = ("stay_id", "minute", "variable", "value")
VARIABLE_DTYPE = pd.CategoricalDtype(categories=list(TIME_SERIES), ordered=False)


@dataclass(frozen=True)
class Cohort:
    """ICU stays with static descriptors, irregular measurements and labels."""

    stays: pd.DataFrame
    measurements: pd.DataFrame

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
        return Cohort(stays=stays, measurements=self.measurements[keep].reset_index(drop=True))

    @staticmethod
    def concat(cohorts: list[Cohort]) -> Cohort:
        stays = pd.concat([c.stays for c in cohorts])
        if not stays.index.is_unique:
            raise ValueError("cohorts share stay ids; they cannot be combined")
        measurements = pd.concat([c.measurements for c in cohorts], ignore_index=True)
        measurements["variable"] = measurements["variable"].astype(VARIABLE_DTYPE)
        return Cohort(stays=stays, measurements=measurements)


def empty_measurements() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "stay_id": pd.Series(dtype="int64"),
            "minute": pd.Series(dtype="int32"),
            "variable": pd.Series(dtype=VARIABLE_DTYPE),
            "value": pd.Series(dtype="float32"),
        }
    )
