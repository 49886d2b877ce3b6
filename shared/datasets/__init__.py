"""Datasets: every source becomes a `Cohort` through one small interface.

A dataset is a module with `from_source(source: DataSource) -> Cohort` plus the
partition that splits it into its natural hospitals, registered in `DATASETS`
under the name `--dataset` (also spelled `--data-format`) takes. Adding one means
adding a module and one entry here; nothing downstream changes.

Readers skip rows whose variable is empty or unknown and record them on the
cohort (`Cohort.skipped`); `load_cohort` turns them into an error when the
source is `strict`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from fedicu.shared.cohort import Cohort
from fedicu.shared.errors import DataError
from fedicu.shared.tasks import DEFAULT_TASK


@dataclass(frozen=True)
class DataSource:
    """Where a command reads its stays and how: everything a reader may need."""

    format: str = "synthetic"
    data_dir: str = ""
    sets: str = "a,b"  # physionet2012: the sets to read
    labels: str = ""  # meds: the label file or folder
    mapping: str = ""  # tables, meds: a TOML mapping to the federation's variables
    task: str = DEFAULT_TASK
    strict: bool = False  # skipped rows become an error
    to_score: bool = False  # stays to be scored, never trained or evaluated on: outcomes may be absent
    hospitals: int = 4  # synthetic
    stays: int = 2400  # synthetic
    seed: int = 0  # synthetic

    def describe(self) -> str:
        if self.format == "synthetic":
            return f"synthetic ({self.stays} stays, {self.hospitals} hospitals, seed {self.seed})"
        sets = f" sets {self.sets}" if self.format == "physionet2012" else ""
        return f"{self.format} {self.data_dir}{sets}"


@dataclass(frozen=True)
class Dataset:
    module: str  # fedicu.shared.datasets.<module> provides from_source(DataSource) -> Cohort
    natural_partition: str
    needs_data_dir: bool = True

    @property
    def load(self) -> Callable[[DataSource], Cohort]:
        return importlib.import_module(f"fedicu.shared.datasets.{self.module}").from_source


DATASETS: dict[str, Dataset] = {
    "synthetic": Dataset("synthetic", natural_partition="hospital", needs_data_dir=False),
    "physionet2012": Dataset("physionet2012", natural_partition="icu-type"),
    "tables": Dataset("tables", natural_partition="hospital"),
    "meds": Dataset("meds", natural_partition="hospital"),
}


def get(name: str) -> Dataset:
    if name not in DATASETS:
        raise ValueError(f"unknown data format {name!r} (--dataset/--data-format); choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def load_cohort(source: DataSource) -> Cohort:
    """The stays of `source`; with `source.strict`, a `DataError` at the first skipped row."""
    dataset = get(source.format)
    if dataset.needs_data_dir and not source.data_dir:
        raise ValueError(f"--data-dir is required for --data-format {source.format}")
    cohort = dataset.load(source)
    if not len(cohort):
        raise DataError(f"no usable stays: every stay was left out (see the warnings above) for task {source.task}",
                        source.data_dir or None)  # fmt: skip
    return cohort.strict() if source.strict else cohort


def natural_partition(name: str) -> str:
    return get(name).natural_partition
