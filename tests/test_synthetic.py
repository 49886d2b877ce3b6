"""The built-in synthetic cohort: valid, reproducible, heterogeneous and learnable."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from fedicu.shared.cohort import STAY_COLUMNS, VARIABLE_DTYPE, Cohort
from fedicu.shared.datasets import synthetic
from fedicu.shared.variables import PHYSIOLOGICAL_LIMITS, TIME_SERIES


@pytest.fixture(scope="module")
def cohort() -> Cohort:
    return synthetic.generate()  # the default cohort every run starts from


def _in_limits(measurements: pd.DataFrame) -> pd.Series:
    codes = measurements["variable"].cat.codes.to_numpy()
    lo = np.array([PHYSIOLOGICAL_LIMITS[v][0] for v in TIME_SERIES])[codes]
    hi = np.array([PHYSIOLOGICAL_LIMITS[v][1] for v in TIME_SERIES])[codes]
    value = measurements["value"].to_numpy(dtype=float)
    return pd.Series((value >= lo) & (value <= hi), index=measurements.index)


def _rows_per_stay(cohort: Cohort) -> pd.Series:
    counts = cohort.measurements.groupby("stay_id").size()
    return counts.reindex(cohort.stays.index, fill_value=0)


# --- schema -------------------------------------------------------------------


def test_default_cohort_has_the_documented_schema(cohort: Cohort) -> None:
    stays, m = cohort.stays, cohort.measurements
    Cohort(stays=stays, measurements=m)  # constructing validates
    assert len(cohort) == 2400
    assert list(stays.columns[: len(STAY_COLUMNS)]) == list(STAY_COLUMNS)
    assert stays.index.name == "stay_id" and stays.index.dtype == np.int64 and stays.index.is_unique
    for column in ("age", "gender", "height", "weight", "icu_type", "risk"):
        assert stays[column].dtype == np.float64, column
    assert stays["label"].dtype == np.int8
    assert set(stays["label"].unique()) == {0, 1}
    assert set(stays["icu_type"].unique()) == {1.0, 2.0, 3.0, 4.0}
    assert (stays["source"] == "synthetic").all()
    assert stays["risk"].between(0.0, 1.0).all()

    assert m["stay_id"].dtype == np.int64 and m["minute"].dtype == np.int32
    assert m["variable"].dtype == VARIABLE_DTYPE and m["value"].dtype == np.float32
    assert m["minute"].between(0, 2880).all()
    assert m["stay_id"].isin(stays.index).all()
    assert set(m["variable"].unique()) == set(TIME_SERIES)  # every variable occurs somewhere


def test_descriptors_look_like_an_icu_population(cohort: Cohort) -> None:
    stays = cohort.stays
    assert stays["age"].between(18, 90).all() and stays["age"].median() > 60  # skewed older
    assert set(stays["gender"].dropna().unique()) == {0.0, 1.0}
    assert 0 < stays["gender"].isna().sum() < 0.02 * len(stays)
    assert 0.25 < stays["height"].isna().mean() < 0.35
    assert 0.06 < stays["weight"].isna().mean() < 0.14
    assert 0.11 <= cohort.mortality <= 0.18


@pytest.mark.parametrize(("hospitals", "stays", "seed"), [(1, 50, 0), (2, 40, 1), (7, 300, 3), (12, 2000, 4)])
def test_requested_hospitals_and_total_stays(hospitals: int, stays: int, seed: int) -> None:
    cohort = synthetic.generate(hospitals=hospitals, stays=stays, seed=seed)
    sizes = cohort.stays["hospital"].value_counts()
    assert sorted(sizes.index) == sorted(f"hospital-{h}" for h in range(1, hospitals + 1))
    assert sizes.sum() == stays == len(cohort)
    assert sizes.min() >= synthetic.MIN_STAYS_PER_HOSPITAL


def test_too_few_stays_for_the_hospitals_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 20"):
        synthetic.generate(hospitals=4, stays=79)
    with pytest.raises(ValueError):
        synthetic.generate(hospitals=0)


def test_some_stays_have_descriptors_only(cohort: Cohort) -> None:
    empty = (_rows_per_stay(cohort) == 0).sum()
    assert 1 <= empty <= 0.02 * len(cohort)


# --- determinism --------------------------------------------------------------


def test_same_seed_gives_identical_tables() -> None:
    a = synthetic.generate(hospitals=3, stays=300, seed=11)
    b = synthetic.generate(hospitals=3, stays=300, seed=11)
    pd.testing.assert_frame_equal(a.stays, b.stays)
    pd.testing.assert_frame_equal(a.measurements, b.measurements)


def test_different_seed_gives_a_different_cohort() -> None:
    a = synthetic.generate(hospitals=3, stays=300, seed=11)
    b = synthetic.generate(hospitals=3, stays=300, seed=12)
    assert not a.stays["risk"].equals(b.stays["risk"])
    assert len(a.measurements) != len(b.measurements) or not a.measurements.equals(b.measurements)
    assert not synthetic.hospital_profiles(3, 11).equals(synthetic.hospital_profiles(3, 12))


# --- hospital heterogeneity ---------------------------------------------------


def test_hospital_sizes_are_imbalanced(cohort: Cohort) -> None:
    sizes = cohort.stays["hospital"].value_counts()
    assert sizes.max() / sizes.min() >= 2.0


def test_mortality_differs_between_hospitals(cohort: Cohort) -> None:
    prevalence = cohort.stays.groupby("hospital")["label"].mean()
    assert prevalence.max() - prevalence.min() >= 0.06
    assert prevalence.min() >= 0.03 and prevalence.max() <= 0.30


def test_case_mix_differs_between_hospitals(cohort: Cohort) -> None:
    mix = pd.crosstab(cohort.stays["hospital"], cohort.stays["icu_type"], normalize="index")
    assert (mix.max() - mix.min()).max() >= 0.10


def test_measurement_density_differs_between_hospitals(cohort: Cohort) -> None:
    hr = cohort.measurements[cohort.measurements["variable"] == "HR"]
    per_stay = hr.groupby("stay_id").size().reindex(cohort.stays.index, fill_value=0)
    density = per_stay.groupby(cohort.stays["hospital"]).mean()
    assert density.max() / density.min() >= 1.8  # hourly charting in one site, every 2-3 h in another
    rows = _rows_per_stay(cohort).groupby(cohort.stays["hospital"]).mean()
    assert rows.max() / rows.min() >= 1.3


def test_device_offset_shifts_that_hospitals_readings(cohort: Cohort) -> None:
    profiles = synthetic.hospital_profiles(hospitals=4, seed=0)
    assert list(profiles.index) == sorted(cohort.stays["hospital"].unique())
    offsets = profiles["offset_Temp"]
    biased = offsets[offsets != 0]
    assert len(biased) >= 1 and (offsets == 0).any()

    m = cohort.measurements
    temp = m[(m["variable"] == "Temp") & _in_limits(m)]
    hospital = cohort.stays.loc[temp["stay_id"], "hospital"].to_numpy()
    for site, offset in biased.items():
        inside = temp["value"][hospital == site].mean()
        unbiased = temp["value"][np.isin(hospital, offsets.index[offsets == 0])].mean()
        assert abs((inside - unbiased) - offset) < 0.2, (site, offset, inside, unbiased)


# --- latent process and missingness -------------------------------------------


def test_sicker_patients_are_measured_more_often(cohort: Cohort) -> None:
    rows = _rows_per_stay(cohort)
    label = cohort.stays["label"]
    assert rows[label == 1].mean() > 1.15 * rows[label == 0].mean()
    lactate = cohort.measurements.loc[cohort.measurements["variable"] == "Lactate", "stay_id"].unique()
    measured = cohort.stays.index.isin(lactate)
    assert measured[label == 1].mean() > measured[label == 0].mean() + 0.15


def test_observations_move_in_physiological_directions(cohort: Cohort) -> None:
    m = cohort.measurements[_in_limits(cohort.measurements)]
    means = m.groupby(["stay_id", "variable"], observed=True)["value"].mean().unstack()
    label = cohort.stays["label"].reindex(means.index)
    died, survived = means[label == 1].mean(), means[label == 0].mean()
    for up in ("HR", "RespRate", "Lactate", "BUN", "Creatinine", "WBC"):
        assert died[up] > survived[up], up
    for down in ("NISysABP", "SysABP", "GCS", "Platelets", "HCO3", "pH", "SaO2", "Urine"):
        assert died[down] < survived[down], down


def test_arterial_and_cuff_pressures_are_consistent(cohort: Cohort) -> None:
    m = cohort.measurements[_in_limits(cohort.measurements)]
    pressures = ["SysABP", "MAP", "DiasABP", "NISysABP", "NIMAP", "NIDiasABP"]
    m = m[m["variable"].isin(pressures)]
    wide = m.groupby(["stay_id", "minute", "variable"], observed=True)["value"].mean().unstack()
    for sys_, mean, dia in (("SysABP", "MAP", "DiasABP"), ("NISysABP", "NIMAP", "NIDiasABP")):
        both = wide[[sys_, mean, dia]].dropna()
        assert len(both) > 1000
        # The device bias of a cuff may lift the systolic reading a little.
        assert (both[sys_] + 6 >= both[mean]).all() and (both[mean] >= both[dia]).all()


# --- learnability -------------------------------------------------------------


def test_oracle_auroc_is_high_but_not_perfect(cohort: Cohort) -> None:
    auroc = roc_auc_score(cohort.stays["label"], cohort.stays["risk"])
    assert 0.83 <= auroc <= 0.95


def test_outcome_is_learnable_from_crude_summaries(cohort: Cohort) -> None:
    m = cohort.measurements[_in_limits(cohort.measurements)]
    grouped = m.groupby(["stay_id", "variable"], observed=True)["value"]
    chosen = ["HR", "GCS", "Temp", "Urine", "BUN", "Creatinine", "HCO3", "WBC", "Platelets", "NISysABP"]
    last, mean = grouped.last().unstack()[chosen], grouped.mean().unstack()[chosen]
    features = pd.concat([last.add_suffix("_last"), mean.add_suffix("_mean")], axis=1)
    features = features.reindex(cohort.stays.index)
    features = features.fillna(features.median())
    features["rows"] = np.log1p(_rows_per_stay(cohort))
    features["age"] = cohort.stays["age"]

    x_train, x_test, y_train, y_test = train_test_split(
        features, cohort.stays["label"], test_size=0.3, random_state=0, stratify=cohort.stays["label"]
    )
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x_train, y_train)
    assert roc_auc_score(y_test, model.predict_proba(x_test)[:, 1]) >= 0.70


# --- recording errors ---------------------------------------------------------


def test_a_few_readings_are_recording_errors(cohort: Cohort) -> None:
    m = cohort.measurements
    outside = ~_in_limits(m)
    assert 0 < outside.sum() < 0.01 * len(m)
    errors = m[outside]
    assert {"HR", "Temp", "pH"} <= set(errors["variable"].astype(str))
    assert (errors.loc[errors["variable"] == "pH", "value"] > 100).all()  # decimal point lost


def test_default_cohort_is_fast() -> None:
    start = time.perf_counter()
    synthetic.generate()
    assert time.perf_counter() - start < 4.0  # 2 s budget, with slack for slow machines
