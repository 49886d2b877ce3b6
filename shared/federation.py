"""A hospital's data, in simulation and at a real site.

Simulation: `prepare` loads the cohort, cleans it, assigns hospitals, splits,
and bins every split into hourly `Sequences`. `save` writes the result to one
uncompressed .npz so each simulated hospital (a separate worker process) reads
only its own arrays with `load_hospital`, once per process.

Deployment: `load_site` reads the site's own PhysioNet-format folder (every
set in it), cleans and bins it, and splits it into training and validation
stays; it never sees another site's data. The server may hold a test folder of
its own (`load_folder`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from fedicu.shared.cache import save_arrays
from fedicu.shared.config import RunConfig
from fedicu.shared.datasets import load_cohort, natural_partition, physionet2012
from fedicu.shared.partition import assign_hospitals, split, stratified_pick
from fedicu.shared.preprocessing import Sequences, clean, describe, to_sequences


@dataclass(frozen=True)
class HospitalData:
    """What one hospital holds: its name and its training and validation stays."""

    name: str
    train: Sequences
    val: Sequences


@dataclass(frozen=True)
class Federation:
    hospitals: list[HospitalData]
    test: Sequences
    cleaning: dict[str, int]  # values removed per variable

    def summary(self) -> dict:
        return {
            "hospitals": {h.name: {"train": describe(h.train), "val": describe(h.val)} for h in self.hospitals},
            "test": describe(self.test),
            "values_removed_by_cleaning": self.cleaning,
        }


def prepare(config: RunConfig) -> Federation:
    cohort = load_cohort(config)
    cohort, removed = clean(cohort)
    scheme = config.partition or natural_partition(config.dataset)
    hospital = assign_hospitals(cohort, scheme, hospitals=config.hospitals, alpha=config.alpha, seed=config.seed)
    splits = split(cohort, hospital, config.test_fraction, config.val_fraction, seed=config.seed)
    seqs = to_sequences(cohort)
    row = {stay: i for i, stay in enumerate(seqs.stay_ids)}

    def take(ids: np.ndarray) -> Sequences:
        return seqs.take(np.fromiter((row[s] for s in ids), dtype=np.int64, count=len(ids)))

    hospitals = [HospitalData(name, take(splits.train[name]), take(splits.val[name])) for name in splits.hospitals]
    return Federation(hospitals=hospitals, test=take(splits.test), cleaning=removed)


_FIELDS = tuple(Sequences.__dataclass_fields__)


def save(federation: Federation, path: Path) -> None:
    """Write the hospitals' splits (the server keeps the test split in memory).

    Largest training split first: the simulation engine hands virtual hospitals to its
    workers in this order, and starting the longest ones first shortens a round."""
    hospitals = sorted(federation.hospitals, key=lambda h: -len(h.train))
    arrays = {"names": np.array([h.name for h in hospitals])}
    for i, h in enumerate(hospitals):
        for part, seqs in (("train", h.train), ("val", h.val)):
            arrays.update({f"{i}.{part}.{f}": getattr(seqs, f) for f in _FIELDS})
    save_arrays(path, arrays)


@cache
def load_hospital(path: str, index: int) -> HospitalData:
    """Hospital `index` of a saved federation (read once per process)."""
    with np.load(path, allow_pickle=False) as data:
        names = data["names"]
        if not 0 <= index < len(names):
            raise ValueError(f"{path}: no hospital {index}; the federation has {len(names)}")
        parts = {part: Sequences(*(data[f"{index}.{part}.{f}"] for f in _FIELDS)) for part in ("train", "val")}
        return HospitalData(str(names[index]), parts["train"], parts["val"])


def load_folder(data_dir: str, what: str = "node config data-dir") -> Sequences:
    """Every stay of a PhysioNet-format folder (every set in it), cleaned and binned."""
    folder = Path(data_dir)
    sets = physionet2012.sets_in(folder)
    if not sets:
        raise ValueError(f"{what} {data_dir}: no set-a, set-b or set-c (folder or .tar.gz) found")
    return to_sequences(clean(physionet2012.load(folder, sets=sets))[0])


@cache
def load_site(data_dir: str, hospital: str, val_fraction: float, seed: int) -> HospitalData:
    """A deployed hospital's stays from its own folder (read once per process)."""
    seqs = load_folder(data_dir)
    val = np.isin(
        seqs.stay_ids,
        stratified_pick(seqs.stay_ids, seqs.labels, val_fraction, np.random.default_rng(seed)),
    )
    name = hospital or Path(data_dir).name
    return HospitalData(name, seqs.take(np.flatnonzero(~val)), seqs.take(np.flatnonzero(val)))
