"""MEDS datasets (Medical Event Data Standard): `--data-format meds`.

`--data-dir` is a MEDS dataset root:

    data/**/*.parquet       the events: subject_id, time, code, numeric_value (meds.DataSchema)
    metadata/dataset.json   optional; its dataset_name names the hospital

and `--labels` a MEDS label file, or a folder of them (`**/*.parquet`), with
`subject_id`, `prediction_time` and `boolean_value` (meds.LabelSchema). Every
file read is checked against its MEDS schema (exact column types: subject_id
int64, time timestamp[us], code string, numeric_value float32); a mismatch is a
`DataError` naming the file.

One example per label row: its input window is the 48 h before
`prediction_time`, so minute = time - (prediction_time - 48 h), kept in
0..2880 inclusive (nothing after the prediction time is read). Events with a
null `time` are static: descriptors (Age, Gender, Height, ICUType, Weight). The
stay id is the subject id when every subject has one label row; otherwise the
examples are numbered 1, 2, ... in the order of (subject_id, prediction_time),
which changes when label rows are added or removed. Either way every stay keeps
`subject_id` and `prediction_time` as extra stays columns. Two label rows with
the same subject and prediction time are refused.

Codes map onto the federation's variables through the mapping's `[variables]`
(see `shared.datasets.mapping`; codes named like PhysioNet 2012's variables
need no mapping). A MEDS stream also holds diagnoses, drugs and more, so codes
that map to no variable are left aside without being counted as skipped rows;
`unmapped_numeric_codes` lists the most frequent of those that carry numeric
values, as hints for writing a mapping. A mapped event whose `numeric_value` is
null is skipped and counted under its code. From there on the rules are those of
`shared.datasets.events`, shared with the tables reader.

Only the needed columns are read, filtered to the labelled subjects while
reading, so a large dataset does not load whole. `hospital` is the dataset's
`dataset_name` (else the folder's name), `source` the folder's name, and the
cohort's task `source.task`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import meds
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from flexible_schema import PyArrowSchema
from flexible_schema.exceptions import SchemaValidationError, TableValidationError

from fedicu.shared.cohort import Cohort, SkippedRows
from fedicu.shared.datasets import DataSource
from fedicu.shared.datasets.events import Events, to_cohort
from fedicu.shared.datasets.mapping import Mapping, load_mapping
from fedicu.shared.errors import DataError

logger = logging.getLogger("fedicu")

WINDOW_MICROSECONDS = 48 * 60 * 60 * 10**6
_MICROSECONDS_PER_MINUTE = 60 * 10**6
_LABEL_COLUMNS = ["subject_id", "prediction_time", "boolean_value"]


def from_source(source: DataSource) -> Cohort:
    """The labelled examples of the MEDS dataset at `source.data_dir` (labels: `source.labels`)."""
    root = _root(source.data_dir)
    mapping = load_mapping(source.mapping)
    labels = _Labels.read(source.labels)
    files = data_files(root)
    parts, skipped, seen = [], [], []
    for index, path in enumerate(files):
        events, null_values, subjects = _file_events(path, index, labels, mapping)
        parts.append(events)
        skipped.extend(null_values)
        seen.append(subjects)
    events = Events.concat(parts, paths=tuple(str(path) for path in files))
    folder_name = root.resolve().name
    stays = labels.stays(hospital=_dataset_name(root) or folder_name, source=folder_name)
    stays = _with_data(stays, np.concatenate(seen), source)
    return to_cohort(stays, events, source.task, skipped=tuple(skipped), stays_path=source.labels)


def unmapped_numeric_codes(source: DataSource, top: int = 20) -> list[tuple[str, int]]:
    """The `top` most frequent codes with numeric values that the mapping maps to nothing, with
    their counts (most frequent first): hints for writing a mapping. Counts only the labelled
    subjects when `source.labels` is given."""
    root = _root(source.data_dir)
    mapping = load_mapping(source.mapping)
    wanted = pc.field("numeric_value").is_valid()
    if source.labels:
        wanted &= pc.field("subject_id").isin(pa.array(_Labels.read(source.labels).subject_id))
    counts = pd.Series(dtype=np.int64)
    for path in data_files(root):
        if "numeric_value" not in _checked_schema(path, meds.DataSchema, "data").names:
            continue
        table = _read(path, ["code"], wanted)
        found = pc.value_counts(table["code"]).flatten()
        counts = counts.add(pd.Series(found[1].to_numpy(), index=found[0].to_pylist()), fill_value=0)
    names, _ = mapping.translate(counts.index.to_numpy(dtype=object), np.zeros(len(counts)))
    unmapped = counts[pd.isna(names)].astype(np.int64)
    ranked = sorted(unmapped.items(), key=lambda item: (-item[1], item[0]))
    return [(str(code), int(count)) for code, count in ranked[:top]]


def data_files(root: Path) -> list[Path]:
    """The dataset's event shards, `data/**/*.parquet`, in path order."""
    files = sorted((root / meds.data_subdirectory).rglob("*.parquet"))
    if not files:
        raise DataError(f"not a MEDS dataset: no {meds.data_subdirectory}/**/*.parquet files", root)
    return files


def _root(data_dir: str) -> Path:
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError("MEDS dataset folder does not exist or is not a folder", root)
    return root


def _dataset_name(root: Path) -> str | None:
    path = root / meds.dataset_metadata_filepath
    if not path.is_file():
        return None
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"not valid JSON: {error}", path) from None
    name = metadata.get("dataset_name") if isinstance(metadata, dict) else None
    if name is not None and not (isinstance(name, str) and name.strip()):
        raise DataError(f"dataset_name must be a non-empty string, not {name!r}", path)
    return name


def _checked_schema(path: Path, schema: type[PyArrowSchema], kind: str) -> pa.Schema:
    """The file's schema, after checking it against a MEDS schema class."""
    try:
        found = pq.read_schema(path)
    except (OSError, pa.ArrowException) as error:
        raise DataError(f"cannot be read as Parquet: {error}", path) from None
    try:
        schema.validate(found)
    except SchemaValidationError as error:
        raise DataError(f"not a MEDS {kind} file: {error}", path) from None
    return found


def _read(path: Path, columns: list[str], where: pc.Expression | None = None) -> pa.Table:
    try:
        return pq.read_table(path, columns=columns, filters=where)
    except (OSError, pa.ArrowException) as error:
        raise DataError(f"cannot be read as Parquet: {error}", path) from None


def _validated(
    path: Path, schema: type[PyArrowSchema], kind: str, columns: list[str], where: pc.Expression | None
) -> pa.Table:
    """`columns` of the rows `where` selects, checked against the MEDS schema (types and nulls)."""
    present = _checked_schema(path, schema, kind).names
    table = _read(path, [c for c in columns if c in present], where)
    try:
        schema.validate(table)
    except (SchemaValidationError, TableValidationError) as error:
        raise DataError(f"not a MEDS {kind} file: {error}", path) from None
    return table


# ---------------------------------------------------------------------- labels


@dataclass(frozen=True)
class _Labels:
    """The label rows, sorted by (subject_id, prediction_time): one example each."""

    subject_id: np.ndarray  # int64, sorted
    prediction_time: np.ndarray  # datetime64[us]
    label: np.ndarray  # int8
    stay_id: np.ndarray  # int64
    window_start: np.ndarray  # int64 microseconds since the epoch: prediction_time - 48 h

    @staticmethod
    def read(path: str) -> _Labels:
        if not path:
            raise DataError(
                "--labels is required for --data-format meds: a MEDS label file or a folder of them "
                "(Parquet with subject_id, prediction_time and boolean_value)"
            )
        files = _label_files(Path(path))
        frames = [_label_frame(file).assign(file=i) for i, file in enumerate(files)]
        frame = pd.concat(frames, ignore_index=True).sort_values(["subject_id", "prediction_time"], kind="stable")
        repeated = np.flatnonzero(frame.duplicated(["subject_id", "prediction_time"]).to_numpy())
        if len(repeated):
            row = frame.iloc[int(repeated[0])]
            message = f"subject {row['subject_id']} has two labels at prediction_time {row['prediction_time']}"
            raise DataError(message, files[int(row["file"])])
        subject_id = frame["subject_id"].to_numpy(np.int64)
        unique = not pd.Index(subject_id).has_duplicates
        stay_id = subject_id if unique else np.arange(1, len(frame) + 1, dtype=np.int64)
        prediction_time = frame["prediction_time"].to_numpy("datetime64[us]")
        return _Labels(
            subject_id=subject_id,
            prediction_time=prediction_time,
            label=frame["boolean_value"].to_numpy(np.int8),
            stay_id=stay_id,
            window_start=prediction_time.astype(np.int64) - WINDOW_MICROSECONDS,
        )

    def stays(self, hospital: str, source: str) -> pd.DataFrame:
        """The stays frame `events.to_cohort` takes (descriptors come from static events)."""
        return pd.DataFrame(
            {
                "label": self.label,
                "hospital": hospital,
                "source": source,
                "subject_id": self.subject_id,
                "prediction_time": self.prediction_time,
            },
            index=pd.Index(self.stay_id, name="stay_id"),
        )


def _label_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError("label file or folder does not exist", path)
    files = sorted(path.rglob("*.parquet"))
    if not files:
        raise DataError("no .parquet label files in this folder", path)
    return files


def _label_frame(path: Path) -> pd.DataFrame:
    table = _validated(path, meds.LabelSchema, "label", _LABEL_COLUMNS, None)
    if "boolean_value" not in table.column_names:
        raise DataError("has no boolean_value column; fedicu predicts a yes/no label", path)
    return table.to_pandas()


# ---------------------------------------------------------------------- events


def _with_data(stays: pd.DataFrame, seen: np.ndarray, source: DataSource) -> pd.DataFrame:
    """The examples whose subject has events in data/; the others are left out with a warning
    (a label file of another dataset, or an extract that lost them)."""
    present = np.isin(stays["subject_id"].to_numpy(), seen)
    if present.all():
        return stays
    absent = stays["subject_id"][~present]
    if not present.any():
        raise DataError(f"none of the {len(stays):,} labelled subjects has an event in data/", source.labels)
    logger.warning(
        "%s: %d of %d labelled subjects have no event in data/ and are left out (first: subject %d)",
        source.labels, absent.nunique(), stays["subject_id"].nunique(), int(absent.iloc[0]),
    )  # fmt: skip
    return stays[present]


def _file_events(
    path: Path, index: int, labels: _Labels, mapping: Mapping
) -> tuple[Events, list[SkippedRows], np.ndarray]:
    """The mapped events of one shard, one row per event and example whose subject it concerns,
    the mapped events skipped for a null numeric_value, and the labelled subjects it holds."""
    columns = ["subject_id", "time", "code", "numeric_value"]
    labelled = pc.field("subject_id").isin(pa.array(labels.subject_id))
    table = _validated(path, meds.DataSchema, "data", columns, labelled)
    encoded = table["code"].combine_chunks().dictionary_encode()
    vocabulary = np.array(encoded.dictionary.to_pylist(), dtype=object)
    code_index = encoded.indices.to_numpy()
    codes = pd.Categorical.from_codes(code_index, categories=vocabulary)
    if "numeric_value" in table.column_names:
        numeric = table["numeric_value"]
        null = numeric.is_null().to_numpy(zero_copy_only=False)
        values = numeric.to_numpy(zero_copy_only=False).astype(np.float64)
    else:
        null = np.ones(len(table), dtype=bool)
        values = np.full(len(table), np.nan)
    names, converted = mapping.translate(codes, values)
    mapped = ~pd.isna(names)
    skipped = _null_values(vocabulary[code_index[mapped & null]], str(path))
    keep = np.flatnonzero(mapped & ~null)

    subject = table["subject_id"].to_numpy()[keep]
    time = table["time"]
    static = time.is_null().to_numpy(zero_copy_only=False)[keep]
    microseconds = time.cast(pa.int64()).fill_null(0).to_numpy()[keep]
    event, example = _pair_with_examples(subject, labels.subject_id)
    minute = (microseconds[event] - labels.window_start[example]) / _MICROSECONDS_PER_MINUTE
    events = Events(
        stay_id=labels.stay_id[example],
        minute=np.where(static[event], np.nan, minute),
        code=vocabulary[code_index[keep][event]],
        name=names[keep][event],
        value=converted[keep][event],
        file=np.full(len(event), index, dtype=np.intp),
        row=np.full(len(event), -1, dtype=np.int64),
        paths=(),
    )
    return events, skipped, np.unique(table["subject_id"].to_numpy())


def _pair_with_examples(subject: np.ndarray, label_subjects: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(event index, example index) for every example of each event's subject (sorted `label_subjects`)."""
    first = np.searchsorted(label_subjects, subject, side="left")
    count = np.searchsorted(label_subjects, subject, side="right") - first
    event = np.repeat(np.arange(len(subject)), count)
    offset = np.arange(len(event)) - np.repeat(np.cumsum(count) - count, count)
    return event, first[event] + offset


def _null_values(codes: np.ndarray, path: str) -> list[SkippedRows]:
    """One entry per code (of mapped events with a null numeric_value), in order of first occurrence."""
    group, uniques = pd.factorize(codes)
    counts = np.bincount(group, minlength=len(uniques))
    return [SkippedRows(str(code), int(count), path, None) for code, count in zip(uniques, counts, strict=True)]
