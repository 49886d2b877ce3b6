"""client/bedside/explain.py: integrated gradients are complete, and find the variables that
drive the risk."""

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients

from fedicu.client.bedside.explain import STEPS, TOLERANCE, empty_stay, explain
from fedicu.shared.datasets import synthetic
from fedicu.shared.model import ModelConfig, MortalityLSTM
from fedicu.shared.preprocessing import FeatureStats, Normalization, clean, n_features, to_features, to_sequences
from fedicu.shared.training import train_epochs
from fedicu.shared.variables import TIME_SERIES
from tests.cohorts import make_cohort

VARIABLES = ("HR", "Temp", "Lactate", "GCS")


def _cohort(n: int, seed: int):
    """Lactate and age decide the outcome; heart rate, temperature and GCS are noise."""
    rng = np.random.default_rng(seed)
    ages = rng.uniform(20, 90, n)
    lactate = rng.lognormal(0.5, 0.6, n)
    label = (0.9 * np.log(lactate) + 0.05 * (ages - 55) + rng.normal(0, 0.4, n) > 0.9).astype(int)
    stays = [{"stay_id": i + 1, "age": float(ages[i]), "label": int(label[i])} for i in range(n)]
    rows = []
    for i in range(n):
        for hour in range(0, 48, 4):
            minute = hour * 60 + 5
            rows += [(i + 1, minute, "HR", float(rng.normal(85, 12))), (i + 1, minute, "Temp", float(rng.normal(37, 0.5))),
                     (i + 1, minute, "GCS", float(rng.integers(3, 16))),
                     (i + 1, minute, "Lactate", float(lactate[i] * rng.lognormal(0, 0.05)))]  # fmt: skip
    return to_sequences(clean(make_cohort(stays, rows))[0])


@pytest.fixture(scope="module")
def trained():
    seqs = _cohort(600, seed=1)
    norm = Normalization.from_stats(FeatureStats.of(seqs))
    torch.manual_seed(0)
    model = MortalityLSTM(ModelConfig(n_features=n_features(VARIABLES), hidden_size=16, variables=",".join(VARIABLES)))
    train_epochs(model, to_features(seqs, norm, VARIABLES), seqs.labels, epochs=25, lr=0.01, batch_size=64, seed=0)
    return model, norm


def test_a_stay_s_attributions_add_up_to_its_risk_above_the_empty_stay():
    """On the built-in cohort, whose stays look like ICU stays, within the stated tolerance."""
    seqs = to_sequences(clean(synthetic.generate(hospitals=2, stays=400, seed=6))[0])
    norm = Normalization.from_stats(FeatureStats.of(seqs))
    torch.manual_seed(1)
    model = MortalityLSTM(ModelConfig(n_features=n_features(), hidden_size=32))
    train_epochs(model, to_features(seqs, norm), seqs.labels, epochs=4, lr=0.01, batch_size=64, seed=1)
    explained = explain(model, norm, seqs.take(np.arange(120)))
    total = explained.by_hour.sum(axis=(1, 2))
    np.testing.assert_allclose(total, explained.risk - explained.empty_risk, atol=TOLERANCE)
    # The error reported is Captum's own convergence delta, for the same integral.
    x = torch.from_numpy(to_features(seqs.take(np.arange(120)), norm))
    baseline = torch.from_numpy(to_features(empty_stay(), norm)).expand_as(x)
    _, captums = IntegratedGradients(lambda inputs: torch.sigmoid(model(inputs))).attribute(
        x, baselines=baseline, n_steps=STEPS, return_convergence_delta=True
    )
    refined = np.abs(captums.double().numpy()) > TOLERANCE  # these were integrated again with more steps
    assert (np.abs(explained.delta[refined]) < np.abs(captums.double().numpy()[refined])).all()
    np.testing.assert_allclose(explained.delta[~refined], captums.double().numpy()[~refined], atol=1e-5)
    assert explained.by_hour.shape == (120, 48, len(TIME_SERIES) + 5)


def test_the_variables_that_drive_the_risk_rank_first(trained):
    model, norm = trained
    explained = explain(model, norm, _cohort(200, seed=3))
    assert list(explained.importance())[:2] in (["Lactate", "Age"], ["Age", "Lactate"])
    tops = [name for stay in explained.top_variables(1) for name, _ in stay]
    # Chance would give the two drivers about 2 stays in 10 (the model has 10 variables); over
    # training seeds 0 to 4 they led in 87 % to 96 % of the stays.
    assert tops.count("Lactate") + tops.count("Age") > 0.8 * len(tops)
    high, low = np.argmax(explained.risk), np.argmin(explained.risk)
    shares = dict(zip(explained.variables, explained.per_variable[high], strict=True))
    assert max(shares["Lactate"], shares["Age"]) > 0  # the riskiest stay: pushed up by a driver
    shares = dict(zip(explained.variables, explained.per_variable[low], strict=True))
    assert min(shares["Lactate"], shares["Age"]) < 0


def test_an_attention_model_says_how_much_weight_it_gave_each_hour(trained):
    seqs = _cohort(300, seed=4)
    norm = Normalization.from_stats(FeatureStats.of(seqs))
    torch.manual_seed(2)
    config = ModelConfig(
        n_features=n_features(VARIABLES), hidden_size=16, variables=",".join(VARIABLES), attention=True
    )
    model = MortalityLSTM(config)
    train_epochs(model, to_features(seqs, norm, VARIABLES), seqs.labels, epochs=3, lr=0.01, batch_size=64, seed=0)
    explained = explain(model, norm, seqs.take(np.arange(40)))
    with torch.no_grad():
        logits, weights = model.forward_with_attention(
            torch.from_numpy(to_features(seqs.take(np.arange(40)), norm, VARIABLES))
        )
    assert explained.attention is not None and weights is not None
    assert explained.attention.shape == (40, 48)
    np.testing.assert_allclose(explained.attention.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(explained.attention, weights.double().numpy(), atol=1e-7)
    np.testing.assert_allclose(explained.risk, torch.sigmoid(logits).double().numpy(), atol=1e-7)
    plain, plain_norm = trained
    assert explain(plain, plain_norm, seqs.take(np.arange(5))).attention is None  # no attention, no weights


def test_a_stay_the_first_integral_misses_is_integrated_again_until_it_adds_up(monkeypatch):
    """On the built-in cohort, whose paths from the empty stay are smooth. (The toy cohort's
    25-epoch models turn so sharply on some paths that 512 points miss too: their error is
    reported, as below.)"""
    import fedicu.client.bedside.explain as explaining

    seqs = to_sequences(clean(synthetic.generate(hospitals=2, stays=400, seed=6))[0])
    norm = Normalization.from_stats(FeatureStats.of(seqs))
    torch.manual_seed(2)
    model = MortalityLSTM(ModelConfig(n_features=n_features(), hidden_size=32))
    train_epochs(model, to_features(seqs, norm), seqs.labels, epochs=4, lr=0.01, batch_size=64, seed=2)
    seqs = seqs.take(np.arange(120, 180))
    monkeypatch.setattr(explaining, "STEPS", 1)  # one point: far off for most stays
    rough = explain(model, norm, seqs)
    monkeypatch.setattr(explaining, "REFINED_STEPS", ())
    unrefined = explain(model, norm, seqs)
    missed = np.abs(unrefined.delta) > TOLERANCE
    assert missed.sum() > 10
    assert (np.abs(rough.delta) <= np.abs(unrefined.delta)).all()  # never worse
    assert (np.abs(rough.delta[missed]) <= TOLERANCE).all()  # and here, every one within
    total = rough.by_hour.sum(axis=(1, 2))
    np.testing.assert_allclose(total - (rough.risk - rough.empty_risk), rough.delta, atol=1e-9)  # as reported
