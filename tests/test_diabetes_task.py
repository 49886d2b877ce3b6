"""Diabetes complication labels from a MEDS dataset: exact subjects, times and values; the ACES twin."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import meds
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fedicu.shared.datasets.diabetes_task import DIABETES_COMPLICATIONS, LabelSummary, extract_labels
from fedicu.shared.errors import DataError

ACES_CONFIG = Path(__file__).resolve().parents[1] / "simulations" / "tasks" / "diabetes_complications.yaml"
HOUR = timedelta(hours=1)
ICU_AFTER = 3 * HOUR  # ICU admission this long after hospital admission
NOT_MATCHING = [  # background diagnoses: neither diabetes nor a complication
    "DIAGNOSIS//ICD//10//I10", "DIAGNOSIS//ICD//10//J189", "DIAGNOSIS//ICD//10//N189",
    "DIAGNOSIS//ICD//9//4019", "DIAGNOSIS//ICD//9//5859", "DIAGNOSIS//ICD//9//E9323",
]  # fmt: skip


def dx9(code: str) -> str:
    return f"DIAGNOSIS//ICD//9//{code}"


def dx10(code: str) -> str:
    return f"DIAGNOSIS//ICD//10//{code}"


class Subject:
    """One subject's events, built admission by admission as the MEDS MIMIC-IV ETL spells and dates them."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.start = datetime(2150, 1, 1) + timedelta(
            days=int(rng.integers(0, 3000)), minutes=int(rng.integers(0, 1440))
        )
        self.events: list[tuple[datetime | None, str]] = [(None, "GENDER//F"), (None, "MEDS_BIRTH")]

    def admission(
        self,
        days_later: float = 0,
        icu_hours: float | None = 72,
        discharge_hours: float | None = 120,
        diagnoses: tuple[str, ...] = (),
        extra: tuple[tuple[float, str], ...] = (),
    ) -> datetime | None:
        """Add one hospital admission; return its ICU admission time (None without an ICU stay).

        Times are hours after the ICU admission; the admission's diagnoses are dated at its discharge.
        """
        admit = self.start + timedelta(days=days_later)
        icu_in = admit + ICU_AFTER
        self.events.append((admit, "HOSPITAL_ADMISSION//EW EMER.//EMERGENCY ROOM"))
        if icu_hours is not None:
            unit = self.rng.choice(["Medical Intensive Care Unit (MICU)", "Coronary Care Unit (CCU)"])
            self.events += [(icu_in, f"ICU_ADMISSION//{unit}"), (icu_in + icu_hours * HOUR, f"ICU_DISCHARGE//{unit}")]
            self.events += [(icu_in + h * HOUR, "LAB//220045//bpm") for h in range(int(icu_hours))]
        if discharge_hours is not None:
            discharge = icu_in + discharge_hours * HOUR
            background = tuple(self.rng.choice(NOT_MATCHING, size=2, replace=False))
            self.events.append((discharge, "HOSPITAL_DISCHARGE//HOME"))
            self.events += [(discharge, code) for code in diagnoses + background]
        self.events += [(icu_in + hours * HOUR, code) for hours, code in extra]
        return icu_in if icu_hours is not None else None


def build_cohort(seed: int = 0) -> tuple[dict[int, Subject], pd.DataFrame]:
    """Subjects covering every rule of the definition, and the labels the definition gives them."""
    rng = np.random.default_rng(seed)
    subjects: dict[int, Subject] = {}
    expected: list[tuple[int, datetime, bool]] = []

    def subject(subject_id: int) -> Subject:
        subjects[subject_id] = Subject(rng)
        return subjects[subject_id]

    def label(subject_id: int, icu_in: datetime | None, value: bool) -> None:
        assert icu_in is not None
        expected.append((subject_id, icu_in + 48 * HOUR, value))

    # Labelled: diabetic, first ICU stay of more than 48 h, discharged afterwards.
    label(101, subject(101).admission(diagnoses=(dx10("E119"), dx10("N179"))), True)  # AKI
    label(102, subject(102).admission(diagnoses=(dx9("25000"),)), False)
    label(103, subject(103).admission(diagnoses=(dx9("25013"),)), True)  # DKA: diabetes and complication
    label(104, subject(104).admission(diagnoses=(dx10("E11649"),)), True)  # hypoglycaemia
    label(105, subject(105).admission(diagnoses=(dx10("E1122"), dx10("E1165"))), False)  # chronic, hyperglycaemia
    label(117, subject(117).admission(diagnoses=(dx9("24900"), dx9("5849"))), True)  # secondary diabetes, AKI
    label(118, subject(118).admission(diagnoses=(dx10("E0800"),)), True)  # hyperosmolarity
    just_over = subject(119).admission(icu_hours=48.5, discharge_hours=49, diagnoses=(dx10("E109"),))
    label(119, just_over, False)  # in the ICU for just over 48 h
    # A DKA coded at an earlier admission: diabetic by history, but before the prediction time.
    earlier = subject(111)
    earlier.admission(icu_hours=None, discharge_hours=50, diagnoses=(dx10("E119"), dx10("E1110")))
    label(111, earlier.admission(days_later=30), False)
    # Only the first ICU stay counts: the complication of a later admission does not.
    twice = subject(113)
    label(113, twice.admission(icu_hours=60, diagnoses=(dx10("E119"),)), False)
    twice.admission(days_later=60, diagnoses=(dx10("E119"), dx10("N170")))
    # A complication exactly at the prediction time is not after it.
    label(114, subject(114).admission(diagnoses=(dx10("E119"),), extra=((48, dx10("E1110")),)), False)

    # Left out.
    subject(106).admission(icu_hours=30, diagnoses=(dx10("E119"), dx10("N179")))  # left the ICU within 48 h
    subject(107).admission(icu_hours=48, diagnoses=(dx10("E119"), dx10("N179")))  # left at exactly 48 h
    subject(108).admission(diagnoses=(dx10("E119"), dx10("N179")), extra=((20, "MEDS_DEATH"),))  # died in ICU
    first_short = subject(112)  # first ICU stay too short; a later qualifying one is not used
    first_short.admission(icu_hours=24, diagnoses=(dx10("E119"),))
    first_short.admission(days_later=40, diagnoses=(dx10("E119"), dx10("N179")))
    subject(115).admission(discharge_hours=None, extra=((1, dx10("E119")), (60, dx10("N179"))))  # no discharge
    subject(109).admission(diagnoses=(dx10("I10"), dx10("N179")))  # not diabetic
    static_only = subject(110)  # a diabetes code without a time does not count
    static_only.admission(diagnoses=(dx10("N179"),))
    static_only.events.append((None, dx10("E119")))
    subject(116).admission(icu_hours=None, diagnoses=(dx10("E119"), dx10("N179")))  # never in an ICU

    labels = pd.DataFrame(expected, columns=["subject_id", "prediction_time", "boolean_value"])
    labels["prediction_time"] = labels["prediction_time"].astype("datetime64[us]")
    return subjects, labels.sort_values("subject_id", ignore_index=True)


def write_meds(subjects: dict[int, Subject], root: Path) -> Path:
    """A MEDS root with two shards in subfolders, each sorted by subject then time (static events first)."""
    rows = [(sid, time, code) for sid, s in subjects.items() for time, code in s.events]
    events = pd.DataFrame(rows, columns=["subject_id", "time", "code"])
    events["time"] = events["time"].astype("datetime64[us]")
    events["numeric_value"] = np.where(events["code"].str.startswith("LAB//"), 80.0, np.nan).astype(np.float32)
    events["hadm_id"] = 1  # an extra column, as MIMIC-IV's ETL writes
    events = events.sort_values(["subject_id", "time"], na_position="first", kind="stable")
    schema = pa.schema(
        [("subject_id", pa.int64()), ("time", pa.timestamp("us")), ("code", pa.string()),
         ("numeric_value", pa.float32()), ("hadm_id", pa.int64())]
    )  # fmt: skip
    for shard, part in (("train", events["subject_id"] % 2 == 0), ("held_out", events["subject_id"] % 2 == 1)):
        table = pa.Table.from_pandas(events[part], schema=schema, preserve_index=False)
        meds.DataSchema.validate(table)
        (root / "data" / shard).mkdir(parents=True)
        pq.write_table(table, root / "data" / shard / "0.parquet")
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    subjects, expected = build_cohort(seed=0)
    return write_meds(subjects, tmp_path_factory.mktemp("meds")), subjects, expected


@pytest.fixture(scope="module")
def extracted(dataset, tmp_path_factory):
    root, _, _ = dataset
    out = tmp_path_factory.mktemp("labels") / "labels" / "diabetes.parquet"
    return out, extract_labels(root, out)


def test_labels_are_exactly_the_expected_subjects_times_and_values(dataset, extracted):
    _, _, expected = dataset
    out, _ = extracted
    pd.testing.assert_frame_equal(pq.read_table(out).to_pandas(), expected)


def test_the_label_file_passes_the_meds_label_schema(extracted):
    out, _ = extracted
    table = pq.read_table(out)
    meds.LabelSchema.validate(table)
    assert table.schema.names == ["subject_id", "prediction_time", "boolean_value"]


def test_the_summary_counts_each_exclusion(extracted):
    _, summary = extracted
    assert summary == LabelSummary(
        subjects_with_icu_stay=18,  # 101..119 but 116
        left_icu_within_window=4,  # 106, 107, 108, 112
        no_hospital_discharge=1,  # 115
        not_diabetic=2,  # 109, 110
        labels=11,
        positives=5,  # 101, 103, 104, 117, 118
    )
    assert summary.prevalence == pytest.approx(5 / 11)
    assert summary.describe().startswith("11 labels (5 positive, 45.5%) from 18 subjects with an ICU stay")


@pytest.mark.parametrize("seed", [1, 2])
def test_other_draws_of_dates_and_background_codes_give_the_same_labels(tmp_path, seed):
    subjects, expected = build_cohort(seed)
    summary = extract_labels(write_meds(subjects, tmp_path / "meds"), tmp_path / "labels.parquet")
    pd.testing.assert_frame_equal(pq.read_table(tmp_path / "labels.parquet").to_pandas(), expected)
    assert summary.labels == len(expected)


def test_vocabulary_prefixes_are_configurable(tmp_path):
    subjects, expected = build_cohort(seed=0)
    for s in subjects.values():
        s.events = [(t, c.replace("DIAGNOSIS//ICD//10//", "ICD10CM/").replace("ICU_", "ICU//")) for t, c in s.events]
    task = replace(
        DIABETES_COMPLICATIONS,
        icd10="ICD10CM/",
        icu_admission=("ICU//ADMISSION//",),
        icu_discharge=("ICU//DISCHARGE//",),
    )
    root = write_meds(subjects, tmp_path / "meds")
    extract_labels(root, tmp_path / "labels.parquet", task)
    pd.testing.assert_frame_equal(pq.read_table(tmp_path / "labels.parquet").to_pandas(), expected)
    no_icu_stay = r"no ICU stay qualifies: 0 labels \(0 positive\) .* starts with ICU_ADMISSION//"
    with pytest.raises(DataError, match=no_icu_stay):
        extract_labels(root, tmp_path / "default.parquet")  # the default spelling finds no ICU stay
    assert not (tmp_path / "default.parquet").exists()


def test_a_longer_input_window_moves_the_prediction_time_and_drops_shorter_stays(dataset, tmp_path):
    root, _, expected = dataset
    extract_labels(root, tmp_path / "labels.parquet", replace(DIABETES_COMPLICATIONS, input_window=60 * HOUR))
    got = pq.read_table(tmp_path / "labels.parquet").to_pandas()
    kept = expected[~expected["subject_id"].isin([113, 119])]  # their stays last 60 h and 48.5 h
    assert got["subject_id"].tolist() == kept["subject_id"].tolist()
    assert (got["prediction_time"] - kept["prediction_time"].to_numpy() == 12 * HOUR).all()


def test_an_existing_label_file_is_not_overwritten(dataset, extracted):
    root, _, _ = dataset
    out, _ = extracted
    before = out.read_bytes()
    with pytest.raises(FileExistsError):
        extract_labels(root, out)
    assert out.read_bytes() == before


def test_a_folder_that_is_not_a_meds_root_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="not a MEDS dataset root"):
        extract_labels(tmp_path, tmp_path / "labels.parquet")
    (tmp_path / "data").mkdir()
    with pytest.raises(DataError, match="no Parquet files"):
        extract_labels(tmp_path, tmp_path / "labels.parquet")
    pq.write_table(pa.table({"subject_id": [1], "when": [datetime(2150, 1, 1)]}), tmp_path / "data" / "0.parquet")
    with pytest.raises(DataError, match="MEDS data schema"):
        extract_labels(tmp_path, tmp_path / "labels.parquet")


# ------------------------------------------------------------------------------ ACES


@pytest.fixture(scope="module")
def aces():
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load(ACES_CONFIG.read_text())


# Codes near the boundaries of the lists, in (24910, 5845, E0801, E11641, ...) and out (2494, E9320, E1169, ...).
TRICKY_ICD9 = "249 2490 24910 2494 250 25002 25040 25082 2513 584 5845 E8497 E9320 N179"
TRICKY_ICD10 = "E08 E0801 E0965 E1010 E1011 E1065 E1100 E11641 E1169 E12 E1300 E1364 E149 E160 E163 N17 N19 O2441 2500"


def aces_matches(predicate: dict, code: str) -> bool:
    return re.search(predicate["code"]["regex"], code) is not None  # ACES: polars str.contains


def test_the_aces_predicates_match_the_same_codes_as_the_python_definition(aces, dataset):
    _, subjects, _ = dataset
    codes = {code for s in subjects.values() for _, code in s.events}
    codes |= {dx9(c) for c in TRICKY_ICD9.split()}
    codes |= {dx10(c) for c in TRICKY_ICD10.split()}
    predicates, task = aces["predicates"], DIABETES_COMPLICATIONS
    for name, prefixes in [
        ("diabetes", task.diabetes),
        ("complication", task.complication),
        ("icu_admission", task.icu_admission),
        ("icu_discharge", task.icu_discharge),
        ("hospital_discharge", task.hospital_discharge),
        ("death", task.death),
    ]:
        aces_codes = {c for c in codes if aces_matches(predicates[name], c)}
        python_codes = {c for c in codes if c.startswith(prefixes)}
        assert aces_codes == python_codes, name
        assert python_codes, name  # the comparison is not vacuous


def test_the_aces_windows_follow_the_python_definition(aces):
    windows, hours = aces["windows"], int(DIABETES_COMPLICATIONS.input_window / HOUR)
    assert aces["trigger"] == "icu_admission"
    assert aces["predicates"]["icu_discharge_or_death"]["expr"] == "or(icu_discharge, death)"
    assert windows["earlier_icu_stays"]["has"] == {"icu_admission": "(None, 0)"}
    assert windows["input"]["end"] == f"trigger + {hours}h" and windows["input"]["index_timestamp"] == "end"
    assert windows["still_in_icu"] == {
        "start": "trigger",
        "end": f"start + {hours}h",
        "start_inclusive": True,
        "end_inclusive": True,
        "has": {"icu_discharge_or_death": "(None, 0)"},
    }
    assert windows["target"] == {
        "start": "input.end",
        "end": "start -> hospital_discharge",
        "start_inclusive": False,
        "end_inclusive": True,
        "label": "complication",
    }
    assert windows["diabetes_history"] == {
        "start": None,
        "end": "target.end",
        "start_inclusive": True,
        "end_inclusive": True,
        "has": {"diabetes": "(1, None)"},
    }
