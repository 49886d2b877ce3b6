"""PhysioNet 2012 loader and writer: exact parsing, errors, cache, round trip, real data."""

from __future__ import annotations

import atexit
import io
import logging
import os
import shutil
import tarfile
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedicu.shared import cache
from fedicu.shared.cohort import VARIABLE_DTYPE, Cohort, SkippedRows, empty_measurements
from fedicu.shared.datasets import DataSource, load_cohort, physionet2012
from fedicu.shared.errors import DataError
from fedicu.shared.variables import TIME_SERIES

FIXTURE_SOURCE = Path(__file__).resolve().parent / "fixtures" / "physionet_mini"


def _assemble_fixture() -> Path:
    """The hand-written records laid out as a PhysioNet set A (the repository keeps them under
    neutral names so that nothing in it looks like the real data set)."""
    root = Path(tempfile.mkdtemp(prefix="fedicu-fixture-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    shutil.copytree(FIXTURE_SOURCE / "records", root / "set-a")
    shutil.copy(FIXTURE_SOURCE / "outcomes.txt", root / "Outcomes-a.txt")
    return root


FIXTURE = _assemble_fixture()
REAL_DATA = Path(__file__).resolve().parents[2] / "shared/data/physionet2012"
NAN = float("nan")

# What the fixture holds, written out by hand.
EXPECTED_STAYS = {  # stay_id: (age, gender, height, weight, icu_type, label)
    99001: (45.0, 1.0, 180.3, NAN, 2.0, 0),
    140001: (54.0, 0.0, NAN, 80.5, 4.0, 0),
    140002: (71.0, 1.0, 175.3, NAN, NAN, 1),
    140003: (90.0, 0.0, NAN, NAN, 3.0, 1),
}
EXPECTED_MEASUREMENTS = [  # (stay_id, minute, variable, value), in file order
    (99001, 120, "Weight", 90.0),
    (99001, 120, "SysABP", 120.0),
    (99001, 605, "Lactate", 1.8),
    (140001, 0, "HR", 88.0),
    (140001, 7, "GCS", 15.0),
    (140001, 7, "HR", 73.0),
    (140001, 7, "NIMAP", 92.33),
    (140001, 7, "Temp", 35.1),
    (140001, 97, "Urine", 900.0),
    (140001, 750, "Weight", 79.0),
    (140001, 2879, "pH", 7.38),
    (140001, 2880, "HR", 91.0),
    (140002, 0, "Weight", 68.2),
    (140002, 195, "MechVent", 1.0),
    (140002, 195, "FiO2", 0.5),
    (140002, 1425, "TroponinT", 0.01),
]


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own empty cache directory."""
    directory = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("FEDICU_CACHE_DIR", str(directory))
    return directory


def copy_fixture(tmp_path: Path) -> Path:
    data_dir = tmp_path / "data"
    shutil.copytree(FIXTURE, data_dir)
    return data_dir


def make_tarball(data_dir: Path, set_name: str = "a", extra: dict[str, bytes] | None = None) -> Path:
    """Replace `set-X/` by `set-X.tar.gz` (members `set-X/<file>`, plus `extra` members)."""
    folder = data_dir / f"set-{set_name}"
    archive = data_dir / f"set-{set_name}.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name, recursive=False)
        for path in sorted(folder.iterdir()):
            tar.add(path, arcname=f"{folder.name}/{path.name}")
        for name, data in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    shutil.rmtree(folder)
    return archive


def edit_line(path: Path, line: int, text: str | None, insert: bool = False) -> None:
    """Replace (or insert before, or with text None delete) 1-based `line` of `path`."""
    lines = path.read_text().splitlines()
    if insert:
        assert text is not None, "insert needs a text"
        lines.insert(line - 1, text)
    elif text is None:
        del lines[line - 1]
    else:
        lines[line - 1] = text
    path.write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------------- exact values


@pytest.mark.parametrize("layout", ["directory", "tarball"])
def test_fixture_is_parsed_exactly(tmp_path, layout):
    data_dir = copy_fixture(tmp_path)
    if layout == "tarball":
        make_tarball(data_dir)
    cohort = physionet2012.load(data_dir, sets=("a",), cache=False)

    stays = cohort.stays
    assert list(stays.index) == [99001, 140001, 140002, 140003]  # numeric, not text, order
    assert stays.index.dtype == np.int64 and stays.index.name == "stay_id"
    for column in ("age", "gender", "height", "weight", "icu_type"):
        assert stays[column].dtype == np.float64
    assert stays["label"].dtype == np.int8
    expected = pd.DataFrame.from_dict(
        EXPECTED_STAYS, orient="index",
        columns=["age", "gender", "height", "weight", "icu_type", "label"],
    )  # fmt: skip
    for column in expected.columns:
        np.testing.assert_array_equal(stays[column].to_numpy(), expected[column].to_numpy(), err_msg=column)
    assert (stays["hospital"] == "set-a").all() and (stays["source"] == "set-a").all()

    measurements = cohort.measurements
    assert measurements["stay_id"].dtype == np.int64
    assert measurements["minute"].dtype == np.int32
    assert measurements["variable"].dtype == VARIABLE_DTYPE
    assert measurements["value"].dtype == np.float32
    got = list(
        zip(
            measurements["stay_id"].tolist(),
            measurements["minute"].tolist(),
            measurements["variable"].astype(str).tolist(),
            measurements["value"].tolist(),
            strict=True,
        )
    )
    assert [g[:3] for g in got] == [e[:3] for e in EXPECTED_MEASUREMENTS]
    np.testing.assert_array_equal(
        np.array([g[3] for g in got], dtype=np.float32),
        np.array([e[3] for e in EXPECTED_MEASUREMENTS], dtype=np.float32),
    )
    assert 140003 not in set(measurements["stay_id"])  # descriptors only, yet kept
    assert cohort.mortality == 0.5


def test_directory_and_tarball_give_the_same_cohort(tmp_path):
    from_directory = physionet2012.load(copy_fixture(tmp_path / "d"), sets="a", cache=False)
    data_dir = copy_fixture(tmp_path / "t")
    make_tarball(data_dir)
    from_tarball = physionet2012.load(data_dir, sets="a", cache=False)
    pd.testing.assert_frame_equal(from_directory.stays, from_tarball.stays)
    pd.testing.assert_frame_equal(from_directory.measurements, from_tarball.measurements)


def test_directory_wins_over_tarball(tmp_path):
    data_dir = copy_fixture(tmp_path)
    make_tarball(data_dir)  # the tarball holds the original ages
    shutil.copytree(FIXTURE / "set-a", data_dir / "set-a")
    edit_line(data_dir / "set-a" / "140001.txt", 3, "00:00,Age,55")
    cohort = physionet2012.load(data_dir, sets="a", cache=False)
    assert cohort.stays.loc[140001, "age"] == 55.0


def test_crlf_line_endings_and_trailing_blank_lines_are_accepted(tmp_path):
    data_dir = copy_fixture(tmp_path)
    path = data_dir / "set-a" / "140002.txt"
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n") + b"\r\n\r\n")
    reference = physionet2012.load(FIXTURE, sets="a", cache=False)
    cohort = physionet2012.load(data_dir, sets="a", cache=False)
    pd.testing.assert_frame_equal(cohort.measurements, reference.measurements)
    pd.testing.assert_frame_equal(cohort.stays, reference.stays)


def test_tarball_members_that_are_not_records_are_skipped_and_counted(tmp_path, caplog):
    data_dir = copy_fixture(tmp_path)
    extra = {"set-a/._140001.txt": b"\x00\x05junk", "set-a/README": b"hello", "other/1.txt": b"x"}
    make_tarball(data_dir, extra=extra)
    with caplog.at_level(logging.INFO, logger="fedicu"):
        cohort = physionet2012.load(data_dir, sets="a", cache=False)
    assert len(cohort) == 4
    messages = [r.getMessage() for r in caplog.records if r.name == "fedicu"]
    assert any("skipped 3 file(s)" in m and "set-a/._140001.txt" in m for m in messages), messages


def test_directory_entries_that_are_not_records_are_skipped_and_counted(tmp_path, caplog):
    data_dir = copy_fixture(tmp_path)
    (data_dir / "set-a" / ".DS_Store").write_bytes(b"\x00")
    with caplog.at_level(logging.INFO, logger="fedicu"):
        cohort = physionet2012.load(data_dir, sets="a", cache=False)
    assert len(cohort) == 4
    assert any("skipped 1 file(s)" in r.getMessage() for r in caplog.records)


def test_sets_are_ordered_by_set_then_record_id(tmp_path):
    data_dir = copy_fixture(tmp_path)
    source = physionet2012.load(FIXTURE, sets="a", cache=False)
    renumbered = Cohort(
        stays=source.stays.set_axis(source.stays.index - 90000, axis=0),
        measurements=source.measurements.assign(stay_id=source.measurements["stay_id"] - 90000),
    )
    physionet2012.write(renumbered, data_dir, "b")  # set b has the smaller ids
    cohort = physionet2012.load(data_dir, sets=("a", "b"), cache=False)
    assert list(cohort.stays.index) == [99001, 140001, 140002, 140003, 9001, 50001, 50002, 50003]
    assert list(cohort.stays["source"]) == ["set-a"] * 4 + ["set-b"] * 4
    assert cohort.measurements["variable"].dtype == VARIABLE_DTYPE
    sizes = cohort.measurements.groupby("stay_id", sort=False).size()
    assert list(sizes.index) == [99001, 140001, 140002, 9001, 50001, 50002]
    assert list(sizes) == [3, 9, 4, 3, 9, 4]


# ------------------------------------------------------------------------- errors

A1 = "set-a/140001.txt"
A2 = "set-a/140002.txt"
OUT = "Outcomes-a.txt"

# (id, change to a copy of the fixture, file the error names, line, words in the message)
RECORD_ERRORS = [
    ("empty file", lambda d: (d / A1).write_text(""), A1, None, "empty file"),
    ("blank file", lambda d: (d / A1).write_text("\n\n"), A1, None, "empty file"),
    ("wrong header", lambda d: edit_line(d / A1, 1, "Time,Param,Value"), A1, 1, "header must be"),
    ("too many fields", lambda d: edit_line(d / A2, 10, "03:15,FiO2,0.5,1"), A2, 10, "found 4"),
    ("too few fields", lambda d: edit_line(d / A2, 10, "03:15,FiO2"), A2, 10, "found 2"),
    ("blank line", lambda d: edit_line(d / A2, 9, "", insert=True), A2, 9, "empty line"),
    ("time H:MM", lambda d: edit_line(d / A2, 9, "3:15,MechVent,1"), A2, 9, "not HH:MM"),
    ("time text", lambda d: edit_line(d / A2, 9, "ab:cd,MechVent,1"), A2, 9, "not HH:MM"),
    ("time seconds", lambda d: edit_line(d / A2, 9, "03:15:00,MechVent,1"), A2, 9, "not HH:MM"),
    ("time negative", lambda d: edit_line(d / A2, 9, "-03:15,MechVent,1"), A2, 9, "negative"),
    ("time 48:01", lambda d: edit_line(d / A2, 9, "48:01,MechVent,1"), A2, 9, "beyond 48:00"),
    ("time 99:00", lambda d: edit_line(d / A2, 9, "99:00,MechVent,1"), A2, 9, "beyond 48:00"),
    ("minutes 60", lambda d: edit_line(d / A2, 9, "03:60,MechVent,1"), A2, 9, "more than 59"),
    ("stray CR", lambda d: edit_line(d / A2, 10, "03:15,FiO2,0.5\r03:16,FiO2,0.4"), A2, 10, "carriage return"),
    ("value text", lambda d: edit_line(d / A2, 10, "03:15,FiO2,high"), A2, 10, "'high' is not a number"),
    ("value empty", lambda d: edit_line(d / A2, 10, "03:15,FiO2,"), A2, 10, "Value is missing"),
    ("value nan", lambda d: edit_line(d / A2, 10, "03:15,FiO2,nan"), A2, 10, "not a finite number"),
    ("value NaN", lambda d: edit_line(d / A2, 10, "03:15,FiO2,NaN"), A2, 10, "not a finite number"),
    ("value inf", lambda d: edit_line(d / A2, 10, "03:15,FiO2,inf"), A2, 10, "not a finite number"),
    ("value -inf", lambda d: edit_line(d / A2, 10, "03:15,FiO2,-inf"), A2, 10, "not a finite number"),
    ("descriptor twice", lambda d: edit_line(d / A2, 9, "00:00,Age,72", insert=True), A2, 9, "Age given twice (first on line 3)"),
    ("descriptor late", lambda d: edit_line(d / A2, 4, "01:00,Gender,1"), A2, 4, "must be at 00:00"),
    ("record id differs", lambda d: edit_line(d / A2, 2, "00:00,RecordID,140009"), A2, 2, "differs from the file name"),
    ("record id -1", lambda d: edit_line(d / A2, 2, "00:00,RecordID,-1"), A2, 2, "differs from the file name"),
    ("record id missing", lambda d: edit_line(d / A2, 2, None), A2, None, "no RecordID descriptor"),
    ("header only", lambda d: (d / A2).write_text("Time,Parameter,Value\n"), A2, None, "no RecordID descriptor"),
]  # fmt: skip

OUTCOME_ERRORS = [
    ("outcomes header", lambda d: edit_line(d / OUT, 1, "RecordID,Death"), OUT, 1, "header must be"),
    ("outcomes empty", lambda d: (d / OUT).write_text(""), OUT, None, "empty file"),
    ("outcomes fields", lambda d: edit_line(d / OUT, 3, "99001,16,8,8,0"), OUT, 3, "expected 6"),
    ("outcomes id", lambda d: edit_line(d / OUT, 3, "9900x,16,8,8,-1,0"), OUT, 3, "not a whole number"),
    ("outcomes number", lambda d: edit_line(d / OUT, 3, "99001,16,x,8,-1,0"), OUT, 3, "SOFA 'x' is not a number"),
    ("death not 0/1", lambda d: edit_line(d / OUT, 4, "140002,21,11,19,-1,2"), OUT, 4, "must be 0 or 1"),
    ("death empty", lambda d: edit_line(d / OUT, 4, "140002,21,11,19,-1,"), OUT, 4, "must be 0 or 1"),
    ("duplicate id", lambda d: edit_line(d / OUT, 6, "99001,1,1,1,-1,1", insert=True), OUT, 6, "appears twice (first on line 3)"),
    ("no record file", lambda d: edit_line(d / OUT, 3, "140004,16,8,8,-1,0", insert=True), OUT, 3, "140004 has no record file"),
    ("no outcome line", lambda d: edit_line(d / OUT, 4, None), A2, None, "140002 has no line in"),
]  # fmt: skip


def _check(error: DataError, data_dir: Path, file: str, line: int | None, words: str) -> None:
    assert error.path is not None and error.path.endswith(file), str(error)
    assert error.line == line, str(error)
    assert words in error.message, str(error)
    assert str(error).startswith(f"{error.path}:{line}: " if line else f"{error.path}: ")


@pytest.mark.parametrize(
    ("change", "file", "line", "words"),
    [case[1:] for case in RECORD_ERRORS + OUTCOME_ERRORS],
    ids=[case[0] for case in RECORD_ERRORS + OUTCOME_ERRORS],
)
def test_bad_files_raise_data_error_naming_file_and_line(tmp_path, change, file, line, words):
    data_dir = copy_fixture(tmp_path)
    change(data_dir)
    with pytest.raises(DataError) as caught:
        physionet2012.load(data_dir, sets="a", cache=False)
    _check(caught.value, data_dir, file, line, words)
    if "no line in" in words:
        assert "Outcomes-a.txt" in caught.value.message  # both files are named


@pytest.mark.parametrize(
    ("change", "file", "line", "words"),
    [case[1:] for case in RECORD_ERRORS if case[2] == A2],
    ids=[case[0] for case in RECORD_ERRORS if case[2] == A2],
)
def test_errors_inside_a_tarball_name_the_member(tmp_path, change, file, line, words):
    data_dir = copy_fixture(tmp_path)
    change(data_dir)
    archive = make_tarball(data_dir)
    with pytest.raises(DataError) as caught:
        physionet2012.load(data_dir, sets="a", cache=False)
    assert caught.value.path == f"{archive}:{file}"
    _check(caught.value, data_dir, file, line, words)


def _append(path: Path, text: str, crlf: bool = False) -> None:
    body = path.read_text() + text
    path.write_bytes((body.replace("\n", "\r\n") if crlf else body).encode())


@pytest.mark.parametrize("layout", ["directory", "tarball"])
def test_rows_with_an_empty_or_unknown_parameter_are_skipped_counted_and_the_stay_kept(tmp_path, layout):
    data_dir = copy_fixture(tmp_path)
    clean = physionet2012.load(data_dir, sets="a", cache=False)
    first = len((data_dir / A2).read_text().splitlines()) + 1  # the first appended line
    # what real exports hold: empty parameters (any value), an unknown name; CRLF and blank lines at the end
    _append(data_dir / A2, "10:45,,1.9\n11:00,Fio2,0.5\n12:00,,\n\n\n", crlf=True)
    _append(data_dir / "set-a" / "140003.txt", "01:00,,7\n")
    where = str(data_dir / "set-a") + "/" if layout == "directory" else f"{make_tarball(data_dir)}:set-a/"
    messy = physionet2012.load(data_dir, sets="a", cache=False)
    assert messy.skipped == (
        SkippedRows("", 3, f"{where}140002.txt", first),
        SkippedRows("Fio2", 1, f"{where}140002.txt", first + 1),
    )
    pd.testing.assert_frame_equal(messy.stays, clean.stays)
    pd.testing.assert_frame_equal(messy.measurements, clean.measurements)
    with pytest.raises(DataError) as caught:
        messy.strict()
    assert str(caught.value).startswith(f"{where}140002.txt:{first}: ")


def test_strict_names_the_first_skipped_row_in_reading_order_and_the_cache_keeps_the_counts(tmp_path):
    data_dir = copy_fixture(tmp_path)
    _append(data_dir / A2, "01:00,,7\n")
    _append(data_dir / "set-a" / "99001.txt", "01:00,SpO2,97\n")  # the lowest RecordID: read first
    source = DataSource(format="physionet2012", data_dir=str(data_dir), sets="a", strict=True)
    for _ in range(2):  # the second load comes from the cache
        with pytest.raises(DataError) as caught:
            load_cohort(source)
        assert caught.value.path == str(data_dir / "set-a" / "99001.txt") and "'SpO2'" in caught.value.message
        cohort = load_cohort(replace(source, strict=False))
        assert [(rows.name, rows.count) for rows in cohort.skipped] == [("SpO2", 1), ("", 1)]


def test_length_of_stay_tasks_label_by_days_and_leave_out_unknown_stays(tmp_path, caplog):
    data_dir = copy_fixture(tmp_path)
    outcomes = pd.read_csv(data_dir / OUT).set_index("RecordID")
    for task, days in (("los_over_3d", 3), ("los_over_7d", 7)):
        cohort = physionet2012.load(data_dir, sets="a", cache=False, task=task)
        known = outcomes[outcomes["Length_of_stay"] >= 0]
        assert cohort.task == task and cohort.stays.index.tolist() == sorted(known.index)
        assert cohort.stays["label"].tolist() == (known.sort_index()["Length_of_stay"] > days).astype(int).tolist()
    edit_line(data_dir / OUT, 3, "99001,16,8,-1,-1,0")
    with caplog.at_level(logging.WARNING, logger="fedicu"):
        cohort = physionet2012.load(data_dir, sets="a", cache=False, task="los_over_3d")
    assert 99001 not in cohort.stays.index and not (cohort.measurements["stay_id"] == 99001).any()
    assert any("1 of 4 stays have no Length_of_stay" in r.getMessage() for r in caplog.records)
    with pytest.raises(DataError, match="no task 'mortality'"):
        physionet2012.load(data_dir, sets="a", cache=False, task="mortality")


def test_duplicate_record_member_in_tarball(tmp_path):
    data_dir = copy_fixture(tmp_path)
    make_tarball(data_dir, extra={A1: (FIXTURE / A1).read_bytes()})
    with pytest.raises(DataError, match="a second file for RecordID 140001"):
        physionet2012.load(data_dir, sets="a", cache=False)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_unreadable_tarball(tmp_path, damage):
    data_dir = copy_fixture(tmp_path)
    archive = make_tarball(data_dir)
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x1f\x8bnot really gzip")
    with pytest.raises(DataError) as caught:
        physionet2012.load(data_dir, sets="a", cache=False)
    assert caught.value.path == str(archive)
    assert "cannot read this archive" in caught.value.message


def test_missing_data_dir(tmp_path):
    with pytest.raises(DataError, match="data directory does not exist") as caught:
        physionet2012.load(tmp_path / "nowhere", cache=False)
    assert caught.value.path == str(tmp_path / "nowhere")


def test_missing_set(tmp_path):
    data_dir = copy_fixture(tmp_path)
    with pytest.raises(DataError, match=r"neither set-b/ nor set-b\.tar\.gz") as caught:
        physionet2012.load(data_dir, sets=("a", "b"), cache=False)
    assert caught.value.path == str(data_dir)


def test_missing_outcomes(tmp_path):
    data_dir = copy_fixture(tmp_path)
    (data_dir / OUT).unlink()
    with pytest.raises(DataError, match="outcomes file of set a is missing") as caught:
        physionet2012.load(data_dir, sets="a", cache=False)
    assert caught.value.path == str(data_dir / OUT)


@pytest.mark.parametrize(
    ("sets", "words"),
    [(("a", "d"), "unknown PhysioNet 2012 set 'd'; valid sets are a, b, c"),
     ("x", "valid sets are a, b, c"),
     (("a", "a"), "set 'a' is given twice"),
     ((), "no set given")],
)  # fmt: skip
def test_bad_set_names(sets, words):
    with pytest.raises(DataError) as caught:
        physionet2012.load(FIXTURE, sets=sets, cache=False)
    assert words in str(caught.value)


def test_a_stay_in_two_sets_is_an_error(tmp_path):
    data_dir = copy_fixture(tmp_path)
    physionet2012.write(physionet2012.load(FIXTURE, sets="a", cache=False), data_dir, "b")
    with pytest.raises(DataError, match="RecordID 99001 is in both set-a and set-b"):
        physionet2012.load(data_dir, sets=("a", "b"), cache=False)


# -------------------------------------------------------------------------- cache


class CountingParser:
    """Wraps the set parser to count calls, optionally refusing to run."""

    def __init__(self, refuse: bool = False):
        self.calls = 0
        self.refuse = refuse
        self.original = physionet2012._parse_set

    def __call__(self, source):
        self.calls += 1
        if self.refuse:
            raise AssertionError("parsed although the cache should have answered")
        return self.original(source)


def assert_same_cohort(a: Cohort, b: Cohort) -> None:
    pd.testing.assert_frame_equal(a.stays, b.stays)
    # column by column: assert_frame_equal is very slow on millions of categorical rows
    assert a.measurements.dtypes.equals(b.measurements.dtypes)
    for column in ("stay_id", "minute", "value"):
        np.testing.assert_array_equal(a.measurements[column].to_numpy(), b.measurements[column].to_numpy())
    np.testing.assert_array_equal(a.measurements["variable"].cat.codes, b.measurements["variable"].cat.codes)


@pytest.mark.parametrize("layout", ["directory", "tarball"])
def test_second_load_is_served_from_cache(tmp_path, monkeypatch, private_cache, layout):
    data_dir = copy_fixture(tmp_path)
    if layout == "tarball":
        make_tarball(data_dir)
    first = physionet2012.load(data_dir, sets="a")
    assert len(list(private_cache.glob("physionet2012-set-a-*.npz"))) == 1
    monkeypatch.setattr(physionet2012, "_parse_set", CountingParser(refuse=True))
    second = physionet2012.load(data_dir, sets="a")
    assert_same_cohort(first, second)


def test_cache_false_neither_reads_nor_writes(tmp_path, monkeypatch, private_cache):
    data_dir = copy_fixture(tmp_path)
    physionet2012.load(data_dir, sets="a")
    parser = CountingParser()
    monkeypatch.setattr(physionet2012, "_parse_set", parser)
    physionet2012.load(data_dir, sets="a", cache=False)
    assert parser.calls == 1
    shutil.rmtree(private_cache)
    physionet2012.load(data_dir, sets="a", cache=False)
    assert not private_cache.exists()


def bump_mtime(path: Path) -> None:
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))


@pytest.mark.parametrize("change", ["touch record", "modify record", "add record", "modify outcomes"])
def test_changed_directory_invalidates_cache(tmp_path, monkeypatch, change):
    data_dir = copy_fixture(tmp_path)
    if change == "add record":
        (data_dir / "set-a" / "140003.txt").rename(tmp_path / "140003.txt")
        edit_line(data_dir / OUT, 5, None)
    first = physionet2012.load(data_dir, sets="a")
    if change == "touch record":
        bump_mtime(data_dir / A1)
    elif change == "modify record":
        edit_line(data_dir / A1, 3, "00:00,Age,60")
    elif change == "add record":
        (tmp_path / "140003.txt").rename(data_dir / "set-a" / "140003.txt")
        edit_line(data_dir / OUT, 5, "140003,-1,-1,2,2,1", insert=True)
    else:
        edit_line(data_dir / OUT, 2, "140001,6,1,5,-1,1")
    parser = CountingParser()
    monkeypatch.setattr(physionet2012, "_parse_set", parser)
    second = physionet2012.load(data_dir, sets="a")
    assert parser.calls == 1
    if change == "touch record":
        assert_same_cohort(first, second)
    elif change == "modify record":
        assert (first.stays.loc[140001, "age"], second.stays.loc[140001, "age"]) == (54.0, 60.0)
    elif change == "add record":
        assert 140003 not in first.stays.index and 140003 in second.stays.index
    else:
        assert (first.stays.loc[140001, "label"], second.stays.loc[140001, "label"]) == (0, 1)


def test_changed_tarball_invalidates_cache(tmp_path, monkeypatch):
    data_dir = copy_fixture(tmp_path)
    edit_line(data_dir / A1, 3, "00:00,Age,60")
    archive = make_tarball(data_dir)
    first = physionet2012.load(data_dir, sets="a")
    shutil.copytree(FIXTURE / "set-a", data_dir / "set-a")
    archive.unlink()
    make_tarball(data_dir)  # same name, other content
    parser = CountingParser()
    monkeypatch.setattr(physionet2012, "_parse_set", parser)
    second = physionet2012.load(data_dir, sets="a")
    assert parser.calls == 1
    assert (first.stays.loc[140001, "age"], second.stays.loc[140001, "age"]) == (60.0, 54.0)
    bump_mtime(archive)
    physionet2012.load(data_dir, sets="a")
    assert parser.calls == 2
    physionet2012.load(data_dir, sets="a")
    assert parser.calls == 2


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "wrong arrays"])
def test_corrupt_cache_file_is_rebuilt(tmp_path, monkeypatch, private_cache, damage):
    data_dir = copy_fixture(tmp_path)
    first = physionet2012.load(data_dir, sets="a")
    (path,) = private_cache.glob("physionet2012-set-a-*.npz")
    data = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"PK\x03\x04 this is no zip")
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        np.savez(path, stay_id=np.arange(3))
    parser = CountingParser()
    monkeypatch.setattr(physionet2012, "_parse_set", parser)
    second = physionet2012.load(data_dir, sets="a")
    assert parser.calls == 1
    assert_same_cohort(first, second)
    parser.refuse = True  # the rebuilt file now answers
    assert_same_cohort(first, physionet2012.load(data_dir, sets="a"))


def test_cache_helpers(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDICU_CACHE_DIR", str(tmp_path / "explicit"))
    assert cache.cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("FEDICU_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == tmp_path / "xdg" / "fedicu"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache.cache_dir() == Path.home() / ".cache" / "fedicu"

    file = tmp_path / "f.txt"
    file.write_text("one")
    before = cache.fingerprint([file], salt="v1")
    assert cache.fingerprint([file], salt="v2") != before
    stat = file.stat()
    os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert cache.fingerprint([file], salt="v1") != before

    target = tmp_path / "sub" / "x.npz"
    arrays = {"a": np.arange(4, dtype=np.int32), "s": np.array(["set-a", "b"])}
    cache.save_arrays(target, arrays)
    loaded = cache.load_arrays(target)
    assert loaded is not None and set(loaded) == {"a", "s"}
    np.testing.assert_array_equal(loaded["a"], arrays["a"])
    assert loaded["s"].tolist() == ["set-a", "b"]
    assert [p.name for p in target.parent.iterdir()] == ["x.npz"]  # no temporary left behind
    assert cache.load_arrays(tmp_path / "missing.npz") is None
    with pytest.raises(TypeError):
        cache.save_arrays(target, {"o": np.array([{}], dtype=object)})
    assert cache.load_arrays(target) is not None  # the failed save left the old file intact


# -------------------------------------------------------------------------- write


def random_cohort(seed: int = 0, stays: int = 40) -> Cohort:
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(np.arange(1, 10**6), size=stays, replace=False)).astype(np.int64)

    def maybe_missing(values: np.ndarray) -> np.ndarray:
        return np.where(rng.random(stays) < 0.2, np.nan, values)

    table = pd.DataFrame(
        {
            "age": maybe_missing(rng.integers(18, 95, stays).astype(float)),
            "gender": maybe_missing(rng.integers(0, 2, stays).astype(float)),
            "height": maybe_missing(np.round(rng.uniform(140, 200, stays), 1)),
            "weight": maybe_missing(np.round(rng.uniform(40, 150, stays), 1)),
            "icu_type": maybe_missing(rng.integers(1, 5, stays).astype(float)),
            "label": (rng.random(stays) < 0.15).astype(np.int8),
            "hospital": "synthetic",
            "source": "synthetic",
        },
        index=pd.Index(ids, name="stay_id"),
    )
    counts = rng.integers(0, 60, stays)
    counts[0] = 0  # one stay with descriptors only
    n = int(counts.sum())
    scale = 10.0 ** rng.integers(-4, 5, n)  # 0.0001 .. 10000
    measurements = pd.DataFrame(
        {
            "stay_id": np.repeat(ids, counts),
            "minute": rng.integers(0, 2881, n).astype(np.int32),
            "variable": pd.Categorical.from_codes(rng.integers(0, len(TIME_SERIES), n), dtype=VARIABLE_DTYPE),
            "value": (rng.uniform(0, 1, n) * scale).astype(np.float32),
        }
    )
    measurements.loc[0, ["minute", "variable"]] = [0, "Weight"]  # a Weight measurement at 00:00 too
    return Cohort(stays=table, measurements=measurements)


def sorted_measurements(cohort: Cohort) -> pd.DataFrame:
    return cohort.measurements.sort_values(["stay_id", "minute"], kind="stable").reset_index(drop=True)


@pytest.mark.parametrize("seed", [0, 1])
def test_write_then_load_round_trips(tmp_path, seed):
    original = random_cohort(seed)
    set_dir = physionet2012.write(original, tmp_path, "c")
    assert set_dir == tmp_path / "set-c"
    loaded = physionet2012.load(tmp_path, sets="c", cache=False)
    assert list(loaded.stays.index) == sorted(original.stays.index)
    columns = ["age", "gender", "height", "weight", "icu_type", "label"]
    pd.testing.assert_frame_equal(loaded.stays[columns], original.stays.loc[loaded.stays.index, columns])
    assert (loaded.stays["source"] == "set-c").all()
    want, got = sorted_measurements(original), sorted_measurements(loaded)
    assert len(got) == len(want)
    np.testing.assert_array_equal(got["stay_id"], want["stay_id"])
    np.testing.assert_array_equal(got["minute"], want["minute"])
    np.testing.assert_array_equal(got["variable"].astype(str), want["variable"].astype(str))
    np.testing.assert_allclose(got["value"], want["value"], rtol=1e-6)


def test_write_uses_the_challenge_format(tmp_path):
    cohort = physionet2012.load(FIXTURE, sets="a", cache=False)
    physionet2012.write(cohort, tmp_path, "a")
    assert (tmp_path / "set-a" / "140001.txt").read_text() == (
        "Time,Parameter,Value\n"
        "00:00,RecordID,140001\n00:00,Age,54\n00:00,Gender,0\n00:00,Height,-1\n"
        "00:00,ICUType,4\n00:00,Weight,80.5\n00:00,HR,88\n00:07,GCS,15\n00:07,HR,73\n"
        "00:07,NIMAP,92.33\n00:07,Temp,35.1\n01:37,Urine,900\n12:30,Weight,79\n"
        "47:59,pH,7.38\n48:00,HR,91\n"
    )
    assert (tmp_path / "set-a" / "140003.txt").read_text().count("\n") == 7
    assert (tmp_path / "Outcomes-a.txt").read_text() == (
        "RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death\n"
        "99001,-1,-1,-1,-1,0\n140001,-1,-1,-1,-1,0\n140002,-1,-1,-1,-1,1\n140003,-1,-1,-1,-1,1\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Outcomes-a.txt", "set-a"]
    reloaded = physionet2012.load(tmp_path, sets="a", cache=False)
    assert_same_cohort(cohort, reloaded)


def test_write_sorts_measurements_by_time(tmp_path):
    cohort = physionet2012.load(FIXTURE, sets="a", cache=False)
    shuffled = cohort.measurements.sample(frac=1.0, random_state=0).reset_index(drop=True)
    physionet2012.write(Cohort(stays=cohort.stays, measurements=shuffled), tmp_path, "a")
    reloaded = physionet2012.load(tmp_path, sets="a", cache=False)
    minutes = reloaded.measurements.groupby("stay_id")["minute"].apply(lambda m: m.is_monotonic_increasing)
    assert minutes.all()
    order = ["stay_id", "minute", "variable"]
    pd.testing.assert_frame_equal(
        reloaded.measurements.sort_values(order).reset_index(drop=True),
        cohort.measurements.sort_values(order).reset_index(drop=True),
    )


def test_write_refuses_to_overwrite(tmp_path):
    cohort = physionet2012.load(FIXTURE, sets="a", cache=False)
    physionet2012.write(cohort, tmp_path, "a")
    with pytest.raises(FileExistsError):
        physionet2012.write(cohort, tmp_path, "a")


def test_interrupted_write_leaves_no_outcomes_file(tmp_path, monkeypatch):
    cohort = random_cohort(3)
    calls = {"n": 0}
    original = Path.write_bytes

    def failing_write_bytes(self, data):
        calls["n"] += 1
        if calls["n"] == 10:
            raise OSError("disk full")
        return original(self, data)

    monkeypatch.setattr(Path, "write_bytes", failing_write_bytes)
    with pytest.raises(OSError, match="disk full"):
        physionet2012.write(cohort, tmp_path, "a")
    assert list(tmp_path.iterdir()) == []  # no Outcomes file, no set directory, no staging leftovers


def test_write_rejects_unwritable_cohorts(tmp_path):
    cohort = physionet2012.load(FIXTURE, sets="a", cache=False)
    bad_value = cohort.measurements.copy()
    bad_value.loc[0, "value"] = np.nan
    with pytest.raises(ValueError, match="finite"):
        physionet2012.write(Cohort(stays=cohort.stays, measurements=bad_value), tmp_path, "a")
    orphan = cohort.measurements.copy()
    orphan.loc[0, "stay_id"] = 5
    with pytest.raises(ValueError, match=r"not in cohort.stays"):
        physionet2012.write(Cohort(stays=cohort.stays, measurements=orphan), tmp_path, "a")
    with pytest.raises(ValueError, match="set name"):
        physionet2012.write(cohort, tmp_path, "../a")
    empty = Cohort(stays=cohort.stays, measurements=empty_measurements())
    physionet2012.write(empty, tmp_path, "b")
    assert len(physionet2012.load(tmp_path, sets="b", cache=False).measurements) == 0


# ---------------------------------------------------------------------- real data


@pytest.mark.skipif(
    not (REAL_DATA / "set-a.tar.gz").is_file(),
    reason=f"PhysioNet 2012 sets A/B not found at {REAL_DATA} (a fresh clone; see the data README)",
)
def test_real_sets_a_and_b(private_cache):
    cohort = physionet2012.load(REAL_DATA, sets=("a", "b"))
    stays = cohort.stays
    assert len(stays) == 8000 and stays.index.is_unique
    by_set = stays.groupby("source")["label"].agg(["size", "sum", "mean"])
    assert by_set.loc["set-a", "size"] == 4000 and by_set.loc["set-b", "size"] == 4000
    assert by_set.loc["set-a", "sum"] == 554 and by_set.loc["set-b", "sum"] == 568
    assert round(by_set.loc["set-a", "mean"] * 100, 2) == 13.85
    assert round(by_set.loc["set-b", "mean"] * 100, 2) == 14.20
    assert set(cohort.measurements["variable"].unique()) == set(TIME_SERIES)
    # every stay kept, including those with descriptors only
    with_series = cohort.measurements["stay_id"].unique()
    assert 0 < len(stays) - len(with_series) < 50
    assert stays["age"].notna().all() and (stays["icu_type"].isin([1, 2, 3, 4])).all()
    assert cohort.measurements["minute"].between(0, 2880).all()
    # the cached reload is the same cohort
    assert_same_cohort(cohort, physionet2012.load(REAL_DATA, sets=("a", "b")))


def test_an_unlistable_set_folder_is_a_clear_error(tmp_path, monkeypatch):
    data_dir = copy_fixture(tmp_path)

    def refuse(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(physionet2012.os, "scandir", refuse)
    with pytest.raises(DataError, match=r"set-a: cannot list the folder: Permission denied"):
        physionet2012.load(data_dir, sets="a", cache=False)


@pytest.mark.parametrize("task", ["in_hospital_death", "los_over_3d"])
def test_stays_to_score_may_come_without_outcomes_and_read_as_with_them(tmp_path, task):
    data_dir = copy_fixture(tmp_path)
    with_outcomes = physionet2012.load(data_dir, sets="a", task=task)
    (data_dir / "Outcomes-a.txt").unlink()
    with pytest.raises(DataError, match="outcomes file of set a is missing"):
        physionet2012.load(data_dir, sets="a", task=task)
    to_score = physionet2012.load(data_dir, sets="a", task=task, to_score=True)
    pd.testing.assert_frame_equal(to_score.measurements, with_outcomes.measurements)
    columns = ["age", "gender", "height", "weight", "icu_type"]
    pd.testing.assert_frame_equal(to_score.stays.loc[with_outcomes.stays.index, columns], with_outcomes.stays[columns])
    assert (to_score.stays["label"] == -1).all() and len(to_score) >= len(with_outcomes)
