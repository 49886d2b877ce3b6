"""A run directory, written so that a crash never leaves a half-written file.

Every file is written to a temporary name in the same directory and renamed
into place (atomic on POSIX). `run.json` says whether the run is `running`,
`complete`, `failed` (with the error) or `interrupted` (asked to stop); the model card and final model are written only when a
run completes, so an interrupted run never looks finished.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from fedicu.shared.config import FEDREP
from fedicu.shared.files import atomic_write_bytes
from fedicu.shared.metrics import ci_method
from fedicu.shared.model import ModelConfig, MortalityLSTM
from fedicu.shared.preprocessing import NORMALIZED_CHANNELS, Normalization, feature_names
from fedicu.shared.stopping import interrupted
from fedicu.shared.tasks import DEFAULT_TASK, describe

RUN_FILE = "run.json"
CONFIG_FILE = "config.json"
METRICS_CSV, METRICS_JSON = "metrics.csv", "metrics.json"
HOSPITAL_CSV, HOSPITAL_JSON = "hospital_metrics.csv", "hospital_metrics.json"
MODEL_CARD = "model_card.json"
BEST_MODEL, FINAL_MODEL = "model_best.pt", "model_final.pt"
CHECKPOINT = "checkpoint.pt"
PRIVACY_FILE = "privacy.json"
HOSPITAL_PRIVACY_FILE = "hospital_privacy.json"
CURVES_PNG = "learning_curves.png"
TEST_PREDICTIONS = "test_predictions.csv"  # simulated runs: the best model's risk per test stay
CROSS_SITE_CSV, CROSS_SITE_JSON = "cross_site.csv", "cross_site.json"  # every model at every hospital
CROSS_SITE_PNG = "cross_site.png"
PERSONALIZATION_JSON = "personalization.json"  # --personalization: what each hospital chose
SITES_DIR = "sites"  # simulated runs: what each virtual hospital keeps on its own disk
PERSONAL_MODEL = "personal_model.pt"  # --personalization: a hospital's own model, in its folder of `sites/`
ENSEMBLE_FILE = "ensemble.json"  # an ensemble run directory: its members and how they combine
STAYS_FILE = "stays.json"  # the stay ids that trained, validated and tested the model (simulated runs)


def json_safe(value: Any) -> Any:
    """NaN and infinity become null: JSON has no spelling for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def save_model_file(path: Path, state: dict[str, Any]) -> None:
    """A model's state (weights, config, threshold), written whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


class RunDirectory:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def create(self) -> RunDirectory:
        if self.path.exists() and any(self.path.iterdir()):
            raise FileExistsError(f"--out {self.path}: the directory exists and is not empty")
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    def write_json(self, name: str, obj: Any) -> None:
        text = json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n"
        atomic_write_bytes(self.path / name, text.encode())

    def read_json(self, name: str) -> Any:
        return json.loads((self.path / name).read_text())

    def write_table(self, csv_name: str, json_name: str, rows: list[dict]) -> None:
        """The same rows as CSV (for spreadsheets) and JSON (for programs)."""
        buffer = io.StringIO()
        if rows:
            writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        atomic_write_bytes(self.path / csv_name, buffer.getvalue().encode())
        self.write_json(json_name, rows)

    def write_csv(self, name: str, columns: dict[str, Any]) -> None:
        buffer = io.StringIO()
        pd.DataFrame(columns).to_csv(buffer, index=False, lineterminator="\n")
        atomic_write_bytes(self.path / name, buffer.getvalue().encode())

    def save_model(self, name: str, state: dict[str, Any]) -> None:
        save_model_file(self.path / name, state)

    def load_model(self, name: str) -> dict[str, Any]:
        return torch.load(self.path / name, map_location="cpu", weights_only=True)

    def set_status(self, status: str, **details: Any) -> None:
        current = self.read_json(RUN_FILE) if (self.path / RUN_FILE).exists() else {}
        self.write_json(RUN_FILE, {**current, "status": status, **details})

    def record_ending(self, error: BaseException) -> None:
        """run.json for a run that ended before completing: `interrupted` if the process was
        asked to stop, otherwise `failed` and why."""
        if interrupted(error):
            self.set_status("interrupted", stopped=time.time())
        else:
            self.set_status("failed", error=f"{type(error).__name__}: {error}")

    @property
    def status(self) -> str | None:
        if not (self.path / RUN_FILE).exists():
            return None
        return self.read_json(RUN_FILE).get("status")


def write_model_card(
    run_dir: RunDirectory,
    *,
    model_config: ModelConfig,
    norm: Normalization,
    rows: list[dict],
    best: dict,
    training: dict,
    data: dict,
) -> None:
    """Everything needed to reuse the model: task, features, normalization, threshold, provenance."""
    task = training["task"]
    run_dir.write_json(
        MODEL_CARD,
        {
            "task": task,
            "predicts": f"{describe(task)}, from the first 48 h of an ICU stay",
            "model": model_config.to_dict(),
            "variables": list(model_config.channels),
            "features": list(feature_names(model_config.channels)),
            "normalization": {"channels": list(NORMALIZED_CHANNELS), **norm.to_dict()},
            "threshold": {"best": best["threshold"], "final": rows[-1]["threshold"]},
            "threshold_rule": "maximizes Event-1 = min(Se, +P) on validation stays",
            "best_round": best["round"],
            "metrics": {"best": best, "final": rows[-1], "confidence_intervals": ci_method(training["seed"])},
            "training": training,
            "data": data,
            **({"global_model": HEADLESS} if training.get("personalization") == FEDREP else {}),
        },
    )


HEADLESS = (
    "FedRep: the saved global model is the federated LSTM body with the output head it started with, which no "
    f"hospital trained; each hospital's own model (its head on this body) is {SITES_DIR}/<hospital>/{PERSONAL_MODEL}"
)


def headless(card: dict) -> bool:
    """Whether the run of this model card has a global model that is a body without a trained
    head (FedRep): only its hospitals' own models score stays."""
    return card.get("training", {}).get("personalization") == FEDREP


def trained_task(path: str | Path) -> str:
    """The task a completed run's model was trained for (runs from before tasks: the default)."""
    return str(RunDirectory(path).read_json(MODEL_CARD).get("training", {}).get("task", DEFAULT_TASK))


def _runs_inside(path: Path) -> list[Path]:
    """The completed run directories right inside `path`: compare's settings, local-only training's hospitals."""
    return sorted(sub for sub in path.iterdir() if (sub / MODEL_CARD).is_file())


def load_trained(
    path: str | Path, which: str = "best", option: str = "RUN_DIR"
) -> tuple[MortalityLSTM, Normalization, float]:
    """The model, normalization and decision threshold saved in a completed run directory;
    errors name the directory as `option`."""
    run_dir = RunDirectory(path)
    if not run_dir.path.is_dir():
        raise FileNotFoundError(f"{option} {run_dir.path}: no such directory")
    inside = _runs_inside(run_dir.path)
    if inside and not (run_dir.path / MODEL_CARD).is_file():
        raise ValueError(
            f"{option} {run_dir.path}: no model of its own; it holds one run directory per model, "
            f"give one of them: {', '.join(map(str, inside))}"
        )
    if run_dir.status is None:
        raise ValueError(f"{option} {run_dir.path}: not a run directory (no {RUN_FILE})")
    if run_dir.status != "complete":
        raise ValueError(
            f"{option} {run_dir.path}: the run is not complete (status: {run_dir.status}); "
            "only completed runs have a model card"
        )
    missing = [name for name in (MODEL_CARD, BEST_MODEL, FINAL_MODEL) if not (run_dir.path / name).is_file()]
    if missing:
        raise ValueError(f"{option} {run_dir.path}: no saved model here ({', '.join(missing)} missing)")
    if which not in ("best", "final"):
        raise ValueError(f"--model must be 'best' or 'final', not {which!r}")
    card = run_dir.read_json(MODEL_CARD)
    if headless(card):
        raise ValueError(
            f"{option} {run_dir.path}: trained with --personalization fedrep, so its global model is a body "
            "without a trained head and scores no stays; each hospital's own model is "
            f"{run_dir.path / SITES_DIR}/<hospital>/{PERSONAL_MODEL}, which fedicu evaluate scores"
        )
    state = run_dir.load_model(BEST_MODEL if which == "best" else FINAL_MODEL)
    model = MortalityLSTM(ModelConfig(**state["model_config"]))
    model.load_state_dict(state["state_dict"])
    return model, Normalization.from_dict(card["normalization"]), float(state["threshold"])
