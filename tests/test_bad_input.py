"""Bad PhysioNet 2012 input, generated: every corruption is one `DataError` naming
the file (and the line at fault), never another exception and never silently
wrong data; valid input loads with exactly the values written.

Hypothesis builds small valid sets (a few stays, in a `set-a/` folder or a
`set-a.tar.gz`, with their Outcomes file), checks that they load exactly, and
corrupts them one way at a time: record lines (fields, blank lines, bytes that
are not UTF-8, header, values, times, descriptors, parameters), whole record
files, the Outcomes file, and the tarball itself. The last tests drive the
`fedicu` CLI on a few corruptions. Examples are derandomized and bounded, so the
file is deterministic and quick.
"""

from __future__ import annotations

import gzip
import io
import logging
import math
import re
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fedicu.shared.cohort import SkippedRows
from fedicu.shared.datasets import physionet2012
from fedicu.shared.errors import DataError
from fedicu.shared.variables import TIME_SERIES

RECORD_HEADER = b"Time,Parameter,Value"
OUTCOMES_HEADER = b"RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death"
DESCRIPTORS = ("Age", "Gender", "Height", "ICUType", "Weight")  # besides RecordID
STATIC = ("RecordID", "Age", "Gender", "Height", "ICUType")  # never measurements
KNOWN_PARAMETERS = frozenset(TIME_SERIES) | frozenset(STATIC)
STAY_COLUMN = {"Age": "age", "Gender": "gender", "Height": "height", "ICUType": "icu_type", "Weight": "weight"}
FLOAT32_MAX = float(np.finfo(np.float32).max)


def checked(max_examples: int):
    """Deterministic, bounded hypothesis settings for one test."""
    return settings(
        max_examples=max_examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


# ------------------------------------------------------------------ the model


@dataclass(frozen=True)
class Row:
    """One data line of a record: `time,parameter,value` as bytes."""

    time: bytes
    parameter: bytes
    value: bytes

    @property
    def text(self) -> bytes:
        return b",".join((self.time, self.parameter, self.value))


@dataclass(frozen=True)
class Stay:
    record_id: int
    rows: tuple[Row, ...]  # the data lines, in file order
    label: int


@dataclass(frozen=True)
class Style:
    """How the files are written: all of these are valid."""

    crlf: bool = False
    bom: bool = False
    final_newline: bool = True
    trailing_blank_lines: int = 0


@dataclass
class DataSet:
    """A set as files: record lines and Outcomes lines, editable before writing.

    `records[id]` is the list of a record's lines (header included, no line
    ends); `outcomes` the Outcomes file's lines (header included).
    """

    stays: list[Stay]
    style: Style
    records: dict[int, list[bytes]] = field(default_factory=dict)
    outcomes: list[bytes] = field(default_factory=list)
    raw_records: dict[int, bytes] = field(default_factory=dict)  # whole-file overrides

    def __post_init__(self) -> None:
        if not self.records:
            self.records = {s.record_id: [RECORD_HEADER, *(r.text for r in s.rows)] for s in self.stays}
        if not self.outcomes:
            self.outcomes = [OUTCOMES_HEADER] + [
                b"%d,%d,%d,%d,-1,%d" % (s.record_id, 10 + i, i % 12, 3 + i, s.label) for i, s in enumerate(self.stays)
            ]

    def _join(self, lines: list[bytes]) -> bytes:
        end = b"\r\n" if self.style.crlf else b"\n"
        text = end.join(lines) + (end if self.style.final_newline else b"")
        text += end * self.style.trailing_blank_lines
        return (b"\xef\xbb\xbf" if self.style.bom else b"") + text

    def record_bytes(self, record_id: int) -> bytes:
        if record_id in self.raw_records:
            return self.raw_records[record_id]
        return self._join(self.records[record_id])

    def outcomes_bytes(self) -> bytes:
        return self._join(self.outcomes)


@dataclass
class Written:
    """Where a `DataSet` was written and how errors must name its files."""

    data_dir: Path
    layout: str  # "directory" or "tarball"

    @property
    def archive(self) -> Path:
        return self.data_dir / "set-a.tar.gz"

    @property
    def outcomes(self) -> str:
        return str(self.data_dir / "Outcomes-a.txt")

    def record(self, record_id: int) -> str:
        if self.layout == "tarball":
            return f"{self.archive}:set-a/{record_id}.txt"
        return str(self.data_dir / "set-a" / f"{record_id}.txt")

    def load(self):
        return physionet2012.load(self.data_dir, sets="a", cache=False)


def tar_gz(members: list[tuple[str, bytes]], directory_entry: bool = True) -> bytes:
    """A gzipped tar of regular-file `members`, with a `set-a/` entry first."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        if directory_entry:
            info = tarfile.TarInfo("set-a")
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(buffer.getvalue(), mtime=0)


def write(dataset: DataSet, data_dir: Path, layout: str) -> Written:
    data_dir.mkdir(parents=True, exist_ok=True)
    members = [(f"set-a/{rid}.txt", dataset.record_bytes(rid)) for rid in sorted(dataset.records)]
    if layout == "tarball":
        (data_dir / "set-a.tar.gz").write_bytes(tar_gz(members))
    else:
        (data_dir / "set-a").mkdir()
        for name, data in members:
            (data_dir / name).write_bytes(data)
    (data_dir / "Outcomes-a.txt").write_bytes(dataset.outcomes_bytes())
    return Written(data_dir, layout)


@contextmanager
def written(dataset: DataSet, layout: str) -> Iterator[Written]:
    """`dataset` written into a fresh temporary folder, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="fedicu-bad-input-") as folder:
        yield write(dataset, Path(folder) / "pn", layout)


# ------------------------------------------------------------------- the oracle


def minute_of(time: bytes) -> int:
    hours, minutes = time.split(b":")
    return int(hours) * 60 + int(minutes)


def expected_stay(stay: Stay) -> tuple[dict[str, float], list[tuple[int, str, float]]]:
    """What the loader must return for a valid stay, read off the module's documented
    rules: the 00:00 rows of RecordID, Age, Gender, Height and ICUType and the first
    Weight row at 00:00 are descriptors (-1 = NaN, absent = NaN); every other row is
    a measurement, in file order, stored as float32."""
    descriptors = {name: math.nan for name in DESCRIPTORS}
    measurements = []
    weight_seen = False
    for row in stay.rows:
        name = row.parameter.decode()
        value = float(row.value)
        if name == "RecordID":
            continue
        if name in STATIC or (name == "Weight" and row.time == b"00:00" and not weight_seen):
            weight_seen = weight_seen or name == "Weight"
            descriptors[name] = math.nan if value == -1 else value
        else:
            measurements.append((minute_of(row.time), name, float(np.float32(value))))
    return descriptors, measurements


def assert_loads_exactly(cohort, stays: list[Stay]) -> None:
    ordered = sorted(stays, key=lambda s: s.record_id)
    table = cohort.stays
    assert table.index.tolist() == [s.record_id for s in ordered]
    assert table.index.dtype == np.int64
    assert table["label"].tolist() == [s.label for s in ordered]
    assert (table["hospital"] == "set-a").all() and (table["source"] == "set-a").all()
    want_measurements = []
    for stay in ordered:
        descriptors, measurements = expected_stay(stay)
        for name, value in descriptors.items():
            got = float(table.loc[stay.record_id, STAY_COLUMN[name]])
            assert got == value or (math.isnan(got) and math.isnan(value)), (stay.record_id, name, got, value)
        want_measurements += [(stay.record_id, *m) for m in measurements]
    m = cohort.measurements
    got_measurements = list(
        zip(
            m["stay_id"].tolist(),
            m["minute"].tolist(),
            m["variable"].astype(str).tolist(),
            m["value"].astype(np.float64).tolist(),
            strict=True,
        )
    )
    assert got_measurements == want_measurements


def assert_data_error(load: Callable, path: str, line: int | None, words: str | None = None) -> DataError:
    """`load()` raises a DataError naming `path` and `line` (nothing else escapes)."""
    with pytest.raises(DataError) as caught:
        load()
    error = caught.value
    assert error.path == path, str(error)
    assert error.line == line, str(error)
    assert str(error).startswith(f"{path}:{line}: " if line is not None else f"{path}: "), str(error)
    if words is not None:
        assert words in error.message, str(error)
    return error


# ------------------------------------------------------------------- strategies

times = st.integers(0, physionet2012.MAX_MINUTE).map(lambda m: b"%02d:%02d" % divmod(m, 60))


@st.composite
def number_texts(draw, width: Literal[16, 32, 64] = 64) -> bytes:
    """Decimal text of a finite number, the ways such files write them."""
    value = draw(st.floats(allow_nan=False, allow_infinity=False, width=width))
    form = draw(st.sampled_from(["repr", "7g", "integer", "E", "fixed"]))
    if abs(value) < 1e15 and (form == "integer" or value.is_integer()):
        text = str(int(value))  # "73"; the "integer" form also cuts off any fraction
    elif form == "7g":
        text = f"{value:.7g}"
    elif form == "E":
        text = f"{value:.4E}"
    elif form == "fixed" and 1e-4 < abs(value) < 1e6:
        text = f"{value:.2f}"
    else:
        text = repr(value)
    if abs(float(text)) > (FLOAT32_MAX if width == 32 else sys.float_info.max):  # rounded up too far
        text = repr(value)
    return text.encode()


small_numbers = st.one_of(
    st.integers(0, 400).map(lambda v: str(v).encode()),
    st.integers(0, 50_000).map(lambda v: b"%d.%02d" % divmod(v, 100)),
)
measurement_values = st.one_of(small_numbers, number_texts(width=32))
descriptor_values = st.one_of(st.just(b"-1"), small_numbers, number_texts(width=64))


measurement_rows = st.builds(
    Row,
    st.one_of(times, st.just(b"00:00")),
    st.sampled_from([name.encode() for name in TIME_SERIES]),
    measurement_values,
)


@st.composite
def stays(draw, record_id: int, at_least_one_measurement: bool = False) -> Stay:
    rows = [Row(b"00:00", b"RecordID", str(record_id).encode())]
    for name in DESCRIPTORS:
        if draw(st.integers(0, 3)):  # present three times in four
            rows.append(Row(b"00:00", name.encode(), draw(descriptor_values)))
    rows += draw(st.lists(measurement_rows, min_size=1 if at_least_one_measurement else 0, max_size=10))
    if draw(st.integers(0, 3)) == 0:  # descriptors need not come first
        rows = draw(st.permutations(rows))
    return Stay(record_id, tuple(rows), draw(st.integers(0, 1)))


styles = st.builds(
    Style,
    crlf=st.booleans(),
    bom=st.booleans(),
    final_newline=st.booleans(),
    trailing_blank_lines=st.integers(0, 2),
)
layouts = st.sampled_from(["directory", "tarball"])


@st.composite
def datasets(draw, measured: bool = False, style: bool = True, max_stays: int = 4) -> DataSet:
    """A valid set; with `measured` its first stay has at least one measurement."""
    ids = draw(
        st.lists(
            st.one_of(st.integers(1, 999_999), st.integers(0, 2**63 - 1)),
            min_size=1, max_size=max_stays, unique=True,
        )
    )  # fmt: skip
    stays_ = [draw(stays(rid, at_least_one_measurement=measured and i == 0)) for i, rid in enumerate(ids)]
    dataset = DataSet(stays=stays_, style=draw(styles) if style else Style())
    if draw(st.booleans()):  # Outcomes lines in any order
        dataset.outcomes[1:] = draw(st.permutations(dataset.outcomes[1:]))
    return dataset


# Field text that can never hold a line end or a field separator.
field_chars = st.characters(codec="utf-8", exclude_characters="\n\r,")
field_texts = st.text(field_chars, max_size=12)


@st.composite
def garbage_bytes(draw) -> bytes:
    """Bytes with at least one that is invalid UTF-8, and no comma, CR or LF."""
    other = st.binary(max_size=6).map(lambda b: b.translate(None, b",\r\n"))
    bad = draw(st.sampled_from([b"\xff", b"\xfe", b"\x80", b"\xc3", b"\xed\xa0\x80", b"\xf8\x88"]))
    return draw(other) + bad + draw(other)


# ------------------------------------------------------- valid input round trips


@checked(60)
@given(dataset=datasets(), layout=layouts)
def test_valid_sets_load_with_exactly_the_values_written(dataset, layout):
    with written(dataset, layout) as files:
        assert_loads_exactly(files.load(), dataset.stays)


def descriptors_only(stay: Stay) -> Stay:
    """`stay` without its measurements: the static rows and the first Weight at 00:00."""
    weight = next((r for r in stay.rows if r.parameter == b"Weight" and r.time == b"00:00"), None)
    rows = tuple(r for r in stay.rows if r.parameter.decode() in STATIC or r is weight)
    return Stay(stay.record_id, rows, stay.label)


def stays_of(dataset: DataSet) -> list[Stay]:
    """The stays as the (edited) record lines now say."""
    return [
        Stay(s.record_id, tuple(Row(*line.split(b",")) for line in dataset.records[s.record_id][1:]), s.label)
        for s in dataset.stays
    ]


@checked(15)
@given(dataset=datasets(), layout=layouts)
def test_stays_with_descriptors_only_are_kept(dataset, layout):
    only_descriptors = [descriptors_only(s) for s in dataset.stays]
    with written(DataSet(only_descriptors, dataset.style), layout) as files:
        cohort = files.load()
        assert len(cohort.measurements) == 0
        assert_loads_exactly(cohort, only_descriptors)


def test_round_trip_oracle_covers_both_weight_roles():
    """The first Weight at 00:00 is the descriptor; later ones are measurements."""
    stay = Stay(7, (Row(b"00:00", b"RecordID", b"7"), Row(b"00:05", b"Weight", b"81"),
                    Row(b"00:00", b"Weight", b"80"), Row(b"00:00", b"Weight", b"-1")), 1)  # fmt: skip
    descriptors, measurements = expected_stay(stay)
    assert descriptors["Weight"] == 80.0
    assert measurements == [(5, "Weight", 81.0), (0, "Weight", -1.0)]
    with written(DataSet([stay], Style()), "directory") as files:
        assert_loads_exactly(files.load(), [stay])


# ------------------------------------------------------------ malformed records


@st.composite
def target_row(draw, dataset: DataSet, measurement: bool = False) -> tuple[int, int]:
    """(RecordID, 1-based line) of a data row; with `measurement`, a measurement row."""
    if measurement:
        stay = dataset.stays[0]
        descriptor_rows = set(descriptors_only(stay).rows)
        candidates = [i for i, r in enumerate(stay.rows) if not any(r is d for d in descriptor_rows)]
        assume(candidates)  # the only Weight row may be the Weight descriptor
    else:
        stay = draw(st.sampled_from(dataset.stays))
        candidates = list(range(len(stay.rows)))
    index = draw(st.sampled_from(candidates))
    return stay.record_id, index + 2  # line 1 is the header


def set_line(dataset: DataSet, record_id: int, line: int, text: bytes) -> None:
    dataset.records[record_id][line - 1] = text


def split(dataset: DataSet, record_id: int, line: int) -> list[bytes]:
    return dataset.records[record_id][line - 1].split(b",")


@checked(30)
@given(dataset=datasets(), layout=layouts, data=st.data())
def test_missing_or_extra_fields(dataset, layout, data):
    record_id, line = data.draw(target_row(dataset))
    fields = split(dataset, record_id, line)
    count = data.draw(st.sampled_from([1, 2, 4, 5, 7]))
    extra = data.draw(st.lists(field_texts.map(str.encode), min_size=max(count - 3, 0), max_size=max(count - 3, 0)))
    set_line(dataset, record_id, line, b",".join(fields[:count] + extra))
    with written(dataset, layout) as files:
        assert_data_error(files.load, files.record(record_id), line, f"found {count}")


@checked(20)
@given(dataset=datasets(), layout=layouts, data=st.data())
def test_empty_line_in_the_middle(dataset, layout, data):
    record_id = data.draw(st.sampled_from(dataset.stays)).record_id
    lines = dataset.records[record_id]
    line = data.draw(st.integers(2, len(lines)))  # before an existing data line
    lines.insert(line - 1, data.draw(st.sampled_from([b"", b" ", b"\t", b"  \t "])))
    with written(dataset, layout) as files:
        assert_data_error(files.load, files.record(record_id), line, "empty line")


@checked(30)
@given(dataset=datasets(), layout=layouts, data=st.data())
def test_garbage_bytes_in_any_field(dataset, layout, data):
    record_id, line = data.draw(target_row(dataset))
    fields = split(dataset, record_id, line)
    # in the time or the value; garbage in the parameter makes an unknown parameter, skipped (tested above)
    fields[data.draw(st.sampled_from([0, 2]))] = data.draw(garbage_bytes())
    set_line(dataset, record_id, line, b",".join(fields))
    with written(dataset, layout) as files:
        assert_data_error(files.load, files.record(record_id), line)


@checked(15)
@given(dataset=datasets(), layout=layouts, data=st.data())
def test_garbage_line_of_random_bytes(dataset, layout, data):
    """Any bytes at all in place of a data line: an error at that line."""
    record_id, line = data.draw(target_row(dataset))
    junk = data.draw(st.binary(min_size=1, max_size=30).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b"")))
    assume(junk.strip())
    assume(not re.fullmatch(rb"[0-9]{2}:[0-9]{2},[^,]*,[^,]*", junk))  # not shaped like a data line
    set_line(dataset, record_id, line, junk)
    with written(dataset, layout) as files:
        assert_data_error(files.load, files.record(record_id), line)


@checked(20)
@given(dataset=datasets(), layout=layouts, data=st.data())
def test_wrong_header(dataset, layout, data):
    header = data.draw(st.one_of(
        st.sampled_from([b"Time,Param,Value", b"", b"Time,Parameter", b"time,parameter,value", b"Time;Parameter;Value",
                         b"Time,Parameter,Value,", b"\xff\xfeT\x00i\x00", b"00:00,RecordID,1"]),
        st.text(st.characters(codec="utf-8", exclude_characters="\n\r\ufeff"), max_size=25).map(str.encode),
    ))  # fmt: skip
    assume(header.strip() != RECORD_HEADER)
    record_id = dataset.stays[0].record_id
    set_line(dataset, record_id, 1, header)
    with written(dataset, layout) as files:
        assert_data_error(files.load, files.record(record_id), 1, "header must be")


@checked(40)
@given(dataset=datasets(measured=True), layout=layouts, data=st.data())
def test_any_value_text_is_read_exactly_or_refused_at_its_line(dataset, layout, data):
    """Whatever replaces a measurement's value, the loader either reads exactly what
    Python reads or raises a DataError at that line; never another number."""
    record_id, line = data.draw(target_row(dataset, measurement=True))
    value = data.draw(st.one_of(
        field_texts.map(str.encode),
        garbage_bytes(),
        st.from_regex(rb"\A[ +\-]?[0-9_.]{0,6}([eEdD][+\-]?[0-9]{0,3})?[ ]?\Z"),
    ))  # fmt: skip
    fields = split(dataset, record_id, line)
    set_line(dataset, record_id, line, b",".join([fields[0], fields[1], value]))
    try:
        number = float(value.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        number = None
    must_fail = number is None or not math.isfinite(number) or abs(number) > FLOAT32_MAX
    with written(dataset, layout) as files:
        try:
            cohort = files.load()
        except DataError as error:
            assert (error.path, error.line) == (files.record(record_id), line), str(error)
            return
        assert not must_fail, f"{value!r} was accepted"
        assert_loads_exactly(cohort, stays_of(dataset))


@checked(20)
@given(dataset=datasets(measured=True), layout=layouts, data=st.data())
def test_non_numeric_values(dataset, layout, data):
    record_id, line = data.draw(target_row(dataset, measurement=True))
    value = data.draw(st.one_of(
        st.sampled_from([b"seventy", b"1.2.3", b"--5", b"1e", b".", b"-", b"0x10", b"1d5", b"7 3", b'"73"',
                         b"12%", b"\xd9\xa1"]),
        field_texts.filter(lambda t: re.search(r"[^0-9.eE+\-\s]", t) is not None).map(str.encode),
    ))  # fmt: skip
    assume(value.strip())
    fields = split(dataset, record_id, line)
    set_line(dataset, record_id, line, b",".join([fields[0], fields[1], value]))
    with written(dataset, layout) as files:
        assert_data_error(files.load, files.record(record_id), line, "Value")


@checked(10)
@given(dataset=datasets(measured=True), layout=layouts, data=st.data())
def test_missing_value(dataset, layout, data):
    record_id, line = data.draw(target_row(dataset, measurement=True))
    fields = split(dataset, record_id, line)
    set_line(dataset, record_id, line, b",".join([fields[0], fields[1], data.draw(st.sampled_from([b"", b" "]))]))
    with written(dataset, layout) as files:
        assert_data_error(files.load, files.record(record_id), line, "Value is missing")


NOT_FINITE = [b"nan", b"NaN", b"NAN", b"-nan", b"inf", b"-inf", b"+inf", b"Inf", b"Infinity", b"-Infinity",
              b"infinity", b"1e400", b"-1e999"]  # fmt: skip


@checked(20)
@given(dataset=datasets(measured=True), layout=layouts, data=st.data(), value=st.sampled_from(NOT_FINITE))
def test_nan_and_inf_values(dataset, layout, data, value):
    record_id, line = data.draw(target_row(dataset))  # any row: descriptors too
    fields = split(dataset, record_id, line)
    set_line(dataset, record_id, line, b",".join([fields[0], fields[1], value]))
    with written(dataset, layout) as files:
        assert_data_error(files.load, files.record(record_id), line, "not a finite number")


@checked(10)
@given(
    dataset=datasets(measured=True), layout=layouts, data=st.data(),
    value=st.sampled_from([b"1e39", b"-1e39", b"3.5e38", b"1e300"]),
)  # fmt: skip
def test_measurements_beyond_float32_are_refused(dataset, layout, data, value):
    record_id, line = data.draw(target_row(dataset, measurement=True))
    fields = split(dataset, record_id, line)
    set_line(dataset, record_id, line, b",".join([fields[0], fields[1], value]))
    with written(dataset, layout) as files:
        assert_data_error(files.load, files.record(record_id), line, "too large")


beyond_48h = st.tuples(st.integers(48, 99), st.integers(0, 59)).filter(lambda t: t[0] * 60 + t[1] > 2880)
bad_times = st.one_of(
    beyond_48h.map(lambda t: (b"%02d:%02d" % t, "beyond 48:00")),
    st.tuples(st.integers(0, 48), st.integers(60, 99)).map(lambda t: (b"%02d:%02d" % t, "more than 59")),
    times.map(lambda t: (b"-" + t, "negative")),
    st.sampled_from([b"-0:05", b"-1:00"]).map(lambda t: (t, "negative")),
    st.sampled_from([b"3:15", b"003:15", b"03:15:00", b"03.15", b"ab:cd", b"", b" 03:15", b"03:15 ", b"0315",
                     b"\xef\xbc\x90\xef\xbc\x93:15"]).map(lambda t: (t, "not HH:MM")),
    field_texts.map(str.encode).filter(lambda t: not re.fullmatch(rb"[0-9]{2}:[0-9]{2}", t)).map(lambda t: (t, None)),
    garbage_bytes().map(lambda t: (t, None)),
)  # fmt: skip


@checked(35)
@given(dataset=datasets(), layout=layouts, data=st.data(), bad=bad_times)
def test_bad_times(dataset, layout, data, bad):
    time, words = bad
    record_id, line = data.draw(target_row(dataset))
    fields = split(dataset, record_id, line)
    set_line(dataset, record_id, line, b",".join([time, fields[1], fields[2]]))
    with written(dataset, layout) as files:
        assert_data_error(files.load, files.record(record_id), line, words)


@checked(30)
@given(dataset=datasets(), layout=layouts, data=st.data())
def test_duplicated_descriptors(dataset, layout, data):
    stay = data.draw(st.sampled_from(dataset.stays))
    lines = dataset.records[stay.record_id]
    static = [i for i, text in enumerate(lines) if i and text.split(b",")[1].decode() in STATIC]
    original = data.draw(st.sampled_from(static))  # 0-based index into lines
    copy = lines[original] if data.draw(st.booleans()) else lines[original].rsplit(b",", 1)[0] + b",-1"
    if copy.startswith(b"00:00,RecordID,"):
        copy = lines[original]  # a second RecordID row agreeing with the first
    position = data.draw(st.integers(1, len(lines)))  # insert before this 0-based index
    lines.insert(position, copy)
    first, second = (original, position) if position > original else (position, original + 1)
    name = copy.split(b",")[1].decode()
    with written(dataset, layout) as files:
        assert_data_error(
            files.load, files.record(stay.record_id), second + 1, f"{name} given twice (first on line {first + 1})"
        )


@checked(20)
@given(dataset=datasets(), layout=layouts, data=st.data())
def test_descriptors_after_00_00(dataset, layout, data):
    stay = data.draw(st.sampled_from(dataset.stays))
    lines = dataset.records[stay.record_id]
    static = [i for i, text in enumerate(lines) if i and text.split(b",")[1].decode() in STATIC]
    index = data.draw(st.sampled_from(static))
    time = data.draw(times.filter(lambda t: t != b"00:00"))
    lines[index] = time + lines[index][5:]
    with written(dataset, layout) as files:
        assert_data_error(files.load, files.record(stay.record_id), index + 1, "must be at 00:00")


@checked(30)
@given(dataset=datasets(), layout=layouts, data=st.data())
def test_unknown_or_empty_variables_are_skipped_counted_and_refused_when_strict(dataset, layout, data):
    record_id, line = data.draw(target_row(dataset, measurement=True))
    name = data.draw(st.one_of(
        st.sampled_from([b"Fio2", b"hr", b"HR ", b" HR", b'"HR"', b"Heart rate", b"", b"SpO2", b"RecordId",
                         b"HR\x00", b"\x00HR", b"Temp\t"]),
        field_texts.map(str.encode),
        garbage_bytes(),
    ))  # fmt: skip
    assume(name.decode("utf-8", "replace") not in KNOWN_PARAMETERS)
    value = data.draw(st.sampled_from([None, b"", b"n/a"]))  # a skipped row's value is not read
    fields = split(dataset, record_id, line)
    set_line(dataset, record_id, line, b",".join([fields[0], name, fields[2] if value is None else value]))
    stay = next(s for s in dataset.stays if s.record_id == record_id)
    kept = Stay(record_id, stay.rows[: line - 2] + stay.rows[line - 1 :], stay.label)
    with np.errstate(over="ignore"):  # a second Weight at 00:00 may hold a descriptor-sized number
        assume(all(math.isfinite(v) for s in dataset.stays for _, _, v in expected_stay(s)[1]))
    with written(dataset, layout) as files:
        cohort = files.load()
        assert cohort.skipped == (SkippedRows(name.decode("utf-8", "replace"), 1, files.record(record_id), line),)
        assert_loads_exactly(cohort, [kept if s is stay else s for s in dataset.stays])  # every other row kept
        assert_data_error(lambda: files.load().strict(), files.record(record_id), line, "without --strict")


@checked(15)
@given(dataset=datasets(), layout=layouts, data=st.data())
def test_stray_carriage_return(dataset, layout, data):
    record_id, line = data.draw(target_row(dataset))
    text = dataset.records[record_id][line - 1]
    cut = data.draw(st.integers(0, len(text)))
    assume(cut < len(text))  # a CR right before the line end is a CRLF line end
    set_line(dataset, record_id, line, text[:cut] + b"\r" + text[cut:])
    with written(dataset, layout) as files:
        assert_data_error(files.load, files.record(record_id), line, "carriage return")


@checked(10)
@given(dataset=datasets(), layout=layouts, data=st.data())
def test_empty_record_files(dataset, layout, data):
    record_id = data.draw(st.sampled_from(dataset.stays)).record_id
    dataset.raw_records[record_id] = data.draw(
        st.sampled_from([b"", b"\n", b"\r\n", b"\n\n\n", b"  \n\t\n", b"\xef\xbb\xbf", b"\xef\xbb\xbf\n"])
    )
    with written(dataset, layout) as files:
        assert_data_error(files.load, files.record(record_id), None, "empty file")


@checked(15)
@given(dataset=datasets(), layout=layouts, data=st.data())
def test_record_id_row_missing_or_different(dataset, layout, data):
    stay = data.draw(st.sampled_from(dataset.stays))
    lines = dataset.records[stay.record_id]
    index = next(i for i, text in enumerate(lines) if text.startswith(b"00:00,RecordID,"))
    # RecordID rows are read as float64, so above 2**53 neighbouring ids compare equal: not checked here
    other = data.draw(st.integers(-1, 2**62).filter(lambda v: float(v) != float(stay.record_id)))
    with_other = data.draw(st.booleans())
    if with_other:
        lines[index] = b"00:00,RecordID,%d" % other
    else:
        del lines[index]
    with written(dataset, layout) as files:
        if with_other:
            assert_data_error(files.load, files.record(stay.record_id), index + 1, "differs from the file name")
        else:
            assert_data_error(files.load, files.record(stay.record_id), None, "no RecordID descriptor")


@pytest.mark.parametrize("layout", ["directory", "tarball"])
def test_record_id_beyond_int64_in_a_file_name(tmp_path, layout):
    big = 2**63
    stay = Stay(big, (Row(b"00:00", b"RecordID", str(big).encode()),), 0)
    files = write(DataSet([stay], Style()), tmp_path / "pn", layout)
    assert_data_error(files.load, files.record(big), None, "too large")


@checked(20)
@given(dataset=datasets(), layout=layouts, data=st.data())
def test_the_first_problem_of_several_files_is_reported(dataset, layout, data):
    """With bad values in two records, the one with the smaller RecordID is named."""
    assume(len(dataset.stays) >= 2)
    chosen = data.draw(st.lists(st.sampled_from(dataset.stays), min_size=2, max_size=2, unique=True))
    for stay in chosen:
        line = data.draw(st.integers(2, len(dataset.records[stay.record_id])))
        fields = split(dataset, stay.record_id, line)
        set_line(dataset, stay.record_id, line, b",".join([fields[0], fields[1], b"oops"]))
    first = min(chosen, key=lambda s: s.record_id)
    lines = dataset.records[first.record_id]
    line = next(i for i, text in enumerate(lines, start=1) if text.endswith(b",oops"))
    with written(dataset, layout) as files:
        assert_data_error(files.load, files.record(first.record_id), line, "'oops' is not a number")


# ------------------------------------------------------------------ Outcomes file


def outcome_line(dataset: DataSet, record_id: int) -> int:
    return next(i for i, text in enumerate(dataset.outcomes, start=1) if text.split(b",")[0] == b"%d" % record_id)


@checked(15)
@given(dataset=datasets(), layout=layouts, data=st.data())
def test_outcomes_missing_a_record(dataset, layout, data):
    record_id = data.draw(st.sampled_from(dataset.stays)).record_id
    del dataset.outcomes[outcome_line(dataset, record_id) - 1]
    with written(dataset, layout) as files:
        error = assert_data_error(files.load, files.record(record_id), None, f"record {record_id} has no line in")
        assert files.outcomes in error.message


@checked(15)
@given(dataset=datasets(), layout=layouts, data=st.data())
def test_outcomes_listing_an_unknown_record(dataset, layout, data):
    known = {s.record_id for s in dataset.stays}
    ids = st.one_of(st.integers(0, 2**63 - 1), st.integers(2**63, 10**30))  # beyond int64 too
    unknown = data.draw(ids.filter(lambda v: v not in known))
    line = data.draw(st.integers(2, len(dataset.outcomes) + 1))
    dataset.outcomes.insert(line - 1, b"%d,1,2,3,-1,%d" % (unknown, data.draw(st.integers(0, 1))))
    with written(dataset, layout) as files:
        assert_data_error(files.load, files.outcomes, line, f"RecordID {unknown} has no record file")


@checked(20)
@given(dataset=datasets(), layout=layouts, data=st.data())
def test_outcomes_bad_label(dataset, layout, data):
    record_id = data.draw(st.sampled_from(dataset.stays)).record_id
    line = outcome_line(dataset, record_id)
    label = data.draw(st.one_of(
        st.sampled_from(["2", "-1", "1.0", "0.0", "yes", "", "01", "nan", "true", "１"]),
        field_texts,
    ))  # fmt: skip
    assume(label.strip() not in ("0", "1"))
    fields = dataset.outcomes[line - 1].split(b",")
    dataset.outcomes[line - 1] = b",".join([*fields[:5], label.encode()])
    with written(dataset, layout) as files:
        assert_data_error(files.load, files.outcomes, line, "must be 0 or 1")


@checked(20)
@given(dataset=datasets(), layout=layouts, data=st.data())
def test_outcomes_bad_header(dataset, layout, data):
    header = data.draw(st.one_of(
        st.sampled_from([b"RecordID,Death", b"recordid,saps-i,sofa,length_of_stay,survival,in-hospital_death",
                         OUTCOMES_HEADER + b",", OUTCOMES_HEADER.replace(b",", b";"), b"", b"\xff\xfe",
                         b"132539,6,1,5,-1,0"]),
        st.text(st.characters(codec="utf-8", exclude_characters="\n\r\ufeff"), max_size=25).map(str.encode),
    ))  # fmt: skip
    assume(header.decode("utf-8", "replace").strip() != OUTCOMES_HEADER.decode())
    dataset.outcomes[0] = header
    with written(dataset, layout) as files:
        assert_data_error(files.load, files.outcomes, 1, "header must be")


@checked(30)
@given(dataset=datasets(), layout=layouts, data=st.data())
def test_outcomes_bad_lines(dataset, layout, data):
    record_id = data.draw(st.sampled_from(dataset.stays)).record_id
    line = outcome_line(dataset, record_id)
    fields = dataset.outcomes[line - 1].split(b",")
    kind = data.draw(st.sampled_from(["fields", "id", "number", "garbage", "duplicate", "odd line ends"]))
    if kind == "fields":
        count = data.draw(st.integers(1, 9).filter(lambda n: n != 6))
        new, words = (fields + [b"0"] * 6)[:count], f"found {count}"
    elif kind == "id":
        bad = data.draw(st.sampled_from([b"x1", b"1.0", b"-3", b"", b"1e3", b"\xff"]))
        new, words = [bad, *fields[1:]], "is not a whole number"
    elif kind == "number":
        column = data.draw(st.integers(1, 4))
        new = list(fields)
        new[column] = data.draw(st.sampled_from([b"x", b"nan", b"inf", b"", b"\xff", b"1%"]))
        words = f"{OUTCOMES_HEADER.split(b',')[column].decode()} "
    elif kind == "garbage":
        new, words = [fields[0], data.draw(garbage_bytes()), *fields[2:]], "is not a number"
    elif kind == "duplicate":
        duplicate = data.draw(st.integers(2, len(dataset.outcomes) + 1))
        dataset.outcomes.insert(duplicate - 1, dataset.outcomes[line - 1])
        first, second = (line, duplicate) if duplicate > line else (duplicate, line + 1)
        with written(dataset, layout) as files:
            assert_data_error(files.load, files.outcomes, second, f"appears twice (first on line {first})")
        return
    else:  # characters str.splitlines() takes for line ends do not shift the line numbers
        odd = data.draw(st.sampled_from(["\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]))
        dataset.outcomes[line - 1] += odd.encode()  # stripped from the label: still a valid line
        dataset.outcomes.append(b"x1,1,1,1,1,1")
        with written(dataset, layout) as files:
            assert_data_error(files.load, files.outcomes, len(dataset.outcomes), "not a whole number")
        return
    dataset.outcomes[line - 1] = b",".join(new)
    with written(dataset, layout) as files:
        assert_data_error(files.load, files.outcomes, line, words)


@pytest.mark.parametrize("content", [b"", b"\n", b"  \n\n", b"\xef\xbb\xbf", b"\xef\xbb\xbf\r\n"])
def test_empty_outcomes_file(tmp_path, content):
    stay = Stay(5, (Row(b"00:00", b"RecordID", b"5"),), 0)
    files = write(DataSet([stay], Style()), tmp_path / "pn", "directory")
    Path(files.outcomes).write_bytes(content)
    assert_data_error(files.load, files.outcomes, None, "empty file")


# ------------------------------------------------------------------------ tarballs


@contextmanager
def fedicu_log() -> Iterator[list[str]]:
    """Messages logged on the `fedicu` logger at INFO and above, while inside."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    logger = logging.getLogger("fedicu")
    handler, level = Collect(logging.INFO), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


extra_member_names = st.one_of(
    st.sampled_from(["set-a/README", "set-a/._{n}.txt", "set-a/{n}.txt.bak", "set-a/{n}.TXT", "set-b/{n}.txt",
                     "set-a/sub/{n}.txt", "{n}.txt", "set-a/{n}", "set-a/x{n}.txt", "set-a/{n}.csv",
                     "./set-a/.DS_Store", "set-a/-{n}.txt", "set-a/{n} .txt"]),
)  # fmt: skip


@st.composite
def extra_members(draw) -> list[tuple[str, bytes, str]]:
    """Tar members that are not records: (name, data, kind)."""
    members = []
    for _ in range(draw(st.integers(1, 5))):
        name = draw(extra_member_names).format(n=draw(st.integers(0, 10**6)))
        kind = draw(st.sampled_from(["file", "file", "symlink"]))
        if kind == "symlink":  # even one named like a record is not a regular file
            name = draw(st.one_of(st.just(name), st.integers(10**7, 10**8).map(lambda n: f"set-a/{n}.txt")))
        members.append((name, draw(st.one_of(garbage_bytes(), st.binary(max_size=40))), kind))
    assume(len({m[0] for m in members}) == len(members))
    return members


@checked(25)
@given(dataset=datasets(style=False, max_stays=3), data=st.data())
def test_tarball_extra_members_are_skipped_counted_and_harmless(dataset, data):
    extras = data.draw(extra_members())
    members = [(f"set-a/{rid}.txt", dataset.record_bytes(rid), "file") for rid in sorted(dataset.records)]
    members = data.draw(st.permutations(members + extras))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, content, kind in members:
            info = tarfile.TarInfo(name)
            if kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, "elsewhere.txt"
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    with tempfile.TemporaryDirectory() as folder:
        data_dir = Path(folder)
        (data_dir / "set-a.tar.gz").write_bytes(gzip.compress(buffer.getvalue()))
        (data_dir / "Outcomes-a.txt").write_bytes(dataset.outcomes_bytes())
        with fedicu_log() as messages:
            cohort = physionet2012.load(data_dir, sets="a", cache=False)
        assert_loads_exactly(cohort, dataset.stays)
        skipped = [m for m in messages if "skipped" in m]
        assert len(skipped) == 1 and f"skipped {len(extras)} file(s)" in skipped[0], messages
        shown = sorted(name for name, _, _ in extras)[:5]
        assert all(name in skipped[0] for name in shown), skipped[0]


@checked(20)
@given(dataset=datasets(style=False, max_stays=3), data=st.data())
def test_truncated_tarball_is_named(dataset, data):
    """A .tar.gz cut anywhere is an error naming the archive, never a partial set."""
    with written(dataset, "tarball") as files:
        compressed = files.archive.read_bytes()
        files.archive.write_bytes(compressed[: data.draw(st.integers(0, len(compressed) - 1))])
        assert_data_error(files.load, str(files.archive), None, "cannot read this archive")


@checked(30)
@given(dataset=datasets(style=False, max_stays=3), data=st.data())
def test_damaged_tar_inside_the_gzip_is_named_or_harmless(dataset, data):
    """The tar stream cut short, overwritten in a member header, or followed by junk:
    an error naming the archive, or (damage in padding only) the same cohort."""
    with written(dataset, "tarball") as files:
        tar = bytearray(gzip.decompress(files.archive.read_bytes()))
        headers = []  # offsets of the member headers
        with tarfile.open(fileobj=io.BytesIO(bytes(tar)), mode="r:") as archive:
            headers = [member.offset for member in archive]
            end = archive.offset  # where the end-of-archive zero blocks begin
        damage = data.draw(st.sampled_from(["cut", "header", "junk after a member"]))
        if damage == "cut":
            cut = data.draw(st.integers(0, end))  # anywhere up to the end-of-archive blocks
            tar = tar[:cut]
            must_fail = True
        elif damage == "header":
            offset = data.draw(st.sampled_from(headers)) + data.draw(st.integers(0, 511))
            new = data.draw(st.integers(0, 255).filter(lambda b: b != tar[offset]))
            tar[offset] = new
            must_fail = False  # some header bytes (past a field's NUL) are not read at all
        else:
            after = data.draw(st.sampled_from([*headers[1:], end]))
            junk = data.draw(st.binary(min_size=1, max_size=600).filter(lambda b: b.strip(b"\0")))
            tar[after:after] = junk
            must_fail = True
        files.archive.write_bytes(gzip.compress(bytes(tar)))
        try:
            cohort = files.load()
        except DataError as error:
            assert error.path == str(files.archive) and error.line is None, str(error)
            return
        assert not must_fail, f"damage {damage!r} went unnoticed"
        assert_loads_exactly(cohort, dataset.stays)


@checked(10)
@given(dataset=datasets(style=False, max_stays=3), data=st.data())
def test_record_inside_a_tarball_cut_short(dataset, data):
    """A member whose data ends early (size says more) is an error naming the archive."""
    with written(dataset, "tarball") as files:
        tar = gzip.decompress(files.archive.read_bytes())
        with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as archive:
            member = data.draw(st.sampled_from([m for m in archive if m.isfile()]))
        cut = data.draw(st.integers(member.offset_data, member.offset_data + max(member.size - 1, 0)))
        files.archive.write_bytes(gzip.compress(tar[:cut]))
        assert_data_error(files.load, str(files.archive), None, "cannot read this archive")


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not an archive at all",
        b"\x1f\x8b\x08\x00garbage",
        gzip.compress(b"", mtime=0),  # mtime 0: the same bytes, hence the same test id, in every process
        gzip.compress(b"\x01" * 1024, mtime=0),
    ],
)
def test_unreadable_tarball_files(tmp_path, content):
    stay = Stay(5, (Row(b"00:00", b"RecordID", b"5"),), 0)
    files = write(DataSet([stay], Style()), tmp_path / "pn", "tarball")
    files.archive.write_bytes(content)
    assert_data_error(files.load, str(files.archive), None)


# --------------------------------------------------------------------------- CLI


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int | str | None, str]:
    from fedicu.simulations.cli import main

    monkeypatch.setattr(sys, "argv", ["fedicu", *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    return exit_.value.code, capsys.readouterr().err


def _bad_value(dataset: DataSet) -> tuple[int, int]:
    record_id = dataset.stays[0].record_id
    dataset.records[record_id].append(b"12:00,HR,seventy")
    return record_id, len(dataset.records[record_id])


def _garbage_parameter(dataset: DataSet) -> tuple[int, int]:
    record_id = dataset.stays[-1].record_id
    dataset.records[record_id].insert(2, b"00:30,H\xff\xfeR,73")
    return record_id, 3


def _late_time(dataset: DataSet) -> tuple[int, int]:
    record_id = dataset.stays[0].record_id
    dataset.records[record_id].append(b"48:01,HR,70")
    return record_id, len(dataset.records[record_id])


def _outcomes_header(dataset: DataSet) -> tuple[None, int]:
    dataset.outcomes[0] = b"RecordID,Death"
    return None, 1


def _empty_record(dataset: DataSet) -> tuple[int, None]:
    record_id = dataset.stays[0].record_id
    dataset.raw_records[record_id] = b""
    return record_id, None


CLI_DATASET = DataSet(
    [
        Stay(132539, (Row(b"00:00", b"RecordID", b"132539"), Row(b"00:00", b"Age", b"54"),
                      Row(b"00:07", b"HR", b"73")), 0),
        Stay(132540, (Row(b"00:00", b"RecordID", b"132540"), Row(b"00:00", b"ICUType", b"3"),
                      Row(b"01:00", b"Temp", b"36.6")), 1),
    ],
    Style(),
)  # fmt: skip


@pytest.mark.parametrize(
    ("layout", "corrupt"),
    [(layout, corrupt) for layout in ("directory", "tarball")
     for corrupt in (_bad_value, _garbage_parameter, _late_time, _outcomes_header, _empty_record)]
    + [("tarball", "truncated tarball")],
)  # fmt: skip
def test_cli_reports_bad_input_in_one_line(monkeypatch, capsys, tmp_path, layout, corrupt):
    dataset = DataSet(CLI_DATASET.stays, CLI_DATASET.style)
    if corrupt == "truncated tarball":
        files = write(dataset, tmp_path / "pn", layout)
        files.archive.write_bytes(files.archive.read_bytes()[:-20])
        where = str(files.archive)
    else:
        record_id, line = corrupt(dataset)
        files = write(dataset, tmp_path / "pn", layout)
        path = files.outcomes if record_id is None else files.record(record_id)
        where = f"{path}:{line}:" if line is not None else f"{path}:"
    monkeypatch.chdir(tmp_path)
    # --strict: a garbled parameter name is an error, not a skipped row
    code, err = run_cli(monkeypatch, capsys, "simulate", "--dataset", "physionet2012",
                        "--data-dir", str(files.data_dir), "--sets", "a", "--strict")  # fmt: skip
    assert code == 2, err
    assert "Traceback" not in err
    lines = [text for text in err.splitlines() if text.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert where in lines[0], err
    assert not (tmp_path / "runs").exists()  # no run directory for a run that never started


@pytest.mark.parametrize("value", [b"[/x]", b"[bold]x"])
def test_cli_prints_bracketed_values_literally(monkeypatch, capsys, tmp_path, value):
    """File contents in the message are text, not console markup."""
    dataset = DataSet(CLI_DATASET.stays, CLI_DATASET.style)
    record_id = dataset.stays[0].record_id
    dataset.records[record_id].append(b"12:00,HR," + value)
    files = write(dataset, tmp_path / "pn", "directory")
    monkeypatch.chdir(tmp_path)
    # --strict: a garbled parameter name is an error, not a skipped row
    code, err = run_cli(monkeypatch, capsys, "simulate", "--dataset", "physionet2012",
                        "--data-dir", str(files.data_dir), "--sets", "a", "--strict")  # fmt: skip
    assert code == 2, err
    lines = [text for text in err.splitlines() if text.strip()]
    assert len(lines) == 1 and f"{files.record(record_id)}:5: Value '{value.decode()}' is not a number" in lines[0]
