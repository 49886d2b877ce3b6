"""Time-series augmentation in local training: `--augment-mask P`, `--augment-shift H` (off by default).

Every epoch a hospital trains on a new random variant of each of its training stays:
- masking: each hourly observation is dropped with probability P, as if it had not been
  measured; forward filling and the hours since the last measurement follow what remains;
- shifting: the whole stay moves by a whole number of hours drawn from -H..H; hours moved out
  of the 48-hour window are lost, hours moved into it are unmeasured.
Static variables stay as they are. Validation, testing and scoring never see an augmented stay.
Under DP-SGD the privacy unit is still one ICU stay: a variant depends on its own stay and a
seed alone, and it is the variant's per-stay gradient that is clipped.
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

    @property
    def active(self) -> bool:
        return self.mask > 0 or self.shift > 0

    def apply(self, seqs: Sequences, rng: np.random.Generator) -> Sequences:
        """A random variant of every stay in `seqs`."""
        hourly = np.where(seqs.observed, seqs.values, np.nan)
        observed = seqs.observed & (rng.random(seqs.observed.shape) >= self.mask)
        if self.shift:
            offsets = rng.integers(-self.shift, self.shift + 1, size=len(seqs))
            source = np.arange(HOURS)[None, :] - offsets[:, None]  # hour t shows the stay's hour t - offset
            inside = (source >= 0) & (source < HOURS)
            at = np.clip(source, 0, HOURS - 1)[:, :, None]
            hourly = np.take_along_axis(hourly, at, axis=1)
            observed = np.take_along_axis(observed, at, axis=1) & inside[:, :, None]
        values, hours_since = fill_forward(hourly, observed)
        return replace(seqs, values=values, observed=observed, hours_since=hours_since)


def epoch_inputs(
    seqs: Sequences, norm: Normalization, variables: tuple[str, ...], augmentation: Augmentation, seed: int
) -> Callable[[int], np.ndarray]:
    """The model inputs of epoch e (from 1): a variant of every stay of `seqs`, new each epoch."""

    def inputs(epoch: int) -> np.ndarray:
        rng = np.random.default_rng([seed, epoch])
        return to_features(augmentation.apply(seqs, rng), norm, variables)

    return inputs
