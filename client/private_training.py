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
from flwr.app import ConfigRecord, Context

from fedicu.shared.contract import TrainRequest
from fedicu.shared.files import atomic_write_bytes
from fedicu.shared.model import MortalityLSTM
from fedicu.shared.privacy.accounting import BudgetExhausted, PrivacyLedger, calibrate_noise, new_accountant
from fedicu.shared.privacy.per_sample_lstm import PoissonSchedule, to_dp_model, train_epochs_dp

__all__ = ["BudgetExhausted", "restore", "train_round"]

LEDGER_STATE = "privacy"  # node state record holding the hospital's privacy ledger


def _ledger(context: Context, request: TrainRequest, state_file: Path | None) -> PrivacyLedger:
    if LEDGER_STATE in context.state:
        return PrivacyLedger.from_json(json.loads(str(context.state[LEDGER_STATE]["ledger"])))
    if state_file is not None and state_file.is_file():
        return PrivacyLedger.from_json(json.loads(state_file.read_text()))
    return PrivacyLedger(request.accountant, request.delta)


def train_round(
    request: TrainRequest,
    context: Context,
    model: MortalityLSTM,
    x: np.ndarray,
    y: np.ndarray,
    seed: int,
    secure_rng: bool,
    state_file: Path | None,
    epoch_inputs: Callable[[int], np.ndarray] | None = None,
) -> tuple[MortalityLSTM, str]:
    """DP-SGD for this round, within the hospital's budget for the whole run.

    Returns the trained model and the updated ledger as JSON. Raises `BudgetExhausted`
    instead of training when the round would overspend. `secure_rng` draws noise and
    batches from the operating system's entropy instead of generators seeded by `seed`;
    `state_file` (a deployed site's) keeps the ledger on disk as well; `epoch_inputs`, each
    epoch's augmented stays (`shared.augmentation`).
    """
    ledger = _ledger(context, request, state_file)
    schedule = PoissonSchedule.of(len(x), request.batch_size)
    steps = schedule.steps(request.local_epochs)
    sigma = request.noise_multiplier
    if sigma == 0:  # the same sigma every round: calibrated for all the steps the run plans
        planned = request.planned_rounds * steps
        sigma = calibrate_noise(ledger.accountant, request.target_epsilon, ledger.delta, schedule.sample_rate, planned)
    ledger.check_budget(sigma, schedule.sample_rate, steps, request.target_epsilon)
    model = to_dp_model(model)
    train_epochs_dp(
        model,
        x,
        y,
        epochs=request.local_epochs,
        lr=request.lr,
        batch_size=request.batch_size,
        seed=seed,
        noise_multiplier=sigma,
        max_grad_norm=request.max_grad_norm,
        accountant=new_accountant(ledger.accountant),
        proximal_mu=request.proximal_mu,
        secure_mode=secure_rng,
        epoch_inputs=epoch_inputs,
    )
    ledger.record(sigma, schedule.sample_rate, steps)
    record = json.dumps(ledger.to_json())
    context.state[LEDGER_STATE] = ConfigRecord({"ledger": record})
    if state_file is not None:
        state_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(state_file, (record + "\n").encode())
    return model, record


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
