"""PhysioNet/CinC Challenge 2012 ICU stays: read them into a `Cohort`, write one back.

Data directory layout, per set X in a, b, c:

    set-X/<RecordID>.txt      one record per ICU stay, or instead
    set-X.tar.gz              the same files as members `set-X/<RecordID>.txt`
    Outcomes-X.txt            RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death

When both `set-X/` and `set-X.tar.gz` exist the directory is read: it is what a
user extracted and may have edited. Entries of `set-X/` and members of the
tarball that are not `<digits>.txt` records (macOS `._` files, READMEs, ...) are
skipped; how many and which are logged on the `fedicu` logger at INFO level.

A record is a CSV `Time,Parameter,Value` with `Time` as `HH:MM` since ICU
admission (00:00..48:00). The rows at 00:00 for RecordID, Age, Gender, Height
and ICUType, and the first `Weight` row at 00:00, are the stay's descriptors
(`-1` = not recorded, read as NaN; a stay without some of Age, Gender, Height,
ICUType or Weight gets NaN there, but RecordID is required and must match the
file name). Every other row is a measurement of one of the 37 time series,
kept raw: physiologically out-of-range values are the cleaning step's business
(only values that do not fit a float32 at all are refused here). Measurements
keep their order within a file. Stays with descriptors only are kept, with no
measurements. Stays are ordered by set, then by RecordID.

Real exports hold rows whose parameter is empty (`10:45,,1.9`) or not one of
the Challenge's: such a row is skipped, whatever its value, and counted per
parameter name with the first file and line (`Cohort.skipped`); the stay keeps
all its other rows. `--strict` turns them back into errors.

The label is the task's (`shared.tasks`): In-hospital_death, or Length_of_stay
(days) over 3 or 7 days; a stay whose Length_of_stay is unknown (-1) has no
label for those tasks and is left out, with a warning that counts them.

Anything else unusable raises `DataError` naming the file (`set-a.tar.gz:set-a/1.txt`
for a tarball member) and the line. Parsing concatenates all record bodies of a
set into one buffer, validates its structure with numpy and parses it with one
call of pandas' C reader, so sets A and B (8,000 files, 3.3M lines) take a few
seconds. The parsed arrays of each set are cached as an `.npz` under
`shared.cache.cache_dir()`, keyed by a format version and every source file's
path, size and mtime (see `shared.cache`); `load(..., cache=False)` bypasses it.
"""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pandas as pd

from fedicu.shared import cache as _cache
from fedicu.shared.cohort import MAX_MINUTE, VARIABLE_DTYPE, Cohort, SkippedRows, measurement_arrays
from fedicu.shared.errors import DataError
from fedicu.shared.tasks import DEFAULT_TASK, LENGTH_OF_STAY_DAYS
from fedicu.shared.variables import TIME_SERIES

if TYPE_CHECKING:
    from fedicu.shared.datasets import DataSource

logger = logging.getLogger("fedicu")

VALID_SETS: tuple[str, ...] = ("a", "b", "c")


def sets_in(folder: Path) -> list[str]:
    """The sets a folder holds, as `set-X/` or `set-X.tar.gz` (a site reads all of them)."""
    return [s for s in VALID_SETS if (folder / f"set-{s}").is_dir() or (folder / f"set-{s}.tar.gz").is_file()]


# Bump whenever parsing or the cached arrays change: old cache entries are then ignored.
FORMAT_VERSION = "fedicu-physionet2012-v3"
RECORD_HEADER = "Time,Parameter,Value"
OUTCOMES_HEADER = "RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death"


# Parameters that are only ever descriptors. Weight is both: its first 00:00 row is
# the descriptor, any other row a measurement.
_STATIC: tuple[str, ...] = ("RecordID", "Age", "Gender", "Height", "ICUType")
_STATIC_BASE = len(TIME_SERIES)  # parameter code of RecordID; Age is +1, ...
_PARAM_CODES: dict[str, int] = {name: code for code, name in enumerate(TIME_SERIES)}
_PARAM_CODES.update({name: _STATIC_BASE + i for i, name in enumerate(_STATIC)})
_WEIGHT = TIME_SERIES.index("Weight")
# Columns of the per-stay descriptor matrix: the _STATIC order, then Weight.
_DESCRIPTOR_COLUMN = {"age": 1, "gender": 2, "height": 3, "icu_type": 4, "weight": 5}

_BOM = b"\xef\xbb\xbf"
_KEEP_ONLY_COMMAS_AND_NEWLINES = bytes(b for b in range(256) if b not in (10, 44))
_RECORD_NAME = re.compile(r"[0-9]+\.txt")
# The rows skipped, as JSON text [[name, count, path, line], ...]: numpy's fixed-width strings
# would drop a name's trailing NUL characters, and names are whatever bytes a file holds.
SKIPPED_ROWS = "skipped_rows"
_CACHE_KEYS = frozenset(
    {"version", "set", "stay_id", "death", "length_of_stay", "counts", "minute", "variable", "value", "skipped"}
    | set(_DESCRIPTOR_COLUMN) | {SKIPPED_ROWS}
)  # fmt: skip
TASKS = ("in_hospital_death", *LENGTH_OF_STAY_DAYS)


@dataclass(frozen=True)
class _Source:
    """Where one set's records and outcomes are."""

    name: str  # "a"
    records: Path  # the set-X/ directory or the set-X.tar.gz archive
    outcomes: Path | None  # None: stays to score, without outcomes

    @property
    def is_archive(self) -> bool:
        return self.records.name.endswith(".tar.gz")

    @property
    def label(self) -> str:
        return f"set-{self.name}"


class Outcome(NamedTuple):
    death: int  # In-hospital_death, 0 or 1
    length_of_stay: float  # days; NaN when the file says -1 (unknown)
    line: int  # in the Outcomes file


@dataclass(frozen=True)
class _Record:
    record_id: int
    where: str  # how error messages name the file
    data: bytes


# --------------------------------------------------------------------------- load


def from_source(source: DataSource) -> Cohort:
    """The dataset interface: the source's sets, labelled for its task."""
    return load(source.data_dir, sets=source.sets.split(","), task=source.task, to_score=source.to_score)


def load(
    data_dir: str | Path,
    sets: Iterable[str] | str = ("a", "b"),
    cache: bool = True,
    task: str = DEFAULT_TASK,
    to_score: bool = False,
) -> Cohort:
    """The stays of PhysioNet 2012 `sets` (any of a, b, c) found in `data_dir`.

    `sets` is a set name or several ("a", "A" and "set-a" all mean set A); the
    stays come ordered by set as given, then by RecordID. `hospital` and
    `source` of every stay are `set-<X>`. `task` is one of `TASKS`. Raises
    `DataError` for anything unusable in the input. Files skipped as non-records
    are logged (INFO, logger "fedicu"); rows skipped for an empty or unknown
    parameter are in `Cohort.skipped`. With `cache=True` each set's parsed
    arrays are reused until one of its source files changes. With `to_score` (stays a site
    scores, as new stays come without outcomes) a set may lack its Outcomes file: its labels
    are then unknown (-1), for every task.
    """
    if task not in TASKS:
        raise DataError(f"PhysioNet 2012 has no task {task!r}; its tasks are {', '.join(TASKS)}")
    names = _check_sets(sets)
    data_dir = Path(data_dir)
    if not data_dir.exists():
        raise DataError("data directory does not exist", data_dir)
    if not data_dir.is_dir():
        raise DataError("not a directory; expected the folder holding set-X/ and Outcomes-X.txt", data_dir)
    sources = [_locate(data_dir, name, to_score) for name in names]
    cohorts = [_to_cohort(_set_arrays(source, cache), source.label, task) for source in sources]
    for i, first in enumerate(cohorts):
        for j in range(i + 1, len(cohorts)):
            common = first.stays.index.intersection(cohorts[j].stays.index)
            if len(common):
                raise DataError(
                    f"RecordID {common[0]} is in both {sources[i].label} and {sources[j].label}",
                    data_dir,
                )
    return cohorts[0] if len(cohorts) == 1 else Cohort.concat(cohorts)


def _check_sets(sets: Iterable[str] | str) -> list[str]:
    valid = ", ".join(VALID_SETS)
    names: list[str] = []
    for raw in [sets] if isinstance(sets, str) else list(sets):
        name = str(raw).strip().lower()
        if name.startswith("set-"):
            name = name[4:]
        if name not in VALID_SETS:
            raise DataError(f"unknown PhysioNet 2012 set {raw!r}; valid sets are {valid}")
        if name in names:
            raise DataError(f"set {name!r} is given twice")
        names.append(name)
    if not names:
        raise DataError(f"no set given; choose from {valid}")
    return names


def _locate(data_dir: Path, name: str, outcomes_optional: bool = False) -> _Source:
    directory = data_dir / f"set-{name}"
    archive = data_dir / f"set-{name}.tar.gz"
    if directory.is_dir():
        records = directory
    elif archive.is_file():
        records = archive
    else:
        raise DataError(f"neither set-{name}/ nor set-{name}.tar.gz is here", data_dir)
    outcomes = data_dir / f"Outcomes-{name}.txt"
    if outcomes.is_file():
        return _Source(name=name, records=records, outcomes=outcomes)
    if not outcomes_optional:
        raise DataError(f"outcomes file of set {name} is missing", outcomes)
    logger.info("%s: no %s: its stays are scored without outcomes", records, outcomes.name)
    return _Source(name=name, records=records, outcomes=None)


def _set_arrays(source: _Source, use_cache: bool) -> dict[str, np.ndarray]:
    """The parsed arrays of one set, from the cache when it is current."""
    path = None
    arrays = None
    if use_cache:
        path = _cache.cache_dir() / f"physionet2012-{source.label}-{_cache_key(source)}.npz"
        arrays = _cache.load_arrays(path)
        if arrays is not None and not _valid_cached(arrays, source):
            arrays = None
        logger.debug("%s: cache %s (%s)", source.label, "hit" if arrays else "miss", path)
    if arrays is None:
        arrays = _parse_set(source)
        if path is not None:
            try:
                _cache.save_arrays(path, arrays)
            except OSError as error:
                logger.warning("could not write cache file %s: %s", path, error)
    skipped = arrays["skipped"]
    if len(skipped):
        shown = ", ".join(skipped[:5].tolist()) + (", ..." if len(skipped) > 5 else "")
        logger.info(
            "%s: skipped %d file(s) that are not <RecordID>.txt records: %s",
            source.records, len(skipped), shown,
        )  # fmt: skip
    return arrays


def _cache_key(source: _Source) -> str:
    if source.is_archive:
        files = [source.records]
    else:
        with os.scandir(source.records) as entries:
            files = sorted(Path(e.path) for e in entries if e.is_file())
    salt = f"{FORMAT_VERSION}\0{source.label}\0{'archive' if source.is_archive else 'directory'}"
    salt += "" if source.outcomes else "\0without outcomes"
    return _cache.fingerprint([*([source.outcomes] if source.outcomes else []), *files], salt=salt)


def _valid_cached(arrays: dict[str, np.ndarray], source: _Source) -> bool:
    """Whether cached arrays are complete and consistent (else they are rebuilt)."""
    try:
        if set(arrays) != _CACHE_KEYS or str(arrays["version"]) != FORMAT_VERSION:
            return False
        if str(arrays["set"]) != source.name:
            return False
        n = len(arrays["stay_id"])
        per_stay = ["stay_id", "death", "length_of_stay", "counts", *_DESCRIPTOR_COLUMN]
        if any(arrays[k].ndim != 1 or len(arrays[k]) != n for k in per_stay):
            return False
        skipped_rows(arrays)  # raises ValueError or TypeError if damaged
        m = len(arrays["minute"])
        if len(arrays["variable"]) != m or len(arrays["value"]) != m or arrays["counts"].sum() != m:
            return False
        expected = {"stay_id": np.int64, "death": np.int8, "counts": np.int64,
                    "minute": np.int32, "variable": np.int8, "value": np.float32}  # fmt: skip
        if any(arrays[k].dtype != t for k, t in expected.items()):
            return False
        variable = arrays["variable"]
        return not m or (variable.min() >= 0 and variable.max() < len(TIME_SERIES))
    except (KeyError, TypeError, ValueError, AttributeError):
        return False


def _to_cohort(arrays: dict[str, np.ndarray], label: str, task: str) -> Cohort:
    stay_id = arrays["stay_id"]
    stays = pd.DataFrame(
        {column: arrays[column] for column in ("age", "gender", "height", "weight", "icu_type")},
        index=pd.Index(stay_id, name="stay_id"),
    )
    stays["label"] = arrays["death"]
    stays["hospital"] = label
    stays["source"] = label
    measurements = pd.DataFrame(
        {
            "stay_id": np.repeat(stay_id, arrays["counts"]),
            "minute": arrays["minute"],
            "variable": pd.Categorical.from_codes(arrays["variable"], dtype=VARIABLE_DTYPE),
            "value": arrays["value"],
        }
    )
    cohort = Cohort(stays=stays, measurements=measurements, task=task, skipped=skipped_rows(arrays))
    if task in LENGTH_OF_STAY_DAYS and (arrays["death"] >= 0).any():  # outcomes known
        cohort = _length_of_stay_task(cohort, arrays["length_of_stay"], task, label)
    return cohort


def skipped_rows(arrays: dict[str, np.ndarray]) -> tuple[SkippedRows, ...]:
    """The skipped rows recorded in parsed arrays (see `skip_arrays`)."""
    return tuple(
        SkippedRows(str(name), int(count), str(path), int(line))
        for name, count, path, line in json.loads(str(arrays[SKIPPED_ROWS]))
    )


def _length_of_stay_task(cohort: Cohort, days: np.ndarray, task: str, label: str) -> Cohort:
    """Label stays by Length_of_stay over the task's threshold; leave out those without one."""
    known = np.isfinite(days)
    if not known.all():
        logger.warning(
            "%s: %d of %d stays have no Length_of_stay (-1) and are left out of task %s",
            label, int((~known).sum()), len(days), task,
        )  # fmt: skip
    stays = cohort.stays.copy()
    stays["label"] = (days > LENGTH_OF_STAY_DAYS[task]).astype(np.int8)
    relabelled = replace(cohort, stays=stays)
    return relabelled if known.all() else relabelled.subset(stays.index[known])


# ------------------------------------------------------------------ reading files


def _read_records(source: _Source) -> tuple[list[_Record], list[str]]:
    """Every record file of a set (sorted by RecordID) and the names skipped."""
    records: list[_Record] = []
    skipped: list[str] = []
    if source.is_archive:
        pattern = re.compile(rf"(?:\./)?set-{re.escape(source.name)}/([0-9]+)\.txt")
        try:
            raw = source.records.read_bytes()
            if raw[:2] == b"\x1f\x8b":
                raw = gzip.decompress(raw)
            with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as archive:
                for member in archive:
                    if member.isdir():
                        continue
                    match = pattern.fullmatch(member.name)
                    if not member.isfile() or match is None:
                        skipped.append(member.name)
                        continue
                    extracted = archive.extractfile(member)
                    data = extracted.read() if extracted is not None else b""
                    where = f"{source.records}:{member.name}"
                    records.append(_Record(int(match[1]), where, data))
                # Iteration ends quietly at a damaged or missing header after the first
                # member; past the last member there must be only tar's zero blocks.
                tail = raw[archive.offset :]
                if not tail or tail.strip(b"\0"):
                    offset = archive.offset
                    raise tarfile.ReadError(f"damaged or missing member header at byte {offset}")
        except (OSError, EOFError, tarfile.TarError, zlib.error) as error:
            message = f"cannot read this archive; is it truncated? ({error})"
            raise DataError(message, source.records) from None
    else:
        try:
            entries = list(os.scandir(source.records))
        except OSError as error:
            raise DataError(f"cannot list the folder: {error.strerror}", source.records) from None
        for entry in entries:
            if not (entry.is_file() and _RECORD_NAME.fullmatch(entry.name)):
                skipped.append(entry.name)
                continue
            try:
                data = Path(entry.path).read_bytes()
            except OSError as error:
                raise DataError(f"cannot read file: {error.strerror}", entry.path) from None
            records.append(_Record(int(entry.name[:-4]), entry.path, data))
    records.sort(key=lambda r: r.record_id)
    for before, after in itertools.pairwise(records):
        if before.record_id == after.record_id:
            raise DataError(
                f"a second file for RecordID {after.record_id} (the first is {before.where})",
                after.where,
            )
    skipped.sort()
    return records, skipped


def _read_outcomes(path: Path, problems: list[DataError] | None = None) -> dict[int, Outcome]:
    """RecordID -> its `Outcome` from an Outcomes file.

    A bad data line raises `DataError`; with a `problems` list it is appended
    there and left out instead (a missing, empty or mis-headed file still raises).
    """
    try:
        text = path.read_bytes().decode("utf-8-sig", errors="replace")
    except OSError as error:
        raise DataError(f"cannot read file: {error.strerror}", path) from None
    # Only \n, \r\n and \r end a line (str.splitlines also splits at \f, \x1c, U+2028, ...).
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if not text.strip():
        raise DataError(f"empty file; expected the header {OUTCOMES_HEADER}", path)
    if lines[0].strip() != OUTCOMES_HEADER:
        raise DataError(f"header must be {OUTCOMES_HEADER!r}, not {lines[0].strip()!r}", path, 1)
    columns = OUTCOMES_HEADER.split(",")
    outcomes: dict[int, Outcome] = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            fields = [field.strip() for field in line.split(",")]
            if len(fields) != len(columns):
                raise DataError(
                    f"expected {len(columns)} comma-separated fields ({OUTCOMES_HEADER}), "
                    f"found {len(fields)}: {line.strip()!r}",
                    path, number,
                )  # fmt: skip
            if not re.fullmatch(r"[0-9]+", fields[0]):
                raise DataError(f"RecordID {fields[0]!r} is not a whole number", path, number)
            for column, field in zip(columns[1:5], fields[1:5], strict=True):
                if not _is_number(field):
                    raise DataError(f"{column} {field!r} is not a number", path, number)
            if fields[5] not in ("0", "1"):
                raise DataError(f"In-hospital_death must be 0 or 1, not {fields[5]!r}", path, number)
            record_id = int(fields[0])
            if record_id in outcomes:
                first = outcomes[record_id].line
                message = f"RecordID {record_id} appears twice (first on line {first})"
                raise DataError(message, path, number)
        except DataError as error:
            if problems is None:
                raise
            problems.append(error)
            continue
        days = float(fields[3])
        outcomes[record_id] = Outcome(int(fields[5]), np.nan if days < 0 else days, number)
    return outcomes


def _is_number(text: str) -> bool:
    try:
        return bool(np.isfinite(float(text)))
    except ValueError:
        return False


def _record_body(record: _Record) -> bytes:
    """The data lines of a record (header checked and removed), each ending in a newline."""
    data = record.data[3:] if record.data.startswith(_BOM) else record.data
    if not data.strip():
        message = f"empty file; expected the header {RECORD_HEADER} and data rows"
        raise DataError(message, record.where)
    end = data.find(b"\n")
    header = data if end < 0 else data[:end]
    if header.strip() != RECORD_HEADER.encode():
        shown = header.strip().decode("utf-8", "replace")
        raise DataError(f"header must be {RECORD_HEADER!r}, not {shown!r}", record.where, 1)
    body = b"" if end < 0 else data[end + 1 :]
    if b"\r" in body:
        body = body.replace(b"\r\n", b"\n")
        stray = body.find(b"\r")
        if stray >= 0:
            line = body.count(b"\n", 0, stray) + 2
            raise DataError("carriage return (\\r) inside a line", record.where, line)
    body = body.rstrip(b"\n")
    return body + b"\n" if body else b""


# ------------------------------------------------------------------------ parsing


class _Rows:
    """The data lines of all records of a set, concatenated, and the way back from
    a row to its file and line."""

    def __init__(self, records: list[_Record]):
        bodies = [_record_body(record) for record in records]
        self.records = records
        self.counts = np.array([body.count(b"\n") for body in bodies], dtype=np.int64)
        self.first_row = np.concatenate([[0], np.cumsum(self.counts)])
        self.buffer = b"".join(bodies)
        self.n = int(self.first_row[-1])
        self.ends = np.flatnonzero(np.frombuffer(self.buffer, dtype=np.uint8) == 10)
        self.starts = np.concatenate([[0], self.ends[:-1] + 1]) if self.n else self.ends
        self.file = np.repeat(np.arange(len(records), dtype=np.int32), self.counts)

    def text(self, row: int) -> str:
        return self.buffer[self.starts[row] : self.ends[row]].decode("utf-8", "replace")

    def field(self, row: int, index: int) -> str:
        fields = self.text(row).split(",")
        return fields[index] if index < len(fields) else ""

    def line(self, row: int) -> int:
        return int(row - self.first_row[self.file[row]]) + 2  # line 1 is the header

    def error(self, row: int, message: str) -> DataError:
        return DataError(message, self.records[self.file[row]].where, self.line(row))

    def minutes(self) -> np.ndarray:
        """Minutes since admission of every row, after checking each line is
        `HH:MM,Parameter,Value` with a time in 00:00..48:00."""
        if self.n == 0:
            return np.zeros(0, dtype=np.int32)
        commas_and_newlines = self.buffer.translate(None, _KEEP_ONLY_COMMAS_AND_NEWLINES)
        expected = b",,\n" * self.n
        if commas_and_newlines != expected:
            got = np.frombuffer(commas_and_newlines, dtype=np.uint8)
            want = np.frombuffer(expected, dtype=np.uint8)
            common = min(len(got), len(want))
            differ = np.flatnonzero(got[:common] != want[:common])
            row = min(int(differ[0] if len(differ) else common) // 3, self.n - 1)
            text = self.text(row)
            if not text.strip():
                raise self.error(row, "empty line; expected Time,Parameter,Value")
            found = len(text.split(","))
            message = f"expected 3 fields (Time,Parameter,Value), found {found}: {text!r}"
            raise self.error(row, message)
        data = np.frombuffer(self.buffer, dtype=np.uint8)
        last = len(data) - 1  # a line too short for HH:MM, reads a newline there and fails

        def byte(offset: int) -> np.ndarray:
            return data[np.minimum(self.starts + offset, last)]

        digits = [byte(k) - np.uint8(48) for k in (0, 1, 3, 4)]  # wraps around below '0'
        ok = (byte(2) == ord(":")) & (byte(5) == ord(","))
        for digit in digits:
            ok &= digit < 10
        minute = (digits[0].astype(np.int32) * 10 + digits[1]) * 60
        minute += digits[2].astype(np.int32) * 10 + digits[3]
        ok &= (digits[2] < 6) & (minute <= MAX_MINUTE)
        if not ok.all():
            row = int(np.flatnonzero(~ok)[0])
            raise self.error(row, _time_problem(self.field(row, 0)))
        return minute

    def parameters_and_values(self) -> tuple[np.ndarray, np.ndarray, list[SkippedRows]]:
        """Parameter codes (`_PARAM_CODES`, -1 for an empty or unknown parameter) and
        values of every row, and the skipped rows per parameter name in reading order.
        A skipped row's value is not checked."""
        if self.n == 0:
            return np.zeros(0, dtype=np.int8), np.zeros(0, dtype=np.float64), []
        try:
            frame = self._read(self.buffer, np.float64)
        except (ValueError, TypeError):  # some value is not a number: a skipped row's, or an error
            buffer = self._without_unreadable_values()
            try:
                frame = self._read(buffer, np.float64)
            except (ValueError, TypeError) as error:
                raise DataError(f"cannot read values: {error}", self.records[0].where) from None
        if len(frame) != self.n:  # cannot happen after minutes(); a guard against silent shifts
            message = f"could not be read as CSV ({len(frame)} rows, {self.n} lines)"
            raise DataError(message, self.records[0].where)
        values = frame["Value"].to_numpy(dtype=np.float64)
        parameter = frame["Parameter"].array
        codes = self._codes(parameter)
        not_finite = np.flatnonzero((codes >= 0) & ~np.isfinite(values))
        if len(not_finite):
            row = int(not_finite[0])
            raise self.error(row, _value_problem(self.field(row, 2)))
        return codes, values, self._skipped(parameter, codes < 0)

    def _skipped(self, parameter: pd.Categorical, unknown: np.ndarray) -> list[SkippedRows]:
        rows = np.flatnonzero(unknown)
        names, first, counts = np.unique(np.asarray(parameter.codes)[rows], return_index=True, return_counts=True)
        entries = []
        for name, row, count in sorted(zip(names.tolist(), rows[first].tolist(), counts.tolist(), strict=True),
                                       key=lambda entry: entry[1]):  # fmt: skip
            where = self.records[self.file[row]].where
            entries.append(SkippedRows(str(parameter.categories[name]), count, where, self.line(row)))
        return entries

    @staticmethod
    def _codes(parameter: pd.Categorical) -> np.ndarray:
        lookup = np.array([_PARAM_CODES.get(name, -1) for name in parameter.categories], dtype=np.int8)
        return lookup[np.asarray(parameter.codes)]

    def _without_unreadable_values(self) -> bytes:
        """The buffer with the values that are not numbers replaced by 0, if only skipped rows
        hold them; else the `DataError` of the first. The numbers are then parsed by the same
        reader as always, so a value reads alike whatever its neighbours hold."""
        text = self._read(self.buffer, str)
        unreadable = np.isnan(pd.to_numeric(text["Value"], errors="coerce").to_numpy(dtype=np.float64))
        known = np.flatnonzero(unreadable & (self._codes(text["Parameter"].array) >= 0))
        if len(known):
            raise self.error(int(known[0]), _value_problem(self.field(int(known[0]), 2)))
        pieces, position = [], 0
        for row in np.flatnonzero(unreadable).tolist():
            value_starts = self.buffer.rfind(b",", self.starts[row], self.ends[row]) + 1
            pieces += [self.buffer[position:value_starts], b"0"]
            position = int(self.ends[row])
        return b"".join([*pieces, self.buffer[position:]])

    @staticmethod
    def _read(buffer: bytes, value_dtype: type) -> pd.DataFrame:
        return pd.read_csv(
            io.BytesIO(buffer),
            header=None,
            names=["Time", "Parameter", "Value"],
            usecols=["Parameter", "Value"],
            dtype={"Parameter": "category", "Value": value_dtype},
            quoting=csv.QUOTE_NONE,
            na_filter=False,
            skip_blank_lines=False,
            encoding_errors="replace",
            engine="c",
        )


def _time_problem(time: str) -> str:
    if time.strip().startswith("-"):
        return f"Time {time!r} is negative"
    match = re.fullmatch(r"([0-9]{2}):([0-9]{2})", time)
    if match is None:
        return f"Time {time!r} is not HH:MM"
    if int(match[2]) > 59:
        return f"Time {time!r} has more than 59 minutes"
    return f"Time {time!r} is beyond 48:00 (records cover the first 48 hours)"


def _value_problem(value: str) -> str:
    if not value.strip():
        return "Value is missing"
    try:
        number = float(value)
    except ValueError:
        return f"Value {value!r} is not a number"
    if not np.isfinite(number):
        return f"Value {value!r} is not a finite number"
    return f"Value {value!r} is not a plain decimal number"


def _parse_set(source: _Source) -> dict[str, np.ndarray]:
    """Read and validate one set; the result is what the cache stores. Without an outcomes
    file (stays to score) every outcome is unknown."""
    outcomes = _read_outcomes(source.outcomes) if source.outcomes else None
    records, skipped = _read_records(source)
    if not records:
        raise DataError(f"no <RecordID>.txt record files in {source.label}", source.records)
    if outcomes is not None:
        _check_every_record_has_its_outcome(source, records, outcomes)
    arrays = _parse_records(records)
    n = len(arrays["stay_id"])
    arrays.update(
        outcome_arrays(outcomes, arrays["stay_id"]) if outcomes is not None
        else {"death": np.full(n, -1, np.int8), "length_of_stay": np.full(n, np.nan)}
    )  # fmt: skip
    arrays["version"] = np.array(FORMAT_VERSION)
    arrays["set"] = np.array(source.name)
    arrays["skipped"] = np.array(skipped, dtype=str) if skipped else np.zeros(0, dtype="<U1")
    return arrays


def _check_every_record_has_its_outcome(source: _Source, records: list[_Record], outcomes: dict[int, Outcome]) -> None:
    """Every record needs its line in the outcomes file, and every line its record."""
    for record in records:
        if record.record_id not in outcomes:
            message = f"record {record.record_id} has no line in {source.outcomes}"
            raise DataError(message, record.where)
    if len(outcomes) != len(records):
        present = {record.record_id for record in records}
        record_id, outcome = min(
            ((rid, o) for rid, o in outcomes.items() if rid not in present), key=lambda x: x[1].line
        )
        message = f"RecordID {record_id} has no record file in {source.records}"
        raise DataError(message, source.outcomes, outcome.line)


def outcome_arrays(outcomes: dict[int, Outcome], stay_ids: np.ndarray) -> dict[str, np.ndarray]:
    """The per-stay outcome arrays the cache keeps, for `stay_ids` in order."""
    rows = [outcomes[rid] for rid in stay_ids.tolist()]
    return {
        "death": np.array([o.death for o in rows], dtype=np.int8),
        "length_of_stay": np.array([o.length_of_stay for o in rows], dtype=np.float64),
    }


def _parse_records(records: list[_Record]) -> dict[str, np.ndarray]:
    """The stays of `records` (sorted by RecordID) as the cache's per-stay and
    per-measurement arrays, without labels. Raises `DataError` at the first problem;
    each record is checked on its own, so a subset of the records parses alike."""
    too_large = [record for record in records if record.record_id > np.iinfo(np.int64).max]
    if too_large:
        raise DataError("RecordID in the file name is too large (above 2^63 - 1)", too_large[0].where)
    record_ids = np.array([record.record_id for record in records], dtype=np.int64)
    rows = _Rows(records)
    minute = rows.minutes()
    codes, values, skipped = rows.parameters_and_values()

    # Descriptors: the static parameters, once each, at 00:00, plus the first Weight at 00:00.
    static = np.flatnonzero(codes >= _STATIC_BASE)
    late = static[minute[static] != 0]
    if len(late):
        row = int(late[0])
        name, time = rows.field(row, 1), rows.field(row, 0)
        raise rows.error(row, f"descriptor {name} must be at 00:00, not {time}")
    key = rows.file[static].astype(np.int64) * 8 + (codes[static] - _STATIC_BASE)
    repeated = pd.Index(key).duplicated()
    if repeated.any():
        j = int(np.flatnonzero(repeated)[0])
        row, first = int(static[j]), int(static[np.flatnonzero(key == key[j])[0]])
        message = f"descriptor {rows.field(row, 1)} given twice (first on line {rows.line(first)})"
        raise rows.error(row, message)
    weight_at_0 = np.flatnonzero((codes == _WEIGHT) & (minute == 0))
    weight = weight_at_0[~pd.Index(rows.file[weight_at_0]).duplicated()]

    descriptors = np.full((len(records), len(_STATIC) + 1), np.nan)
    descriptors[rows.file[static], codes[static] - _STATIC_BASE] = values[static]
    descriptors[rows.file[weight], len(_STATIC)] = values[weight]
    missing = np.flatnonzero(np.isnan(descriptors[:, 0]))
    if len(missing):
        where = records[int(missing[0])].where
        raise DataError("no RecordID descriptor (a row 00:00,RecordID,<id>)", where)
    mismatch = np.flatnonzero(descriptors[:, 0] != record_ids)
    if len(mismatch):
        f = int(mismatch[0])
        row = int(static[(rows.file[static] == f) & (codes[static] == _STATIC_BASE)][0])
        message = f"RecordID {rows.field(row, 2)} differs from the file name ({record_ids[f]}.txt)"
        raise rows.error(row, message)
    values_part = descriptors[:, 1:]
    values_part[values_part == -1] = np.nan  # -1 = not recorded

    measured = (codes >= 0) & (codes < _STATIC_BASE)
    measured[weight] = False
    with np.errstate(over="ignore"):  # measurements are stored as float32: refuse what overflows it
        overflow = np.flatnonzero(measured & np.isinf(values.astype(np.float32)))
    if len(overflow):
        row = int(overflow[0])
        raise rows.error(row, f"Value {rows.field(row, 2)!r} is too large (above 3.4e38)")
    arrays: dict[str, np.ndarray] = {
        "stay_id": record_ids,
        "counts": np.bincount(rows.file[measured], minlength=len(records)).astype(np.int64),
        "minute": minute[measured].astype(np.int32),
        "variable": codes[measured].astype(np.int8),
        "value": values[measured].astype(np.float32),
    }
    for column, index in _DESCRIPTOR_COLUMN.items():
        arrays[column] = descriptors[:, index].copy()
    arrays.update(skip_arrays(skipped))
    return arrays


def skip_arrays(skipped: list[SkippedRows]) -> dict[str, np.ndarray]:
    """`SkippedRows` entries as the cache's arrays (read back by `skipped_rows`)."""
    return {SKIPPED_ROWS: np.array(json.dumps([[s.name, s.count, s.path, s.line] for s in skipped]))}


# -------------------------------------------------------------------------- write

_TIMES = np.array([f"{m // 60:02d}:{m % 60:02d}" for m in range(MAX_MINUTE + 1)], dtype=object)


def write(cohort: Cohort, out_dir: str | Path, set_name: str) -> Path:
    """Write `cohort` in the Challenge layout; return the `set-<set_name>` directory.

    Creates `out_dir/set-<set_name>/<stay_id>.txt` (descriptor rows at 00:00 with
    NaN written as -1, then the measurements sorted by time) and
    `out_dir/Outcomes-<set_name>.txt` (SAPS-I, SOFA, Length_of_stay and Survival
    unknown, -1; In-hospital_death = label). `load` reads set names a, b and c.
    Both are built in a temporary directory inside `out_dir` and renamed into
    place, the Outcomes file last, so an interrupted write never leaves a partial
    Outcomes file. Refuses to overwrite an existing set directory or Outcomes file.
    Values are written with up to 7 significant digits.
    """
    if not re.fullmatch(r"[A-Za-z0-9_]+", set_name):
        raise ValueError(f"set name {set_name!r} must be letters, digits or _")
    out_dir = Path(out_dir)
    set_dir = out_dir / f"set-{set_name}"
    outcomes_path = out_dir / f"Outcomes-{set_name}.txt"
    for path in (set_dir, outcomes_path):
        if path.exists():
            raise FileExistsError(f"{path} already exists; choose another folder or set name")

    stays = cohort.stays
    if not pd.api.types.is_integer_dtype(stays.index.dtype):
        raise ValueError("stay ids must be integers to become RecordIDs")
    stay_ids = stays.index.to_numpy(dtype=np.int64)
    if len(stay_ids) and stay_ids.min() < 0:
        raise ValueError("stay ids must be non-negative to become RecordIDs")
    labels = stays["label"].to_numpy()
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    lines, bounds = _measurement_lines(cohort, stay_ids)

    descriptor_columns = [
        stays[column].to_numpy(dtype=np.float64) for column in ("age", "gender", "height", "icu_type", "weight")
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".set-{set_name}.", suffix=".tmp", dir=out_dir))
    try:
        staging_set = staging / set_dir.name
        staging_set.mkdir()
        for i, stay_id in enumerate(stay_ids.tolist()):
            age, gender, height, icu_type, weight = (_descriptor_text(column[i]) for column in descriptor_columns)
            head = (
                f"{RECORD_HEADER}\n00:00,RecordID,{stay_id}\n00:00,Age,{age}\n"
                f"00:00,Gender,{gender}\n00:00,Height,{height}\n00:00,ICUType,{icu_type}\n"
                f"00:00,Weight,{weight}\n"
            )
            body = "".join(lines[bounds[i] : bounds[i + 1]].tolist())
            (staging_set / f"{stay_id}.txt").write_bytes((head + body).encode())
        outcome_lines = [f"{OUTCOMES_HEADER}\n"]
        outcome_lines += [
            f"{stay_id},-1,-1,-1,-1,{int(label)}\n" for stay_id, label in zip(stay_ids.tolist(), labels, strict=True)
        ]
        (staging / outcomes_path.name).write_bytes("".join(outcome_lines).encode())
        os.replace(staging_set, set_dir)
        os.replace(staging / outcomes_path.name, outcomes_path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return set_dir


def _measurement_lines(cohort: Cohort, stay_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`HH:MM,Variable,value\\n` lines grouped by stay (in `stay_ids` order) and
    sorted by time within a stay, and each stay's slice bounds."""
    position, minute, codes, values = measurement_arrays(cohort, stay_ids)
    order = np.lexsort((minute, position))
    names = np.array([f",{name}," for name in VARIABLE_DTYPE.categories], dtype=object)
    lines = _TIMES[minute[order]] + names[codes[order]] + _value_texts(values[order]) + "\n"
    bounds = np.concatenate([[0], np.cumsum(np.bincount(position, minlength=len(stay_ids)))])
    return lines, bounds


def _value_texts(values: np.ndarray) -> np.ndarray:
    """Compact decimal text of float32 values ("73", "92.33"), without exponents."""
    unique, inverse = np.unique(values, return_inverse=True)
    texts = []
    for value in unique.tolist():
        text = f"{value:.7g}"
        if "e" in text:
            text = np.format_float_positional(np.float32(value), trim="-")
        texts.append(text)
    return np.array(texts, dtype=object)[inverse.reshape(-1)]


def _descriptor_text(value: float) -> str:
    if not np.isfinite(value):
        return "-1"
    return np.format_float_positional(value, trim="-")
