"""The privacy–accuracy study: federated DP-SGD over a grid of epsilons and seeds.

Every cell is one complete run in `ROOT/cells/<cell>/` (an ordinary run directory):
federated DP-SGD at each target epsilon (per hospital, whole run; `inf` = the same
federated run without DP), and, for reference, the non-private centralized and
local-only baselines, all once per seed. A seed changes the data splits, the model's
initialization and the training randomness, so the spread over seeds is the spread a
user would see. After training, each federated and centralized cell's best model (by
validation) is audited by membership inference (`fedicu.shared.privacy.audit`).

After every cell, `sweep.csv` (one row per cell), `sweep.md` (mean ± standard deviation
over seeds per setting) and `sweep.png` are rewritten. A cell with a `cell.json` is
finished and skipped on a rerun; an interrupted federated cell resumes from its last
completed round, an interrupted baseline starts again. `sweep.json` records the grid
and configuration, and a rerun with different ones is refused rather than mixed in.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from fedicu.server.federated_run import Progress, RunState
from fedicu.shared.config import RunConfig
from fedicu.shared.federation import Federation, prepare
from fedicu.shared.files import atomic_write_bytes
from fedicu.shared.metrics import CI_CAPTION, ci_keys, interval_text
from fedicu.shared.plots import save_figure
from fedicu.shared.run_dir import CHECKPOINT, METRICS_JSON, PRIVACY_FILE, RunDirectory

CELL_FILE = "cell.json"
SWEEP_JSON = "sweep.json"  # the grid and settings, so a rerun resumes only the same sweep
SWEEP_CSV, SWEEP_MD, SWEEP_PNG = "sweep.csv", "sweep.md", "sweep.png"
COLUMNS = (
    "setting", "epsilon", "seed", "test_auroc", *ci_keys("test_auroc"), "test_auprc", *ci_keys("test_auprc"),
    "test_brier", "test_event1", "best_round", "epsilon_spent", "attack_auroc", *ci_keys("attack_auroc"),
    "attack_tpr_at_1pct_fpr", "seconds",
)  # fmt: skip
WITH_CI = ("test_auroc", "test_auprc", "attack_auroc")
# Each cell's intervals are seeded with its seed; a summary over seeds averages the seeds' bounds: one run's
# test-set sampling error, beside the standard deviation between runs.
SUMMARY_CI = f"{CI_CAPTION}, seeded with each run's seed; over several seeds, the mean of their bounds"
ATTACKS = ("loss_threshold", "calibrated_loss", "lira", "lira_offline")


@dataclass(frozen=True)
class Cell:
    setting: str  # "federated", "centralized" or "local"
    epsilon: float  # target epsilon per hospital; inf: no DP
    seed: int

    @property
    def name(self) -> str:
        if self.setting != "federated":
            return f"{self.setting}-seed{self.seed}"
        return f"federated-{'nodp' if math.isinf(self.epsilon) else f'eps{self.epsilon:g}'}-seed{self.seed}"

    def config(self, base: RunConfig, out: Path) -> RunConfig:
        private = self.setting == "federated" and not math.isinf(self.epsilon)
        config = replace(base, seed=self.seed, out=str(out))
        return replace(config, dp=True, target_epsilon=self.epsilon) if private else config.without_dp()


def grid(epsilons: list[float], seeds: list[int], baselines: bool) -> list[Cell]:
    """Seed by seed, so early results already cover every setting."""
    cells = []
    for seed in seeds:
        cells += [Cell("federated", e, seed) for e in epsilons]
        if baselines:
            cells += [Cell("centralized", math.inf, seed), Cell("local", math.inf, seed)]
    return cells


def parse_epsilons(text: str) -> list[float]:
    """`"0.5,1,inf"` -> [0.5, 1.0, inf]; ValueError naming the bad entry."""
    values = []
    for part in text.split(","):
        try:
            value = float(part.strip())
        except ValueError:
            raise ValueError(f"--epsilons: {part.strip()!r} is not a number (use inf for no DP)") from None
        if not value > 0:
            raise ValueError(f"--epsilons: {part.strip()} must be positive (use inf for no DP)")
        values.append(value)
    if len(set(values)) != len(values):
        raise ValueError("--epsilons lists a value twice")
    return values


def _row(cell: Cell, result: dict, privacy: list[dict], audit: dict | None, seconds: float) -> dict:
    attacks = [audit[a] for a in ATTACKS if audit and audit.get(a)]
    # The strongest of the attacks run: what a clinician should assume an attacker gets.
    strongest = max(attacks, key=lambda a: a["auroc"], default=dict.fromkeys(("auroc", *ci_keys("auroc")), math.nan))
    return {
        "setting": cell.setting,
        "epsilon": cell.epsilon,
        "seed": cell.seed,
        # A round recorded before intervals existed (a cell resumed across versions) has none.
        **{k: result.get(k, math.nan) for k in COLUMNS if k.startswith("test_")},
        "best_round": result.get("best_round", math.nan),
        "epsilon_spent": max((p["epsilon"] for p in privacy), default=math.nan),
        "attack_auroc": strongest["auroc"],
        **dict(zip(ci_keys("attack_auroc"), (strongest[k] for k in ci_keys("auroc")), strict=True)),
        "attack_tpr_at_1pct_fpr": max((a["tpr_at_1pct_fpr"] for a in attacks), default=math.nan),
        "seconds": round(seconds, 1),
    }


@dataclass
class Sweep:
    root: Path
    base: RunConfig
    cells: list[Cell]
    shadow_models: int
    max_targets: int

    def settings(self) -> dict:
        return {
            "config": {
                k: v for k, v in self.base.to_flower().items() if k not in ("seed", "dp", "target-epsilon", "out")
            },
            "cells": [c.name for c in self.cells],
            "shadow_models": self.shadow_models,
            "max_targets": self.max_targets,
        }

    def open(self) -> None:
        """Create the sweep directory, or check that an existing one holds this same sweep."""
        record = self.root / SWEEP_JSON
        if record.is_file():
            previous = json.loads(record.read_text())
            if previous != json.loads(json.dumps(self.settings())):
                changed = sorted(
                    k for k in set(previous) | set(self.settings())
                    if previous.get(k) != json.loads(json.dumps(self.settings())).get(k)
                )  # fmt: skip
                raise ValueError(
                    f"{self.root} holds a sweep with other settings ({', '.join(changed)} differ); "
                    "rerun it with the same options to continue it, or choose another --out"
                )
        elif self.root.exists() and any(self.root.iterdir()):
            raise ValueError(f"--out {self.root} exists and is not a sweep directory")
        (self.root / "cells").mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(record, (json.dumps(self.settings(), indent=2) + "\n").encode())

    def finished(self) -> dict[str, dict]:
        done = {}
        for cell in self.cells:
            file = self.root / "cells" / cell.name / CELL_FILE
            if file.is_file():  # JSON keeps no infinity or NaN: they come back as null
                row = json.loads(file.read_text())
                done[cell.name] = {k: math.nan if v is None else v for k, v in row.items()} | {"epsilon": cell.epsilon}
        return done

    def run_cell(self, cell: Cell, federation: Federation, progress: Progress) -> dict:
        from fedicu.shared.privacy.audit import audit
        from fedicu.simulations.baselines import centralized, local

        started = time.monotonic()
        path = self.root / "cells" / cell.name
        config = cell.config(self.base, path)
        run_dir = RunDirectory(path)
        if cell.setting == "federated":
            from fedicu.simulations.simulate import simulate

            state = None
            if (path / CHECKPOINT).is_file():  # an interrupted cell goes on from its last round
                state = RunState.from_checkpoint(run_dir.load_model(CHECKPOINT))
            else:
                shutil.rmtree(path, ignore_errors=True)
                run_dir.create()
            best_round = simulate(config, federation, run_dir, progress, state)["best_round"]
            result = {**run_dir.read_json(METRICS_JSON)[best_round - 1], "best_round": best_round}
        else:
            shutil.rmtree(path, ignore_errors=True)
            run_dir.create()
            progress.begin(config.rounds if cell.setting == "centralized" else len(federation.hospitals), 0)
            if cell.setting == "centralized":
                result = centralized(config, federation, run_dir, progress.round_done)
            else:
                result = local(config, federation, run_dir, lambda row: progress.round_done(row))["mean"]
        report = None
        if cell.setting != "local":  # local-only is four models, not one to audit
            report = audit(
                path, which="best", shadow_models=self.shadow_models, seed=cell.seed, max_targets=self.max_targets
            )
        privacy_file = path / PRIVACY_FILE
        privacy = json.loads(privacy_file.read_text()) if privacy_file.is_file() else []
        row = _row(cell, result, privacy, report, time.monotonic() - started)
        run_dir.write_json(CELL_FILE, row)
        return row

    def write_results(self, rows: list[dict]) -> None:
        ordered = sorted(rows, key=lambda r: (r["setting"] != "federated", r["setting"], r["epsilon"], r["seed"]))
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(ordered)
        atomic_write_bytes(self.root / SWEEP_CSV, text.getvalue().encode())
        atomic_write_bytes(self.root / SWEEP_MD, markdown_table(summarize(ordered)).encode())
        plot(summarize(ordered), self.root / SWEEP_PNG, self.base.delta)


def _mean_sd(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and standard deviation over seeds, per (setting, epsilon).

    `cost_of_privacy` is the paired difference in test AUROC to the non-private federated
    run of the same seed (same splits and initialization), which removes the spread between
    splits that dominates the unpaired standard deviations.
    """
    groups: dict[tuple[str, float], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["setting"], float(r["epsilon"])), []).append(r)
    no_dp = {r["seed"]: r["test_auroc"] for r in groups.get(("federated", math.inf), [])}
    summary = []
    for (setting, epsilon), members in groups.items():
        entry = {"setting": setting, "epsilon": epsilon, "seeds": len(members)}
        for key in ("test_auroc", "test_auprc", "epsilon_spent", "attack_auroc", "attack_tpr_at_1pct_fpr"):
            entry[key], entry[f"{key}_sd"] = _mean_sd([m[key] for m in members])
        for bound in (b for key in WITH_CI for b in ci_keys(key)):  # cells from before intervals have none
            entry[bound] = _mean_sd([m.get(bound, math.nan) for m in members])[0]
        entry["cost_of_privacy"], entry["cost_of_privacy_sd"] = _mean_sd(
            [no_dp[m["seed"]] - m["test_auroc"] for m in members if setting == "federated" and m["seed"] in no_dp]
        )
        summary.append(entry)
    return summary


SETTING_LABELS = {
    "federated": "federated",
    "centralized": "centralized, no DP",
    "local": "local only (mean), no DP",
}


TABLE_HEADER = (
    "setting", "target ε", "seeds", "test AUROC", "AUROC lost to DP (paired)", "test AUPRC", "ε spent (max hospital)",
    "attack AUROC", "attack TPR @ 1 % FPR",
)  # fmt: skip


def table_rows(summary: list[dict]) -> list[tuple[str, ...]]:
    """The summary as text cells (mean ± standard deviation over seeds, and on a line of its own
    the interval as `SUMMARY_CI` says), in `TABLE_HEADER` order."""

    def cell(s: dict, key: str, digits: int = 3) -> str:
        mean, sd = s[key], s[f"{key}_sd"]
        if math.isnan(mean):
            return "–"
        text = f"{mean:.{digits}f}" + (f" ± {sd:.{digits}f}" if s["seeds"] > 1 else "")
        return f"{text}\n{interval_text(s, key)}".rstrip()

    rows: list[tuple[str, ...]] = []
    for s in summary:
        eps = "–" if s["setting"] != "federated" else "∞ (no DP)" if math.isinf(s["epsilon"]) else f"{s['epsilon']:g}"
        rows.append(
            (SETTING_LABELS[s["setting"]], eps, str(s["seeds"]), cell(s, "test_auroc"),
             "–" if math.isinf(s["epsilon"]) else cell(s, "cost_of_privacy"), cell(s, "test_auprc"),
             cell(s, "epsilon_spent", 2), cell(s, "attack_auroc"), cell(s, "attack_tpr_at_1pct_fpr"))
        )  # fmt: skip
    return rows


def markdown_table(summary: list[dict]) -> str:
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + " --- |" * len(TABLE_HEADER)]
    lines += ["| " + " | ".join(cell.replace("\n", " ") for cell in row) + " |" for row in table_rows(summary)]
    return "\n".join(lines) + f"\n\n{SUMMARY_CI}.\n"


def plot(summary: list[dict], path: Path, delta: float) -> None:
    """Test AUROC and attack AUROC against epsilon; no-DP at the right edge, baselines as bands."""
    federated = sorted((s for s in summary if s["setting"] == "federated"), key=lambda s: s["epsilon"])
    finite = [s["epsilon"] for s in federated if not math.isinf(s["epsilon"])] or [1.0]
    inf_x = max(finite) * 4  # where "no DP" sits on the log axis
    xs = [inf_x if math.isinf(s["epsilon"]) else s["epsilon"] for s in federated]
    fig, axes = plt.subplots(1, 2, figsize=(11, 5), constrained_layout=True)
    for ax, key, title, ylabel in (
        (axes[0], "test_auroc", "Test AUROC (best round by validation)", "test AUROC (held-out stays)"),
        (axes[1], "attack_auroc", "Membership-inference AUROC (strongest attack)", "attack AUROC"),
    ):
        if federated:
            ax.errorbar(xs, [s[key] for s in federated], yerr=[s[f"{key}_sd"] for s in federated],
                        marker="o", capsize=4, label=f"{SETTING_LABELS['federated']} (mean ± sd over seeds)")  # fmt: skip
        for s, style in zip((s for s in summary if s["setting"] != "federated"), ("--", ":"), strict=False):
            if math.isnan(s[key]):
                continue
            line = ax.axhline(s[key], linestyle=style, color="grey" if style == "--" else "tab:red",
                              label=f"{SETTING_LABELS[s['setting']]} (band: ± sd over seeds)")  # fmt: skip
            ax.axhspan(s[key] - s[f"{key}_sd"], s[key] + s[f"{key}_sd"], color=line.get_color(), alpha=0.12)
        ax.set_xscale("log")
        ticks = [*sorted(set(finite)), inf_x]
        ax.set_xticks(ticks, [f"{t:g}" for t in sorted(set(finite))] + ["∞"])
        ax.minorticks_off()
        ax.set_xlabel(f"target ε per hospital (whole run, δ = {delta:g}; ∞: no DP)")
        ax.set(ylabel=ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[1].axhline(0.5, color="black", linewidth=0.8, alpha=0.5, label="chance (0.5): members not told apart")
    for ax in axes:
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.15))  # below: never over a point
    save_figure(fig, path)


def run(
    sweep: Sweep,
    progress_for: Callable[[Cell], Progress],
    on_cell: Callable[[Cell, dict, bool], None],
) -> list[dict]:
    """Run every unfinished cell; `on_cell(cell, row, skipped)` after each. Returns all rows."""
    sweep.open()
    done = sweep.finished()
    rows = list(done.values())
    federations: dict[int, Federation] = {}
    for cell in sweep.cells:
        if cell.name in done:
            on_cell(cell, done[cell.name], True)
            continue
        if cell.seed not in federations:
            federations = {cell.seed: prepare(replace(sweep.base, seed=cell.seed))}  # one seed's data at a time
        row = sweep.run_cell(cell, federations[cell.seed], progress_for(cell))
        rows.append(row)
        sweep.write_results(rows)
        on_cell(cell, row, False)
    if rows:
        sweep.write_results(rows)
    return rows
