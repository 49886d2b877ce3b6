"""A hospital's DP-SGD round: noise calibrated for the whole run, the privacy ledger
kept in the node's state across rounds, and a refusal instead of overspending.

At a deployed site the ledger is also written to a state file after every round, so a
SuperNode that restarts in the middle of a run goes on from what it has spent instead of
starting again at zero. Imported only by runs with `--dp`, since Opacus is slow to import.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from flwr.app import ConfigRecord, Context

from fedicu.shared.contract import TrainRequest
from fedicu.shared.files import atomic_write_bytes
from fedicu.shared.model import MortalityLSTM
from fedicu.shared.privacy.accounting import BudgetExhausted, PrivacyLedger, calibrate_noise, new_accountant
from fedicu.shared.privacy.per_sample_lstm import PoissonSchedule, train_epochs_dp

__all__ = ["BudgetExhausted", "PrivateRound", "restore"]

LEDGER_STATE = "privacy"  # node state record holding the hospital's privacy ledger


def _ledger(context: Context, request: TrainRequest, state_file: Path | None) -> PrivacyLedger:
    if LEDGER_STATE in context.state:
        return PrivacyLedger.from_json(json.loads(str(context.state[LEDGER_STATE]["ledger"])))
    if state_file is not None and state_file.is_file():
        return PrivacyLedger.from_json(json.loads(state_file.read_text()))
    return PrivacyLedger(request.accountant, request.delta)


class PrivateRound:
    """This round's DP-SGD at a hospital, within its budget for the whole run: `passes`
    trainings of the round's local epochs each (FedRep: its head, then its body), every step
    of each counted in the hospital's one ledger. With `finetune`, instead the fine-tuning
    after the run (`--personalization finetune`): one training of the request's
    `finetune_epochs`, with the noise the rounds had, as it was planned for from the start.

    Raises `BudgetExhausted` instead of starting when the training would overspend.
    `secure_rng` draws noise and batches from the operating system's entropy instead of
    generators seeded by the caller; `state_file` (a deployed site's) keeps the ledger on disk
    as well.
    """

    def __init__(
        self, request: TrainRequest, context: Context, n: int, secure_rng: bool, state_file: Path | None,
        passes: int = 1, finetune: bool = False,
    ) -> None:  # fmt: skip
        self.request, self.context, self.secure_rng, self.state_file = request, context, secure_rng, state_file
        self.ledger = _ledger(context, request, state_file)
        self.schedule = PoissonSchedule.of(n, request.batch_size)
        per_round, after_run = (
            passes * self.schedule.steps(request.local_epochs),
            self.schedule.steps(request.finetune_epochs),
        )
        self.epochs = request.finetune_epochs if finetune else request.local_epochs
        self.steps = after_run if finetune else per_round
        self.sigma = request.noise_multiplier
        if self.sigma == 0:  # the same sigma every round and after: calibrated for all the steps the run plans
            planned = request.planned_rounds * per_round + after_run
            self.sigma = calibrate_noise(
                self.ledger.accountant, request.target_epsilon, self.ledger.delta, self.schedule.sample_rate, planned
            )
        self.ledger.check_budget(self.sigma, self.schedule.sample_rate, self.steps, request.target_epsilon)
        self.accountant = new_accountant(self.ledger.accountant)  # every step of every pass, to check the count

    def train(
        self, model: MortalityLSTM, x: np.ndarray, y: np.ndarray, seed: int,
        epoch_inputs: Callable[[int], np.ndarray] | None = None, proximal_mu: float | None = None,
        anchor: list[torch.Tensor] | None = None, after_epoch: Callable[[int], None] | None = None,
    ) -> float:  # fmt: skip
        """One pass of DP-SGD over the parameters of `model` (made by `to_dp_model`) that train,
        with FedProx's pull (`proximal_mu`, the run's if None) towards their start or `anchor`;
        the last epoch's training loss (not privatized: it stays here)."""
        r = self.request
        return train_epochs_dp(
            model, x, y, epochs=self.epochs, lr=r.lr, batch_size=r.batch_size, seed=seed,
            noise_multiplier=self.sigma, max_grad_norm=r.max_grad_norm, accountant=self.accountant,
            proximal_mu=r.proximal_mu if proximal_mu is None else proximal_mu, anchor=anchor,
            secure_mode=self.secure_rng, epoch_inputs=epoch_inputs, after_epoch=after_epoch,
        )  # fmt: skip

    def finish(self) -> str:
        """Record the training's steps in the ledger (the node's state, and the state file); the
        ledger as JSON. The steps recorded are those the passes took: all that were planned."""
        taken = sum(steps for _, _, steps in self.accountant.history)
        if taken != self.steps:
            raise RuntimeError(f"DP-SGD took {taken} steps this round where {self.steps} were planned and accounted")
        self.ledger.record(self.sigma, self.schedule.sample_rate, self.steps)
        record = json.dumps(self.ledger.to_json())
        self.context.state[LEDGER_STATE] = ConfigRecord({"ledger": record})
        if self.state_file is not None:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.state_file, (record + "\n").encode())
        return record


def restore(context: Context, ledger: str, state_file: Path | None) -> None:
    """Put back the ledger a resumed run had reached (rejecting anything malformed).

    A deployed site's own ledger (`state_file`) wins when it holds at least as many rounds:
    the server's copy is from its last checkpoint, and a round the site trained after it
    (its reply lost with the coordinator) has spent privacy all the same."""
    restored = PrivacyLedger.from_json(json.loads(ledger))
    if state_file is not None and state_file.is_file():
        own = PrivacyLedger.from_json(json.loads(state_file.read_text()))
        if len(own.history) >= len(restored.history):
            ledger = json.dumps(own.to_json())
    context.state[LEDGER_STATE] = ConfigRecord({"ledger": ledger})
