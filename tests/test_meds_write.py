"""MEDS writer: schemas, exact events and timestamps, static descriptors, labels, atomic writes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import meds
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from fedicu.shared.cohort import Cohort
from fedicu.shared.datasets import DataSource, meds_write, synthetic
from fedicu.shared.datasets import meds as meds_reader
from fedicu.shared.variables import TIME_SERIES

DESCRIPTORS = {"Age": "age", "Gender": "gender", "Height": "height", "ICUType": "icu_type", "Weight": "weight"}


@pytest.fixture(scope="module")
def cohort() -> Cohort:
    return synthetic.generate(hospitals=2, stays=60, seed=0)


@pytest.fixture(scope="module")
def written(cohort, tmp_path_factory):
    return meds_write.write(cohort, tmp_path_factory.mktemp("meds") / "synthetic")


def read(root, path) -> pd.DataFrame:
    return pq.read_table(root / path).to_pandas()


def test_every_table_passes_the_meds_schemas(written):
    assert sorted(str(p.relative_to(written)) for p in written.rglob("*") if p.is_file()) == [
        "data/0.parquet",
        "labels/in_hospital_death.parquet",
        "metadata/codes.parquet",
        "metadata/dataset.json",
    ]
    meds.DataSchema.validate(pq.read_table(written / "data/0.parquet"))
    meds.LabelSchema.validate(pq.read_table(written / "labels/in_hospital_death.parquet"))
    meds.CodeMetadataSchema.validate(pq.read_table(written / meds.code_metadata_filepath))
    metadata = json.loads((written / meds.dataset_metadata_filepath).read_text())
    meds.DatasetMetadataSchema.validate(metadata)
    assert metadata["dataset_name"] == "synthetic"
    assert metadata["etl_name"] == "fedicu"
    assert metadata["etl_version"] and metadata["etl_version"] != "unknown"
    assert metadata["meds_version"] == meds.__version__
    assert metadata["site_id_columns"] == ["hospital"]


def test_data_is_sorted_by_subject_then_time_with_static_events_first(written):
    data = read(written, "data/0.parquet")
    assert data["subject_id"].is_monotonic_increasing
    static_rank = data["time"].isna().map({True: 0, False: 1})
    key = pd.DataFrame({"s": data["subject_id"], "r": static_rank, "t": data["time"].fillna(pd.Timestamp(0))})
    assert key.equals(key.sort_values(["s", "r", "t"], kind="stable"))


def test_measurements_are_exactly_the_cohort_s_at_admission_plus_minute(cohort, written):
    data = read(written, "data/0.parquet")
    timed = data[data["time"].notna()]
    got = pd.DataFrame(
        {
            "stay_id": timed["subject_id"].to_numpy(),
            "minute": ((timed["time"] - meds_write.DEFAULT_ADMISSION) // pd.Timedelta(minutes=1)).to_numpy(),
            "variable": timed["code"].to_numpy(),
            "value": timed["numeric_value"].to_numpy(),
        }
    )
    want = cohort.measurements.astype({"variable": str, "minute": "int64"})
    order = ["stay_id", "minute", "variable", "value"]
    pd.testing.assert_frame_equal(
        got.sort_values(order, ignore_index=True), want.sort_values(order, ignore_index=True), check_dtype=False
    )
    assert set(got["variable"]) <= set(TIME_SERIES)


def test_descriptors_are_static_events_and_missing_ones_are_not_written(cohort, written):
    data = read(written, "data/0.parquet")
    static = data[data["time"].isna()]
    assert set(static["code"]) == set(DESCRIPTORS)
    for code, column in DESCRIPTORS.items():
        values = static[static["code"] == code].set_index("subject_id")["numeric_value"]
        recorded = cohort.stays[column].dropna()
        assert sorted(values.index) == sorted(recorded.index)
        np.testing.assert_array_equal(values.loc[recorded.index], recorded.to_numpy(dtype=np.float32))
    assert cohort.stays["height"].isna().any()  # the synthetic cohort has stays without a height


def test_every_stay_is_a_subject_with_its_hospital(cohort, written):
    data = read(written, "data/0.parquet")
    assert set(data["subject_id"]) == set(cohort.stays.index)
    assert data.groupby("subject_id")["hospital"].nunique().eq(1).all()
    hospital = data.drop_duplicates("subject_id").set_index("subject_id")["hospital"]
    assert hospital.to_dict() == cohort.stays["hospital"].to_dict()


def test_labels_are_the_cohort_s_at_48_hours_after_admission(cohort, written):
    labels = read(written, "labels/in_hospital_death.parquet")
    assert labels["subject_id"].tolist() == sorted(cohort.stays.index)
    assert (labels["prediction_time"] == datetime(2000, 1, 3)).all()
    want = cohort.stays["label"].sort_index().astype(bool)
    assert labels["boolean_value"].tolist() == want.tolist()


def test_codes_metadata_describes_every_code_written(written):
    codes = read(written, meds.code_metadata_filepath)
    data_codes = set(read(written, "data/0.parquet")["code"])
    assert data_codes <= set(codes["code"])
    assert codes["code"].is_unique
    assert codes["description"].str.len().gt(0).all()
    assert set(codes["code"]) == set(TIME_SERIES) | set(DESCRIPTORS)


def test_the_meds_reader_reads_the_same_cohort_back(cohort, written):
    labels = written / "labels" / "in_hospital_death.parquet"
    back = meds_reader.from_source(DataSource(format="meds", data_dir=str(written), labels=str(labels)))
    columns = ["age", "gender", "height", "weight", "icu_type", "label"]
    want = cohort.stays[columns].sort_index()
    want[columns[:-1]] = want[columns[:-1]].astype(np.float32).astype(np.float64)  # MEDS values are float32
    pd.testing.assert_frame_equal(back.stays[columns].sort_index(), want)
    order = ["stay_id", "minute", "variable", "value"]
    pd.testing.assert_frame_equal(
        back.measurements.sort_values(order, ignore_index=True),
        cohort.measurements.sort_values(order, ignore_index=True),
    )
    assert back.skipped == ()


def test_a_chosen_admission_shifts_every_time(cohort, tmp_path):
    admission = datetime(2150, 6, 1, 7, 30)
    root = meds_write.write(cohort.subset(cohort.stays.index[:3]), tmp_path / "m", admission=admission)
    data = read(root, "data/0.parquet")
    assert data["time"].min() >= admission
    assert data["time"].max() <= admission + timedelta(hours=48)
    labels = read(root, "labels/in_hospital_death.parquet")
    assert (labels["prediction_time"] == admission + timedelta(hours=48)).all()
    with pytest.raises(ValueError, match="naive"):
        meds_write.write(cohort, tmp_path / "aware", admission=datetime(2000, 1, 1, tzinfo=UTC))


def test_write_refuses_to_overwrite(cohort, written):
    before = (written / "data/0.parquet").read_bytes()
    with pytest.raises(FileExistsError):
        meds_write.write(cohort, written)
    assert (written / "data/0.parquet").read_bytes() == before


def test_an_interrupted_write_leaves_nothing(cohort, tmp_path, monkeypatch):
    calls = []
    original = pq.write_table

    def fail_on_the_labels(table, where, **kwargs):
        calls.append(where)
        if len(calls) == 3:
            raise OSError("disk full")
        return original(table, where, **kwargs)

    monkeypatch.setattr(meds_write.pq, "write_table", fail_on_the_labels)
    with pytest.raises(OSError, match="disk full"):
        meds_write.write(cohort, tmp_path / "meds")
    assert len(calls) == 3
    assert list(tmp_path.iterdir()) == []  # no dataset, no staging folder


@pytest.mark.parametrize(
    ("index", "message"),
    [
        (pd.Index([-1, 2, 3], name="stay_id", dtype="int64"), "non-negative"),
        (pd.Index([1.5, 2.0, 3.0], name="stay_id"), "integers"),
        (pd.Index(["a", "b", "c"], name="stay_id"), "integers"),
    ],
)
def test_stay_ids_that_cannot_be_subject_ids_are_refused(cohort, tmp_path, index, message):
    stays = cohort.stays.iloc[:3].copy()
    stays.index = index
    bad = Cohort(stays=stays, measurements=cohort.measurements.iloc[:0])
    with pytest.raises(ValueError, match=message):
        meds_write.write(bad, tmp_path / "meds")
    assert not (tmp_path / "meds").exists()


def test_measurements_meds_cannot_hold_as_described_are_refused(cohort, tmp_path):
    def with_measurements(change) -> Cohort:
        measurements = cohort.measurements.copy()
        change(measurements)
        return Cohort(stays=cohort.stays, measurements=measurements)

    cases = {
        "not in cohort.stays": lambda m: m.__setitem__("stay_id", m["stay_id"].where(m.index > 0, 5)),
        "0..2880": lambda m: m.__setitem__("minute", m["minute"].where(m.index > 0, 2881)),
        "finite": lambda m: m.__setitem__("value", m["value"].where(m.index > 0, np.nan)),
        "missing variable": lambda m: m.__setitem__("variable", m["variable"].where(m.index > 0)),
    }
    for message, change in cases.items():
        with pytest.raises(ValueError, match=message):
            meds_write.write(with_measurements(change), tmp_path / "meds")
    labels = cohort.stays.assign(label=cohort.stays["label"].where(cohort.stays.index > 100000, 2))
    with pytest.raises(ValueError, match="0 or 1"):
        meds_write.write(Cohort(stays=labels, measurements=cohort.measurements), tmp_path / "meds")
    assert list(tmp_path.iterdir()) == []
