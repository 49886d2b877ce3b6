"""Which hospital holds which stay, and the train / validation / test splits.

Partitioners map every stay to a hospital name:

- `hospital`: the cohort's own sites (the synthetic cohort's hospitals);
- `icu-type`: PhysioNet 2012's natural split into its four units;
- `set`: one hospital per source set (PhysioNet set-a, set-b, ...);
- `iid`: N hospitals of equal size and prevalence;
- `dirichlet`: N hospitals whose label mix and size follow Dirichlet(alpha)
  proportions per class; small alpha means strong skew.

`split` then holds out a global test split (stratified by hospital and label,
so every site's case mix is represented) for server-side evaluation and divides
each hospital's remaining stays into train and validation, stratified by label.
Everything is seeded and no stay lands in two splits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from fedicu.shared.cohort import Cohort

ICU_TYPE_SITES = {1: "coronary-care", 2: "cardiac-surgery", 3: "medical-icu", 4: "surgical-icu"}
PARTITIONS = ("hospital", "icu-type", "set", "iid", "dirichlet")
MIN_STAYS_PER_HOSPITAL = 10


def assign_hospitals(cohort: Cohort, scheme: str, hospitals: int = 4, alpha: float = 0.5, seed: int = 0) -> pd.Series:
    """Hospital name for every stay (a Series indexed like `cohort.stays`)."""
    stays = cohort.stays
    if scheme == "hospital":
        return stays["hospital"].astype(str)
    if scheme == "set":
        return stays["source"].astype(str)
    if scheme == "icu-type":
        unknown = ~stays["icu_type"].isin(list(ICU_TYPE_SITES))
        if unknown.any():
            raise ValueError(
                f"--partition icu-type: {int(unknown.sum())} stays have no ICU type (first: "
                f"stay {stays.index[unknown][0]}); choose another partition"
            )
        return stays["icu_type"].astype(int).map(ICU_TYPE_SITES).rename("hospital")
    if scheme not in ("iid", "dirichlet"):
        raise ValueError(f"unknown --partition {scheme!r}; choose one of {', '.join(PARTITIONS)}")
    if hospitals < 1:
        raise ValueError(f"--hospitals must be at least 1, not {hospitals}")
    if len(stays) < hospitals * MIN_STAYS_PER_HOSPITAL:
        raise ValueError(
            f"--hospitals {hospitals}: {len(stays)} stays cannot give every hospital {MIN_STAYS_PER_HOSPITAL} stays"
        )
    rng = np.random.default_rng(seed)
    labels = stays["label"].to_numpy()
    if scheme == "iid":
        site = _iid(labels, hospitals, rng)
    else:
        if alpha <= 0:
            raise ValueError(f"--alpha must be positive, not {alpha}")
        site = _dirichlet(labels, hospitals, alpha, rng)
    width = len(str(hospitals))
    names = np.array([f"hospital-{i + 1:0{width}d}" for i in range(hospitals)])
    return pd.Series(names[site], index=stays.index, name="hospital")


def _iid(labels: np.ndarray, hospitals: int, rng: np.random.Generator) -> np.ndarray:
    site = np.empty(len(labels), dtype=np.int64)
    offset = 0
    for cls in (0, 1):  # deal each class round-robin so prevalence is equal too
        members = rng.permutation(np.flatnonzero(labels == cls))
        site[members] = (np.arange(len(members)) + offset) % hospitals
        offset += len(members)
    return site


def _dirichlet(labels: np.ndarray, hospitals: int, alpha: float, rng: np.random.Generator) -> np.ndarray:
    # Redraw until every hospital is usable; with a tiny alpha this can be impossible.
    for _ in range(1000):
        site = np.empty(len(labels), dtype=np.int64)
        for cls in (0, 1):
            members = rng.permutation(np.flatnonzero(labels == cls))
            shares = rng.dirichlet(np.full(hospitals, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
            for h, part in enumerate(np.split(members, cuts)):
                site[part] = h
        if np.bincount(site, minlength=hospitals).min() >= MIN_STAYS_PER_HOSPITAL:
            return site
    raise ValueError(
        f"--alpha {alpha} with --hospitals {hospitals}: could not give every hospital "
        f"{MIN_STAYS_PER_HOSPITAL} stays; raise --alpha or lower --hospitals"
    )


@dataclass(frozen=True)
class Splits:
    """Stay ids per hospital for training and validation, and the global test ids: the union of
    every hospital's own test ids (`hospital_test`), each drawn from that hospital's stays."""

    train: dict[str, np.ndarray]
    val: dict[str, np.ndarray]
    test: np.ndarray
    hospital_test: dict[str, np.ndarray]

    @property
    def hospitals(self) -> list[str]:
        return list(self.train)


def stratified_pick(ids: np.ndarray, strata: np.ndarray, fraction: float, rng) -> np.ndarray:
    """A `fraction` of each stratum (rounded), chosen at random."""
    picked = []
    for stratum in np.unique(strata):
        members = rng.permutation(ids[strata == stratum])
        picked.append(members[: round(fraction * len(members))])
    return np.sort(np.concatenate(picked)) if picked else np.array([], dtype=ids.dtype)


def site_split(labels: np.ndarray, test_fraction: float, val_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """How a deployed site splits its own stays (positions into `labels`): a stratified test
    split of its own, then validation stays from the rest, then training stays."""
    rng, everyone = np.random.default_rng(seed), np.arange(len(labels))
    test = stratified_pick(everyone, labels, test_fraction, rng)
    rest = np.setdiff1d(everyone, test)
    val = stratified_pick(rest, labels[rest], val_fraction, rng)
    return {"train": np.setdiff1d(rest, val), "val": val, "test": test}


def split(
    cohort: Cohort,
    hospital: pd.Series,
    test_fraction: float = 0.2,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> Splits:
    """Hold out a test split stratified by hospital and label (so each hospital's share of it is
    its own stratified test split), then split each hospital's rest into train and validation."""
    for name, fraction in (("test", test_fraction), ("validation", val_fraction)):
        if not 0 < fraction < 1:
            raise ValueError(f"the {name} fraction must lie in (0, 1), not {fraction}")
    rng = np.random.default_rng(seed)
    ids = cohort.stays.index.to_numpy()
    labels = cohort.stays["label"].to_numpy()
    sites = hospital.reindex(cohort.stays.index).to_numpy(dtype=str)
    strata = np.char.add(sites, labels.astype(str))
    test = stratified_pick(ids, strata, test_fraction, rng)
    rest = ~np.isin(ids, test)
    train, val, hospital_test = {}, {}, {}
    for site in sorted(set(sites.tolist())):
        mine = rest & (sites == site)
        site_val = stratified_pick(ids[mine], labels[mine], val_fraction, rng)
        train[site] = np.setdiff1d(ids[mine], site_val)
        val[site] = site_val
        hospital_test[site] = np.intersect1d(test, ids[sites == site])
        if len(train[site]) == 0 or len(site_val) == 0:
            raise ValueError(f"hospital {site!r} has too few stays for a train/validation split")
    return Splits(train=train, val=val, test=test, hospital_test=hospital_test)
