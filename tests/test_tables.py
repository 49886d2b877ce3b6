"""Long tables (CSV and Parquet): exact reading, the event rules, every refusal naming its file
and row, and equivalence with the PhysioNet 2012 reader on the same stays."""

from __future__ import annotations

import csv
import dataclasses
import logging
import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedicu.shared.cohort import STAY_COLUMNS, VARIABLE_DTYPE, Cohort, SkippedRows
from fedicu.shared.config import RunConfig
from fedicu.shared.datasets import DataSource, load_cohort, physionet2012, tables
from fedicu.shared.errors import DataError
from fedicu.shared.federation import prepare
from fedicu.shared.preprocessing import clean, to_sequences

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "physionet_mini"
ADMISSION = datetime(2020, 3, 1, 8, 30)
STATIC = ("Age", "Gender", "Height", "ICUType")  # PhysioNet descriptors besides RecordID and Weight


# ------------------------------------------------- PhysioNet records, read independently


@dataclass(frozen=True)
class RawRecord:
    """A PhysioNet 2012 record as its file holds it: (minute, parameter, value text) rows in file
    order without the RecordID row, and the In-hospital_death label ("0" or "1")."""

    record_id: int
    rows: list[tuple[int, str, str]]
    label: str


def parse_record(text: str) -> list[tuple[int, str, str]]:
    rows = []
    for line in text.replace("\r\n", "\n").strip().split("\n")[1:]:
        time, parameter, value = line.split(",")
        hours, minutes = time.split(":")
        if parameter != "RecordID":
            rows.append((int(hours) * 60 + int(minutes), parameter, value))
    return rows


def parse_outcomes(text: str) -> dict[int, str]:
    return {int(row["RecordID"]): row["In-hospital_death"] for row in csv.DictReader(text.strip().split("\n"))}


def fixture_records() -> list[RawRecord]:
    labels = parse_outcomes((FIXTURE / "outcomes.txt").read_text())
    files = sorted((FIXTURE / "records").glob("*.txt"), key=lambda path: int(path.stem))
    return [RawRecord(int(f.stem), parse_record(f.read_text()), labels[int(f.stem)]) for f in files]


def folder_records(folder: Path, set_name: str) -> list[RawRecord]:
    """The records of set `set_name` in a PhysioNet 2012 folder (extracted), read independently."""
    labels = parse_outcomes((folder / f"Outcomes-{set_name}.txt").read_text())
    files = sorted((folder / f"set-{set_name}").glob("*.txt"), key=lambda path: int(path.stem))
    return [RawRecord(int(f.stem), parse_record(f.read_text()), labels[int(f.stem)]) for f in files]


def physionet_fixture(tmp_path: Path) -> Cohort:
    """The fixture as `physionet2012.load` reads it: the reference."""
    data_dir = tmp_path / "physionet"
    shutil.copytree(FIXTURE / "records", data_dir / "set-a")
    shutil.copy(FIXTURE / "outcomes.txt", data_dir / "Outcomes-a.txt")
    return physionet2012.load(data_dir, sets="a", cache=False)


def write_tables(
    records: list[RawRecord], folder: Path, fmt: str = "csv", descriptors: str = "stays", timing: str = "minute"
) -> Path:
    """Records as long tables. `descriptors`: "stays" puts Age, Gender, Height and ICUType in stays
    columns; "stays+weight" also the first Weight at 00:00 (keeping its row among the events, as
    a converter may); "events" gives them as events at minute 0. `timing`: "minute" or "time"
    (timestamps after an admission at ADMISSION)."""
    stays, events = [], []
    for record in records:
        stay: dict[str, object] = {"stay_id": record.record_id, "in_hospital_death": record.label}
        if timing == "time":
            stay["admission_time"] = ADMISSION
        for minute, parameter, value in record.rows:
            if descriptors.startswith("stays") and parameter in STATIC:
                stay[parameter] = value
                continue
            if descriptors == "stays+weight" and parameter == "Weight" and minute == 0 and "Weight" not in stay:
                stay["Weight"] = value
            when = {"minute": minute} if timing == "minute" else {"time": ADMISSION + timedelta(minutes=minute)}
            events.append({"stay_id": record.record_id, **when, "variable": parameter, "value": value})
        stays.append(stay)
    folder.mkdir(parents=True)
    stays_frame, events_frame = pd.DataFrame(stays), pd.DataFrame(events)
    if fmt == "csv":
        stays_frame.to_csv(folder / "stays.csv", index=False)
        events_frame.to_csv(folder / "events.csv", index=False)
    else:
        numeric = [c for c in ("in_hospital_death", *STATIC, "Weight") if c in stays_frame]
        stays_frame[numeric] = stays_frame[numeric].astype(float)
        events_frame["value"] = events_frame["value"].astype(float)
        stays_frame.to_parquet(folder / "stays.parquet", index=False)
        events_frame.to_parquet(folder / "events.parquet", index=False)
    return folder


def assert_same_inputs(cohort: Cohort, reference: Cohort) -> None:
    """The same stays, labels and model inputs, exactly, raw and cleaned."""
    assert list(cohort.stays.index) == list(reference.stays.index)
    for got, want in ((cohort, reference), (clean(cohort)[0], clean(reference)[0])):
        a, b = to_sequences(got), to_sequences(want)
        for field in dataclasses.fields(a):
            np.testing.assert_array_equal(getattr(a, field.name), getattr(b, field.name), err_msg=field.name)


# ------------------------------------------------------------------------ equivalence


@pytest.mark.parametrize(
    ("fmt", "descriptors", "timing"),
    [
        ("csv", "stays", "minute"),
        ("csv", "events", "time"),
        ("csv", "stays+weight", "minute"),
        ("parquet", "stays", "time"),
        ("parquet", "events", "minute"),
        ("parquet", "stays+weight", "time"),
    ],
)
def test_tables_give_the_physionet_readers_cohort(tmp_path, fmt, descriptors, timing):
    reference = physionet_fixture(tmp_path)
    folder = write_tables(fixture_records(), tmp_path / "site", fmt, descriptors, timing)
    cohort = tables.from_source(DataSource(format="tables", data_dir=str(folder)))
    assert_same_inputs(cohort, reference)
    columns = [c for c in STAY_COLUMNS if c not in ("hospital", "source")]
    pd.testing.assert_frame_equal(cohort.stays[columns], reference.stays[columns])
    pd.testing.assert_frame_equal(cohort.measurements, reference.measurements)
    assert (cohort.stays["hospital"] == "site").all() and (cohort.stays["source"] == "site").all()
    assert cohort.skipped == () and cohort.task == "in_hospital_death"


# ------------------------------------------------------------------------ small tables

STAYS = "stay_id,Age,Gender,in_hospital_death\n2,71,1,1\n1,54,0,0\n3,-1,,0\n"
EVENTS = (
    "stay_id,minute,variable,value\n"
    "1,0,HR,80\n"  # line 2
    "1,60,Temp,37.5\n"
    "2,30,HR,90\n"
    "1,30,HR,82\n"  # line 5
    "2,0,Weight,70.5\n"  # the weight descriptor
    "2,120,Weight,70\n"
)


def site(tmp_path: Path, stays: str = STAYS, events: str = EVENTS, name: str = "site") -> Path:
    folder = tmp_path / name
    folder.mkdir(parents=True)
    (folder / "stays.csv").write_text(stays)
    (folder / "events.csv").write_text(events)
    return folder


def read(folder: Path, **options) -> Cohort:
    return tables.from_source(DataSource(format="tables", data_dir=str(folder), **options))


def rows(cohort: Cohort) -> list[tuple]:
    m = cohort.measurements
    values = [round(float(v), 4) for v in m["value"]]  # float32, shown as written
    return list(zip(m["stay_id"], m["minute"], m["variable"].astype(str), values, strict=True))


def test_small_tables_are_read_exactly(tmp_path):
    cohort = read(site(tmp_path, name="St Elsewhere"))
    stays = cohort.stays
    assert list(stays.index) == [1, 2, 3] and stays.index.dtype == np.int64  # ordered by stay_id
    assert list(stays.columns) == list(STAY_COLUMNS)
    np.testing.assert_array_equal(stays["age"], [54, 71, np.nan])  # -1 = not recorded
    np.testing.assert_array_equal(stays["gender"], [0, 1, np.nan])
    np.testing.assert_array_equal(stays["weight"], [np.nan, 70.5, np.nan])
    assert stays["height"].isna().all() and stays["icu_type"].isna().all()
    assert stays["label"].tolist() == [0, 1, 0] and stays["label"].dtype == np.int8
    assert (stays["hospital"] == "St Elsewhere").all() and (stays["source"] == "St Elsewhere").all()
    assert rows(cohort) == [  # input order within a stay
        (1, 0, "HR", 80.0), (1, 60, "Temp", 37.5), (1, 30, "HR", 82.0), (2, 30, "HR", 90.0), (2, 120, "Weight", 70.0),
    ]  # fmt: skip
    m = cohort.measurements
    assert (m["minute"].dtype, m["variable"].dtype, m["value"].dtype) == (np.int32, VARIABLE_DTYPE, np.float32)
    assert cohort.skipped == ()


def test_crlf_bom_and_trailing_blank_lines_are_accepted(tmp_path):
    plain = read(site(tmp_path / "a"))
    folder = tmp_path / "b" / "site"
    folder.mkdir(parents=True)
    for name, text in (("stays.csv", STAYS), ("events.csv", EVENTS)):
        (folder / name).write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode() + b"\r\n\r\n")
    crlf = read(folder)
    pd.testing.assert_frame_equal(crlf.stays, plain.stays)
    pd.testing.assert_frame_equal(crlf.measurements, plain.measurements)


def test_blank_lines_keep_the_line_numbers_right(tmp_path):
    events = "stay_id,minute,variable,value\n1,0,HR,80\n\n\n1,5,HR,oops\n"
    with pytest.raises(DataError) as raised:
        read(site(tmp_path, events=events))
    assert (raised.value.line, raised.value.message) == (5, "HR: value 'oops' is not a number")


def test_unknown_and_empty_variables_are_skipped_counted_and_refused_with_strict(tmp_path):
    events = EVENTS + "1,10,hr,1\n2,10,,2\n1,20,SpO2,97\n2,40,hr,3\n"  # lines 8..11
    folder = site(tmp_path, events=events)
    cohort = read(folder)
    path = str(folder / "events.csv")
    assert cohort.skipped == (
        SkippedRows("hr", 2, path, 8),
        SkippedRows("", 1, path, 9),
        SkippedRows("SpO2", 1, path, 10),
    )
    assert len(cohort.measurements) == 5  # the known rows, as without the unknown ones
    with pytest.raises(DataError) as raised:
        load_cohort(DataSource(format="tables", data_dir=str(folder), strict=True))
    assert str(raised.value).startswith(
        f"{path}:8: row with variable 'hr', unknown or without a value (2 such rows in all)"
    )


def test_parquet_tables_read_like_csv_and_name_row_indices(tmp_path):
    csv_folder = site(tmp_path / "csv", events=EVENTS + "1,10,hr,1\n")
    folder = tmp_path / "pq" / "site"
    folder.mkdir(parents=True)
    for name in ("stays", "events"):
        frame = pd.read_csv(csv_folder / f"{name}.csv")
        frame.to_parquet(folder / f"{name}.parquet", index=False)
    from_csv, from_parquet = read(csv_folder), read(folder)
    pd.testing.assert_frame_equal(from_parquet.stays, from_csv.stays)
    pd.testing.assert_frame_equal(from_parquet.measurements, from_csv.measurements)
    assert from_parquet.skipped == (SkippedRows("hr", 1, str(folder / "events.parquet"), 6),)  # 0-based row


def test_one_table_of_each_must_be_there(tmp_path):
    folder = site(tmp_path)
    pd.read_csv(folder / "stays.csv").to_parquet(folder / "stays.parquet")
    with pytest.raises(DataError, match=r"both stays\.csv and stays\.parquet") as raised:
        read(folder)
    assert raised.value.path == str(folder)
    (folder / "events.csv").unlink()
    (folder / "stays.parquet").unlink()
    with pytest.raises(DataError, match=r"neither events\.csv nor events\.parquet") as raised:
        read(folder)
    assert raised.value.path == str(folder)
    with pytest.raises(DataError, match="does not exist"):
        read(tmp_path / "nowhere")


H = "stay_id,minute,variable,value\n"
BAD_CSV = {  # case: (stays, events, file at fault, line, part of the message)
    "no stay_id column": ("id,in_hospital_death\n1,0\n", H, "stays.csv", 1, "no column 'stay_id'; the columns are 'id', 'in_hospital_death'"),
    "no label column": ("stay_id\n1\n", H, "stays.csv", 1, "no column 'in_hospital_death' for the labels of task in_hospital_death"),
    "no value column": (STAYS, "stay_id,minute,variable\n1,0,HR\n", "events.csv", 1, "no column 'value'"),
    "no minute or time": (STAYS, "stay_id,variable,value\n1,HR,80\n", "events.csv", 1, "no column 'minute' (or time, with admission_time"),
    "non-numeric value": (STAYS, H + "1,0,HR,80\n1,3,HR,eighty\n", "events.csv", 3, "HR: value 'eighty' is not a number"),
    "missing value": (STAYS, H + "1,0,HR,\n", "events.csv", 2, "HR: value is missing"),
    "infinite value": (STAYS, H + "1,0,HR,inf\n", "events.csv", 2, "HR: value 'inf' is not a finite number"),
    "value beyond float32": (STAYS, H + "1,0,HR,80\n1,1,HR,1e39\n", "events.csv", 3, "is too large (above 3.4e38)"),
    "bad label": ("stay_id,in_hospital_death\n1,0\n2,2\n", H, "stays.csv", 3, "in_hospital_death label '2' must be 0 or 1"),
    "unknown stay": (STAYS, H + "1,0,HR,80\n9,0,HR,80\n", "events.csv", 3, "stay_id 9 has no row in"),
    "repeated stay": ("stay_id,in_hospital_death\n1,0\n2,0\n1,1\n", H, "stays.csv", 4, "stay_id 1 appears twice (first on line 2)"),
    "stay_id not whole": ("stay_id,in_hospital_death\n1.5,0\n", H, "stays.csv", 2, "stay_id '1.5' is not a whole number"),
    "empty stay_id": (STAYS, H + "1,0,HR,1\n,0,HR,1\n", "events.csv", 3, "stay_id is empty"),
    "bad descriptor": ("stay_id,Age,in_hospital_death\n1,old,0\n", H, "stays.csv", 2, "Age 'old' is not a finite number"),
    "bad minute": (STAYS, H + "1,0,HR,1\n1,soon,HR,1\n", "events.csv", 3, "minute 'soon' is not a finite number"),
    "series without a time": (STAYS, H + "1,,HR,80\n", "events.csv", 2, "HR has no time; only descriptors"),
    "descriptor against the stays table": (STAYS, H + "1,0,Age,55\n", "events.csv", 2, "stay 1: Age 55 conflicts with 54 in"),
    "descriptors that disagree": (STAYS, H + "3,,Height,170\n3,0,Height,171\n", "events.csv", 3, "Height 171 conflicts with 170 given at"),
    "static weights that disagree": (STAYS, H + "3,,Weight,70\n3,,Weight,71\n", "events.csv", 3, "Weight 71 conflicts with 70"),
    "too many fields": (STAYS, H + "1,0,HR,80\n1,1,HR,80,9\n", "events.csv", 3, "cannot be read as CSV"),
    "empty file": ("", H, "stays.csv", None, "empty file"),
    "empty hospital": ("stay_id,hospital,in_hospital_death\n1,A,0\n2,,0\n", H, "stays.csv", 3, "hospital is empty"),
    "times without admissions": (STAYS, "stay_id,time,variable,value\n1,2020-01-01 10:00,HR,80\n", "stays.csv", 1, "no column 'admission_time' (the events carry timestamps)"),
    "a stay without its admission": (
        "stay_id,admission_time,in_hospital_death\n1,2020-01-01 08:00,0\n2,,1\n",
        "stay_id,time,variable,value\n1,2020-01-01 10:00,HR,80\n2,2020-01-01 10:00,HR,80\n",
        "stays.csv", 3, "stay 2 has no admission_time, yet its events carry timestamps",
    ),
    "bad timestamp": (
        "stay_id,admission_time,in_hospital_death\n1,2020-01-01 08:00,0\n",
        "stay_id,time,variable,value\n1,2020-01-01 10:00,HR,80\n1,yesterday,HR,80\n",
        "events.csv", 3, "time 'yesterday' is not a timestamp",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_CSV)
def test_bad_tables_are_refused_naming_the_file_and_line(tmp_path, case):
    stays, events, file, line, message = BAD_CSV[case]
    folder = site(tmp_path, stays, events)
    with pytest.raises(DataError) as raised:
        read(folder)
    assert raised.value.path == str(folder / file)
    assert raised.value.line == line
    assert message in raised.value.message, raised.value.message


def test_bad_parquet_tables_name_the_file_and_row(tmp_path):
    folder = tmp_path / "site"
    folder.mkdir()
    stays = pd.DataFrame({"stay_id": [1, 2], "in_hospital_death": [0, 1]})
    stays.to_parquet(folder / "stays.parquet")
    events = pd.DataFrame({"stay_id": [1, 1, 2], "minute": [0, 5, 9], "variable": ["HR"] * 3, "value": ["1", "2", "x"]})
    events.to_parquet(folder / "events.parquet")
    with pytest.raises(DataError) as raised:
        read(folder)
    assert (raised.value.path, raised.value.line) == (str(folder / "events.parquet"), 2)
    assert "HR: value 'x' is not a number" in raised.value.message

    events.assign(value=pd.Timestamp("2020-01-01")).to_parquet(folder / "events.parquet")
    with pytest.raises(DataError, match="column 'value' must hold numbers, not datetime64") as raised:
        read(folder)
    assert raised.value.path == str(folder / "events.parquet")

    stays.assign(in_hospital_death=[0, 3]).to_parquet(folder / "stays.parquet")
    with pytest.raises(DataError, match="label 3 must be 0 or 1") as raised:
        read(folder)
    assert (raised.value.path, raised.value.line) == (str(folder / "stays.parquet"), 1)

    (folder / "stays.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match="cannot be read as Parquet") as raised:
        read(folder)
    assert raised.value.path == str(folder / "stays.parquet")


# ------------------------------------------------------------------------ labels


def test_labels_take_true_and_false_and_empty_labels_leave_the_stay_out(tmp_path, caplog):
    stays = "stay_id,in_hospital_death\n1,True\n2,\n3,false\n4,\n5,1\n"
    events = H + "1,0,HR,80\n2,0,HR,81\n4,0,HR,82\n5,0,HR,83\n"
    folder = site(tmp_path, stays, events)
    with caplog.at_level(logging.WARNING, logger="fedicu"):
        cohort = read(folder)
    assert list(cohort.stays.index) == [1, 3, 5] and cohort.stays["label"].tolist() == [1, 0, 1]
    assert [r[0] for r in rows(cohort)] == [1, 5]  # the events of the stays left out go with them
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"{folder / 'stays.csv'}:3: left out 2 stays whose in_hospital_death label is empty (the first on this row)"
    ]


@pytest.mark.parametrize(("task", "expected"), [("los_over_3d", [0, 1, 1]), ("los_over_7d", [0, 0, 1])])
def test_length_of_stay_tasks_are_derived_from_length_of_stay(tmp_path, task, expected):
    stays = "stay_id,length_of_stay,in_hospital_death\n1,3,0\n2,3.5,0\n3,12,1\n4,,0\n"
    cohort = read(site(tmp_path, stays, H), task=task)
    assert cohort.task == task
    assert list(cohort.stays.index) == [1, 2, 3]  # an unknown length of stay is an empty label
    assert cohort.stays["label"].tolist() == expected


def test_a_tasks_own_column_wins_and_other_tasks_need_theirs(tmp_path):
    stays = "stay_id,length_of_stay,los_over_3d,readmitted\n1,10,0,1\n2,1,1,0\n"
    folder = site(tmp_path, stays, H)
    assert read(folder, task="los_over_3d").stays["label"].tolist() == [0, 1]
    assert read(folder, task="readmitted").stays["label"].tolist() == [1, 0]
    message = "no column 'los_over_7d' for the labels of task los_over_7d, nor 'length_of_stay' in days"
    with pytest.raises(DataError, match=message):
        read(site(tmp_path / "x", "stay_id,los_over_3d\n1,0\n", H), task="los_over_7d")


def test_hospitals_come_from_a_hospital_column(tmp_path):
    stays = "stay_id,hospital,in_hospital_death\n1,North,0\n2,South,1\n"
    cohort = read(site(tmp_path, stays, H))
    assert cohort.stays["hospital"].tolist() == ["North", "South"]
    assert (cohort.stays["source"] == "site").all()


# ------------------------------------------------------------------------ event rules


def test_events_outside_the_window_are_dropped_and_counted(tmp_path, caplog):
    events = H + "1,-5,HR,1\n1,0,HR,2\n1,2880,HR,3\n1,2881,HR,4\n1,30,Age,54\n1,0,Age,54\n"
    with caplog.at_level(logging.INFO, logger="fedicu"):
        cohort = read(site(tmp_path, events=events))
    assert rows(cohort) == [(1, 0, "HR", 2.0), (1, 2880, "HR", 3.0)]
    warned = [r.getMessage() for r in caplog.records if r.name == "fedicu" and r.levelno == logging.WARNING]
    assert any("left out 3 of 6 events (50.0%): times outside the 48 h input window" in m for m in warned), warned


def test_timestamps_give_minutes_since_admission(tmp_path):
    stays = "stay_id,admission_time,in_hospital_death\n1,2020-01-01T08:00:00,0\n2,2020-01-01 09:00:00+01:00,1\n"
    events = (
        "stay_id,time,variable,value\n"
        "1,2020-01-01 08:07:30,HR,80\n"  # minute 7.5 is minute 7
        "1,2020-01-03 08:00:00,HR,81\n"  # 48:00, the last minute
        "1,2020-01-03 08:00:30,HR,82\n"  # beyond the window
        "2,2020-01-01 08:30:00+00:00,HR,83\n"  # zones compare in UTC: minute 30
        "2,,Age,60\n"  # static
    )
    cohort = read(site(tmp_path, stays, events))
    assert rows(cohort) == [(1, 7, "HR", 80.0), (1, 2880, "HR", 81.0), (2, 30, "HR", 83.0)]
    assert cohort.stays.loc[2, "age"] == 60


def test_the_first_weight_at_minute_0_is_the_descriptor(tmp_path):
    stays = "stay_id,in_hospital_death\n1,0\n2,0\n3,0\n"
    events = H + (
        "1,0,Weight,-1\n1,0,Weight,68.2\n1,60,Weight,68\n"  # as in PhysioNet: -1 = not recorded, then a measurement
        "2,0,Weight,80\n2,,Weight,81\n"  # a static Weight comes before any at minute 0
        "3,60,Weight,90\n"  # no descriptor
    )
    cohort = read(site(tmp_path, stays, events))
    np.testing.assert_array_equal(cohort.stays["weight"], [np.nan, 81, np.nan])
    assert rows(cohort) == [
        (1, 0, "Weight", 68.2),
        (1, 60, "Weight", 68.0),
        (2, 0, "Weight", 80.0),
        (3, 60, "Weight", 90.0),
    ]


def test_a_weight_in_the_stays_table_takes_its_event_row_out_of_the_measurements(tmp_path):
    stays = "stay_id,Weight,in_hospital_death\n1,80.5,0\n2,,0\n3,-1,0\n"
    events = H + "1,0,Weight,79\n1,0,Weight,80.5\n1,0,Weight,80.5\n2,0,Weight,60\n3,0,Weight,-1\n3,0,Weight,68\n"
    cohort = read(site(tmp_path, stays, events))
    np.testing.assert_array_equal(cohort.stays["weight"], [80.5, 60, np.nan])
    assert rows(cohort) == [(1, 0, "Weight", 79.0), (1, 0, "Weight", 80.5), (3, 0, "Weight", 68.0)]


def test_descriptor_events_fill_what_the_stays_table_leaves_empty(tmp_path):
    stays = "stay_id,Age,Height,in_hospital_death\n1,54,,0\n2,,180,1\n"
    events = H + "1,0,Height,170\n1,,ICUType,2\n2,0,Age,70\n2,0,Age,70\n2,,Gender,-1\n2,0,Height,180\n"
    cohort = read(site(tmp_path, stays, events))
    expected = {"age": [54, 70], "height": [170, 180], "icu_type": [2, np.nan], "gender": [np.nan, np.nan]}
    for column, values in expected.items():
        np.testing.assert_array_equal(cohort.stays[column], values, err_msg=column)
    assert len(cohort.measurements) == 0


# ------------------------------------------------------------------------ a mapping


def test_a_mapping_renames_columns_maps_codes_and_converts_units(tmp_path):
    (tmp_path / "mapping.toml").write_text(
        '[stays]\nstay_id = "icustay_id"\nhospital = "site"\nadmission_time = "intime"\nin_hospital_death = "died"\n'
        'Age = "age_years"\n'
        '[events]\nstay_id = "icustay_id"\ntime = "charttime"\nvariable = "itemid"\nvalue = "valuenum"\n'
        '[variables]\nHR = 220045\nTemp = { codes = [223761], unit = "°F" }\nWeight = { codes = [226531], unit = "lb" }\n'
    )
    folder = tmp_path / "mimic"
    folder.mkdir()
    pd.DataFrame(
        {"icustay_id": [30001, 30002], "site": ["BIDMC", "BIDMC"], "age_years": [64.0, None], "died": [True, False],
         "intime": pd.to_datetime(["2150-01-01 10:00", "2150-02-01 00:00"]), "unused": ["a", "b"]}
    ).to_parquet(folder / "stays.parquet")  # fmt: skip
    pd.DataFrame(
        {"icustay_id": [30001, 30001, 30002, 30002, 30002], "itemid": [220045, 223761, 226531, 226531, 999999],
         "charttime": pd.to_datetime(["2150-01-01 10:05", "2150-01-01 11:00", "2150-02-01 00:00", "2150-02-01 06:00", None]),
         "valuenum": [88.0, 98.6, 176.0, 175.0, 1.0]}
    ).to_parquet(folder / "events.parquet")  # fmt: skip
    cohort = read(folder, mapping=str(tmp_path / "mapping.toml"))
    assert cohort.stays["hospital"].tolist() == ["BIDMC", "BIDMC"] and cohort.stays["label"].tolist() == [1, 0]
    np.testing.assert_array_equal(cohort.stays["age"], [64.0, np.nan])
    assert cohort.stays.loc[30002, "weight"] == pytest.approx(176.0 * 0.45359237)
    got = rows(cohort)
    assert [r[:3] for r in got] == [(30001, 5, "HR"), (30001, 60, "Temp"), (30002, 360, "Weight")]
    np.testing.assert_allclose([r[3] for r in got], [88.0, 37.0, 175.0 * 0.45359237], rtol=1e-6)
    assert cohort.skipped == (SkippedRows("999999", 1, str(folder / "events.parquet"), 4),)


def test_a_column_the_mapping_names_must_be_there(tmp_path):
    (tmp_path / "mapping.toml").write_text('[stays]\nhospital = "site"\n')
    with pytest.raises(DataError, match=r"no column 'site' \(the mapping's \[stays\] hospital\)") as raised:
        read(site(tmp_path), mapping=str(tmp_path / "mapping.toml"))
    assert raised.value.path == str(tmp_path / "site" / "stays.csv")


def test_no_usable_stay_is_an_error_not_an_empty_cohort(tmp_path):
    folder = site(tmp_path, stays="stay_id,in_hospital_death\n1,\n2,\n")
    with pytest.raises(DataError, match="no usable stays: every stay was left out"):
        load_cohort(DataSource(format="tables", data_dir=str(folder)))


def test_a_length_of_stay_of_minus_one_is_unknown_and_leaves_the_stay_out(tmp_path):
    stays = "stay_id,length_of_stay\n1,5\n2,-1\n3,2\n"
    cohort = read(site(tmp_path, stays=stays), task="los_over_3d")
    assert cohort.stays["label"].to_dict() == {1: 1, 3: 0}


def test_training_refuses_data_with_nothing_to_learn_or_hospitals_too_small(tmp_path):
    events = H + "".join(f"{i},0,HR,{70 + i}\n" for i in range(1, 41))
    one_class = site(tmp_path, "stay_id,in_hospital_death\n" + "".join(f"{i},0\n" for i in range(1, 41)), events)
    with pytest.raises(ValueError, match="every stay has label 0 for task in_hospital_death: nothing to learn"):
        prepare(RunConfig(dataset="tables", data_dir=str(one_class)))
    stays = "stay_id,hospital,in_hospital_death\n" + "".join(
        f"{i},{'a' if i > 6 else 'b'},{i % 3 == 0:d}\n" for i in range(1, 41)
    )
    small = site(tmp_path, stays, events, name="small")
    with pytest.raises(ValueError, match=r"fewer than 10 stays cannot train and validate \(b 6 stays\)"):
        prepare(RunConfig(dataset="tables", data_dir=str(small)))


def test_a_column_named_twice_is_refused_naming_it(tmp_path):
    folder = site(tmp_path, stays="stay_id,Age,Gender,Age,in_hospital_death\n1,54,0,170,0\n")
    with pytest.raises(DataError) as refused:
        read(folder)
    assert str(refused.value) == f"{folder / 'stays.csv'}:1: column 'Age' appears more than once in the header"


def test_a_csv_that_is_not_utf8_names_the_line_of_the_first_bad_byte(tmp_path):
    folder = site(tmp_path)
    (folder / "stays.csv").write_bytes(
        "stay_id,Age,in_hospital_death\n1,54,0\n2,61,0\n3,70,1 caf\xe9\n".encode("latin-1")
    )
    with pytest.raises(DataError) as refused:
        read(folder)
    assert str(refused.value) == f"{folder / 'stays.csv'}:4: not UTF-8 text (byte 0xe9); save the file as UTF-8"
