"""Scoring stays at a site with a trained model: risk, decision and what drives it.

The risk is the model's, mapped through the site's recalibration when one is given (the map a
hospital kept for this very model at the end of the run); the decision compares it with the
threshold that goes with it (the map's, or the model's own). `top_variables` are the
variables with the largest integrated-gradients share of the model's risk (`explain`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedicu.shared.calibration import RecalibrationMap, SiteRecalibration
from fedicu.shared.model import MortalityLSTM, fingerprint
from fedicu.shared.preprocessing import Normalization, Sequences, to_features
from fedicu.shared.run_dir import MODEL_CARD, RunDirectory, load_trained
from fedicu.shared.training import predict

if TYPE_CHECKING:
    from fedicu.client.bedside.explain import Explainer

TOP_VARIABLES = 3


def site_map(path: Path, sha256: str, which: str) -> RecalibrationMap:
    """The map a site kept for this very model (`sha256`: `fingerprint` of its weights); a map
    fitted for another model is refused."""
    kept = SiteRecalibration.load(path)
    if kept.model_sha256 != sha256:
        raise ValueError(
            f"--recalibration {path}: fitted at {kept.hospital} for another model (weights "
            f"{kept.model_sha256[:12]}…), not this run's {which} model; sites keep maps for the best model"
        )
    return kept.chosen


@dataclass(frozen=True)
class Scorer:
    run_dir: Path
    model: MortalityLSTM
    norm: Normalization
    threshold: float  # the decision threshold of `risks`: the map's when there is one
    recalibration: RecalibrationMap | None
    card: dict[str, Any]
    sha256: str  # of the weights

    @staticmethod
    def load(run_dir: Path, recalibration: Path | None = None, which: str = "best") -> Scorer:
        """ValueError or FileNotFoundError, naming the file, for a run or map that cannot be used."""
        model, norm, threshold = load_trained(run_dir, which)
        sha = fingerprint(model.state_dict())
        mapped = site_map(recalibration, sha, which) if recalibration else None
        card = RunDirectory(run_dir).read_json(MODEL_CARD)
        return Scorer(run_dir, model, norm, mapped.threshold if mapped else threshold, mapped, card, sha)

    def risks(self, seqs: Sequences) -> np.ndarray:
        return self._mapped(predict(self.model, to_features(seqs, self.norm, self.model.config.channels)))

    def _mapped(self, risks: np.ndarray) -> np.ndarray:
        return self.recalibration.apply(risks) if self.recalibration else risks

    @cached_property
    def explainer(self) -> Explainer:
        from fedicu.client.bedside.explain import Explainer  # Captum takes seconds to import: only explaining pays

        return Explainer(self.model, self.norm)

    def score(self, seqs: Sequences, top: int = TOP_VARIABLES) -> list[dict[str, Any]]:
        """A row per stay: stay_id, risk, decision and (with `top` > 0) its top variables and,
        for an attention model, the weight it gave each hour."""
        if top <= 0:
            risks = self.risks(seqs)
            return rows(seqs, risks, self.threshold, [[] for _ in risks])
        explained = self.explainer(seqs)  # its forward pass gives the risks too
        risks = self._mapped(explained.risk)
        return rows(seqs, risks, self.threshold, explained.top_variables(top), explained.attention)


def rows(
    seqs: Sequences,
    risks: np.ndarray,
    threshold: float,
    tops: list[list[tuple[str, float]]],
    attention: np.ndarray | None = None,
) -> list[dict]:
    """A row per stay: stay_id, risk, decision at `threshold`, its top variables, and its
    hourly attention when there is one."""
    found = [
        {"stay_id": int(stay), "risk": float(risk), "decision": bool(risk >= threshold),
         "top_variables": [{"variable": name, "share": share} for name, share in shares]}
        for stay, risk, shares in zip(seqs.stay_ids, risks, tops, strict=True)
    ]  # fmt: skip
    if attention is not None:
        for row, weights in zip(found, attention, strict=True):
            row["attention"] = [round(float(w), 6) for w in weights]
    return found
