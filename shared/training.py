"""Training and prediction loops shared by federated clients and the baselines.

Class imbalance (about 14 % deaths) is handled at the decision threshold, not in
the loss: the model is trained with plain binary cross-entropy so its outputs
stay calibrated probabilities (meaningful Brier scores), and the threshold for
yes/no decisions is chosen on validation data to maximize Event-1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from fedicu.shared.model import MortalityLSTM

GRAD_CLIP_NORM = 5.0  # LSTMs occasionally produce exploding gradients on long sequences


def set_torch_threads(threads: int) -> None:
    """Limit intra-op threads so parallel hospitals do not oversubscribe the CPU."""
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Use `threads` intra-op threads inside the block, and the previous number after it."""
    previous = torch.get_num_threads()
    set_torch_threads(threads)
    try:
        yield
    finally:
        set_torch_threads(previous)


def train_epochs(
    model: MortalityLSTM,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    proximal_mu: float = 0.0,
    after_epoch: Callable[[int], None] | None = None,
    epoch_inputs: Callable[[int], np.ndarray] | None = None,
    correction: dict[str, torch.Tensor] | None = None,
    anchor: list[torch.Tensor] | None = None,
) -> float:
    """Train in place with Adam; return the mean training loss of the last epoch.

    `proximal_mu > 0` adds FedProx's term mu/2 * ||w - w_start||^2, which keeps a
    hospital's update close to the global model it started from (`anchor`: close to these
    weights, in `model.parameters()` order, instead: Ditto's pull of a personal model). `after_epoch(epoch)` (from 1)
    is called after each epoch, with the optimizer's state kept across them. With
    `epoch_inputs` (`shared.augmentation`), epoch e trains on `epoch_inputs(e)`, the same stays
    in the same order as `x`, instead of on `x`. SCAFFOLD's `correction` (parameter name -> c - c_i)
    is added to every gradient, after clipping: the clip bounds the stochastic gradient, while the
    correction, a difference of mean gradients, must reach the optimizer as it is.
    """
    if len(x) == 0:
        raise ValueError("no training stays")
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout masks
    inputs, targets = torch.from_numpy(x), torch.from_numpy(y.astype(np.float32))
    start = (anchor or [p.detach().clone() for p in model.parameters()]) if proximal_mu > 0 else None
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.BCEWithLogitsLoss()
    epoch_loss = float("nan")
    for epoch in range(1, epochs + 1):
        model.train()  # again each epoch: `after_epoch` may have scored the model
        if epoch_inputs is not None:
            inputs = torch.from_numpy(epoch_inputs(epoch))
        total, seen = 0.0, 0
        for batch in torch.randperm(len(x), generator=generator).split(batch_size):
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(inputs[batch]), targets[batch])
            total += loss.item() * len(batch)
            seen += len(batch)
            if start is not None:
                loss = loss + proximal_mu / 2 * sum(
                    torch.sum((p - p0) ** 2) for p, p0 in zip(model.parameters(), start, strict=True)
                )
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP_NORM)
            if correction is not None:
                _correct(model, correction)
            optimizer.step()
        epoch_loss = total / seen
        if after_epoch is not None:
            after_epoch(epoch)
    return epoch_loss


def _correct(model: MortalityLSTM, correction: dict[str, torch.Tensor]) -> None:
    for name, parameter in model.named_parameters():
        if parameter.grad is not None:
            parameter.grad.add_(correction[name])


def mean_gradient(
    model: MortalityLSTM, x: np.ndarray, y: np.ndarray, batch_size: int = 1024
) -> dict[str, torch.Tensor]:
    """The gradient of the mean training loss at the model as it is (without dropout), per
    parameter name; zeros for a parameter that is not trained. SCAFFOLD's control variate."""
    model.eval()
    model.zero_grad(set_to_none=True)
    targets = torch.from_numpy(y.astype(np.float32))
    loss_fn = nn.BCEWithLogitsLoss(reduction="sum")
    for i in range(0, len(x), batch_size):
        batch = slice(i, i + batch_size)
        (loss_fn(model(torch.from_numpy(x[batch])), targets[batch]) / len(x)).backward()
    gradient = {
        name: p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
        for name, p in model.named_parameters()
    }
    model.zero_grad(set_to_none=True)
    return gradient


@torch.no_grad()
def predict(model: MortalityLSTM, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Probabilities of in-hospital death, float64 `[n]`."""
    model.eval()
    out = [torch.sigmoid(model(torch.from_numpy(x[i : i + batch_size]))) for i in range(0, len(x), batch_size)]
    return torch.cat(out).double().numpy() if out else np.empty(0)
