"""Time-series augmentation in local training: `--augment-mask P`, `--augment-shift H` (off by default).

Every epoch of a training round (federated or baseline) trains on a new random variant of each
training stay:
- masking: each hourly observation is dropped with probability P, as if it had not been
  measured; forward filling and the hours since the last measurement follow what remains;
- shifting: the whole stay moves by a whole number of hours drawn from -H..H; hours moved out
  of the 48-hour window are lost, hours moved into it are unmeasured.
Static variables stay as they are. Validation, testing, scoring and `--personalization`
fine-tuning never see an augmented stay. Each variant is drawn from a generator of its own,
seeded by the run's seed, the epoch and the stay's id: it depends on that stay alone, so under
DP-SGD, which clips the variant's per-stay gradient, the privacy unit is still one ICU stay.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from fedicu.shared.preprocessing import HOURS, Normalization, Sequences, fill_forward, to_features


@dataclass(frozen=True)
class Augmentation:
    mask: float = 0.0  # probability of dropping each hourly observation, in [0, 1)
    shift: int = 0  # the most hours a stay moves, earlier or later, in 0..HOURS-1

    def apply(self, seqs: Sequences, seed: int) -> Sequences:
        """A random variant of every stay in `seqs`, each from its own generator (`seed`, stay id)."""
        draws = [np.random.default_rng([seed, int(stay)]) for stay in seqs.stay_ids]
        kept = np.stack([rng.random(seqs.observed.shape[1:]) >= self.mask for rng in draws]) if draws else seqs.observed
        hourly = np.where(seqs.observed, seqs.values, np.nan)
        observed = seqs.observed & kept
        if self.shift:
            offsets = np.array([rng.integers(-self.shift, self.shift + 1) for rng in draws], dtype=np.int64)
            source = np.arange(HOURS)[None, :] - offsets[:, None]  # hour t shows the stay's hour t - offset
            inside = (source >= 0) & (source < HOURS)
            at = np.clip(source, 0, HOURS - 1)[:, :, None]
            hourly = np.take_along_axis(hourly, at, axis=1)
            observed = np.take_along_axis(observed, at, axis=1) & inside[:, :, None]
        values, hours_since = fill_forward(hourly, observed)
        return replace(seqs, values=values, observed=observed, hours_since=hours_since)

    def epoch_inputs(
        self, seqs: Sequences, norm: Normalization, variables: tuple[str, ...], seed: int
    ) -> Callable[[int], np.ndarray] | None:
        """The model inputs of epoch e (from 1), a new variant of every stay of `seqs` each
        epoch; None without augmentation (train on the stays as recorded)."""
        if self.mask == 0 and self.shift == 0:
            return None

        def inputs(epoch: int) -> np.ndarray:
            epoch_seed = int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
            return to_features(self.apply(seqs, epoch_seed), norm, variables)

        return inputs
