"""Write a `Cohort` as a MEDS dataset (Medical Event Data Standard, `meds` 0.4).

`write(cohort, out_dir)` creates the MEDS root `out_dir`:

    data/0.parquet              one subject per stay (subject_id = stay_id), sorted by
                                subject, then time; columns subject_id, time, code,
                                numeric_value, plus hospital (the stay's site)
    metadata/dataset.json       dataset_name (the folder's name), etl_name "fedicu",
                                etl_version, meds_version, created_at, site_id_columns
    metadata/codes.parquet      every code with a description (meaning and unit)
    labels/<task>.parquet       one row per stay: subject_id, prediction_time, boolean_value = label

Codes are PhysioNet 2012 names. The descriptors `Age`, `Gender`, `Height`,
`ICUType` and `Weight` are static events (null time); a descriptor that is not
recorded (NaN) is not written. Every stay is admitted at the same instant
`admission` (by default `DEFAULT_ADMISSION`, 2000-01-01 00:00, chosen to be
obviously artificial: only offsets from it carry information), so a measurement
at minute m has time `admission + m minutes` and every label has
`prediction_time = admission + 48 h`, the end of the input window. A Weight
event with a time is a measurement; the one without is the admission weight.

MEDS stores values as float32, so descriptors come back rounded to float32.
Every table is validated against the `meds` schemas before anything is written.
The dataset is built in a temporary folder next to `out_dir` and renamed into
place, so an interrupted write leaves nothing behind; an existing `out_dir` is
never overwritten.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import meds
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fedicu.shared.cohort import MAX_MINUTE, Cohort, measurement_arrays
from fedicu.shared.tasks import check_name
from fedicu.shared.variables import TIME_SERIES

DEFAULT_ADMISSION = datetime(2000, 1, 1)

INPUT_WINDOW = timedelta(minutes=MAX_MINUTE)  # prediction_time = admission + INPUT_WINDOW
SITE_COLUMN = "hospital"
DATA_FILE = Path(meds.data_subdirectory) / "0.parquet"
LABELS_DIR = Path("labels")

# Stays columns written as static events, and their codes.
DESCRIPTOR_CODES: dict[str, str] = {
    "age": "Age", "gender": "Gender", "height": "Height", "icu_type": "ICUType", "weight": "Weight",
}  # fmt: skip

# What each code means, in PhysioNet 2012 units.
CODE_DESCRIPTIONS: dict[str, str] = {
    "Age": "Age at ICU admission (years)",
    "Gender": "Gender (0 = female, 1 = male)",
    "Height": "Height (cm)",
    "ICUType": "ICU type (1 = coronary care, 2 = cardiac surgery recovery, 3 = medical, 4 = surgical)",
    "Weight": "Weight (kg); the event without a time is the weight at ICU admission",
    "Albumin": "Serum albumin (g/dL)",
    "ALP": "Alkaline phosphatase (IU/L)",
    "ALT": "Alanine transaminase (IU/L)",
    "AST": "Aspartate transaminase (IU/L)",
    "Bilirubin": "Bilirubin (mg/dL)",
    "BUN": "Blood urea nitrogen (mg/dL)",
    "Cholesterol": "Cholesterol (mg/dL)",
    "Creatinine": "Serum creatinine (mg/dL)",
    "DiasABP": "Invasive diastolic arterial blood pressure (mmHg)",
    "FiO2": "Fraction of inspired oxygen (0-1)",
    "GCS": "Glasgow Coma Score (3-15)",
    "Glucose": "Serum glucose (mg/dL)",
    "HCO3": "Serum bicarbonate (mmol/L)",
    "HCT": "Haematocrit (%)",
    "HR": "Heart rate (beats/min)",
    "K": "Serum potassium (mEq/L)",
    "Lactate": "Lactate (mmol/L)",
    "Mg": "Serum magnesium (mmol/L)",
    "MAP": "Invasive mean arterial blood pressure (mmHg)",
    "MechVent": "Mechanical ventilation (0 = no, 1 = yes)",
    "Na": "Serum sodium (mEq/L)",
    "NIDiasABP": "Non-invasive diastolic arterial blood pressure (mmHg)",
    "NIMAP": "Non-invasive mean arterial blood pressure (mmHg)",
    "NISysABP": "Non-invasive systolic arterial blood pressure (mmHg)",
    "PaCO2": "Partial pressure of arterial CO2 (mmHg)",
    "PaO2": "Partial pressure of arterial O2 (mmHg)",
    "pH": "Arterial pH",
    "Platelets": "Platelets (10^3/uL)",
    "RespRate": "Respiration rate (breaths/min)",
    "SaO2": "Arterial oxygen saturation (%)",
    "SysABP": "Invasive systolic arterial blood pressure (mmHg)",
    "Temp": "Temperature (degrees C)",
    "TroponinI": "Troponin I (ug/L)",
    "TroponinT": "Troponin T (ug/L)",
    "Urine": "Urine output (mL)",
    "WBC": "White blood cell count (10^3/uL)",
}
CODES: tuple[str, ...] = tuple(CODE_DESCRIPTIONS)
_CODE_INDEX = {code: i for i, code in enumerate(CODES)}
_SERIES_CODE = np.array([_CODE_INDEX[name] for name in TIME_SERIES], dtype=np.int32)


def write(cohort: Cohort, out_dir: str | Path, admission: datetime = DEFAULT_ADMISSION) -> Path:
    """Write `cohort` as the MEDS dataset `out_dir` (see the module docstring); return its path.

    Raises `FileExistsError` if `out_dir` exists and `ValueError` for a cohort
    MEDS cannot hold as described: stay ids that are not non-negative integers,
    labels other than 0/1, measurements of unknown stays, outside minutes
    0..2880, without a variable or with a non-finite value, or a timezone-aware
    `admission` (MEDS times carry no timezone).
    """
    root = Path(out_dir)
    if root.exists():
        raise FileExistsError(f"{root} already exists; choose another folder")
    if admission.tzinfo is not None:
        raise ValueError("admission must be a naive datetime: MEDS times carry no timezone")
    labels_path = LABELS_DIR / f"{check_name(cohort.task)}.parquet"
    stay_ids = _stay_ids(cohort)
    data = _data_table(cohort, stay_ids, admission)
    labels = _label_table(cohort, stay_ids, admission)
    codes = _codes_table()
    metadata = _dataset_metadata(root.name)
    meds.DataSchema.validate(data)
    meds.LabelSchema.validate(labels)
    meds.CodeMetadataSchema.validate(codes)
    meds.DatasetMetadataSchema.validate(metadata)

    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".tmp", dir=root.parent))
    try:
        for path, table in [
            (DATA_FILE, data),
            (Path(meds.code_metadata_filepath), codes),
            (labels_path, labels),
        ]:
            (staging / path).parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, staging / path)
        (staging / meds.dataset_metadata_filepath).write_text(json.dumps(metadata, indent=2) + "\n")
        os.rename(staging, root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


def _stay_ids(cohort: Cohort) -> np.ndarray:
    """The stay ids as int64, checked to be subject ids MEDS accepts."""
    index = cohort.stays.index
    if not pd.api.types.is_integer_dtype(index.dtype):
        raise ValueError(f"stay ids must be integers to become MEDS subject ids, not {index.dtype}")
    stay_ids = index.to_numpy(dtype=np.int64)
    if len(stay_ids) and stay_ids.min() < 0:
        raise ValueError(f"stay ids must be non-negative to become MEDS subject ids; {stay_ids.min()} is not")
    return stay_ids


def _data_table(cohort: Cohort, stay_ids: np.ndarray, admission: datetime) -> pa.Table:
    """Static and timed events of every stay, sorted by subject, then time (static first)."""
    stay, minute, code, value = _concat(_static_events(cohort), _timed_events(cohort, stay_ids))
    order = np.lexsort((minute, stay_ids[stay]))  # stable: descriptors keep their order, measurements theirs
    stay, minute, code, value = stay[order], minute[order], code[order], value[order]
    times = np.datetime64(admission, "us") + minute.astype("timedelta64[m]")
    hospitals = pd.Categorical(cohort.stays[SITE_COLUMN].astype(str))
    return pa.table(
        {
            "subject_id": pa.array(stay_ids[stay], pa.int64()),
            "time": pa.array(times, pa.timestamp("us"), mask=minute < 0),
            "code": _strings(code, CODES),
            "numeric_value": pa.array(value, pa.float32()),
            SITE_COLUMN: _strings(hospitals.codes[stay], hospitals.categories),
        }
    )


def _static_events(cohort: Cohort) -> tuple[np.ndarray, ...]:
    """(stay position, minute -1, code, value) of every recorded descriptor."""
    values = cohort.stays[list(DESCRIPTOR_CODES)].to_numpy(dtype=np.float64)
    stay, column = np.nonzero(~np.isnan(values))  # row-major: a stay's descriptors in DESCRIPTOR_CODES order
    codes = np.array([_CODE_INDEX[c] for c in DESCRIPTOR_CODES.values()], dtype=np.int32)
    return stay, np.full(len(stay), -1), codes[column], values[stay, column].astype(np.float32)


def _timed_events(cohort: Cohort, stay_ids: np.ndarray) -> tuple[np.ndarray, ...]:
    """(stay position, minute, code, value) of every measurement, checked."""
    stay, minute, variable, value = measurement_arrays(cohort, stay_ids)
    return stay, minute, _SERIES_CODE[variable], value


def _concat(*parts: tuple[np.ndarray, ...]) -> list[np.ndarray]:
    return [np.concatenate(columns) for columns in zip(*parts, strict=True)]


def _strings(indices: np.ndarray, names: Sequence[str] | pd.Index) -> pa.Array:
    """A string column from positions into `names`."""
    dictionary = pa.DictionaryArray.from_arrays(pa.array(indices, pa.int32()), pa.array(list(names), pa.string()))
    return dictionary.cast(pa.string())


def _label_table(cohort: Cohort, stay_ids: np.ndarray, admission: datetime) -> pa.Table:
    labels = cohort.stays["label"].to_numpy()
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 or 1 to become MEDS boolean labels")
    order = np.argsort(stay_ids, kind="stable")
    prediction_time = np.full(len(stay_ids), np.datetime64(admission + INPUT_WINDOW, "us"))
    return pa.table(
        {
            "subject_id": pa.array(stay_ids[order], pa.int64()),
            "prediction_time": pa.array(prediction_time, pa.timestamp("us")),
            "boolean_value": pa.array(labels[order] == 1, pa.bool_()),
        }
    )


def _codes_table() -> pa.Table:
    return pa.table(
        {
            "code": pa.array(CODES, pa.string()),
            "description": pa.array(list(CODE_DESCRIPTIONS.values()), pa.string()),
        }
    )


def _dataset_metadata(dataset_name: str) -> dict:
    # contract imports torch and Flower; only this function needs it.
    from fedicu.shared.contract import FEDICU_VERSION

    return {
        "dataset_name": dataset_name,
        "etl_name": "fedicu",
        "etl_version": FEDICU_VERSION,
        "meds_version": meds.__version__,
        "created_at": datetime.now(UTC).isoformat(),
        "site_id_columns": [SITE_COLUMN],
    }
