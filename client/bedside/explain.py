"""Why a stay scores as it does: integrated gradients (Captum) over the model's inputs.

An attribution is a share of the stay's risk (the model's probability, before any site
recalibration) relative to the risk of an empty stay: the same model input for a stay with no
measurement and no descriptor (`empty_stay`). Integrated gradients are complete: a stay's
attributions add up to risk(stay) - risk(empty stay), up to the error of the path integral,
reported per stay (`Explanation.delta`, Captum's convergence delta). A recurrent model can turn sharply
somewhere on the path from the empty stay to the stay; a stay whose error exceeds `TOLERANCE`
is integrated again with more steps (`REFINED_STEPS`, in turn), and the smaller error is kept.
On PhysioNet 2012 set B no stay needed more than the first 16 points (largest error 9e-4,
median 1e-8); every stay's error is reported.

Inputs are laid out as in `shared.preprocessing.feature_names`: a time series has three
channels (value, observed, hours since measured), a descriptor one or more (age and its
missing flag, gender, ICU type); an explanation adds a variable's channels up, per hour.

A model trained with attention pooling (`--attention`) also says how much weight it gave each
hour of the stay (`Explanation.attention`, summing to 1): where it looked, which is not the
same as why (the attributions).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from captum.attr import IntegratedGradients

from fedicu.shared.model import MortalityLSTM
from fedicu.shared.preprocessing import HOURS, Normalization, Sequences, feature_names, to_features
from fedicu.shared.variables import TIME_SERIES

STEPS = 16  # points on the path from the empty stay to the stay (Gauss-Legendre)
REFINED_STEPS = (64, 512)  # in turn, for a stay whose attributions still miss its risk by more than TOLERANCE
TOLERANCE = 1e-3  # of risk
BATCH = 64  # stays per Captum call
INTERNAL_BATCH = STEPS * BATCH  # model inputs per forward pass: the refined integral's are split


@dataclass(frozen=True)
class Explanation:
    variables: tuple[str, ...]  # the model's variables, then the descriptors
    by_hour: np.ndarray  # [n, HOURS, len(variables)]: attribution per stay, hour and variable
    delta: np.ndarray  # [n]: sum of attributions - (risk - risk of the empty stay)
    risk: np.ndarray  # [n]
    empty_risk: float
    attention: np.ndarray | None  # [n, HOURS]: the weight the model gave each hour (attention models)

    @property
    def per_variable(self) -> np.ndarray:
        """[n, len(variables)]: each variable's share of the stay's risk, over all hours."""
        return self.by_hour.sum(axis=1)

    def top_variables(self, k: int = 3) -> list[list[tuple[str, float]]]:
        """Per stay, the `k` variables with the largest absolute share, with their signed share."""
        shares = self.per_variable
        order = np.argsort(-np.abs(shares), axis=1, kind="stable")[:, :k]
        return [[(self.variables[j], float(shares[i, j])) for j in row] for i, row in enumerate(order)]

    def importance(self) -> dict[str, float]:
        """Global importance over the stays: each variable's mean absolute share, largest first."""
        mean = np.abs(self.per_variable).mean(axis=0)
        return {self.variables[j]: float(mean[j]) for j in np.argsort(-mean, kind="stable")}


def empty_stay() -> Sequences:
    """A stay with no measurement and no descriptor."""
    shape = (1, HOURS, len(TIME_SERIES))
    return Sequences(
        stay_ids=np.zeros(1, dtype=np.int64),
        values=np.full(shape, np.nan, dtype=np.float32),
        observed=np.zeros(shape, dtype=bool),
        hours_since=np.full(shape, HOURS, dtype=np.uint8),
        static=np.full((1, 5), np.nan, dtype=np.float32),
        labels=np.zeros(1, dtype=np.int8),
    )


class Explainer:
    """Integrated gradients for one model and normalization. What no stay changes (the empty
    stay's input and risk, the variable of each input feature) is computed once, so that a
    service explaining one stay per request pays only for that stay."""

    def __init__(self, model: MortalityLSTM, norm: Normalization):
        self.model = model
        channels = model.config.channels
        self.baseline = torch.from_numpy(to_features(empty_stay(), norm, channels))
        self.norm, self.channels = norm, channels
        model.eval()
        with torch.no_grad():
            self.empty_risk = float(self._risk(self.baseline).item())
        self.variables, grouping = _variable_of_each_feature(channels)
        self.feature_to_variable = np.eye(len(self.variables))[grouping]  # [features, variables], one-hot rows
        self.gradients = IntegratedGradients(self._risk)

    def _risk(self, inputs: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(inputs))

    def __call__(self, seqs: Sequences) -> Explanation:
        """Integrated gradients of every stay's risk, grouped by variable and hour."""
        self.model.eval()
        x = torch.from_numpy(to_features(seqs, self.norm, self.channels))
        with torch.no_grad():
            logits, weights = self.model.forward_with_attention(x) if len(x) else (torch.empty(0), None)
            risks = torch.sigmoid(logits).double().numpy()
        attributions, delta = self._integrate(x, np.arange(len(x)), STEPS, risks)
        for steps in REFINED_STEPS:
            rough = np.flatnonzero(np.abs(delta) > TOLERANCE)
            if not len(rough):
                break
            again, again_delta = self._integrate(x, rough, steps, risks)
            better = np.abs(again_delta) < np.abs(delta[rough])
            attributions[rough[better]], delta[rough[better]] = again[better], again_delta[better]
        by_hour = attributions @ self.feature_to_variable
        attention = None if weights is None else weights.double().numpy()  # attention models only
        return Explanation(self.variables, by_hour, delta, risks, self.empty_risk, attention)

    def _integrate(
        self, x: torch.Tensor, stays: np.ndarray, steps: int, risks: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Attributions of these stays (indices into `x`), and their error: sum - (risk - risk of
        the empty stay), Captum's convergence delta, from the risks computed once."""
        parts = [np.empty((0, *x.shape[1:]))]
        for start in range(0, len(stays), BATCH):
            batch = x[stays[start : start + BATCH]]
            attributed = self.gradients.attribute(
                batch, baselines=self.baseline.expand_as(batch), n_steps=steps, internal_batch_size=INTERNAL_BATCH
            )
            parts.append(attributed.detach().double().numpy())
        attributions = np.concatenate(parts)
        return attributions, attributions.sum(axis=(1, 2)) - (risks[stays] - self.empty_risk)


def explain(model: MortalityLSTM, norm: Normalization, seqs: Sequences) -> Explanation:
    """Integrated gradients of every stay's risk, grouped by variable and hour."""
    return Explainer(model, norm)(seqs)


def _variable_of_each_feature(channels: tuple[str, ...]) -> tuple[tuple[str, ...], list[int]]:
    """The variables (time series, then descriptors) and, per input feature, which one it belongs to."""
    variables = (*channels, *DESCRIPTORS.values())
    grouping = []
    for name in feature_names(channels):
        base = name.split(":")[0]
        grouping.append(variables.index(DESCRIPTORS.get(base, base)))
    return variables, grouping


# The descriptors' features, as `feature_names` spells them, by the name attributions use
# (the weight at admission is a descriptor; Weight is also a time series).
DESCRIPTORS = {
    "age": "Age",
    "height": "Height",
    "weight": "Weight at admission",
    "gender": "Gender",
    "icu_type": "ICUType",
}
