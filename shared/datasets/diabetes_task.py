"""Diabetes complications 48 hours into an ICU stay: a label file from a MEDS dataset.

The task fedicu's model was first built for: from the vitals of a diabetic
patient's first 48 hours in the ICU, predict an acute diabetic complication
later in the same hospital admission. `extract_labels(meds_root, out_path)`
writes its labels as a MEDS label file (subject_id, prediction_time,
boolean_value); `simulations/tasks/diabetes_complications.yaml` is the same
definition for ACES (`aces-cli`), and docs/diabetes-task.md the user's guide.

Definition (`DiabetesTask`, defaults spelt as the MEDS MIMIC-IV ETL writes codes;
every code is matched by prefix):

1. ICU stays: the subject's first `ICU_ADMISSION//...` event. Only the first
   stay counts, so that each subject gives one label and no stay is scored with
   the outcome of an earlier one; a subject whose first stay does not qualify
   gives no label (later stays are not tried, as in the ACES file).
2. At least 48 h in the ICU: no `ICU_DISCHARGE//...` and no `MEDS_DEATH` from
   admission T to T + 48 h, both included. The patient is in the ICU at
   `prediction_time = T + 48 h`, the end of the input window.
3. Label window: from prediction_time (excluded) to the first
   `HOSPITAL_DISCHARGE//...` after it (included). Stays without one are left
   out: their outcome is unknown.
4. Diabetic: a diabetes code at any time up to that hospital discharge
   (included). MIMIC-IV dates every diagnosis of an admission at its
   discharge, so requiring the code before prediction_time would keep only
   patients with an earlier diabetic admission.
5. Label: true if a complication code falls in the label window. Codes of
   earlier admissions (dated at their own discharge, before the ICU stay) do
   not count.

Diabetes (`DIAGNOSIS//ICD//9//` + 249, 250; `DIAGNOSIS//ICD//10//` + E08, E09,
E10, E11, E13): all diabetes mellitus. ICD-9 249 (secondary diabetes) is the
counterpart of ICD-10 E08, E09 and E13, so both eras of MIMIC-IV (ICD-9 until
October 2015, ICD-10 after) select the same patients. ICD-10-CM has no E12.
Gestational diabetes (ICD-9 648.0, ICD-10 O24) is not included.

Complications: the acute metabolic emergencies of diabetes and acute kidney
injury, which show in vitals (tachycardia, hypotension, fever) and unfold over
hours to days. Chronic complications (nephropathy, retinopathy, neuropathy,
angiopathy: ICD-9 250.4-250.7, ICD-10 E1x.2-E1x.5) are left out: they predate
the stay and are not predictable from 48 h of vitals.

    ketoacidosis           ICD-9 249.1, 250.1    ICD-10 E08.1, E09.1, E10.1, E11.1, E13.1
    hyperosmolar state     ICD-9 249.2, 250.2    ICD-10 E08.0, E09.0, E11.0, E13.0
    other coma             ICD-9 249.3, 250.3    (ICD-10 codes coma under its cause: E11.01, E11.641, ...)
    other manifestations   ICD-9 249.8, 250.8    (where ICD-9 codes diabetic hypoglycaemia)
    hypoglycaemia          ICD-9 251.0-251.2     ICD-10 E08.64, E09.64, E10.64, E11.64, E13.64,
                                                 E16.0-E16.2
    acute kidney injury    ICD-9 584             ICD-10 N17

ICD-9 250.8 also holds some non-acute manifestations (e.g. diabetic ulcers), so
ICD-9-era positives are slightly broader than ICD-10 ones; drop "2498" and
"2508" from `complication_icd9` to trade that for missed ICD-9 hypoglycaemia.
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import meds
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from flexible_schema.exceptions import SchemaValidationError

from fedicu.shared.errors import DataError
from fedicu.shared.files import atomic_file

TASK_NAME = "diabetes_complications"  # the --task of models trained on these labels


@dataclass(frozen=True)
class DiabetesTask:
    """The task's codes (all prefixes of MEDS codes) and its input window.

    `icd9` and `icd10` are the spelling of a diagnosis code's vocabulary,
    prepended to each ICD code listed (MEDS MIMIC-IV: `DIAGNOSIS//ICD//9//25010`;
    ICD codes without their dot, as MIMIC-IV stores them).
    """

    icd9: str = "DIAGNOSIS//ICD//9//"
    icd10: str = "DIAGNOSIS//ICD//10//"
    diabetes_icd9: tuple[str, ...] = ("249", "250")
    diabetes_icd10: tuple[str, ...] = ("E08", "E09", "E10", "E11", "E13")
    complication_icd9: tuple[str, ...] = (
        "2491", "2492", "2493", "2498", "2501", "2502", "2503", "2508", "2510", "2511", "2512", "584",
    )  # fmt: skip
    complication_icd10: tuple[str, ...] = (
        "E081", "E091", "E101", "E111", "E131",  # ketoacidosis
        "E080", "E090", "E110", "E130",  # hyperosmolarity
        "E0864", "E0964", "E1064", "E1164", "E1364", "E160", "E161", "E162",  # hypoglycaemia
        "N17",  # acute kidney failure
    )  # fmt: skip
    icu_admission: tuple[str, ...] = ("ICU_ADMISSION//",)
    icu_discharge: tuple[str, ...] = ("ICU_DISCHARGE//",)
    hospital_discharge: tuple[str, ...] = ("HOSPITAL_DISCHARGE//",)
    death: tuple[str, ...] = (meds.death_code,)
    input_window: timedelta = timedelta(hours=48)

    @property
    def diabetes(self) -> tuple[str, ...]:
        return _prefixed(self.icd9, self.diabetes_icd9) + _prefixed(self.icd10, self.diabetes_icd10)

    @property
    def complication(self) -> tuple[str, ...]:
        return _prefixed(self.icd9, self.complication_icd9) + _prefixed(self.icd10, self.complication_icd10)

    @property
    def all_prefixes(self) -> tuple[str, ...]:
        return (
            self.icu_admission + self.icu_discharge + self.hospital_discharge + self.death
            + self.diabetes + self.complication
        )  # fmt: skip


def _prefixed(vocabulary: str, codes: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(vocabulary + code for code in codes)


DIABETES_COMPLICATIONS = DiabetesTask()


@dataclass(frozen=True)
class LabelSummary:
    """What extraction kept and left out, in the order of the definition's steps."""

    subjects_with_icu_stay: int  # subjects with an ICU admission event
    left_icu_within_window: int  # first stays ended by ICU discharge or death within the input window
    no_hospital_discharge: int  # no hospital discharge after prediction_time: outcome unknown
    not_diabetic: int  # no diabetes code up to that discharge
    labels: int  # rows written: one per remaining subject
    positives: int  # rows with a complication in the label window

    @property
    def prevalence(self) -> float:
        return self.positives / self.labels if self.labels else float("nan")

    def describe(self) -> str:
        share = f", {self.prevalence:.1%}" if self.labels else ""
        return (
            f"{self.labels:,} labels ({self.positives:,} positive{share}) from "
            f"{self.subjects_with_icu_stay:,} subjects with an ICU stay; left out: "
            f"{self.left_icu_within_window:,} left the ICU or died within the input window, "
            f"{self.no_hospital_discharge:,} without a later hospital discharge, "
            f"{self.not_diabetic:,} without a diabetes code"
        )


def extract_labels(
    meds_root: str | Path, out_path: str | Path, task: DiabetesTask = DIABETES_COMPLICATIONS
) -> LabelSummary:
    """Write the task's label file `out_path` from the MEDS dataset at `meds_root`; return its summary.

    Reads the `subject_id`, `time` and `code` of the events whose code starts
    with one of the task's prefixes from every Parquet file under
    `meds_root/data/` (shards in subfolders included); static events (no time)
    are ignored. The output has one row per qualifying subject, sorted by
    subject_id, validated against `meds.LabelSchema`, and written atomically.
    Raises `FileExistsError` if `out_path` exists and `DataError` if the data
    cannot be read or no stay qualifies (the message then says why).
    """
    out_path = Path(out_path)
    if out_path.exists():
        raise FileExistsError(f"{out_path} already exists; choose another file")
    events = _read_events(Path(meds_root), task.all_prefixes)
    labels, summary = _labels(events, task)
    if not summary.labels:
        hint = "" if summary.subjects_with_icu_stay else f"; no code starts with {' or '.join(task.icu_admission)}"
        raise DataError(f"no ICU stay qualifies: {summary.describe()}{hint}", meds_root)
    meds.LabelSchema.validate(labels)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out_path) as f:
        pq.write_table(labels, f)
    return summary


def _read_events(meds_root: Path, prefixes: tuple[str, ...]) -> pd.DataFrame:
    """subject_id, time and code (categorical) of the timed events with these code prefixes."""
    data_dir = meds_root / meds.data_subdirectory
    if not data_dir.is_dir():
        raise DataError(f"no {meds.data_subdirectory}/ folder: not a MEDS dataset root", meds_root)
    files = sorted(data_dir.rglob("*.parquet"))
    if not files:
        raise DataError("no Parquet files", data_dir)
    dataset = ds.dataset(files, format="parquet")
    try:
        meds.DataSchema.validate(dataset.schema)
    except SchemaValidationError as error:
        raise DataError(f"not in the MEDS data schema: {error}", files[0]) from error
    code = pc.field("code")
    wanted = functools.reduce(operator.or_, (pc.starts_with(code, pattern=p) for p in prefixes))
    table = dataset.to_table(columns=["subject_id", "time", "code"], filter=wanted & pc.field("time").is_valid())
    table = table.set_column(2, "code", table["code"].dictionary_encode())
    return table.to_pandas()


def _labels(events: pd.DataFrame, task: DiabetesTask) -> tuple[pa.Table, LabelSummary]:
    """The label table and its summary, following the steps of the module docstring."""

    def times(prefixes: tuple[str, ...]) -> pd.DataFrame:
        return events.loc[_starts_with(events["code"], prefixes), ["subject_id", "time"]]

    stays = times(task.icu_admission).groupby("subject_id")["time"].min().rename("admission").reset_index()
    stays["prediction_time"] = stays["admission"] + task.input_window
    left_icu = _any_in_window(stays, times(task.icu_discharge + task.death), "admission", "prediction_time")
    kept = stays[~left_icu]
    kept = _next_event(kept, times(task.hospital_discharge), after="prediction_time", name="discharge")
    discharged = kept.dropna(subset=["discharge"])
    diabetic = _any_in_window(discharged, times(task.diabetes), None, "discharge")
    cohort = discharged[diabetic]
    positive = _any_in_window(cohort, times(task.complication), "prediction_time", "discharge", start_inclusive=False)
    labels = pa.table(
        {
            "subject_id": pa.array(cohort["subject_id"].to_numpy(), pa.int64()),
            "prediction_time": pa.array(cohort["prediction_time"].to_numpy(), pa.timestamp("us")),
            "boolean_value": pa.array(positive, pa.bool_()),
        }
    )
    summary = LabelSummary(
        subjects_with_icu_stay=len(stays),
        left_icu_within_window=int(left_icu.sum()),
        no_hospital_discharge=len(kept) - len(discharged),
        not_diabetic=len(discharged) - len(cohort),
        labels=len(cohort),
        positives=int(positive.sum()),
    )
    return labels, summary


def _starts_with(codes: pd.Series, prefixes: tuple[str, ...]) -> np.ndarray:
    """Which rows' categorical code starts with one of `prefixes` (tested once per distinct code)."""
    categories = codes.cat.categories.astype(str)
    matches = np.append(np.asarray(categories.str.startswith(prefixes), dtype=bool), False)  # code -1: missing
    return matches[codes.cat.codes.to_numpy()]


def _any_in_window(
    stays: pd.DataFrame, events: pd.DataFrame, start: str | None, end: str, start_inclusive: bool = True
) -> np.ndarray:
    """For each stay, whether one of `events` lies between its `start` and `end` columns.

    `end` is included, `start` as `start_inclusive` says; `start=None` means
    from the beginning of the subject's record.
    """
    pairs = stays[["subject_id", end] + ([start] if start else [])].reset_index(drop=True).reset_index()
    pairs = pairs.merge(events, on="subject_id")
    inside = pairs["time"] <= pairs[end]
    if start:
        inside &= pairs["time"] >= pairs[start] if start_inclusive else pairs["time"] > pairs[start]
    return np.isin(np.arange(len(stays)), pairs.loc[inside, "index"].to_numpy())


def _next_event(stays: pd.DataFrame, events: pd.DataFrame, after: str, name: str) -> pd.DataFrame:
    """`stays` with column `name`: the time of the first of `events` strictly after `after` (NaT if none)."""
    found = pd.merge_asof(
        stays.sort_values(after),
        events.sort_values("time").rename(columns={"time": name}),
        left_on=after,
        right_on=name,
        by="subject_id",
        direction="forward",
        allow_exact_matches=False,
    )
    return found.sort_values("subject_id", ignore_index=True)
