"""Personalization: once the federation has trained, each hospital adapts the model the run
selected to its own stays and keeps the result.

Nothing of a personal model leaves its hospital: the server learns only how it scores on the
hospital's own validation and test stays (`contract.PersonalizeReply`), as for the global model.

`finetune`: further local epochs from the global model, with the run's learning rate and batch
size. The hospital keeps the epoch, 0 (the global model itself) included, whose model has the
highest AUROC on its validation stays, so a personal model is never below the global one there;
its test stays are scored once, with the model so chosen.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from fedicu.shared.metrics import auroc
from fedicu.shared.model import MortalityLSTM
from fedicu.shared.training import predict, train_epochs


@dataclass(frozen=True)
class FineTuned:
    model: MortalityLSTM
    epochs: int  # 0: no epoch beat the global model on the validation stays
    val_auroc_global: float
    val_auroc: float


def finetune(
    model: MortalityLSTM, train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray], *,
    max_epochs: int, lr: float, batch_size: int, seed: int,
) -> FineTuned:  # fmt: skip
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
    return FineTuned(model, best_epochs, start, best_auroc)
