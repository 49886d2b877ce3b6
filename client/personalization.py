"""Personalization: each hospital gets a model of its own and keeps it.

Nothing of a personal model leaves its hospital: the server learns only how it scores on the
hospital's own validation and test stays (`contract.PersonalizeReply`), as for the global model.

`finetune`: once the federation has trained, further local epochs from the model the run
selected, with the run's learning rate and batch size. The hospital keeps the epoch, 0 (the
global model itself) included, whose model has the highest AUROC on its validation stays, so a
personal model is never below the global one there; its test stays are scored once, with the
model so chosen.

`ditto` (Li et al., ICML 2021): every round, besides training the global model, the hospital
trains its personal model for the round's local epochs on the objective
loss(v) + lambda/2 * ||v - w||^2, w the global model it received, starting from its personal model
of the round before (the global model in the first round). It keeps the personal model of the
round with the best AUROC on its validation stays, and each round's state in a file of its own,
so that a resumed run trains exactly as an uninterrupted one. Without DP-SGD the global model is
trained and aggregated as without Ditto (with it, see below).

`fedrep` (Collins et al., ICML 2021): the LSTM body is federated, the output head is the
hospital's own. Every round the hospital puts its head (the received one in the first round) on
the body it received and trains the head alone for the round's local epochs; that pair is the
round's personal model, scored on its validation stays and kept as for Ditto. Then it trains the
body alone, under its head, for the same epochs, and sends the body with the head it *received*
in place of its own: the server's head never moves, and no reply carries anything of a personal
head. The run's global model is therefore a body, not a model: its scores (per round, at each
hospital) are those of the body under each hospital's own head.

Under DP-SGD (`--dp`), privacy unit: one ICU stay. Ditto and FedRep: both trainings of a round
(Ditto: the personal model and the global one; FedRep: the head and the body) are DP-SGD on the
hospital's training stays with the run's noise multiplier and sampling rate, and both are counted
in the hospital's one privacy ledger (a round takes twice the steps, and the noise is calibrated
for all of them). Finetune: the fine-tuning epochs are DP-SGD with the rounds' noise and sampling
rate, counted in the same ledger after the last round; the noise is calibrated from the first
round for the rounds and those epochs together, so the ledger ends within the run's target
epsilon. What the hospital sends is post-processing of the rounds' steps: it has the (epsilon,
delta) the ledger reports after the last round. The personal model it keeps is post-processing
of every step: it has the (epsilon, delta) of the whole ledger, fine-tuning included
(`personalization.json` gives each hospital's). Which round's or epoch's model it keeps is chosen
on its validation stays, which the guarantee does not cover (as for every validation metric).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from fedicu.shared.metrics import auroc
from fedicu.shared.model import HEAD, MortalityLSTM
from fedicu.shared.training import predict, train_epochs


@dataclass(frozen=True)
class PersonalModel:
    model: MortalityLSTM
    # finetune: its epochs (0: no epoch beat the global model on the validation stays); ditto, fedrep: its round
    epochs: int
    val_auroc_global: float
    val_auroc: float


def finetune(
    model: MortalityLSTM,
    val: tuple[np.ndarray, np.ndarray],
    train: Callable[[MortalityLSTM, Callable[[int], None]], float],
) -> PersonalModel:
    """Fine-tune `model` in place with `train(model, after_epoch)`, which trains it for up to the
    run's fine-tuning epochs calling `after_epoch(epoch)` after each, and leave it at the epoch
    that scores best on `val` (inputs, labels)."""
    start = auroc(val[1], predict(model, val[0]))
    best_epochs, best_auroc, best_state = 0, start, copy.deepcopy(model.state_dict())

    def keep_if_better(epoch: int) -> None:
        nonlocal best_epochs, best_auroc, best_state
        score = auroc(val[1], predict(model, val[0]))
        if score > best_auroc:  # a NaN AUROC (one class only) never replaces the global model
            best_epochs, best_auroc, best_state = epoch, score, copy.deepcopy(model.state_dict())

    train(model, keep_if_better)
    model.load_state_dict(best_state)
    return PersonalModel(model, best_epochs, start, best_auroc)


@dataclass(frozen=True)
class PersonalState:
    """What a hospital keeps of its personal model after a round (ditto, fedrep)."""

    latest: dict[str, torch.Tensor]
    best: dict[str, torch.Tensor]  # the round's with the best validation AUROC so far
    best_round: int
    best_val_auroc: float

    def to_file(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_file(saved: dict) -> PersonalState:
        return PersonalState(**saved)


def _kept_after(
    kept: PersonalState | None, server_round: int, personal: MortalityLSTM, val: tuple[np.ndarray, np.ndarray]
) -> PersonalState:
    """The state once round `server_round` trained `personal`, the best one kept as well."""
    score, latest = auroc(val[1], predict(personal, val[0])), copy.deepcopy(personal.state_dict())
    if kept is None or math.isnan(kept.best_val_auroc) or score > kept.best_val_auroc:
        return PersonalState(latest, latest, server_round, score)
    return PersonalState(latest, kept.best, kept.best_round, kept.best_val_auroc)


def ditto_round(
    global_model: MortalityLSTM, kept: PersonalState | None, val: tuple[np.ndarray, np.ndarray], *,
    server_round: int, train: Callable[[MortalityLSTM, list[torch.Tensor]], float],
) -> PersonalState:  # fmt: skip
    """Round `server_round` of Ditto at a hospital: `train(personal, anchor)` trains the personal
    model in place with lambda's pull towards `anchor` (the weights of `global_model`, the one it
    received, which is not changed)."""
    personal = copy.deepcopy(global_model)
    if kept is not None:
        personal.load_state_dict(kept.latest)
    train(personal, [p.detach().clone() for p in global_model.parameters()])
    return _kept_after(kept, server_round, personal, val)


def with_personal_head(received: MortalityLSTM, kept: PersonalState | None) -> MortalityLSTM:
    """FedRep: the body received with the hospital's latest head on it (the received head
    before the hospital has one); `received` is not changed."""
    personal = copy.deepcopy(received)
    if kept is not None:
        personal.load_state_dict({**personal.state_dict(), **_head(kept.latest)})
    return personal


def _head(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor for name, tensor in state.items() if name.startswith(HEAD)}


@dataclass(frozen=True)
class FedRepRound:
    state: PersonalState  # what the hospital keeps
    reply: MortalityLSTM  # what it sends: the body trained under its head, with the received head
    train_loss: float  # the body's last epoch
    local_val_auroc: float  # the trained body under the hospital's head


# Trains the parameters of a model that train, in place, and returns the last epoch's loss;
# FedRep calls it twice a round: phase 0 trains the head, phase 1 the body.
Training = Callable[[MortalityLSTM, int], float]


def fedrep_round(
    received: MortalityLSTM, kept: PersonalState | None, val: tuple[np.ndarray, np.ndarray], *, server_round: int,
    train: Training,
) -> FedRepRound:  # fmt: skip
    """Round `server_round` of FedRep at a hospital; `received` is not changed."""
    personal = with_personal_head(received, kept)
    _train_only(personal, head=True)
    train(personal, 0)
    state = _kept_after(kept, server_round, personal, val)
    _train_only(personal, head=False)
    loss = train(personal, 1)
    personal.requires_grad_(True)
    local_val_auroc = auroc(val[1], predict(personal, val[0]))
    personal.load_state_dict({**personal.state_dict(), **_head(received.state_dict())})
    return FedRepRound(state, personal, loss, local_val_auroc)


def _train_only(model: MortalityLSTM, head: bool) -> None:
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith(HEAD) == head)


def plain_training(
    x: np.ndarray, y: np.ndarray, *, epochs: int, lr: float, batch_size: int, seed: int, proximal_mu: float = 0.0,
    epoch_inputs: Callable[[int], np.ndarray] | None = None,
) -> Training:  # fmt: skip
    """FedRep's trainings without DP-SGD: `train_epochs`, a seed per phase, FedProx's pull
    (towards the body received) on the body only."""

    def train(model: MortalityLSTM, phase: int) -> float:
        return train_epochs(model, x, y, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed + phase,
                            proximal_mu=proximal_mu if phase else 0.0, epoch_inputs=epoch_inputs)  # fmt: skip

    return train


def kept_personal(
    received: MortalityLSTM, kept: PersonalState, val: tuple[np.ndarray, np.ndarray], *, headless: bool
) -> PersonalModel:
    """The personal model a hospital kept over the rounds (that of the round best on
    validation), beside the global model it `received` (scored unless `headless`: FedRep's,
    which has no head of its own)."""
    personal = copy.deepcopy(received)
    personal.load_state_dict(kept.best)
    start = math.nan if headless else auroc(val[1], predict(received, val[0]))
    return PersonalModel(personal, kept.best_round, start, kept.best_val_auroc)


def states_to_keep(rounds: list[int], server_round: int) -> set[int]:
    """The rounds whose personal states (ditto, fedrep) a hospital keeps once it has trained `server_round`: that
    round's, and the latest before it and before the round preceding it. The server sends a
    round before it checkpoints the one before, so a resume may run either again, and each must
    start from what it started from the first time."""
    earlier = sorted(r for r in rounds if r < server_round)
    before_previous = [r for r in earlier if r < server_round - 1]
    return {server_round, *earlier[-1:], *before_previous[-1:]}
