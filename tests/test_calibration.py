"""shared/calibration.py: ECE, the calibration line and observed / expected deaths, against
independent computations on seeded data."""

import json
import math

import numpy as np
import pytest
from scipy.optimize import minimize
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from fedicu.shared.calibration import (
    ECE_BINS,
    RECALIBRATION_METHODS,
    Calibration,
    RecalibrationMap,
    SiteRecalibration,
    calibration_line,
    expected_calibration_error,
    recalibrated,
)
from fedicu.shared.metrics import best_threshold


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _logit(p):
    return np.log(p / (1.0 - p))


def _reference_ece(labels, risks, bins=ECE_BINS):
    """Plain Python: bin i holds i/bins <= risk < (i+1)/bins, the last bin also holds 1."""
    members: list[list[tuple[float, float]]] = [[] for _ in range(bins)]
    for y, r in zip(labels.tolist(), risks.tolist(), strict=True):
        i = next(i for i in range(bins) if r < (i + 1) / bins or i == bins - 1)
        members[i].append((y, r))
    total = 0.0
    for stays in members:
        if stays:
            observed = sum(y for y, _ in stays) / len(stays)
            predicted = sum(r for _, r in stays) / len(stays)
            total += len(stays) / len(labels) * abs(observed - predicted)
    return total


def _drawn(n, seed, spread=1.5, centre=-1.0):
    """Risks with logits ~ N(centre, spread) and outcomes drawn from those risks."""
    rng = np.random.default_rng(seed)
    risks = _sigmoid(rng.normal(centre, spread, n))
    labels = (rng.random(n) < risks).astype(int)
    return labels, risks


def _scipy_line(labels, risks):
    """(slope, intercept) minimizing the negative log-likelihood of y ~ sigmoid(a + b * logit(p))."""
    x = _logit(np.clip(risks, 1e-7, 1 - 1e-7))
    y = labels.astype(np.float64)

    def nll(theta):
        z = theta[0] + theta[1] * x
        return float(np.sum(np.logaddexp(0.0, z) - y * z))

    def grad(theta):
        residual = _sigmoid(theta[0] + theta[1] * x) - y
        return np.array([residual.sum(), (residual * x).sum()])

    fit = minimize(nll, np.array([0.0, 1.0]), jac=grad, method="BFGS", options={"gtol": 1e-10, "maxiter": 1000})
    intercept, slope = fit.x
    return slope, intercept


def test_ece_bins_is_ten():
    assert ECE_BINS == 10


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ece_matches_a_plain_python_reference_on_random_data(seed):
    rng = np.random.default_rng(seed)
    risks = rng.random(3000) ** 1.5  # uneven bin counts, some bins sparse
    labels = (rng.random(3000) < np.clip(risks + rng.normal(0, 0.1, 3000), 0, 1)).astype(int)
    expected = _reference_ece(labels, risks)
    assert expected > 0
    assert expected_calibration_error(labels, risks) == pytest.approx(expected, abs=1e-12)


def test_ece_with_a_different_number_of_bins_matches_the_reference():
    labels, risks = _drawn(1000, seed=3)
    assert expected_calibration_error(labels, risks, bins=7) == pytest.approx(
        _reference_ece(labels, risks, bins=7), abs=1e-12
    )


def test_a_risk_of_exactly_one_lands_in_the_last_bin():
    # Same bin as 0.9: observed 1/2, mean risk 0.95, so ECE 0.45 (0.55 were 1.0 a bin of its own).
    labels, risks = np.array([0, 1]), np.array([1.0, 0.9])
    assert expected_calibration_error(labels, risks) == pytest.approx(0.45, abs=1e-12)


def test_a_risk_of_exactly_zero_lands_in_the_first_bin():
    # Same bin as 0.05: observed 1/2, mean risk 0.025, so ECE 0.475.
    labels, risks = np.array([1, 0]), np.array([0.0, 0.05])
    assert expected_calibration_error(labels, risks) == pytest.approx(0.475, abs=1e-12)


def test_risks_at_the_bin_edges_fall_in_the_upper_bin():
    # 0.5 joins 0.55 (bin 5), not 0.45 (bin 4): bin 5 holds labels {0, 1} with mean risk 0.525.
    labels, risks = np.array([1, 0, 1]), np.array([0.45, 0.5, 0.55])
    expected = 1 / 3 * abs(1 - 0.45) + 2 / 3 * abs(0.5 - 0.525)
    assert expected_calibration_error(labels, risks) == pytest.approx(expected, abs=1e-12)
    assert _reference_ece(labels, risks) == pytest.approx(expected, abs=1e-12)


def test_ece_is_zero_when_all_stays_in_one_bin_have_the_bins_observed_rate():
    labels = np.array([1, 0, 0, 1, 0, 0, 0, 0, 1, 0])  # 3 of 10
    assert expected_calibration_error(labels, np.full(10, 0.3)) == pytest.approx(0.0, abs=1e-12)


def test_ece_is_zero_when_each_bin_mean_risk_equals_its_observed_rate():
    # Bin 2: 1 of 4 at risk 0.25; bin 5: 1 of 2 at risks 0.5625 and 0.4375 + 0.125 (mean 0.5 after
    # moving both into bin 5: 0.5 and 0.5); bin 7: 3 of 4 at risk 0.75. Dyadic risks, so exact sums.
    labels = np.array([1, 0, 0, 0, 1, 0, 1, 1, 1, 0])
    risks = np.array([0.25, 0.25, 0.25, 0.25, 0.5, 0.5, 0.75, 0.75, 0.75, 0.75])
    assert expected_calibration_error(labels, risks) == pytest.approx(0.0, abs=1e-12)
    # Within a bin only the mean counts: 0.53125 and 0.59375 (mean 0.5625) against observed 0.5.
    risks[4], risks[5] = 0.53125, 0.59375
    assert expected_calibration_error(labels, risks) == pytest.approx(2 / 10 * 0.0625, abs=1e-12)
    # Mean 0.5 again, but 0.4375 sits in bin 4: bins 4 and 5 no longer cancel.
    risks[4], risks[5] = 0.5625, 0.4375
    assert expected_calibration_error(labels, risks) == pytest.approx(
        1 / 10 * abs(0 - 0.4375) + 1 / 10 * abs(1 - 0.5625), abs=1e-12
    )


def test_ece_of_a_miscalibrated_single_bin_is_the_gap():
    labels = np.array([1, 0, 1, 0])  # observed 0.5
    assert expected_calibration_error(labels, np.full(4, 0.35)) == pytest.approx(0.15, abs=1e-12)


def test_ece_of_no_stays_is_nan():
    assert math.isnan(expected_calibration_error(np.array([]), np.array([])))


@pytest.mark.parametrize("seed", [0, 1])
def test_outcomes_drawn_from_the_risks_give_slope_one_and_intercept_zero(seed):
    labels, risks = _drawn(20000, seed)
    slope, intercept = calibration_line(labels, risks)
    assert slope == pytest.approx(1.0, abs=0.1)
    assert intercept == pytest.approx(0.0, abs=0.1)


@pytest.mark.parametrize("seed", [0, 1])
def test_overconfident_risks_give_slope_one_half(seed):
    labels, risks = _drawn(20000, seed)
    overconfident = _sigmoid(2.0 * _logit(risks))
    slope, intercept = calibration_line(labels, overconfident)
    assert slope == pytest.approx(0.5, abs=0.05)
    assert intercept == pytest.approx(0.0, abs=0.1)


@pytest.mark.parametrize("shift", [-1.0, 0.7, 1.5])
def test_risks_shifted_in_logit_give_intercept_minus_the_shift(shift):
    labels, risks = _drawn(20000, seed=4)
    slope, intercept = calibration_line(labels, _sigmoid(_logit(risks) + shift))
    assert slope == pytest.approx(1.0, abs=0.1)
    assert intercept == pytest.approx(-shift, abs=0.1)


@pytest.mark.parametrize("seed", [5, 6])
def test_calibration_line_agrees_with_an_independent_likelihood_fit(seed):
    rng = np.random.default_rng(seed)
    labels, risks = _drawn(3000, seed)
    distorted = _sigmoid(rng.uniform(0.5, 1.5) * _logit(risks) + rng.uniform(-1, 1))
    slope, intercept = calibration_line(labels, distorted)
    ref_slope, ref_intercept = _scipy_line(labels, distorted)
    assert slope == pytest.approx(ref_slope, abs=1e-4)
    assert intercept == pytest.approx(ref_intercept, abs=1e-4)


def test_calibration_line_clips_risks_of_zero_and_one():
    labels, risks = _drawn(2000, seed=7)
    risks[:3], risks[3:6] = 0.0, 1.0
    slope, intercept = calibration_line(labels, risks)
    assert math.isfinite(slope) and math.isfinite(intercept)
    ref_slope, ref_intercept = _scipy_line(labels, risks)
    assert slope == pytest.approx(ref_slope, abs=1e-4)
    assert intercept == pytest.approx(ref_intercept, abs=1e-4)


@pytest.mark.parametrize("label", [0, 1])
def test_a_single_class_gives_no_calibration_line(label):
    risks = np.random.default_rng(8).random(50)
    slope, intercept = calibration_line(np.full(50, label), risks)
    assert math.isnan(slope) and math.isnan(intercept)


def test_calibration_of_holds_the_functions_results():
    labels, risks = _drawn(4000, seed=9)
    risks = _sigmoid(_logit(risks) * 1.3 + 1.0)  # too extreme and too high
    cal = Calibration.of(labels, risks)
    slope, intercept = calibration_line(labels, risks)
    assert cal.ece == expected_calibration_error(labels, risks)
    assert cal.calibration_slope == slope
    assert cal.calibration_intercept == intercept
    assert cal.observed_expected == pytest.approx(sum(labels.tolist()) / sum(risks.tolist()), rel=1e-12)
    assert cal.observed_expected < 0.8  # more deaths predicted than observed


def test_calibration_of_a_single_class_keeps_ece_and_observed_expected():
    risks = np.random.default_rng(10).random(40)
    cal = Calibration.of(np.zeros(40, dtype=int), risks)
    assert math.isnan(cal.calibration_slope) and math.isnan(cal.calibration_intercept)
    assert cal.ece == pytest.approx(_reference_ece(np.zeros(40), risks), abs=1e-12)
    assert cal.observed_expected == 0.0


def test_calibration_of_no_stays_is_all_nan():
    cal = Calibration.of(np.array([], dtype=int), np.array([]))
    assert all(
        math.isnan(v) for v in (cal.ece, cal.calibration_slope, cal.calibration_intercept, cal.observed_expected)
    )


def test_recalibration_fitted_on_validation_stays_repairs_a_hospitals_miscalibration():
    rng = np.random.default_rng(11)
    true_val, true_test = rng.uniform(0.02, 0.6, 4000), rng.uniform(0.02, 0.6, 4000)
    y_val, y_test = (rng.random(4000) < true_val).astype(int), (rng.random(4000) < true_test).astype(int)

    def overpredict(p):  # the global model's risks here: twice the odds
        return 1 / (1 + (1 - p) / (2 * p))

    before = Calibration.of(y_test, overpredict(true_test))
    assert before.observed_expected < 0.8
    for method in RECALIBRATION_METHODS:
        after = Calibration.of(y_test, recalibrated(method, y_val, overpredict(true_val), overpredict(true_test)))
        assert abs(after.observed_expected - 1) < 0.1 and after.ece < before.ece / 2, method


def test_platt_scaling_keeps_the_ranking_and_one_class_validation_stays_leave_risks_unchanged():
    rng = np.random.default_rng(12)
    risks = rng.uniform(0.01, 0.99, 500)
    labels = (rng.random(500) < risks).astype(int)
    mapped = recalibrated("platt", labels, risks, risks)
    assert np.array_equal(np.argsort(mapped, kind="stable"), np.argsort(risks, kind="stable"))
    assert np.array_equal(recalibrated("isotonic", np.zeros(500), risks, risks), risks)
    np.testing.assert_allclose(recalibrated("platt", np.zeros(500), risks, risks), risks, atol=1e-12)
    with pytest.raises(ValueError, match="recalibration method must be one of platt, isotonic"):
        recalibrated("beta", labels, risks, risks)


def _miscalibrated(seed: int, n: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = rng.uniform(0.02, 0.7, n)
    return (rng.random(n) < truth).astype(int), 1 / (1 + (1 - truth) / (3 * truth))  # three times the odds


def test_a_kept_map_predicts_what_scikit_learn_fitted_and_its_threshold_maximizes_event1_after_mapping():
    labels, risks = _miscalibrated(13)
    new = np.r_[np.linspace(0, 1, 101), risks[:50]]  # also beyond the fitted range: clipped
    platt = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(
        _logit(np.clip(risks, 1e-7, 1 - 1e-7))[:, None], labels
    )
    isotonic = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(risks, labels)
    expected = {
        "platt": platt.predict_proba(_logit(np.clip(new, 1e-7, 1 - 1e-7))[:, None])[:, 1],
        "isotonic": isotonic.predict(new),
    }
    for method in RECALIBRATION_METHODS:
        kept = RecalibrationMap.from_dict(json.loads(json.dumps(RecalibrationMap.fit(method, labels, risks).to_dict())))
        np.testing.assert_allclose(kept.apply(new), expected[method], atol=1e-9, err_msg=method)
        assert kept.threshold == best_threshold(labels, kept.apply(risks))
        mapped = kept.apply(risks)  # the threshold is a recalibrated risk, not one of the global model
        assert kept.threshold in set(mapped.tolist())


def test_a_site_s_recalibration_file_round_trips_and_a_broken_one_is_named(tmp_path):
    labels, risks = _miscalibrated(14, 400)
    kept = SiteRecalibration.fit("north", "ab" * 32, labels, risks)
    path = tmp_path / "state" / "recalibration.json"
    kept.save(path)
    again = SiteRecalibration.load(path)
    assert again == kept and again.use == "platt" and again.validation_stays == 400
    assert again.validation_deaths == labels.sum()
    assert "never leaves the site" in json.loads(path.read_text())["fitted_on"]
    np.testing.assert_array_equal(again.chosen.apply(risks), kept.maps["platt"].apply(risks))
    path.write_text(json.dumps(json.loads(path.read_text()) | {"use": "beta"}))
    with pytest.raises(ValueError, match="'use' must be one of platt, isotonic, not 'beta'"):
        SiteRecalibration.load(path)
    path.write_text("{")
    with pytest.raises(ValueError, match=f"--recalibration {path}: not a site's recalibration file"):
        SiteRecalibration.load(path)
    with pytest.raises(ValueError, match=f"--recalibration {tmp_path / 'absent.json'}: cannot read it"):
        SiteRecalibration.load(tmp_path / "absent.json")


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"method": "beta", "parameters": {}, "threshold": 0.5}, "method must be one of platt, isotonic"),
        ({"method": "platt", "parameters": {"slope": [1.0]}, "threshold": 0.5}, "lacks its parameter 'intercept'"),
        ({"method": "isotonic", "parameters": {"x": [0, 1], "y": [0.2]}, "threshold": 0.5}, "differ in length"),
    ],
)
def test_a_map_that_could_not_be_applied_is_refused_when_read(values, words):
    with pytest.raises(ValueError, match=words):
        RecalibrationMap.from_dict(values)
