"""MEDS datasets: windows before the prediction time, static descriptors, schema checks naming
the file, unmapped-code hints, and equivalence with the PhysioNet 2012 reader. The fixtures are
written here with pyarrow, independently of any MEDS writer."""

from __future__ import annotations

import json
import logging
import re
import tarfile
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fedicu.shared.cohort import SkippedRows
from fedicu.shared.datasets import DataSource, load_cohort, meds, physionet2012, tables
from fedicu.shared.errors import DataError
from tests.conftest import PHYSIONET_DIR, requires_physionet
from tests.test_tables import (
    STATIC,
    RawRecord,
    assert_same_inputs,
    fixture_records,
    parse_outcomes,
    parse_record,
    physionet_fixture,
    write_tables,
)

T0 = datetime(2020, 3, 1, 8, 30)  # every admission; labels are predicted 48 h later
PREDICTION = T0 + timedelta(hours=48)
DATA_SCHEMA = pa.schema(
    [("subject_id", pa.int64()), ("time", pa.timestamp("us")), ("code", pa.string()), ("numeric_value", pa.float32())]
)
LABEL_SCHEMA = pa.schema(
    [("subject_id", pa.int64()), ("prediction_time", pa.timestamp("us")), ("boolean_value", pa.bool_())]
)


def write_parquet(path: Path, rows: list[tuple], schema: pa.Schema) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    columns: list[tuple] = list(zip(*rows, strict=True)) if rows else [() for _ in schema]
    pq.write_table(pa.table([pa.array(c, f.type) for c, f in zip(columns, schema, strict=True)], schema=schema), path)
    return path


def meds_root(
    tmp_path: Path, shards: dict[str, list[tuple]], name: str = "icu", dataset_name: str | None = None
) -> Path:
    """A MEDS root with `data/<shard>.parquet` for each (subject_id, time, code, numeric_value) list."""
    root = tmp_path / name
    for shard, rows in shards.items():
        write_parquet(root / "data" / f"{shard}.parquet", rows, DATA_SCHEMA)
    if dataset_name is not None:
        (root / "metadata").mkdir()
        (root / "metadata" / "dataset.json").write_text(json.dumps({"dataset_name": dataset_name, "etl_name": "test"}))
    return root


def labels_file(tmp_path: Path, rows: list[tuple], name: str = "labels.parquet") -> Path:
    return write_parquet(tmp_path / name, rows, LABEL_SCHEMA)


def read(root: Path, labels: Path | str, **options):
    return meds.from_source(DataSource(format="meds", data_dir=str(root), labels=str(labels), **options))


def rows(cohort) -> list[tuple]:
    m = cohort.measurements
    values = [round(float(v), 4) for v in m["value"]]
    return list(zip(m["stay_id"], m["minute"], m["variable"].astype(str), values, strict=True))


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


# ------------------------------------------------- PhysioNet records as MEDS


def write_meds(records: list[RawRecord], folder: Path) -> tuple[Path, Path]:
    """Records as a MEDS root (two shards) and a label folder (two files): descriptors, and the first
    Weight at 00:00, as static events; everything else at T0 + its minute; labels at T0 + 48 h."""
    shards: dict[str, list[tuple]] = {"train/0": [], "held_out/0": []}
    labels: dict[str, list[tuple]] = {"train": [], "held_out": []}
    for n, record in enumerate(records):
        static: list[tuple] = []
        timed: list[tuple] = []
        for minute, parameter, value in record.rows:
            weight_descriptor = (
                parameter == "Weight" and minute == 0 and not any(c == "Weight" for _, _, c, _ in static)
            )
            if parameter in STATIC or weight_descriptor:
                static.append((record.record_id, None, parameter, float(value)))
            else:
                timed.append((record.record_id, at(minute), parameter, float(value)))
        shard = "train" if n % 2 == 0 else "held_out"
        shards[f"{shard}/0"] += static + sorted(timed, key=lambda row: row[1])  # MEDS: sorted by time
        labels[shard].append((record.record_id, PREDICTION, record.label == "1"))
    root = meds_root(folder, shards, dataset_name="physionet-as-meds")
    for shard, label_rows in labels.items():
        labels_file(folder, label_rows, f"labels/{shard}.parquet")
    return root, folder / "labels"


def test_meds_gives_the_physionet_readers_cohort(tmp_path):
    reference = physionet_fixture(tmp_path)
    root, labels = write_meds(fixture_records(), tmp_path / "meds")
    cohort = read(root, labels)
    assert_same_inputs(cohort, reference)
    pd.testing.assert_frame_equal(cohort.measurements, reference.measurements)
    for column in ("age", "gender", "height", "weight", "icu_type"):  # MEDS values are float32
        want = reference.stays[column].to_numpy(np.float32).astype(np.float64)
        np.testing.assert_array_equal(cohort.stays[column].to_numpy(), want, err_msg=column)
    np.testing.assert_array_equal(cohort.stays["label"], reference.stays["label"])
    assert (cohort.stays["subject_id"] == cohort.stays.index).all()
    assert (cohort.stays["prediction_time"] == pd.Timestamp(PREDICTION)).all()
    assert (cohort.stays["hospital"] == "physionet-as-meds").all() and (cohort.stays["source"] == "icu").all()
    assert cohort.skipped == ()


@requires_physionet
def test_the_first_300_stays_of_set_a_read_alike_from_physionet_tables_and_meds(tmp_path):
    with tarfile.open(PHYSIONET_DIR / "set-a.tar.gz") as archive:
        members = {int(Path(m.name).stem): m for m in archive if re.fullmatch(r"(\./)?set-a/[0-9]+\.txt", m.name)}
        outcomes = parse_outcomes((PHYSIONET_DIR / "Outcomes-a.txt").read_text())
        ids = sorted(members)[:300]
        texts = {i: archive.extractfile(members[i]).read().decode() for i in ids}  # type: ignore[union-attr]
    records = [RawRecord(i, parse_record(texts[i]), outcomes[i]) for i in ids]
    reference = physionet2012.load(PHYSIONET_DIR, sets="a").subset(np.array(ids))
    assert len(reference) == 300 and len(reference.measurements) > 50_000

    folder = write_tables(records, tmp_path / "tables" / "site", "csv", descriptors="events", timing="time")
    from_tables = tables.from_source(DataSource(format="tables", data_dir=str(folder)))
    assert_same_inputs(from_tables, reference)
    pd.testing.assert_frame_equal(from_tables.measurements, reference.measurements)

    root, labels = write_meds(records, tmp_path / "meds")
    from_meds = read(root, labels)
    assert_same_inputs(from_meds, reference)
    pd.testing.assert_frame_equal(from_meds.measurements, reference.measurements)


# ------------------------------------------------- windows and examples


def test_the_window_is_the_48_hours_up_to_the_prediction_time(tmp_path, caplog):
    microsecond = timedelta(microseconds=1)
    events = [
        (7, None, "Age", 64.0),
        (7, None, "Weight", 80.0),
        (7, T0 - microsecond, "HR", 1.0),  # before the window
        (7, T0, "HR", 2.0),  # its first minute
        (7, T0, "Weight", 79.0),  # a measurement: the static Weight is the descriptor
        (7, at(30.5), "HR", 3.0),  # minute 30
        (7, PREDICTION, "HR", 4.0),  # the prediction time itself: minute 2880
        (7, PREDICTION + microsecond, "HR", 5.0),  # after it: never read
        (7, at(-600), "Height", 170.0),  # a descriptor long before: not one of this window
    ]
    root = meds_root(tmp_path, {"0": events})
    with caplog.at_level(logging.INFO, logger="fedicu"):
        cohort = read(root, labels_file(tmp_path, [(7, PREDICTION, True)]))
    assert list(cohort.stays.index) == [7]  # one label per subject: the stay id is the subject id
    assert (cohort.stays.loc[7, "age"], cohort.stays.loc[7, "weight"]) == (64.0, 80.0)
    assert np.isnan(cohort.stays.loc[7, "height"])
    assert rows(cohort) == [(7, 0, "HR", 2.0), (7, 0, "Weight", 79.0), (7, 30, "HR", 3.0), (7, 2880, "HR", 4.0)]
    assert cohort.stays["label"].tolist() == [1] and cohort.task == "in_hospital_death"
    assert any("left out 3 of 9 events (33.3%): times outside the 48 h input window" in r.getMessage()
               for r in caplog.records if r.levelno == logging.WARNING)  # fmt: skip


def test_several_labels_of_a_subject_are_several_examples(tmp_path):
    events = [
        (5, None, "Age", 70.0),
        (5, at(60), "HR", 1.0),
        (5, at(60 * 50), "HR", 2.0),
        (3, None, "Gender", 1.0),
        (3, at(10), "HR", 3.0),
    ]
    later = PREDICTION + timedelta(hours=24)
    labels = labels_file(tmp_path, [(5, later, True), (3, PREDICTION, False), (5, PREDICTION, False)])
    cohort = read(meds_root(tmp_path, {"0": events}), labels)
    stays = cohort.stays
    assert list(stays.index) == [1, 2, 3]  # numbered in (subject_id, prediction_time) order
    assert stays["subject_id"].tolist() == [3, 5, 5]
    assert stays["prediction_time"].tolist() == [
        pd.Timestamp(PREDICTION),
        pd.Timestamp(PREDICTION),
        pd.Timestamp(later),
    ]
    assert stays["label"].tolist() == [0, 0, 1]
    np.testing.assert_array_equal(stays["age"], [np.nan, 70, 70])  # static events belong to every window
    np.testing.assert_array_equal(stays["gender"], [1, np.nan, np.nan])
    assert rows(cohort) == [(1, 10, "HR", 3.0), (2, 60, "HR", 1.0), (3, 60 * 50 - 24 * 60, "HR", 2.0)]


def test_only_labelled_subjects_are_read(tmp_path):
    events = [(1, at(5), "HR", 80.0), (2, None, "Age", 50.0), (2, None, "Age", 51.0), (2, at(5), "HR", float("nan"))]
    cohort = read(meds_root(tmp_path, {"0": events}), labels_file(tmp_path, [(1, PREDICTION, False)]))
    assert rows(cohort) == [(1, 5, "HR", 80.0)]  # subject 2's conflicts are never looked at


# ------------------------------------------------- codes


def test_unmapped_codes_are_left_aside_and_listed_as_hints(tmp_path):
    events = [
        (1, None, "MEDS_BIRTH", None),
        (1, at(1), "ICD10//I21", None),  # no numeric value: no hint
        (1, at(2), "LAB//50931//mg/dL", 110.0),
        (1, at(3), "LAB//50931//mg/dL", 120.0),
        (1, at(4), "LAB//50912", 1.1),
        (1, at(5), "HR", 80.0),
        (2, at(6), "LAB//50912", 1.2),  # an unlabelled subject
    ]
    root = meds_root(tmp_path, {"0": events})
    labels = labels_file(tmp_path, [(1, PREDICTION, False)])
    cohort = read(root, labels)
    assert cohort.skipped == () and rows(cohort) == [(1, 5, "HR", 80.0)]
    source = DataSource(format="meds", data_dir=str(root), labels=str(labels))
    assert meds.unmapped_numeric_codes(source, top=5) == [("LAB//50931//mg/dL", 2), ("LAB//50912", 1)]
    assert meds.unmapped_numeric_codes(DataSource(format="meds", data_dir=str(root)), top=1) == [("LAB//50912", 2)]
    mapping = tmp_path / "mapping.toml"
    mapping.write_text('[variables]\nGlucose = "LAB//50931//mg/dL"\n')
    assert meds.unmapped_numeric_codes(DataSource(format="meds", data_dir=str(root), mapping=str(mapping)), top=5) == [
        ("LAB//50912", 2)
    ]


def test_a_mapping_maps_codes_and_converts_units(tmp_path):
    mapping = tmp_path / "mapping.toml"
    mapping.write_text(
        '[variables]\nGlucose = { codes = ["LAB//50809//mmol/L"], unit = "mmol/L" }\n'
        'Temp = { codes = ["CHART//223761"], unit = "°F" }\nAge = "AGE"\n'
    )
    events = [(1, None, "AGE", 66.0), (1, at(10), "LAB//50809//mmol/L", 5.0), (1, at(20), "CHART//223761", 98.6)]
    cohort = read(
        meds_root(tmp_path, {"0": events}), labels_file(tmp_path, [(1, PREDICTION, False)]), mapping=str(mapping)
    )
    assert cohort.stays.loc[1, "age"] == 66.0
    assert [r[:3] for r in rows(cohort)] == [(1, 10, "Glucose"), (1, 20, "Temp")]
    np.testing.assert_allclose([r[3] for r in rows(cohort)], [5.0 * 18.016, 37.0], rtol=1e-6)


def test_mapped_events_without_a_numeric_value_are_skipped_and_counted(tmp_path):
    events = [
        (1, at(1), "HR", None),
        (1, at(2), "HR", 80.0),
        (1, at(3), "DIAG", None),
        (1, at(4), "HR", None),
        (1, at(5), "Temp", None),
    ]
    root = meds_root(tmp_path, {"0": events})
    labels = labels_file(tmp_path, [(1, PREDICTION, False)])
    cohort = read(root, labels)
    shard = str(root / "data" / "0.parquet")
    assert cohort.skipped == (SkippedRows("HR", 2, shard, None), SkippedRows("Temp", 1, shard, None))
    assert rows(cohort) == [(1, 2, "HR", 80.0)]
    with pytest.raises(DataError) as raised:
        load_cohort(DataSource(format="meds", data_dir=str(root), labels=str(labels), strict=True))
    assert (
        raised.value.path == shard and "'HR', unknown or without a value (2 such rows in all)" in raised.value.message
    )


def test_a_shard_without_numeric_values_has_no_measurements(tmp_path):
    root = tmp_path / "icu"
    schema = pa.schema([("subject_id", pa.int64()), ("time", pa.timestamp("us")), ("code", pa.string())])
    write_parquet(root / "data" / "0.parquet", [(1, at(1), "HR")], schema)
    cohort = read(root, labels_file(tmp_path, [(1, PREDICTION, False)]))
    assert len(cohort.measurements) == 0 and cohort.skipped[0].name == "HR"


# ------------------------------------------------- the dataset and its labels


def test_the_hospital_is_the_dataset_name_else_the_folder_name(tmp_path):
    labels = labels_file(tmp_path, [(1, PREDICTION, False)])
    named = read(meds_root(tmp_path, {"0": [(1, at(1), "HR", 1.0)]}, name="a", dataset_name="MIMIC-IV"), labels)
    assert named.stays["hospital"].tolist() == ["MIMIC-IV"] and named.stays["source"].tolist() == ["a"]
    unnamed = read(meds_root(tmp_path, {"0": [(1, at(1), "HR", 1.0)]}, name="b"), labels)
    assert unnamed.stays["hospital"].tolist() == ["b"]
    (tmp_path / "b" / "metadata").mkdir()
    (tmp_path / "b" / "metadata" / "dataset.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON") as raised:
        read(tmp_path / "b", labels)
    assert raised.value.path == str(tmp_path / "b" / "metadata" / "dataset.json")


def test_labels_are_required_and_must_be_there(tmp_path):
    root = meds_root(tmp_path, {"0": [(1, at(1), "HR", 1.0)]})
    with pytest.raises(DataError, match="--labels is required for --data-format meds"):
        read(root, "")
    with pytest.raises(DataError, match="label file or folder does not exist") as raised:
        read(root, tmp_path / "absent.parquet")
    assert raised.value.path == str(tmp_path / "absent.parquet")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no \.parquet label files"):
        read(root, tmp_path / "empty")
    with pytest.raises(DataError, match="not a MEDS dataset: no data/") as raised:
        read(tmp_path / "empty", labels_file(tmp_path, [(1, PREDICTION, False)]))
    assert raised.value.path == str(tmp_path / "empty")


def bad_label_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    ok = [(1, PREDICTION, False)]
    return {
        "extra column": (
            write_parquet(tmp_path / "x.parquet", [(*ok[0], "a")], LABEL_SCHEMA.append(pa.field("note", pa.string()))),
            "not a MEDS label file: Disallowed extra columns: note",
        ),
        "no boolean_value": (
            write_parquet(tmp_path / "n.parquet", [(1, PREDICTION, 1)], pa.schema([LABEL_SCHEMA[0], LABEL_SCHEMA[1], pa.field("integer_value", pa.int64())])),
            "has no boolean_value column",
        ),
        "nanosecond times": (
            write_parquet(tmp_path / "t.parquet", ok, pa.schema([LABEL_SCHEMA[0], pa.field("prediction_time", pa.timestamp("ns")), LABEL_SCHEMA[2]])),
            "prediction_time (want timestamp[us], got timestamp[ns])",
        ),
        "null label": (
            write_parquet(tmp_path / "l.parquet", [(1, PREDICTION, None)], LABEL_SCHEMA),
            "should have no nulls but do: boolean_value",
        ),
        "repeated label": (
            write_parquet(tmp_path / "r.parquet", ok + ok, LABEL_SCHEMA),
            "subject 1 has two labels at prediction_time",
        ),
        "not parquet": ((tmp_path / "p.parquet"), "cannot be read as Parquet"),
    }  # fmt: skip


@pytest.mark.parametrize(
    "case", ["extra column", "no boolean_value", "nanosecond times", "null label", "repeated label", "not parquet"]
)
def test_bad_label_files_are_refused_by_name(tmp_path, case):
    (tmp_path / "p.parquet").write_bytes(b"PAR1 nope")
    path, message = bad_label_files(tmp_path)[case]
    root = meds_root(tmp_path, {"0": [(1, at(1), "HR", 1.0)]})
    with pytest.raises(DataError) as raised:
        read(root, path)
    assert raised.value.path == str(path)
    assert message in raised.value.message, raised.value.message


BAD_SHARDS: dict[str, tuple[pa.Schema, list[tuple], str]] = {  # case: (schema, rows, part of the message)
    "nanosecond times": (
        pa.schema([DATA_SCHEMA[0], pa.field("time", pa.timestamp("ns")), DATA_SCHEMA[2], DATA_SCHEMA[3]]),
        [(1, at(1), "HR", 1.0)],
        "not a MEDS data file: Columns with incorrect types: time (want timestamp[us], got timestamp[ns])",
    ),
    "32-bit subject ids": (
        pa.schema([pa.field("subject_id", pa.int32()), *list(DATA_SCHEMA)[1:]]),
        [(1, at(1), "HR", 1.0)],
        "subject_id (want int64, got int32)",
    ),
    "64-bit values": (
        pa.schema([*list(DATA_SCHEMA)[:3], pa.field("numeric_value", pa.float64())]),
        [(1, at(1), "HR", 1.0)],
        "numeric_value (want float, got double)",
    ),
    "no code": (pa.schema(list(DATA_SCHEMA)[:2]), [(1, at(1))], "Missing required columns: code"),
    "a null code": (DATA_SCHEMA, [(1, at(1), None, 1.0)], "should have no nulls but do: code"),
    "a NaN value": (DATA_SCHEMA, [(1, at(1), "HR", float("nan"))], "HR: value is missing or NaN"),
    "disagreeing statics": (DATA_SCHEMA, [(1, None, "Age", 50.0), (1, None, "Age", 51.0)], "stay 1: Age 51 conflicts with 50"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_SHARDS)
def test_bad_data_shards_are_refused_by_name(tmp_path, case):
    schema, shard_rows, message = BAD_SHARDS[case]
    root = meds_root(tmp_path, {"0": [(1, at(1), "HR", 1.0)]})
    bad = write_parquet(root / "data" / "1" / "bad.parquet", shard_rows, schema)
    with pytest.raises(DataError) as raised:
        read(root, labels_file(tmp_path, [(1, PREDICTION, False)]))
    assert raised.value.path == str(bad)
    assert message in raised.value.message, raised.value.message


def test_labelled_subjects_without_any_event_are_left_out_and_counted(tmp_path, caplog):
    root = meds_root(tmp_path, {"0": [(1, at(5), "HR", 80.0), (2, at(5), "HR", 90.0)]})
    labels = labels_file(tmp_path, [(1, PREDICTION, True), (2, PREDICTION, False), (99, PREDICTION, False)])
    with caplog.at_level(logging.WARNING, logger="fedicu"):
        cohort = read(root, labels)
    assert list(cohort.stays.index) == [1, 2]
    assert any("1 of 3 labelled subjects have no event in data/" in r.getMessage() for r in caplog.records)
    elsewhere = labels_file(tmp_path, [(98, PREDICTION, True), (99, PREDICTION, False)], "other.parquet")
    with pytest.raises(DataError, match="none of the 2 labelled subjects has an event in data/"):
        read(root, elsewhere)
