"""Long events -> `Cohort`: the one step the tables and MEDS readers share.

A reader turns its input into a stays frame and `Events` (one row per event, in
reading order, codes already translated by `mapping.Mapping.translate`) and
calls `to_cohort`, so both formats obey the same rules, those of the PhysioNet
2012 reader:

- An event without a federation name (its code is empty or maps to no
  federation variable) is skipped and counted per code, with the file and line
  of its first row (`Cohort.skipped`; `--strict` refuses them).
- Descriptors: an Age, Gender, Height or ICUType event at minute 0 or with no
  time (a static event) gives the stay's descriptor where the stays frame has
  none. All such events of a stay, and the stays frame, must agree.
- Weight is both. Its descriptor is the first static Weight event, else the
  first Weight event at minute 0; when the stays frame gives the Weight, it is
  the first of those with that same value (the descriptor row a converter kept
  among the events), and none if no value matches. Static Weight events must all
  agree with the descriptor. Every other Weight event is a measurement.
- `-1` as a descriptor (in the stays frame or an event) means not recorded: NaN.
- Measurements are the time-series events with a time. Those before minute 0
  or after minute 2880 lie outside the 48 h window, and Age, Gender, Height or
  ICUType events at other minutes are no descriptors: both are dropped and
  counted (logged at INFO on the `fedicu` logger), not errors. A fractional
  minute falls in the minute it starts in (00:07:30 is minute 7; 48:00:30 is
  beyond the window).
- `DataError`, naming the file and row of the first offending event: an event of
  a stay not in the stays frame, a mapped event whose value is missing, not a
  number or infinite, a measurement beyond float32, a time series without a
  time, conflicting descriptor values.

Measurements keep their input order within a stay; stays are ordered by stay_id.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fedicu.shared.cohort import MAX_MINUTE, STAY_COLUMNS, VARIABLE_DTYPE, Cohort, SkippedRows, merge_skipped
from fedicu.shared.datasets.mapping import FEDERATION_NAMES, NAME_DTYPE
from fedicu.shared.errors import DataError
from fedicu.shared.variables import TIME_SERIES

logger = logging.getLogger("fedicu")


FLOAT32_MAX = float(np.finfo(np.float32).max)
# Federation descriptor name -> stays column.
DESCRIPTOR_COLUMNS: dict[str, str] = {
    "Age": "age", "Gender": "gender", "Height": "height", "ICUType": "icu_type", "Weight": "weight",
}  # fmt: skip
_WEIGHT = FEDERATION_NAMES.index("Weight")
_FIRST_STATIC = len(TIME_SERIES)  # codes from here on are Age, Gender, Height, ICUType


@dataclass(frozen=True)
class Events:
    """Events of many stays, one row each, in reading order.

    `row` is the row a user sees in `paths[file]` (a CSV line, a Parquet row
    index), -1 where there is none; `text` optionally holds the values as
    written, for messages about values that are not numbers.
    """

    stay_id: np.ndarray  # int64
    minute: np.ndarray  # float64 minutes since admission; NaN = no time (a static event)
    code: np.ndarray  # object: the site's code, as skipped rows and errors name it
    name: pd.Categorical  # federation name (dtype mapping.NAME_DTYPE, as `Mapping.translate` gives); missing = unmapped
    value: np.ndarray  # float64 in federation units; NaN = missing or not a number
    file: np.ndarray  # intp: index into `paths`
    row: np.ndarray  # int64
    paths: tuple[str, ...]
    text: np.ndarray | None = None

    def error(self, i: int, message: str) -> DataError:
        row = int(self.row[i])
        return DataError(message, self.paths[int(self.file[i])], row if row >= 0 else None)

    def where(self, i: int) -> str:
        row = int(self.row[i])
        path = self.paths[int(self.file[i])]
        return f"{path}:{row}" if row >= 0 else path

    @staticmethod
    def concat(parts: list[Events], paths: tuple[str, ...]) -> Events:
        """Parts whose `file` indices already refer to `paths`."""
        texts = [p.text for p in parts if p.text is not None]
        text = np.concatenate(texts) if len(texts) == len(parts) else None

        def joined(field: str) -> np.ndarray:
            return np.concatenate([getattr(p, field) for p in parts])

        return Events(
            stay_id=joined("stay_id"),
            minute=joined("minute"),
            code=joined("code"),
            name=pd.Categorical.from_codes(np.concatenate([p.name.codes for p in parts]), dtype=NAME_DTYPE),
            value=joined("value"),
            file=joined("file"),
            row=joined("row"),
            paths=paths,
            text=text,
        )


def to_cohort(
    stays: pd.DataFrame,
    events: Events,
    task: str,
    skipped: tuple[SkippedRows, ...] = (),
    stays_path: str = "the stays table",
) -> Cohort:
    """The cohort of `stays` and `events` under the rules of the module docstring.

    `stays` is indexed by a unique int64 `stay_id` with columns `label`,
    `hospital`, `source`, any of the descriptor columns `age`, `gender`,
    `height`, `weight`, `icu_type` as given (NaN = not given, -1 = not
    recorded), and any extra columns, which are kept. `skipped` are rows the
    reader skipped before (they come first in `Cohort.skipped`).
    """
    stays = stays.sort_index(kind="stable")
    position = _positions(stays.index.to_numpy(np.int64), events.stay_id)
    unknown = np.flatnonzero(position < 0)
    if len(unknown):
        i = int(unknown[0])
        raise events.error(i, f"stay_id {events.stay_id[i]} has no row in {stays_path}")
    names = events.name.codes.astype(np.int64)
    skipped = merge_skipped(skipped, _skipped(events, names < 0))
    mapped = np.flatnonzero(names >= 0)
    _check_values(events, mapped)

    given = {column: _given(stays, column) for column in DESCRIPTOR_COLUMNS.values()}
    rows = _Rows(events, mapped, position[mapped], names[mapped])
    weight_row = rows.weight_descriptor(given["weight"])
    descriptors = rows.descriptors(weight_row)
    values = _descriptor_values(rows, descriptors, given, stays_path)
    measured, dropped = rows.measurements(weight_row)
    if dropped:
        where = events.paths[0] + (f" and {len(events.paths) - 1} more files" if len(events.paths) > 1 else "")
        share = dropped / max(len(mapped), 1)
        logger.warning(
            "%s: left out %d of %d events (%.1f%%): times outside the 48 h input window (minute 0..2880), "
            "or descriptors not at minute 0",
            where, dropped, len(mapped), 100 * share,
        )  # fmt: skip

    out = stays.copy()
    for column, value in values.items():
        out[column] = np.where(value == -1, np.nan, value)
    out = out[[*STAY_COLUMNS, *(c for c in out.columns if c not in STAY_COLUMNS)]]
    chosen = measured[np.argsort(rows.position[measured], kind="stable")]
    too_large = measured[np.abs(rows.value[measured]) > FLOAT32_MAX]
    if len(too_large):
        i = int(rows.index[too_large[0]])
        raise events.error(i, f"{events.name[i]}: value {events.value[i]:g} is too large (above 3.4e38)")
    measurements = pd.DataFrame(
        {
            "stay_id": out.index.to_numpy(np.int64)[rows.position[chosen]],
            "minute": np.floor(rows.minute[chosen]).astype(np.int32),
            "variable": pd.Categorical.from_codes(rows.name[chosen], dtype=VARIABLE_DTYPE),
            "value": rows.value[chosen].astype(np.float32),
        }
    )
    return Cohort(stays=out, measurements=measurements, task=task, skipped=skipped)


def _positions(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Where each of `ids` is in `sorted_ids`, -1 if absent (a binary search beats hashing here)."""
    position = np.searchsorted(sorted_ids, ids)
    found = position < len(sorted_ids)
    found[found] = sorted_ids[position[found]] == ids[found]
    return np.where(found, position, -1)


def _skipped(events: Events, unmapped: np.ndarray) -> tuple[SkippedRows, ...]:
    """One entry per code of the unmapped rows, in order of their first row."""
    index = np.flatnonzero(unmapped)
    if not len(index):
        return ()
    codes = pd.Series(events.code[index], dtype=object).fillna("").astype(str).to_numpy()
    group, uniques = pd.factorize(codes, sort=False)
    counts = np.bincount(group)
    _, first = np.unique(group, return_index=True)
    result = []
    for code, count, i in zip(uniques, counts, index[first], strict=True):
        row = int(events.row[i])
        result.append(SkippedRows(str(code), int(count), events.paths[int(events.file[i])], row if row >= 0 else None))
    return tuple(result)


def _check_values(events: Events, mapped: np.ndarray) -> None:
    bad = mapped[~np.isfinite(events.value[mapped])]
    if not len(bad):
        return
    i = int(bad[0])
    name, value = events.name[i], events.value[i]
    text = None if events.text is None else str(events.text[i])
    if np.isinf(value):
        problem = f"value {text or float(value)!r} is not a finite number"
    elif text is None:
        problem = "value is missing or NaN"
    elif text.strip():
        problem = f"value {text!r} is not a number"
    else:
        problem = "value is missing"
    raise events.error(i, f"{name}: {problem}")


def _given(stays: pd.DataFrame, column: str) -> np.ndarray:
    """The stays frame's raw descriptor (NaN where it gives none)."""
    if column not in stays.columns:
        return np.full(len(stays), np.nan)
    return stays[column].to_numpy(dtype=np.float64, na_value=np.nan)


class _Rows:
    """The mapped events, with what the rules need to tell descriptors from measurements."""

    def __init__(self, events: Events, index: np.ndarray, position: np.ndarray, name: np.ndarray):
        self.events = events
        self.index = index  # into events
        self.position = position  # of the stay in the sorted stays frame
        self.name = name  # codes of FEDERATION_NAMES
        self.value = events.value[index]
        self.minute = events.minute[index]
        self.static = np.isnan(self.minute)
        self.at_start = self.static | ((self.minute >= 0) & (self.minute < 1))
        self.weight = name == _WEIGHT

    def weight_descriptor(self, given: np.ndarray) -> np.ndarray:
        """Indices (into these rows) of each stay's Weight descriptor row, if it has one."""
        candidates = np.flatnonzero(self.weight & self.at_start)
        candidates = candidates[np.argsort(~self.static[candidates], kind="stable")]  # static ones first
        stay_given = given[self.position[candidates]]
        matches = np.isnan(stay_given) | (self.value[candidates] == stay_given)
        candidates = candidates[matches]
        return candidates[~pd.Index(self.position[candidates]).duplicated()]

    def descriptors(self, weight_row: np.ndarray) -> np.ndarray:
        """Indices of the rows that give descriptor values (checked for agreement)."""
        descriptor_at_start = (self.name >= _FIRST_STATIC) & self.at_start
        chosen = np.zeros(len(self.name), dtype=bool)
        chosen[weight_row] = True
        return np.flatnonzero(descriptor_at_start | (self.weight & self.static) | chosen)

    def measurements(self, weight_row: np.ndarray) -> tuple[np.ndarray, int]:
        """Indices of the measurements kept, and how many events were dropped."""
        series = self.name < _FIRST_STATIC
        series[weight_row] = False
        untimed = np.flatnonzero(series & self.static & ~self.weight)
        if len(untimed):
            i = int(self.index[untimed[0]])
            message = f"{self.events.name[i]} has no time; only descriptors may be given without one"
            raise self.events.error(i, message)
        timed = series & ~self.static
        in_window = (self.minute >= 0) & (self.minute <= MAX_MINUTE)
        kept = np.flatnonzero(timed & in_window)
        late_descriptors = (self.name >= _FIRST_STATIC) & ~self.at_start
        return kept, int((timed & ~in_window).sum() + late_descriptors.sum())


def _descriptor_values(
    rows: _Rows, descriptors: np.ndarray, given: dict[str, np.ndarray], stays_path: str
) -> dict[str, np.ndarray]:
    """Each descriptor column: the stays frame's value, else the events' (raw; -1 still -1)."""
    key = rows.position[descriptors] * len(FEDERATION_NAMES) + rows.name[descriptors]
    first = ~pd.Index(key).duplicated()
    _check_agreement(rows, descriptors, key, first)
    values = {}
    for name, column in DESCRIPTOR_COLUMNS.items():
        own = descriptors[first][rows.name[descriptors[first]] == FEDERATION_NAMES.index(name)]
        stay_value = given[column]
        at_stay = stay_value[rows.position[own]]
        conflict = np.flatnonzero(~np.isnan(at_stay) & (at_stay != rows.value[own]))
        if len(conflict):
            j = int(own[conflict[0]])
            i = int(rows.index[j])
            shown = f"{name} {rows.value[j]:g} conflicts with {at_stay[conflict[0]]:g} in {stays_path}"
            raise rows.events.error(i, f"stay {rows.events.stay_id[i]}: {shown}")
        from_events = np.full(len(stay_value), np.nan)
        from_events[rows.position[own]] = rows.value[own]
        values[column] = np.where(np.isnan(stay_value), from_events, stay_value)
    return values


def _check_agreement(rows: _Rows, descriptors: np.ndarray, key: np.ndarray, first: np.ndarray) -> None:
    """All descriptor events of one stay and name must give the same value."""
    first_row = pd.Series(descriptors[first], index=key[first]).reindex(key).to_numpy()
    differs = np.flatnonzero(rows.value[descriptors] != rows.value[first_row])
    if len(differs):
        j, earlier = int(descriptors[differs[0]]), int(first_row[differs[0]])
        events, i = rows.events, int(rows.index[j])
        message = (
            f"stay {events.stay_id[i]}: {events.name[i]} {rows.value[j]:g} conflicts with "
            f"{rows.value[earlier]:g} given at {events.where(int(rows.index[earlier]))}"
        )
        raise events.error(i, message)
