import numpy as np
import pytest

from fedicu.shared.preprocessing import (
    HOURS,
    FeatureStats,
    Normalization,
    clean,
    feature_names,
    n_features,
    to_features,
    to_sequences,
)
from fedicu.shared.variables import TIME_SERIES
from tests.cohorts import make_cohort, random_cohort

HR = TIME_SERIES.index("HR")
TEMP = TIME_SERIES.index("Temp")
GLUCOSE = TIME_SERIES.index("Glucose")


def test_clean_removes_and_counts_impossible_values():
    cohort = make_cohort(
        [{"stay_id": 1, "height": 13.0, "weight": -1.0}, {"stay_id": 2}],
        [(1, 10, "HR", 0.0), (1, 20, "HR", 80.0), (1, 30, "Temp", -17.8), (2, 40, "Temp", 37.0),
         (2, 50, "pH", 735.0), (2, 60, "pH", 7.35)],
    )  # fmt: skip
    cleaned, removed = clean(cohort)
    assert removed == {"HR": 1, "Temp": 1, "pH": 1, "height": 1, "weight": 1}
    assert len(cleaned.measurements) == 3
    assert sorted(cleaned.measurements["value"].tolist()) == pytest.approx([7.35, 37.0, 80.0])
    assert np.isnan(cleaned.stays.loc[1, "height"]) and np.isnan(cleaned.stays.loc[1, "weight"])
    assert cleaned.stays.loc[2, "height"] == 170.0


def test_hourly_binning_mask_forward_fill_and_hours_since():
    cohort = make_cohort(
        [{"stay_id": 7}, {"stay_id": 8}],
        [(7, 5, "HR", 80.0), (7, 50, "HR", 90.0),  # hour 0: mean 85
         (7, 3 * 60 + 1, "HR", 100.0),  # hour 3
         (7, 2880, "Temp", 38.0)],  # 48:00 closes the last hour
    )  # fmt: skip
    seqs = to_sequences(cohort)
    assert seqs.values.shape == (2, HOURS, len(TIME_SERIES))
    hr = seqs.values[0, :, HR]
    assert hr[0] == pytest.approx(85.0)
    assert hr[1] == hr[2] == pytest.approx(85.0)  # forward filled
    assert hr[3] == pytest.approx(100.0) and hr[47] == pytest.approx(100.0)
    assert seqs.observed[0, :, HR].nonzero()[0].tolist() == [0, 3]
    assert seqs.hours_since[0, :5, HR].tolist() == [0, 1, 2, 0, 1]
    temp = seqs.values[0, :, TEMP]
    assert np.isnan(temp[:47]).all() and temp[47] == pytest.approx(38.0)
    assert seqs.hours_since[0, 46, TEMP] == HOURS  # never observed yet
    # A stay with no measurements is kept, all missing.
    assert np.isnan(seqs.values[1]).all() and not seqs.observed[1].any()
    assert seqs.stay_ids.tolist() == [7, 8]


def test_federated_statistics_equal_pooled_statistics():
    seqs = to_sequences(clean(random_cohort(60, seed=3))[0])
    parts = [seqs.take(np.arange(0, 13)), seqs.take(np.arange(13, 40)), seqs.take(np.arange(40, 60))]
    federated = FeatureStats.sum([FeatureStats.of(p) for p in parts])
    pooled = FeatureStats.of(seqs)
    np.testing.assert_allclose(federated.count, pooled.count)
    np.testing.assert_allclose(federated.total, pooled.total, rtol=1e-12)
    np.testing.assert_allclose(federated.total_sq, pooled.total_sq, rtol=1e-12)
    mean, std = federated.mean_std()
    hr_observed = seqs.values[..., HR][seqs.observed[..., HR]].astype(np.float64)
    assert mean[HR] == pytest.approx(hr_observed.mean(), rel=1e-9)
    assert std[HR] == pytest.approx(hr_observed.std(), rel=1e-6)
    ages = seqs.static[:, 0].astype(np.float64)
    assert mean[len(TIME_SERIES)] == pytest.approx(ages.mean(), rel=1e-9)


def test_features_layout_and_standardization():
    cohort = make_cohort(
        [{"stay_id": 1, "gender": 0.0, "icu_type": 2.0, "height": np.nan}, {"stay_id": 2, "gender": np.nan}],
        [(1, 0, "HR", 80.0), (2, 0, "HR", 100.0), (1, 0, "Glucose", np.e**2 - 1)],
    )  # fmt: skip
    seqs = to_sequences(cohort)
    norm = Normalization.from_stats(FeatureStats.of(seqs))
    x = to_features(seqs, norm)
    assert x.shape == (2, HOURS, n_features()) and x.dtype == np.float32
    name = {n: i for i, n in enumerate(feature_names())}
    assert x[0, 0, name["HR"]] == pytest.approx(-1.0) and x[1, 0, name["HR"]] == pytest.approx(1.0)
    assert x[0, 5, name["HR"]] == pytest.approx(-1.0)  # forward filled
    assert x[0, 5, name["HR:observed"]] == 0 and x[0, 0, name["HR:observed"]] == 1
    assert x[0, 5, name["HR:hours_since"]] == pytest.approx(5 / HOURS)
    # Glucose is log-transformed before standardization: log1p(e^2 - 1) = 2.
    assert norm.mean[GLUCOSE] == pytest.approx(2.0)
    assert x[1, 0, name["Glucose"]] == 0.0  # never observed: the mean
    assert x[0, 0, name["height:missing"]] == 1 and x[0, 0, name["height"]] == 0.0
    assert (x[0, 0, name["gender:female"]], x[0, 0, name["gender:male"]]) == (1, 0)
    assert (x[1, 0, name["gender:female"]], x[1, 0, name["gender:male"]]) == (0, 0)
    assert x[0, 0, name["icu_type:2"]] == 1 and x[0, 0, name["icu_type:3"]] == 0
    assert np.isfinite(x).all()


def test_normalization_round_trips_through_dict():
    norm = Normalization.from_stats(FeatureStats.of(to_sequences(random_cohort(10))))
    again = Normalization.from_dict(norm.to_dict())
    np.testing.assert_array_equal(again.mean, norm.mean)
    with pytest.raises(ValueError, match="channels"):
        Normalization.from_dict({"mean": [0.0], "std": [1.0]})


def test_a_subset_of_variables_gives_exactly_their_channels_of_the_full_layout():
    cohort = random_cohort(40, seed=3)
    seqs = to_sequences(clean(cohort)[0])
    norm = Normalization.from_stats(FeatureStats.of(seqs))
    full, names = to_features(seqs, norm), feature_names()
    vitals = ("HR", "DiasABP", "SysABP", "Temp")
    subset = to_features(seqs, norm, vitals)
    assert subset.shape == (40, HOURS, n_features(vitals)) == (40, HOURS, 3 * 4 + n_features(()))
    columns = [names.index(n) for n in feature_names(vitals)]
    np.testing.assert_array_equal(subset, full[..., columns])
