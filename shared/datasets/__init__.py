"""Datasets: every source becomes a `Cohort` through one small interface.

A dataset is a `load(config) -> Cohort` function plus the partition that splits
it into its natural hospitals. Adding one means adding a module and one entry to
`DATASETS`; nothing downstream changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedicu.shared.cohort import Cohort
from fedicu.shared.datasets import physionet2012, synthetic

if TYPE_CHECKING:
    from fedicu.shared.config import RunConfig


@dataclass(frozen=True)
class Dataset:
    load: Callable[[RunConfig], Cohort]
    natural_partition: str


DATASETS: dict[str, Dataset] = {
    "synthetic": Dataset(
        load=lambda c: synthetic.generate(hospitals=c.hospitals, stays=c.synthetic_stays, seed=c.seed),
        natural_partition="hospital",
    ),
    "physionet2012": Dataset(
        load=lambda c: physionet2012.load(c.data_dir, sets=c.sets.split(",")),
        natural_partition="icu-type",
    ),
}


def _get(name: str) -> Dataset:
    if name not in DATASETS:
        raise ValueError(f"unknown --dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def load_cohort(config: RunConfig) -> Cohort:
    return _get(config.dataset).load(config)


def natural_partition(dataset: str) -> str:
    return _get(dataset).natural_partition
