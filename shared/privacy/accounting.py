"""One hospital's privacy ledger: what DP-SGD it ran, round by round, and what that costs.

Privacy unit: one ICU stay of the hospital's training split. Guarantee: after
the rounds in `history`, the hospital's training has been (epsilon, delta)
differentially private at the sample level, where epsilon is what Opacus's
accountant (RDP by default, or PRV) computes for the composition of every
entry's Poisson-subsampled Gaussian mechanism (noise multiplier sigma, sample
rate q, number of steps). The ledger lives as long as the run, across rounds
(in Flower's node state in simulation), and is never reset: a fresh accountant
per round would under-report epsilon by the number of rounds.

With a target epsilon the noise is calibrated once, up front, for the whole
planned run (rounds x local epochs x steps per epoch, and the fine-tuning epochs
after the run if it has them), and a round that would take epsilon past the
target is declined instead of trained.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.accountant import IAccountant
from opacus.accountants.utils import get_noise_multiplier

ACCOUNTANTS = {"rdp": RDPAccountant, "prv": PRVAccountant}


class BudgetExhausted(RuntimeError):
    """Training one more round would spend more privacy than the hospital's budget."""


def new_accountant(kind: str) -> IAccountant:
    if kind not in ACCOUNTANTS:
        raise ValueError(f"--accountant must be one of {', '.join(ACCOUNTANTS)}, not {kind!r}")
    return ACCOUNTANTS[kind]()


def accountant_of(kind: str, history: list[tuple[float, float, int]]) -> IAccountant:
    """An Opacus accountant of `kind` that has run the `(sigma, q, steps)` entries of `history`.

    Restored through Opacus's own state dict (the accountant's mechanism and
    history), as a checkpointed accountant would be.
    """
    accountant = new_accountant(kind)
    state = accountant.state_dict()
    state["history"] = list(history)  # a copy: the accountant must not share the ledger's list
    accountant.load_state_dict(state)
    return accountant


def epsilon_of(kind: str, history: list[tuple[float, float, int]], delta: float) -> float:
    """Epsilon of the composition of `(sigma, q, steps)` entries at `delta`."""
    if not history:
        return 0.0
    accountant = accountant_of(kind, history)
    with warnings.catch_warnings():  # RDP's "optimal order is the largest alpha" is harmless here
        warnings.simplefilter("ignore", UserWarning)
        return float(accountant.get_epsilon(delta))


def calibrate_noise(kind: str, target_epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """The smallest noise multiplier whose epsilon after `steps` stays within the target."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return float(
            get_noise_multiplier(
                target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate,
                steps=steps, accountant=kind, epsilon_tolerance=0.005,
            )
        )  # fmt: skip


@dataclass
class PrivacyLedger:
    accountant: str
    delta: float
    history: list[tuple[float, float, int]] = field(default_factory=list)

    @property
    def epsilon(self) -> float:
        return epsilon_of(self.accountant, self.history, self.delta)

    def check_budget(self, sigma: float, sample_rate: float, steps: int, target_epsilon: float) -> None:
        """Raise `BudgetExhausted` if `steps` more (a round, or fine-tuning) would pass `target_epsilon`."""
        projected = epsilon_of(self.accountant, [*self.history, (sigma, sample_rate, steps)], self.delta)
        if target_epsilon > 0 and projected > target_epsilon:
            raise BudgetExhausted(
                f"privacy budget: training on would reach epsilon {projected:.3f} > target "
                f"{target_epsilon:g} (spent so far: {self.epsilon:.3f}); declining to train"
            )

    def record(self, sigma: float, sample_rate: float, steps: int) -> None:
        self.history.append((float(sigma), float(sample_rate), int(steps)))

    def to_json(self) -> dict:
        return {
            "accountant": self.accountant,
            "delta": self.delta,
            "epsilon": self.epsilon,
            "history": [{"noise_multiplier": s, "sample_rate": q, "steps": n} for s, q, n in self.history],
        }

    @staticmethod
    def from_json(d: dict) -> PrivacyLedger:
        history = [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in d["history"]]
        return PrivacyLedger(d["accountant"], d["delta"], history)
