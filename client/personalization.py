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
so that a resumed run trains exactly as an uninterrupted one. The global model is trained and
aggregated as without Ditto.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from fedicu.shared.metrics import auroc
from fedicu.shared.model import MortalityLSTM
from fedicu.shared.training import predict, train_epochs


@dataclass(frozen=True)
class PersonalModel:
    model: MortalityLSTM
    # finetune: its epochs (0: no epoch beat the global model on the validation stays); ditto: its round
    epochs: int
    val_auroc_global: float
    val_auroc: float


def finetune(
    model: MortalityLSTM, train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray], *,
    max_epochs: int, lr: float, batch_size: int, seed: int,
) -> PersonalModel:  # fmt: skip
    """Fine-tune `model` in place on `train` (inputs, labels) for up to `max_epochs` and leave it
    at the epoch that scores best on `val`."""
    start = auroc(val[1], predict(model, val[0]))
    best_epochs, best_auroc, best_state = 0, start, copy.deepcopy(model.state_dict())

    def keep_if_better(epoch: int) -> None:
        nonlocal best_epochs, best_auroc, best_state
        score = auroc(val[1], predict(model, val[0]))
        if score > best_auroc:  # a NaN AUROC (one class only) never replaces the global model
            best_epochs, best_auroc, best_state = epoch, score, copy.deepcopy(model.state_dict())

    train_epochs(model, *train, epochs=max_epochs, lr=lr, batch_size=batch_size, seed=seed, after_epoch=keep_if_better)
    model.load_state_dict(best_state)
    return PersonalModel(model, best_epochs, start, best_auroc)


@dataclass(frozen=True)
class DittoState:
    """What a hospital keeps of its personal model after a round."""

    latest: dict[str, torch.Tensor]
    best: dict[str, torch.Tensor]  # the round's with the best validation AUROC so far
    best_round: int
    best_val_auroc: float

    def to_file(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_file(saved: dict) -> DittoState:
        return DittoState(**saved)


def ditto_round(
    global_model: MortalityLSTM, kept: DittoState | None, train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray], *, server_round: int, lam: float, epochs: int, lr: float, batch_size: int,
    seed: int,
) -> DittoState:  # fmt: skip
    """Round `server_round` of Ditto at a hospital; `global_model` (the one it received) is not changed."""
    personal = copy.deepcopy(global_model)
    if kept is not None:
        personal.load_state_dict(kept.latest)
    anchor = [p.detach().clone() for p in global_model.parameters()]
    train_epochs(personal, *train, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, proximal_mu=lam,
                 anchor=anchor)  # fmt: skip
    score = auroc(val[1], predict(personal, val[0]))
    latest = copy.deepcopy(personal.state_dict())
    if kept is None or math.isnan(kept.best_val_auroc) or score > kept.best_val_auroc:
        return DittoState(latest, latest, server_round, score)
    return DittoState(latest, kept.best, kept.best_round, kept.best_val_auroc)


def kept_ditto(global_model: MortalityLSTM, kept: DittoState, val: tuple[np.ndarray, np.ndarray]) -> PersonalModel:
    """The personal model Ditto kept (that of the round best on validation), beside `global_model`."""
    personal = copy.deepcopy(global_model)
    personal.load_state_dict(kept.best)
    return PersonalModel(personal, kept.best_round, auroc(val[1], predict(global_model, val[0])), kept.best_val_auroc)


def ditto_states_to_keep(rounds: list[int], server_round: int) -> set[int]:
    """The rounds whose Ditto states a hospital keeps once it has trained `server_round`: that
    round's, and the latest before it and before the round preceding it. The server sends a
    round before it checkpoints the one before, so a resume may run either again, and each must
    start from what it started from the first time."""
    earlier = sorted(r for r in rounds if r < server_round)
    before_previous = [r for r in earlier if r < server_round - 1]
    return {server_round, *earlier[-1:], *before_previous[-1:]}
