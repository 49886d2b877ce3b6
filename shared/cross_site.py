"""The cross-site matrix: every model of a comparison scored on every hospital's own test split.

A row per (model, hospital) holds what the hospital computes on its test stays (`SiteTest`:
discrimination with its interval, calibration); a deployment's sites compute them where the
stays are and send only these numbers. The matrix is written as `cross_site.csv` / `.json`
and drawn as a heatmap of AUROC (`cross_site.png`).
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

from fedicu.shared.contract import SiteTest
from fedicu.shared.plots import plot_cross_site
from fedicu.shared.run_dir import CROSS_SITE_CSV, CROSS_SITE_JSON, CROSS_SITE_PNG, RunDirectory

NAN = float("nan")


def row(
    model: str, hospital: str, test: SiteTest | None, event1: float = NAN, event1_site_threshold: float | None = None,
    failure: str = "",
) -> dict[str, Any]:  # fmt: skip
    """One cell: the hospital's numbers, Event-1 at the model's threshold and (for the model the
    run selected) at the threshold of the hospital's recalibration map; a hospital that could
    not score the model gets NaNs and the reason."""
    numbers = asdict(test) if test is not None else dict.fromkeys(SiteTest.__dataclass_fields__, NAN)
    return {
        "model": model, "hospital": hospital, "status": f"failed: {failure}" if failure else "ok", **numbers,
        "event1": event1, "event1_site_threshold": NAN if event1_site_threshold is None else event1_site_threshold,
    }  # fmt: skip


def worst_auroc(rows: list[dict[str, Any]], model: str) -> float:
    """The model's lowest AUROC over the hospitals that have one."""
    scored = [r["auroc"] for r in rows if r["model"] == model and r["auroc"] is not None and not math.isnan(r["auroc"])]
    return min(scored) if scored else NAN


def models(rows: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(r["model"] for r in rows))


def hospitals(rows: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(r["hospital"] for r in rows))


def write(run_dir: RunDirectory, rows: list[dict[str, Any]]) -> None:
    run_dir.write_table(CROSS_SITE_CSV, CROSS_SITE_JSON, rows)
    plot_cross_site(rows, run_dir.path / CROSS_SITE_PNG)
