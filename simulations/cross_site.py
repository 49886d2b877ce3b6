"""The cross-site matrix of finished simulated runs: each run's best model scored on every
hospital's own test split, rebuilt from the runs' configuration (same data, same seed).

Runs are accepted only if they never trained on, nor were selected with, a stay of those test
splits: the check uses each run's `stays.json`, so runs of another cohort, partition or seed
are refused by name rather than scored optimistically.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from fedicu.shared import cross_site
from fedicu.shared.config import RunConfig
from fedicu.shared.contract import SiteTest
from fedicu.shared.federation import Federation, HospitalData
from fedicu.shared.metrics import event1
from fedicu.shared.preprocessing import to_features
from fedicu.shared.run_dir import (
    CONFIG_FILE,
    MODEL_CARD,
    STAYS_FILE,
    RunDirectory,
    headless,
    load_trained,
    trained_task,
)
from fedicu.shared.training import predict


def score(name: str, run_dir: Path, hospital: HospitalData, seed: int) -> dict[str, Any]:
    """A completed run's best model on `hospital`'s own test split, as the cross-site row of
    model `name`: what a hospital computes (Event-1 at the model's own threshold)."""
    model, norm, threshold = load_trained(run_dir)
    scores = predict(model, to_features(hospital.test, norm, model.config.channels))
    labels = hospital.test.labels
    return cross_site.row(name, hospital.name, SiteTest.of(labels, scores, seed), event1(labels, scores, threshold)[0])


def matrix(models: dict[str, Path], federation: Federation, seed: int) -> list[dict[str, Any]]:
    """A row per (model, hospital): `models` maps a name to its completed run directory."""
    return [score(name, path, h, seed) for name, path in models.items() for h in federation.hospitals]


def models_in(run_dirs: list[Path]) -> dict[str, Path]:
    """Every completed run in `run_dirs`, named by its path below the one given (compare's
    `federated`, `centralized`, `local/<hospital>`), after the folder given when there are
    several; a run given itself is named by its folder. Names that clash are the full paths."""
    found: list[tuple[str, Path]] = []
    for given in run_dirs:
        if not given.is_dir():
            raise ValueError(f"RUN_DIR {given}: no such directory")
        completed = sorted(card.parent for card in given.rglob(MODEL_CARD))
        if not completed:
            raise ValueError(f"RUN_DIR {given}: holds no completed run (no {MODEL_CARD})")
        runs = [run for run in completed if not headless(RunDirectory(run).read_json(MODEL_CARD))]
        if not runs:
            raise ValueError(
                f"RUN_DIR {given}: trained with --personalization fedrep, whose global model is a body without a "
                "trained head; its hospitals already scored their own models (cross_site.csv in the run)"
            )
        for run in runs:
            below = run.relative_to(given).as_posix()
            parts = [given.resolve().name] if len(run_dirs) > 1 or below == "." else []
            found.append(("/".join([*parts, below] if below != "." else parts), run))
    names = [name for name, _ in found]
    if len(set(names)) < len(names):
        return {str(run): run for _, run in found}
    return dict(found)


def configuration(models: dict[str, Path]) -> RunConfig:
    """The configuration that rebuilds the hospitals' test splits: the first run's. Every run
    must be simulated and trained for the same task."""
    first = next(iter(models.values()))
    tasks = {name: trained_task(path) for name, path in models.items()}
    if len(set(tasks.values())) > 1:
        raise ValueError(f"the runs predict different tasks: {', '.join(f'{n}: {t}' for n, t in tasks.items())}")
    for path in models.values():
        if not (path / STAYS_FILE).is_file():
            raise ValueError(
                f"RUN_DIR {path}: a deployment (no {STAYS_FILE}): its sites built its cross-site matrix at the end "
                "of the run (cross_site.csv); only simulated runs are scored here"
            )
    return RunConfig.from_flower(json.loads((first / CONFIG_FILE).read_text()))


def check_held_out(models: dict[str, Path], federation: Federation) -> None:
    """No model may have trained on, or been selected with, a stay of the test splits."""
    tested = np.concatenate([h.test.stay_ids for h in federation.hospitals])
    for name, path in models.items():
        used = json.loads((path / STAYS_FILE).read_text())
        for part in ("train", "validation"):
            overlap = int(np.isin(tested, used[part]).sum())
            if overlap:
                raise ValueError(
                    f"RUN_DIR {path} ({name}): {overlap} of its {part} stays are in the hospitals' test splits "
                    f"rebuilt from {next(iter(models.values()))}'s configuration: the runs use other data, "
                    "partition or seed; score runs of one study together"
                )
