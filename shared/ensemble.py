"""Ensembles: several trained models whose predicted risks are averaged.

An ensemble run directory (`fedicu simulate --ensemble K`) holds its members as complete run
directories (`member-0/` … `member-<K-1>/`), each a federated run on the same hospitals and
data split with its own starting weights and training draws (`--member k`), and
`ensemble.json`, which names them and says how they are combined:

- the risk of a stay is the mean of the members' risks (each member standardizes the stay with
  its own normalization);
- the decision threshold maximizes Event-1 on the pooled histograms of the ensemble's risks on
  each hospital's validation stays, as a round chooses one model's (`validation_threshold`);
  an ensemble of runs given together, with no validation stays at hand, takes the mean of the
  members' thresholds.

`scorer` reads a run directory, an ensemble run directory, or several run directories (an
ensemble of them) into one `Ensemble`; a single run is an ensemble of one. A hospital's personal
model file (`--personalization`: `sites/<hospital>/personal_model.pt` of a simulated run) counts
as a run: several of them score as the ensemble of those hospitals' personal models.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedicu.shared.metrics import ScoreHistogram
from fedicu.shared.model import ModelConfig, MortalityLSTM
from fedicu.shared.preprocessing import Normalization, Sequences, to_features
from fedicu.shared.run_dir import ENSEMBLE_FILE, RUN_FILE, RunDirectory, load_trained, trained_task
from fedicu.shared.training import predict

COMBINATION = "mean of the members' predicted risks"
THRESHOLD_RULE = "maximizes Event-1 = min(Se, +P) on the pooled histograms of the ensemble's validation risks"


def member_name(member: int) -> str:
    return f"member-{member}"


@dataclass(frozen=True)
class Member:
    path: Path  # a run directory, or a personal model file
    model: MortalityLSTM
    norm: Normalization
    threshold: float
    task: str

    @staticmethod
    def read(path: Path, which: str) -> Member:
        if path.is_file():
            return Member.personal(path)
        model, norm, threshold = load_trained(path, which)
        return Member(path, model, norm, threshold, trained_task(path))

    @staticmethod
    def personal(path: Path) -> Member:
        """A hospital's personal model file: its weights and threshold, with the normalization of
        the global model it started from."""
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises many kinds for a file that is no model
            raise ValueError(f"RUN_DIR {path}: not a model file ({type(error).__name__})") from None
        if not isinstance(saved, dict) or "personalization" not in saved:
            raise ValueError(f"RUN_DIR {path}: not a hospital's personal model (--personalization)")
        model = MortalityLSTM(ModelConfig(**saved["model_config"]))
        model.load_state_dict(saved["state_dict"])
        norm = Normalization(np.asarray(saved["norm_mean"], np.float64), np.asarray(saved["norm_std"], np.float64))
        return Member(path, model, norm, float(saved["threshold"]), str(saved["task"]))


@dataclass(frozen=True)
class Ensemble:
    members: tuple[Member, ...]
    chosen_threshold: float | None = None  # on validation stays; None: the mean of the members'

    @property
    def threshold(self) -> float:
        if self.chosen_threshold is not None:
            return self.chosen_threshold
        return float(np.mean([m.threshold for m in self.members]))

    def validation_threshold(self, validation: list[Sequences]) -> float:
        """The threshold maximizing Event-1 on the summed score histograms of each hospital's
        validation stays (`metrics.ScoreHistogram`, what a hospital sends for one model)."""
        parts = [ScoreHistogram.of(stays.labels, self.risks(stays)) for stays in validation]
        return ScoreHistogram.sum(parts).best_threshold()

    def risks(self, seqs: Sequences) -> np.ndarray:
        """Each stay's mean risk over the members."""
        return np.mean(
            [predict(m.model, to_features(seqs, m.norm, m.model.config.channels)) for m in self.members], axis=0
        )


def write_ensemble(root: RunDirectory, members: list[int], threshold: float, metrics: dict) -> None:
    """`ensemble.json` for the complete members in `root`, with its threshold and its `metrics`
    on their test split; the ensemble is then complete."""
    root.write_json(
        ENSEMBLE_FILE,
        {
            "members": [member_name(k) for k in members],
            "combination": COMBINATION,
            "threshold": threshold,
            "threshold_rule": THRESHOLD_RULE,
            "metrics": metrics,
        },
    )
    root.set_status("complete")


def member_paths(paths: list[Path]) -> list[Path]:
    """The run directories an ensemble is made of: those an ensemble directory names, or the
    runs given (each a run, not itself an ensemble)."""
    if len(paths) == 1 and (paths[0] / ENSEMBLE_FILE).is_file():
        root = RunDirectory(paths[0])
        return [root.path / name for name in root.read_json(ENSEMBLE_FILE)["members"]]
    if (
        len(paths) == 1
        and (paths[0] / RUN_FILE).is_file()
        and RunDirectory(paths[0]).read_json(RUN_FILE).get("ensemble")
    ):
        raise ValueError(f"RUN_DIR {paths[0]}: the ensemble is not complete (no {ENSEMBLE_FILE}); --resume it")
    nested = [p for p in paths if (p / ENSEMBLE_FILE).is_file()]
    if nested:
        raise ValueError(f"RUN_DIR {nested[0]}: an ensemble; give it alone, or its members")
    return list(paths)


def scorer(paths: list[Path], which: str = "best") -> Ensemble:
    """The models of `paths` (see `member_paths`), as one ensemble; errors name the directory."""
    members = [Member.read(path, which) for path in member_paths(paths)]
    tasks = {m.task for m in members}
    if len(tasks) > 1:
        raise ValueError(f"RUN_DIR: these models predict different tasks ({', '.join(sorted(tasks))})")
    card = paths[0] / ENSEMBLE_FILE
    chosen = RunDirectory(paths[0]).read_json(ENSEMBLE_FILE).get("threshold") if card.is_file() else None
    return Ensemble(tuple(members), chosen if which == "best" else None)
