"""--augment-mask / --augment-shift: each epoch trains on a new variant of every stay, built as
the hourly sequences would be from fewer or shifted measurements."""

import dataclasses

import numpy as np
import pytest
import torch

from fedicu.server.federated_run import LogProgress
from fedicu.shared.augmentation import Augmentation
from fedicu.shared.config import RunConfig
from fedicu.shared.datasets import synthetic
from fedicu.shared.federation import prepare
from fedicu.shared.model import ModelConfig, MortalityLSTM
from fedicu.shared.preprocessing import HOURS, FeatureStats, Normalization, clean, n_features, to_sequences
from fedicu.shared.privacy.accounting import new_accountant
from fedicu.shared.privacy.per_sample_lstm import make_dp_model, train_epochs_dp
from fedicu.shared.run_dir import FINAL_MODEL, RunDirectory
from fedicu.shared.training import train_epochs
from fedicu.simulations.inprocess import run_in_process


@pytest.fixture(scope="module")
def seqs():
    return to_sequences(clean(synthetic.generate(hospitals=1, stays=60, seed=2))[0])


def filled_by_hand(hourly: np.ndarray, observed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Forward fill and hours since the last measurement, one cell at a time."""
    values = np.full(hourly.shape, np.nan, dtype=np.float32)
    since = np.full(hourly.shape, HOURS, dtype=np.uint8)
    for stay, variable in np.ndindex(hourly.shape[0], hourly.shape[2]):
        last = None
        for hour in range(HOURS):
            if observed[stay, hour, variable]:
                last = hour
            if last is not None:
                values[stay, hour, variable] = hourly[stay, last, variable]
                since[stay, hour, variable] = hour - last
    return values, since


def test_no_augmentation_gives_the_stays_back(seqs):
    same = Augmentation().apply(seqs, seed=0)
    assert np.array_equal(same.observed, seqs.observed) and np.array_equal(same.hours_since, seqs.hours_since)
    assert np.array_equal(same.values, seqs.values, equal_nan=True)


def test_masking_drops_observations_and_fills_from_what_remains(seqs):
    masked = Augmentation(mask=0.3).apply(seqs, seed=1)
    assert not (masked.observed & ~seqs.observed).any()  # nothing observed that was not
    kept = masked.observed.sum() / seqs.observed.sum()
    assert 0.65 < kept < 0.75  # about 1 - 0.3 of some 20,000 observations
    hourly = np.where(seqs.observed, seqs.values, np.nan)
    values, since = filled_by_hand(hourly, masked.observed)
    assert np.array_equal(masked.values, values, equal_nan=True) and np.array_equal(masked.hours_since, since)
    assert np.array_equal(masked.static, seqs.static, equal_nan=True) and np.array_equal(masked.labels, seqs.labels)


def test_a_shift_moves_each_whole_stay_by_at_most_the_given_hours(seqs):
    shifted = Augmentation(shift=3).apply(seqs, seed=2)
    hourly = np.where(seqs.observed, seqs.values, np.nan)
    offsets = []
    for stay in range(len(seqs)):
        for offset in range(-3, 4):
            moved = np.zeros_like(seqs.observed[stay])
            source = np.arange(HOURS) - offset
            inside = (source >= 0) & (source < HOURS)
            moved[inside] = seqs.observed[stay, source[inside]]
            if np.array_equal(moved, shifted.observed[stay]):
                offsets.append(offset)
                at = shifted.observed[stay]
                assert np.array_equal(shifted.values[stay][at], hourly[stay, source[inside]][at[inside]])
                break
        else:
            pytest.fail(f"stay {stay} is not its own measurements moved by -3..3 hours")
    assert len(set(offsets)) > 3  # each stay draws its own offset


def test_a_stays_variant_depends_on_that_stay_alone(seqs):
    """What DP-SGD's guarantee for one stay needs: adding or removing other stays changes nothing."""
    every = Augmentation(mask=0.3, shift=4).apply(seqs, seed=9)
    some = np.arange(5, len(seqs), 3)
    fewer = Augmentation(mask=0.3, shift=4).apply(seqs.take(some), seed=9)
    for field in ("observed", "hours_since"):
        assert np.array_equal(getattr(fewer, field), getattr(every, field)[some])
    assert np.array_equal(fewer.values, every.values[some], equal_nan=True)


def test_every_epoch_draws_new_variants_reproducibly(seqs):
    norm = Normalization.from_stats(FeatureStats.of(seqs))
    inputs = Augmentation(mask=0.2, shift=2).epoch_inputs(seqs, norm, ("HR", "MAP"), seed=7)
    again = Augmentation(mask=0.2, shift=2).epoch_inputs(seqs, norm, ("HR", "MAP"), seed=7)
    assert inputs is not None and again is not None
    assert Augmentation().epoch_inputs(seqs, norm, ("HR", "MAP"), seed=7) is None
    assert inputs(1).shape == (len(seqs), HOURS, n_features(("HR", "MAP")))
    assert np.array_equal(inputs(1), again(1))
    assert not np.array_equal(inputs(1), inputs(2))


@pytest.mark.parametrize("private", [False, True], ids=["plain", "dp-sgd"])
def test_training_runs_on_each_epochs_variants(seqs, private):
    norm = Normalization.from_stats(FeatureStats.of(seqs))
    inputs = Augmentation(mask=0.5).epoch_inputs(seqs, norm, ("HR", "MAP"), seed=3)
    assert inputs is not None
    asked: list[int] = []

    def counted(epoch: int) -> np.ndarray:
        asked.append(epoch)
        return inputs(epoch)

    config = ModelConfig(n_features=n_features(("HR", "MAP")), hidden_size=8, variables="HR,MAP")

    def trained(epoch_inputs) -> dict:
        torch.manual_seed(0)
        model = make_dp_model(config) if private else MortalityLSTM(config)
        train = train_epochs_dp if private else train_epochs
        extra = dict(noise_multiplier=1.0, max_grad_norm=1.0, accountant=new_accountant("rdp")) if private else {}
        train(
            model, inputs(0), seqs.labels, epochs=2, lr=0.01, batch_size=16, seed=4, epoch_inputs=epoch_inputs, **extra
        )
        return model.state_dict()

    plain, augmented = trained(None), trained(counted)
    assert asked == [1, 2]
    assert any(not torch.equal(plain[name], augmented[name]) for name in plain)


def test_hospitals_train_on_variants_in_a_federated_run(tmp_path):
    config = RunConfig(hospitals=2, synthetic_stays=300, rounds=1, seed=4)
    finals = {}
    for name, run_config in (
        ("plain", config),
        ("augmented", dataclasses.replace(config, augment_mask=0.3, augment_shift=2)),
    ):
        run_dir = RunDirectory(tmp_path / name).create()
        run_in_process(run_config, prepare(run_config), run_dir, LogProgress())
        finals[name] = run_dir.load_model(FINAL_MODEL)["state_dict"]
    assert any(not torch.equal(finals["plain"][k], finals["augmented"][k]) for k in finals["plain"])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"augment_mask": 1.0}, "--augment-mask must lie in"),
        ({"augment_shift": 48}, "--augment-shift must lie in 0..47"),
    ],
)
def test_bad_augmentation_settings_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        RunConfig(**changes)
