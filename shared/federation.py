"""A hospital's data, in simulation and at a real site.

Simulation: `prepare` loads the cohort, cleans it, assigns hospitals, splits,
and bins every split into hourly `Sequences`. `save` writes the result to one
uncompressed .npz so each simulated hospital (a separate worker process) reads
only its own arrays with `load_hospital`, once per process.

Deployment: `load_site` reads the site's own data (a PhysioNet 2012 folder
with every set in it, or any other data format), cleans and bins it, and splits
it into training and validation stays; it never sees another site's data. The
server may hold a test folder of its own (`load_folder`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from fedicu.shared.cache import save_arrays
from fedicu.shared.cohort import Cohort, SkippedRows, skipped_summary
from fedicu.shared.config import RunConfig
from fedicu.shared.datasets import DataSource, get, load_cohort, natural_partition, physionet2012
from fedicu.shared.partition import MIN_STAYS_PER_HOSPITAL, assign_hospitals, site_split, split
from fedicu.shared.preprocessing import Sequences, clean, describe, to_sequences

logger = logging.getLogger("fedicu")


@dataclass(frozen=True)
class HospitalData:
    """What one hospital holds: its name and its training, validation and test stays (the test
    stays score every model at this hospital; nothing trains or selects on them)."""

    name: str
    train: Sequences
    val: Sequences
    test: Sequences
    skipped: tuple[SkippedRows, ...] = ()  # deployed: rows its reader skipped (empty or unknown variable)


@dataclass(frozen=True)
class Federation:
    hospitals: list[HospitalData]
    test: Sequences
    cleaning: dict[str, int]  # values removed per variable
    task: str
    skipped: tuple[SkippedRows, ...]  # input rows the reader skipped (empty or unknown variable)

    def stays_used(self) -> dict[str, list[int]]:
        """The stay ids each split holds: what trained the model, selected it, and tested it."""

        def ids(parts: list[Sequences]) -> list[int]:
            return sorted(np.concatenate([p.stay_ids for p in parts]).tolist()) if parts else []

        return {
            "train": ids([h.train for h in self.hospitals]),
            "validation": ids([h.val for h in self.hospitals]),
            "test": ids([self.test]),
        }

    def test_hospitals(self) -> tuple[str, ...]:
        """The hospital of each stay of the test split, in its order."""
        of = {int(stay): h.name for h in self.hospitals for stay in h.test.stay_ids}
        return tuple(of[int(stay)] for stay in self.test.stay_ids)

    def summary(self) -> dict:
        return {
            "task": self.task,
            "hospitals": {
                h.name: {"train": describe(h.train), "val": describe(h.val), "test": describe(h.test)}
                for h in self.hospitals
            },
            "test": describe(self.test),
            "values_removed_by_cleaning": self.cleaning,
            "rows_skipped": [rows.to_dict() for rows in self.skipped],
        }


def prepare(config: RunConfig) -> Federation:
    cohort = load_cohort(config.data_source())
    cohort, removed = clean(cohort)
    _check_learnable(cohort)
    scheme = config.partition or natural_partition(config.dataset)
    hospital = assign_hospitals(cohort, scheme, hospitals=config.hospitals, alpha=config.alpha, seed=config.seed)
    sizes = hospital.value_counts()
    if (sizes < MIN_STAYS_PER_HOSPITAL).any():
        small = ", ".join(f"{name} {count}" for name, count in sizes[sizes < MIN_STAYS_PER_HOSPITAL].items())
        raise ValueError(
            f"hospitals with fewer than {MIN_STAYS_PER_HOSPITAL} stays cannot train and validate ({small} stays); "
            "merge them or choose another --partition"
        )
    splits = split(cohort, hospital, config.test_fraction, config.val_fraction, seed=config.seed)
    seqs = to_sequences(cohort)
    row = {stay: i for i, stay in enumerate(seqs.stay_ids)}

    def take(ids: np.ndarray) -> Sequences:
        return seqs.take(np.fromiter((row[s] for s in ids), dtype=np.int64, count=len(ids)))

    hospitals = [
        HospitalData(name, take(splits.train[name]), take(splits.val[name]), take(splits.hospital_test[name]))
        for name in splits.hospitals
    ]
    return Federation(hospitals, take(splits.test), removed, cohort.task, cohort.skipped)


_FIELDS = tuple(Sequences.__dataclass_fields__)


def save(federation: Federation, path: Path) -> None:
    """Write the hospitals' splits (the server keeps the test split in memory).

    Largest training split first: the simulation engine hands virtual hospitals to its
    workers in this order, and starting the longest ones first shortens a round."""
    hospitals = sorted(federation.hospitals, key=lambda h: -len(h.train))
    arrays = {"names": np.array([h.name for h in hospitals])}
    for i, h in enumerate(hospitals):
        for part, seqs in (("train", h.train), ("val", h.val), ("test", h.test)):
            arrays.update({f"{i}.{part}.{f}": getattr(seqs, f) for f in _FIELDS})
    save_arrays(path, arrays)


@cache
def load_hospital(path: str, index: int) -> HospitalData:
    """Hospital `index` of a saved federation (read once per process)."""
    with np.load(path, allow_pickle=False) as data:
        names = data["names"]
        if not 0 <= index < len(names):
            raise ValueError(f"{path}: no hospital {index}; the federation has {len(names)}")
        parts = {part: Sequences(*(data[f"{index}.{part}.{f}"] for f in _FIELDS)) for part in ("train", "val", "test")}
        return HospitalData(str(names[index]), parts["train"], parts["val"], parts["test"])


def _check_learnable(cohort: Cohort) -> None:
    """Refuse training data that holds nothing to learn."""
    labels = cohort.stays["label"]
    if labels.nunique() < 2:
        raise ValueError(f"every stay has label {int(labels.iloc[0])} for task {cohort.task}: nothing to learn")
    if cohort.measurements.empty:
        raise ValueError(
            "no stay has any time-series measurement left (check the data's times and --mapping): "
            "nothing but descriptors to learn from"
        )


def whole_folder(source: DataSource, what: str = "node config data-dir") -> DataSource:
    """A source reading all of its folder: for PhysioNet 2012, every set in it."""
    if source.format != "physionet2012":
        return source
    sets = physionet2012.sets_in(Path(source.data_dir))
    if not sets:
        raise ValueError(f"{what} {source.data_dir}: no set-a, set-b or set-c (folder or .tar.gz) found")
    return replace(source, sets=",".join(sets))


def load_folder(source: DataSource, what: str = "node config data-dir") -> tuple[Sequences, tuple[SkippedRows, ...]]:
    """Every stay of a data folder (for PhysioNet 2012, every set in it), cleaned and binned,
    and the rows its reader skipped."""
    cohort = load_cohort(whole_folder(source, what))
    if cohort.skipped:
        logger.warning("%s: %s", source.data_dir, skipped_summary(cohort.skipped))
    return to_sequences(clean(cohort)[0]), cohort.skipped


def site_source(node_config: Mapping[str, Any], task: str) -> DataSource:
    """A deployed site's data as its node config describes it: `data-dir`, and optionally
    `data-format` (default physionet2012), `labels`, `mapping` and `strict`."""
    data_format = str(node_config.get("data-format", "physionet2012"))
    try:
        get(data_format)
    except ValueError as error:
        raise ValueError(f"node config data-format: {error}") from None
    return DataSource(
        format=data_format, data_dir=str(node_config["data-dir"]), labels=str(node_config.get("labels", "")),
        mapping=str(node_config.get("mapping", "")), task=task, strict=bool(node_config.get("strict", False)),
    )  # fmt: skip


_sites: dict[tuple, tuple[tuple, HospitalData]] = {}


def files_signature(*paths: str) -> tuple:
    """Name, size and modification time of every file at or below `paths`: it changes when a
    file is added, removed, rewritten or touched."""
    entries = []
    for path in (file for top in paths if top for file in _files(top)):
        with contextlib.suppress(OSError):  # removed while we looked: the next call sees it
            stat = os.stat(path)
            entries.append((path, stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(entries))


def _files(top: str) -> Iterator[str]:
    if not os.path.isdir(top):
        yield top
    for root, _, names in os.walk(top):
        yield from (os.path.join(root, name) for name in names)


def load_site(source: DataSource, hospital: str, test_fraction: float, val_fraction: float, seed: int) -> HospitalData:
    """A deployed hospital's stays from its own folder: a stratified test split of its own,
    then validation and training stays from the rest, as in simulation. A long-lived process
    reads the folder once, and again only when a file in it (or the labels or mapping file)
    has changed."""
    key = (source, hospital, test_fraction, val_fraction, seed)
    signature = files_signature(source.data_dir, source.labels, source.mapping)
    if key not in _sites or _sites[key][0] != signature:
        _sites[key] = (signature, _read_site(source, hospital, test_fraction, val_fraction, seed))
    return _sites[key][1]


def _read_site(source: DataSource, hospital: str, test_fraction: float, val_fraction: float, seed: int) -> HospitalData:
    seqs, skipped = load_folder(source)
    parts = site_split(seqs.labels, test_fraction, val_fraction, seed)
    name = hospital or Path(source.data_dir).name
    return HospitalData(name, seqs.take(parts["train"]), seqs.take(parts["val"]), seqs.take(parts["test"]), skipped)
