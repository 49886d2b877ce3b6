"""Leave-one-hospital-out validation: how good is the federated model at a hospital that did
not take part?

For each held-out hospital the federation trains without it (its stays neither train, select
nor normalize the model), and the resulting best model is scored on that hospital's own test
split. The same split also scores the model of the federation with every hospital, so each
held-out score stands beside the score the hospital gets when it takes part.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from fedicu.shared.config import RunConfig
from fedicu.shared.federation import Federation
from fedicu.shared.preprocessing import Sequences
from fedicu.shared.run_dir import RunDirectory
from fedicu.simulations.cross_site import score

ALL = "all"
REPORTED = ("auroc", "auprc", "ece", "calibration_slope", "calibration_intercept")
INCLUDED_DIR = "all-hospitals"


def held_out_names(federation: Federation, leave_out: str) -> list[str]:
    names = [h.name for h in federation.hospitals]
    if len(names) < 2:
        raise ValueError("--leave-out needs at least 2 hospitals: one to hold out, one to train")
    if leave_out == ALL:
        return names
    if leave_out not in names:
        raise ValueError(f"--leave-out {leave_out!r}: no such hospital; the federation has {', '.join(names)} (or all)")
    return [leave_out]


def without(federation: Federation, name: str) -> Federation:
    """The federation of the other hospitals, tested on their test splits only."""
    others = [h for h in federation.hospitals if h.name != name]
    return replace(federation, hospitals=others, test=Sequences.concat([h.test for h in others]))


def run(
    config: RunConfig, federation: Federation, leave_out: str, root: Path, train: Callable[..., Any]
) -> dict[str, Any]:
    """Train with every hospital, then without each held-out one; return the report.

    `train(config, federation, run_dir)`: one federated run into `run_dir`."""
    names = held_out_names(federation, leave_out)
    everyone = root / INCLUDED_DIR
    train(config, federation, RunDirectory(everyone).create())
    fewer = replace(config, min_hospitals=min(config.min_hospitals, len(federation.hospitals) - 1))
    rows = []
    for name in names:
        hospital = next(h for h in federation.hospitals if h.name == name)
        held_dir = root / f"without-{name}"
        train(fewer, without(federation, name), RunDirectory(held_dir).create())
        held, included = (score(run.name, run, hospital, config.seed) for run in (held_dir, everyone))
        held = {k: v for k, v in held.items() if k not in ("model", "hospital", "status", "event1_site_threshold")}
        rows.append({"hospital": name, **held} | {f"included_{k}": included[k] for k in REPORTED})
    return summary(rows)


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The held-out rows with the mean and worst AUROC over the hospitals that have one (a test
    split of one class has none)."""
    aurocs = [r["auroc"] for r in rows if not math.isnan(r["auroc"])]
    mean, worst = (sum(aurocs) / len(aurocs), min(aurocs)) if aurocs else (math.nan, math.nan)
    return {"hospitals": rows, "mean_auroc": mean, "worst_auroc": worst}
