import numpy as np
import pytest

from fedicu.shared.partition import ICU_TYPE_SITES, assign_hospitals, split
from tests.cohorts import random_cohort


@pytest.mark.parametrize(
    "scheme, kwargs",
    [
        ("hospital", {}),
        ("set", {}),
        ("icu-type", {}),
        ("iid", {"hospitals": 5}),
        ("dirichlet", {"hospitals": 4, "alpha": 0.3}),
    ],
)
def test_partition_and_split_invariants(scheme, kwargs):
    cohort = random_cohort(400, seed=1)
    hospital = assign_hospitals(cohort, scheme, seed=2, **kwargs)
    assert hospital.index.equals(cohort.stays.index) and hospital.notna().all()
    splits = split(cohort, hospital, 0.2, 0.25, seed=3)
    all_ids = np.concatenate([*splits.train.values(), *splits.val.values(), splits.test])
    assert len(all_ids) == len(np.unique(all_ids)) == len(cohort)  # each stay in exactly one split
    for name in splits.hospitals:
        assert (hospital.loc[splits.train[name]] == name).all()
        assert (hospital.loc[splits.val[name]] == name).all()
    assert len(splits.test) == pytest.approx(0.2 * len(cohort), abs=len(splits.hospitals) * 2)
    test_prevalence = cohort.stays.loc[splits.test, "label"].mean()
    assert test_prevalence == pytest.approx(cohort.mortality, abs=0.03)
    again = split(cohort, assign_hospitals(cohort, scheme, seed=2, **kwargs), 0.2, 0.25, seed=3)
    np.testing.assert_array_equal(again.test, splits.test)


def test_icu_type_partition_uses_unit_names():
    cohort = random_cohort(100)
    hospital = assign_hospitals(cohort, "icu-type")
    assert set(hospital) <= set(ICU_TYPE_SITES.values())
    assert (hospital == cohort.stays["icu_type"].astype(int).map(ICU_TYPE_SITES)).all()


def test_iid_balances_size_and_prevalence():
    cohort = random_cohort(500, seed=4)
    hospital = assign_hospitals(cohort, "iid", hospitals=5, seed=0)
    sizes = hospital.value_counts()
    assert sizes.max() - sizes.min() <= 2
    prevalence = cohort.stays["label"].groupby(hospital).mean()
    assert prevalence.max() - prevalence.min() < 0.05


def test_dirichlet_skews_labels_more_with_small_alpha():
    cohort = random_cohort(2000, seed=5)

    def spread(alpha):
        h = assign_hospitals(cohort, "dirichlet", hospitals=4, alpha=alpha, seed=0)
        return cohort.stays["label"].groupby(h).mean().std()

    assert spread(0.3) > spread(100.0)


@pytest.mark.parametrize(
    "scheme, kwargs, message",
    [("nope", {}, "unknown --partition"), ("iid", {"hospitals": 0}, "--hospitals"),
     ("iid", {"hospitals": 50}, "cannot give every hospital"), ("dirichlet", {"alpha": -1.0}, "--alpha")],
)  # fmt: skip
def test_bad_partition_options_are_named(scheme, kwargs, message):
    with pytest.raises(ValueError, match=message):
        assign_hospitals(random_cohort(100), scheme, **kwargs)
