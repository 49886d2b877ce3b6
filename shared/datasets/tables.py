"""A site's own long tables, CSV or Parquet: `--data-format tables`.

The data directory holds two tables, each as `<name>.csv` or `<name>.parquet`
(never both):

    stays.csv     one row per ICU stay
    events.csv    one row per event: a measurement or a descriptor

Default columns (a mapping file renames them, see `shared.datasets.mapping`;
columns the reader does not use are ignored):

- stays: `stay_id` (whole numbers, unique); optional `hospital` (default: the
  folder's name), descriptors `Age`, `Gender` (0 female, 1 male), `Height`,
  `Weight`, `ICUType` (empty = not given, -1 = not recorded); the label column
  named by the task (`in_hospital_death` by default: 0/1 or true/false; a stay
  whose label is empty is left out, counted and logged as a WARNING). For
  `los_over_3d` and `los_over_7d` a `length_of_stay` column in days stands in
  when the task's own column is absent (label = length of stay over 3 or 7
  days). `admission_time` is needed when events carry timestamps.
- events: `stay_id`, `minute` (minutes since ICU admission) or `time`
  (timestamps; minute = time - the stay's `admission_time`), `variable` (a
  federation name such as `HR`, or a site code the mapping names) and `value`.
  An empty minute or time makes a static event: a descriptor. Timestamps are
  ISO 8601 text or Parquet timestamps; those with a time zone are compared in
  UTC, those without as written.

Descriptors, measurements, the 48 h window and the skipped rows follow the rules
of `shared.datasets.events`: an event whose variable is empty or unknown is
skipped and counted with its first file:line, like an empty parameter in a
PhysioNet record. CSV files may start with a BOM, end lines with CRLF and end
with blank lines (blank lines are ignored). Every problem is a `DataError`
naming the file and the row as a user sees it: the CSV line, counting the
header as line 1, or, for Parquet, the 0-based row index. Each stay's `source`
is the folder's name.
"""

from __future__ import annotations

import csv
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fedicu.shared.cohort import Cohort
from fedicu.shared.datasets import DataSource
from fedicu.shared.datasets.events import DESCRIPTOR_COLUMNS, Events, to_cohort
from fedicu.shared.datasets.mapping import EVENT_COLUMNS, STAY_COLUMNS, Mapping, load_mapping
from fedicu.shared.errors import DataError
from fedicu.shared.tasks import LENGTH_OF_STAY_DAYS

logger = logging.getLogger("fedicu")

_LABELS = {"0": 0.0, "1": 1.0, "false": 0.0, "true": 1.0}
_PARSER_LINE = re.compile(r"line (\d+)")
_WHOLE_NUMBER = r"[+-]?[0-9]+"


def from_source(source: DataSource) -> Cohort:
    """The stays of the tables in `source.data_dir`, mapped by `source.mapping`, labelled for `source.task`."""
    folder = Path(source.data_dir)
    if not folder.is_dir():
        raise DataError("data directory does not exist or is not a folder", folder)
    name = folder.resolve().name
    mapping = load_mapping(source.mapping)
    stay_columns = (*STAY_COLUMNS, source.task)
    stays_table = _Table.read(_locate(folder, "stays"), mapping, "stays", stay_columns)
    events_table = _Table.read(_locate(folder, "events"), mapping, "events", EVENT_COLUMNS)
    stay_ids = _whole_numbers(stays_table, "stay_id")
    stays, left_out = _stays(stays_table, stay_ids, source.task, name)
    events = _events(events_table, stays_table, stay_ids, left_out)
    return to_cohort(stays, events, source.task, stays_path=str(stays_table.path))


def _locate(folder: Path, name: str) -> Path:
    found = [folder / f"{name}.{ext}" for ext in ("csv", "parquet") if (folder / f"{name}.{ext}").is_file()]
    if not found:
        raise DataError(f"neither {name}.csv nor {name}.parquet is in this folder", folder)
    if len(found) > 1:
        raise DataError(f"both {name}.csv and {name}.parquet are in this folder; keep one", folder)
    return found[0]


@dataclass(frozen=True)
class _Table:
    """One table as read: CSV columns as text ("" = empty), Parquet columns typed."""

    path: Path
    mapping: Mapping
    role: str  # "stays" or "events": the mapping section that names its columns
    frame: pd.DataFrame
    rows: np.ndarray  # the row a user sees for each frame row
    columns: tuple[str, ...]  # every column of the file

    @staticmethod
    def read(path: Path, mapping: Mapping, role: str, names: tuple[str, ...]) -> _Table:
        """Read the file's columns for federation columns `names` (only those)."""
        wanted = {mapping.column(role, name) for name in names}
        reader = _read_csv if path.suffix == ".csv" else _read_parquet
        columns, frame, rows = reader(path, wanted)
        return _Table(path, mapping, role, frame, rows, tuple(columns))

    @property
    def is_csv(self) -> bool:
        return self.path.suffix == ".csv"

    @property
    def row_word(self) -> str:
        return "line" if self.is_csv else "row"

    def error(self, i: int, message: str) -> DataError:
        return DataError(message, self.path, int(self.rows[i]))

    def get(self, name: str) -> pd.Series | None:
        """The column for federation column `name`; None when it is absent and the mapping does not name it."""
        column = self.mapping.column(self.role, name)
        if column in self.frame.columns:
            return self.frame[column]
        if name in getattr(self.mapping, self.role):
            raise self.missing(name)
        return None

    def require(self, name: str, why: str = "") -> pd.Series:
        series = self.get(name)
        if series is None:
            raise self.missing(name, why)
        return series

    def missing(self, name: str, why: str = "") -> DataError:
        column = self.mapping.column(self.role, name)
        named = f" (the mapping's [{self.role}] {name})" if column != name else ""
        shown = ", ".join(repr(c) for c in self.columns)
        return DataError(
            f"no column {column!r}{named}{why}; the columns are {shown}", self.path, 1 if self.is_csv else None
        )


def _read_csv(path: Path, wanted: set[str]) -> tuple[list[str], pd.DataFrame, np.ndarray]:
    options = {"encoding": "utf-8-sig", "dtype": str, "na_filter": False, "engine": "c"}
    try:
        # All columns are read (not `usecols`): only then does pandas refuse a row with too many fields.
        frame = pd.read_csv(path, skip_blank_lines=False, **options)
    except pd.errors.EmptyDataError:
        raise DataError("empty file; expected a header line naming the columns", path) from None
    except UnicodeDecodeError:
        raise _not_utf8(path) from None
    except pd.errors.ParserError as error:
        match = _PARSER_LINE.search(str(error))
        raise DataError(f"cannot be read as CSV: {error}", path, int(match[1]) if match else None) from None
    with path.open(encoding="utf-8-sig", newline="") as text:
        _no_repeated_column(next(csv.reader(text)), path, 1)  # pandas would rename the second "Age" to "Age.1"
    columns = list(frame.columns)
    rows = np.arange(len(frame), dtype=np.int64) + 2  # line 1 is the header
    blank = (frame == "").all(axis=1).to_numpy()
    frame = frame[[c for c in columns if c in wanted]]
    return columns, frame[~blank].reset_index(drop=True), rows[~blank]


def _not_utf8(path: Path) -> DataError:
    """The line of the first byte that is not UTF-8 (pandas reports it by offset in its buffer)."""
    data = path.read_bytes()
    try:
        data.decode("utf-8-sig")
        return DataError("not UTF-8 text", path)
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        return DataError(f"not UTF-8 text (byte {data[error.start]:#04x}); save the file as UTF-8", path, line)


def _read_parquet(path: Path, wanted: set[str]) -> tuple[list[str], pd.DataFrame, np.ndarray]:
    try:
        columns = pq.read_schema(path).names
        frame = pq.read_table(path, columns=[c for c in columns if c in wanted]).to_pandas(types_mapper=_nullable)
    except (OSError, pa.ArrowException) as error:
        raise DataError(f"cannot be read as Parquet: {error}", path) from None
    _no_repeated_column(columns, path, None)
    return columns, frame, np.arange(len(frame), dtype=np.int64)


def _no_repeated_column(columns: list[str], path: Path, line: int | None) -> None:
    repeated = sorted({name for name in columns if columns.count(name) > 1})
    if repeated:
        raise DataError(f"column {repeated[0]!r} appears more than once in the header", path, line)


def _nullable(arrow_type: pa.DataType) -> object | None:
    """Integers and booleans with nulls stay integers and booleans (pandas would make them floats)."""
    if pa.types.is_integer(arrow_type):
        return pd.Int64Dtype()
    if pa.types.is_boolean(arrow_type):
        return pd.BooleanDtype()
    return None


# ----------------------------------------------------------------------- stays


def _stays(table: _Table, ids: np.ndarray, task: str, folder_name: str) -> tuple[pd.DataFrame, np.ndarray]:
    """The stays frame `events.to_cohort` takes, and the ids of stays left out for an empty label."""
    repeated = np.flatnonzero(pd.Index(ids).duplicated())
    if len(repeated):
        i = int(repeated[0])
        first = int(np.flatnonzero(ids == ids[i])[0])
        raise table.error(i, f"stay_id {ids[i]} appears twice (first on {table.row_word} {table.rows[first]})")
    stays = pd.DataFrame(index=pd.Index(ids, name="stay_id"))
    for name, column in DESCRIPTOR_COLUMNS.items():
        if table.get(name) is not None:
            stays[column] = _numbers(table, name)
    stays["hospital"] = _hospitals(table, folder_name)
    stays["source"] = folder_name
    label = _label(table, task)
    empty = np.isnan(label)
    if empty.any():
        first = int(np.flatnonzero(empty)[0])
        logger.warning(
            "%s:%d: left out %d stays whose %s label is empty (the first on this row)",
            table.path, table.rows[first], int(empty.sum()), task,
        )  # fmt: skip
    stays["label"] = label
    stays = stays[~empty]
    stays["label"] = stays["label"].astype(np.int8)
    return stays, ids[empty]


def _hospitals(table: _Table, default: str) -> np.ndarray | str:
    series = table.get("hospital")
    if series is None:
        return default
    text = series.astype(object).where(series.notna(), "").astype(str).str.strip()
    empty = np.flatnonzero(text.to_numpy() == "")
    if len(empty):
        raise table.error(int(empty[0]), "hospital is empty; give every stay its hospital or drop the column")
    return text.to_numpy()


def _label(table: _Table, task: str) -> np.ndarray:
    """0.0 / 1.0 per stay, NaN where the label is empty."""
    if table.get(task) is not None:
        return _zero_or_one(table, task)
    if task in LENGTH_OF_STAY_DAYS and table.get("length_of_stay") is not None:
        days = _numbers(table, "length_of_stay")
        unknown = np.isnan(days) | (days < 0)  # -1: not recorded, as in PhysioNet 2012
        return np.where(unknown, np.nan, (days > LENGTH_OF_STAY_DAYS[task]).astype(np.float64))
    why = f" for the labels of task {task}"
    if task in LENGTH_OF_STAY_DAYS:
        why += f", nor {table.mapping.column('stays', 'length_of_stay')!r} in days to derive them from"
    raise table.missing(task, why)


def _zero_or_one(table: _Table, name: str) -> np.ndarray:
    series = table.require(name)
    if _is_text(series):
        text = _text(series).str.strip().str.lower()
        label = text.map(_LABELS).to_numpy(dtype=np.float64, na_value=np.nan)
        bad = np.flatnonzero(np.isnan(label) & (text.to_numpy() != ""))
    elif pd.api.types.is_bool_dtype(series) or pd.api.types.is_numeric_dtype(series):
        label = series.astype("Float64").to_numpy(dtype=np.float64, na_value=np.nan)
        bad = np.flatnonzero(~np.isnan(label) & ~np.isin(label, (0.0, 1.0)))
    else:
        raise _wrong_type(table, name, series, "0/1 or true/false labels")
    if len(bad):
        i = int(bad[0])
        raise table.error(
            i, f"{name} label {_shown(series.iloc[i])} must be 0 or 1 (or true/false), or empty if unknown"
        )
    return label


# ---------------------------------------------------------------------- events


def _events(table: _Table, stays_table: _Table, stay_ids: np.ndarray, left_out: np.ndarray) -> Events:
    ids = _whole_numbers(table, "stay_id")
    minute = _minutes(table, stays_table, stay_ids, ids)
    codes = table.require("variable")
    codes = codes.astype(object).where(codes.notna(), None).to_numpy()
    values, text = _values(table)
    names, converted = table.mapping.translate(codes, values)
    keep = ~np.isin(ids, left_out) if len(left_out) else np.ones(len(ids), dtype=bool)
    return Events(
        stay_id=ids[keep],
        minute=minute[keep],
        code=codes[keep],
        name=names[keep],
        value=converted[keep],
        file=np.zeros(int(keep.sum()), dtype=np.intp),
        row=table.rows[keep],
        paths=(str(table.path),),
        text=None if text is None else text[keep],
    )


def _minutes(table: _Table, stays_table: _Table, stay_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Minutes since admission of each event (NaN = no time), from a minute or a time column."""
    events = table.mapping.events
    use_time = "time" in events or ("minute" not in events and table.get("minute") is None)
    if not use_time:
        return _numbers(table, "minute")
    if table.get("time") is None:
        raise table.missing("minute", " (or time, with admission_time in the stays table)")
    times = _timestamps(table, "time")
    admission = _timestamps(stays_table, "admission_time", why=" (the events carry timestamps)")
    position = pd.Index(stay_ids).get_indexer(ids)
    known = position >= 0
    admitted = np.full(len(ids), np.datetime64("NaT"), dtype=admission.dtype)
    admitted[known] = admission[position[known]]
    unknown_admission = np.flatnonzero(known & ~np.isnat(times) & np.isnat(admitted))
    if len(unknown_admission):
        i = int(unknown_admission[0])
        message = f"stay {ids[i]} has no admission_time, yet its events carry timestamps (first: {table.path}:{table.rows[i]})"
        raise stays_table.error(int(position[i]), message)
    return (times - admitted) / np.timedelta64(1, "m")


def _values(table: _Table) -> tuple[np.ndarray, np.ndarray | None]:
    """Event values as numbers (NaN where empty or not a number; the event rules judge them) and
    the text as written, for messages."""
    series = table.require("value")
    if _is_text(series):
        text = _text(series)
        return _floats(text.str.strip()), text.to_numpy()
    if not pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
        raise _wrong_type(table, "value", series, "numbers")
    return series.astype("Float64").to_numpy(dtype=np.float64, na_value=np.nan), None


# -------------------------------------------------------------------- parsing


def _is_text(series: pd.Series) -> bool:
    return pd.api.types.is_string_dtype(series) or series.dtype == object


def _text(series: pd.Series) -> pd.Series:
    """A text column with "" where it is empty."""
    return series.astype("str").fillna("")


def _floats(text: pd.Series) -> np.ndarray:
    """The numbers `text` holds, NaN where it is empty or not a number (the callers judge those)."""
    present = text.where(text != "")
    try:
        numbers = present.astype(np.float64)
    except ValueError:  # some text is no number: the slower parser makes it NaN
        numbers = pd.to_numeric(present, errors="coerce")
    return numbers.to_numpy(np.float64, na_value=np.nan)


def _shown(value: object) -> str:
    """A cell as a message shows it: text quoted, numbers plain."""
    return repr(value) if isinstance(value, str) else str(value)


def _wrong_type(table: _Table, name: str, series: pd.Series, want: str) -> DataError:
    column = table.mapping.column(table.role, name)
    return DataError(f"column {column!r} must hold {want}, not {series.dtype}", table.path)


def _numbers(table: _Table, name: str) -> np.ndarray:
    """A numeric column as float64, NaN where empty; `DataError` at the first value that is not a finite number."""
    series = table.require(name)
    if _is_text(series):
        text = _text(series).str.strip()
        numbers = _floats(text)
        bad = np.flatnonzero(~np.isfinite(numbers) & (text.to_numpy() != ""))
    elif pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        numbers = series.astype("Float64").to_numpy(dtype=np.float64, na_value=np.nan)
        bad = np.flatnonzero(np.isinf(numbers))
    else:
        raise _wrong_type(table, name, series, "numbers")
    if len(bad):
        i = int(bad[0])
        raise table.error(i, f"{name} {_shown(series.iloc[i])} is not a finite number")
    return numbers


def _whole_numbers(table: _Table, name: str) -> np.ndarray:
    """A column of ids as int64; `DataError` at the first one that is empty or not a whole number."""
    series = table.require(name)
    if _is_text(series):
        text = _text(series).str.strip()
        bad = np.flatnonzero(~text.str.fullmatch(_WHOLE_NUMBER).to_numpy(dtype=bool))
        if not len(bad):
            try:
                return text.astype(np.int64).to_numpy()
            except (OverflowError, ValueError):
                bad = np.flatnonzero(text.map(lambda t: not -(2**63) <= int(t) < 2**63).to_numpy(dtype=bool))
    elif pd.api.types.is_integer_dtype(series) or pd.api.types.is_float_dtype(series):
        numbers = series.astype("Float64").to_numpy(dtype=np.float64, na_value=np.nan)
        bad = np.flatnonzero(np.isnan(numbers) | (numbers != np.round(numbers)))
        if not len(bad):
            return series.astype(np.int64).to_numpy()
    else:
        raise _wrong_type(table, name, series, "whole numbers")
    i = int(bad[0])
    value = series.iloc[i]
    problem = (
        "is empty" if pd.isna(value) or str(value).strip() == "" else f"{_shown(value)} is not a whole number (int64)"
    )
    raise table.error(i, f"{name} {problem}")


def _timestamps(table: _Table, name: str, why: str = "") -> np.ndarray:
    """A column of timestamps as datetime64[us] in UTC (NaT where empty)."""
    series = table.require(name, why)
    if _is_text(series):
        text = _text(series).str.strip()
        times = pd.to_datetime(text.where(text != "", None), format="ISO8601", utc=True, errors="coerce")
        bad = np.flatnonzero(times.isna().to_numpy() & (text.to_numpy() != ""))
        if len(bad):
            i = int(bad[0])
            raise table.error(i, f"{name} {text.iloc[i]!r} is not a timestamp such as 2024-01-31 13:45:00")
    elif pd.api.types.is_datetime64_any_dtype(series):
        times = series if series.dt.tz is None else series.dt.tz_convert("UTC")
    else:
        raise _wrong_type(table, name, series, "timestamps")
    if times.dt.tz is not None:
        times = times.dt.tz_convert(None)
    return times.to_numpy(dtype="datetime64[us]")
