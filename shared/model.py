"""The LSTM mortality classifier.

LSTM over the hourly sequence -> a summary of the sequence -> dropout -> linear
-> one logit (sigmoid gives the probability of in-hospital death). The summary
is the last hidden state, or, with `attention=True`, an attention-weighted mean
of all hidden states whose weights show which hours the prediction rests on.
The output `head` alone can be trained on top of a frozen body (`freeze_body`).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from fedicu.shared.preprocessing import n_features
from fedicu.shared.variables import TIME_SERIES

if TYPE_CHECKING:
    from fedicu.shared.config import RunConfig
    from fedicu.shared.privacy.per_sample_lstm import PerSampleLSTM


@dataclass(frozen=True)
class ModelConfig:
    n_features: int
    hidden_size: int = 64
    num_layers: int = 1
    dropout: float = 0.2
    attention: bool = False
    variables: str = ",".join(TIME_SERIES)  # the time series it reads, comma-separated, in channel order
    input_decay: bool = False  # GRU-D's decay of stale values towards the mean (`InputDecay`)

    def __post_init__(self) -> None:
        if self.hidden_size < 1 or self.num_layers < 1:
            raise ValueError("--hidden-size and --layers must be at least 1")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"--dropout must lie in [0, 1), not {self.dropout}")

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def channels(self) -> tuple[str, ...]:
        return tuple(self.variables.split(","))


def model_config_of(config: RunConfig) -> ModelConfig:
    """The model a run configuration asks for, on the feature layout of its variables."""
    return ModelConfig(
        n_features=n_features(config.model_variables),
        hidden_size=config.hidden_size,
        num_layers=config.layers,
        dropout=config.dropout,
        attention=config.attention,
        variables=",".join(config.model_variables),
        input_decay=config.input_decay,
    )


class InputDecay(nn.Module):
    """GRU-D's input decay (Che et al., Scientific Reports 2018): a value last measured δ ago
    counts for γ = exp(-max(0, w·δ + b)) of itself, the rest going to the mean (0 once
    standardized), one (w, b) per time series. It reads the value, observed and hours-since
    channels of `shared.preprocessing.to_features` and changes only the values."""

    def __init__(self, variables: int):
        super().__init__()
        # w = 1 per 48 hours (the hours-since channel's unit): e^-1 after two days, and a slope to learn from
        self.weight = nn.Parameter(torch.ones(variables))
        self.bias = nn.Parameter(torch.zeros(variables))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.weight.numel()
        values, observed, since = x[..., :n], x[..., n : 2 * n], x[..., 2 * n : 3 * n]
        kept = torch.exp(-torch.relu(self.weight * since + self.bias))
        return torch.cat([values * (observed + (1 - observed) * kept), x[..., n:]], dim=-1)


class MortalityLSTM(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.decay = InputDecay(len(config.channels)) if config.input_decay else None
        self.lstm: nn.LSTM | PerSampleLSTM = nn.LSTM(  # PerSampleLSTM for DP training (to_dp_model)
            config.n_features,
            config.hidden_size,
            num_layers=config.num_layers,
            batch_first=True,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
        self.attention = nn.Linear(config.hidden_size, 1) if config.attention else None
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden_size, 1)

    def forward_with_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits `[batch]` and attention weights `[batch, time]` (None without attention)."""
        hidden, _ = self.lstm(self.decay(x) if self.decay is not None else x)
        if self.attention is None:
            summary, weights = hidden[:, -1], None
        else:
            weights = torch.softmax(self.attention(torch.tanh(hidden)).squeeze(-1), dim=1)
            summary = torch.einsum("bt,bth->bh", weights, hidden)
        return self.head(self.dropout(summary)).squeeze(-1), weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_attention(x)[0]


def fingerprint(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the weights (names and values, in name order): says which model a file that
    belongs to one model, such as a site's recalibration, was made for."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        digest.update(name.encode())
        digest.update(state_dict[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


HEAD = "head."  # the output layer's parameters; everything else is the body
INPUT_WEIGHTS = "lstm.weight_ih_l0"  # the first layer's weights on the input features, one column each
# Weights that belong to one input variable each: they mean another thing in a model of other variables.
PER_VARIABLE = (INPUT_WEIGHTS, "decay.weight", "decay.bias")


def freeze_body(model: MortalityLSTM) -> None:
    """Keep every parameter but the output head's fixed in training."""
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith(HEAD))


def transfer_weights(start: dict[str, torch.Tensor], trained: dict[str, torch.Tensor]) -> list[str]:
    """Copy into `start` (a new model's weights) every tensor of `trained` with the same name and
    shape; the names of `start` not taken, left as they were."""
    not_taken = [name for name in start if name not in trained or trained[name].shape != start[name].shape]
    for name in start:
        if name not in not_taken:
            start[name] = trained[name].detach().clone()
    return not_taken
