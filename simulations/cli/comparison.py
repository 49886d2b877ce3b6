"""compare: federated (each strategy, each personalization) vs centralized vs local-only, on one
test split per seed, in one table."""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any

import typer
from rich.table import Table

from fedicu.shared import cross_site
from fedicu.shared.config import EFFECTIVE_ONLY, FEDREP, PERSONALIZATIONS, STRATEGIES, RunConfig
from fedicu.shared.run_dir import CROSS_SITE_JSON, METRICS_JSON, RunDirectory
from fedicu.simulations.cli.common import (
    RayAddress,
    cross_site_table,
    results_table,
    run_options,
    use_ray_cluster,
)
from fedicu.simulations.cli.terminal import UserError, console
from fedicu.simulations.cli.training import _centralized, _federated, _local, _prepare, _run_dir, _tracking
from fedicu.simulations.cross_site import matrix
from fedicu.simulations.tracking import Track, Tracking, TrackingUri

COMPARISON_FILE = "comparison.json"  # the settings' results side by side (per seed, and their summary)
SUMMARY = ("auroc", "auprc", "worst_auroc", "mean_ece")  # a setting's line of the summary table
SUMMARY_HEADERS = ("AUROC", "AUPRC", "worst AUROC", "mean ECE")


def _names(option: str, given: str, allowed: tuple[str, ...]) -> list[str]:
    names = [n.strip() for n in given.split(",") if n.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise UserError(f"{option}: {', '.join(unknown)} not among {', '.join(allowed)}")
    return names


def _seeds(given: str, default: int) -> list[int]:
    try:
        seeds = [int(s) for s in given.split(",") if s.strip()] or [default]
    except ValueError:
        raise UserError(f"--seeds must be comma-separated integers, not {given!r}") from None
    if len(set(seeds)) < len(seeds):
        raise UserError("--seeds names a seed twice")
    return seeds


def adjusted(config: RunConfig, **changes: Any) -> RunConfig:
    """`config` with `changes`, and every option that would no longer act back at its default
    (FedProx's mu once the strategy is another)."""
    values = asdict(config) | changes
    stand_in = SimpleNamespace(**values)
    for name, applies, _ in EFFECTIVE_ONLY:
        if not applies(stand_in):  # type: ignore[arg-type]
            values[name] = getattr(RunConfig, name)
    try:
        return RunConfig(**values)
    except ValueError as error:  # a setting these options cannot run, such as a personalization under --dp
        changed = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in changes.items())
        raise UserError(f"{changed}: {error}") from error


@run_options
def compare(
    config: RunConfig,
    strategies: Annotated[
        str, typer.Option(help="Also train federated with each of these strategies, comma-separated.")
    ] = "",
    personalizations: Annotated[
        str,
        typer.Option(
            help="Also train federated (with --strategy) with each of these personalizations, comma-separated: "
            f"{', '.join(PERSONALIZATIONS)}, with their own options at the defaults; the hospitals' own models are "
            "scored at their hospitals."
        ),
    ] = "",
    seeds: Annotated[
        str,
        typer.Option(
            help="Compare at each of these seeds (each its own split, in RUN_DIR/seed-S), comma-separated; the "
            "summary gives mean ± sd (default: --seed)."
        ),
    ] = "",
    track: Track = None,
    tracking_uri: TrackingUri = "",
    ray_address: RayAddress = "",
) -> None:
    """Federated (each strategy, each personalization) vs centralized vs local-only, per seed, in one table."""
    use_ray_cluster(ray_address)
    tracking = _tracking(track, tracking_uri)
    extra = _names("--strategies", strategies, STRATEGIES)
    personal = _names("--personalizations", personalizations, PERSONALIZATIONS)
    seed_list = _seeds(seeds, config.seed)
    plans = {seed: _settings(adjusted(config, seed=seed), extra, personal) for seed in seed_list}  # all checked now
    root = _run_dir(config, "-compare").path
    per_seed: dict[int, dict[str, dict]] = {}
    for seed, settings in plans.items():
        folder = root if len(seed_list) == 1 else root / f"seed-{seed}"
        folder.mkdir(exist_ok=True)
        within = tracking.within(root.name if folder == root else f"{root.name}/{folder.name}")
        per_seed[seed] = _compare_at(settings, folder, within)
    summary = {name: _mean_sd([per_seed[s][name] for s in seed_list]) for name in per_seed[seed_list[0]]}
    RunDirectory(root).write_json(COMPARISON_FILE, {"seeds": per_seed, "summary": summary})
    console.print(_summary_table(summary, seed_list))
    console.print(f"Run directories under [bold]{root}[/]")


Settings = dict[str, tuple[str, RunConfig]]  # a federated setting's name -> its folder and configuration


def _settings(config: RunConfig, strategies: list[str], personalizations: list[str]) -> Settings:
    """The federated runs of a comparison: `config`'s, one per other strategy, one per personalization."""
    runs = {f"federated ({config.strategy})": ("federated", config)}
    runs |= {f"federated ({s})": (f"federated-{s}", adjusted(config, strategy=s)) for s in strategies
             if s != config.strategy}  # fmt: skip
    runs |= {f"personal/{m} ({config.strategy})": (f"personal-{m}", adjusted(config, personalization=m))
             for m in personalizations}  # fmt: skip
    return runs


def _compare_at(runs: Settings, root: Path, tracking: Tracking) -> dict[str, dict]:
    """Every setting at one seed, into `root`: their rows of the summary (`SUMMARY`)."""
    config = runs[next(iter(runs))][1]
    federation = _prepare(config)
    pooled: dict[str, dict] = {}  # each setting's best row on the pooled test split; personal models have none
    for name, (folder, run_config) in runs.items():
        result = _federated(run_config, federation, RunDirectory(root / folder).create(), tracking=tracking)
        best = RunDirectory(root / folder).read_json(METRICS_JSON)[result["best_round"] - 1]
        pooled[name] = {} if name.startswith("personal/") else best
    pooled["centralized"] = _centralized(config, federation, RunDirectory(root / "centralized").create(), tracking)
    local = _local(config, federation, RunDirectory(root / "local").create(), tracking)
    pooled["local only (mean of hospitals)"] = local["mean"]
    console.print(results_table({n: r for n, r in pooled.items() if r}, config.seed))
    own = {(f"local/{r['run_dir']}", r["hospital"]) for r in local["hospitals"]}  # each hospital's own model
    with console.status("Scoring every model at every hospital"):
        models = {folder: root / folder for folder, run_config in runs.values() if run_config.personalization != FEDREP}
        models |= {"centralized": root / "centralized"}
        models |= {model: root / model for model, _ in own}
        rows = matrix(models, federation, config.seed)
    cross_site.write(RunDirectory(root), rows)
    console.print(cross_site_table(rows))
    at_hospitals = {name: _at_hospitals(name, runs, root, rows) for name in runs}
    at_hospitals["centralized"] = [r for r in rows if r["model"] == "centralized"]
    at_hospitals["local only (mean of hospitals)"] = [r for r in rows if (r["model"], r["hospital"]) in own]
    return {name: _summary_row(pooled[name], at_hospitals[name]) for name in pooled}


def _at_hospitals(name: str, runs: Settings, root: Path, rows: list[dict]) -> list[dict]:
    """A federated setting's rows at the hospitals' own test splits: its model at each, or for a
    personalization the personal models as their hospitals scored them."""
    folder = runs[name][0]
    if name.startswith("personal/"):
        method = name.split()[0]
        return [r for r in RunDirectory(root / folder).read_json(CROSS_SITE_JSON) if r["model"] == method]
    return [r for r in rows if r["model"] == folder]


def _summary_row(pooled: dict, at_hospitals: list[dict]) -> dict:
    """Pooled test AUROC and AUPRC (none for personal models: each hospital scores its own),
    the worst hospital's AUROC and the hospitals' mean ECE, each on its own test split."""
    aurocs, eces = ([r[k] for r in at_hospitals if _defined(r.get(k))] for k in ("auroc", "ece"))
    return {
        "auroc": pooled.get("test_auroc", math.nan),
        "auprc": pooled.get("test_auprc", math.nan),
        "worst_auroc": min(aurocs) if aurocs else math.nan,
        "mean_ece": statistics.mean(eces) if eces else math.nan,
    }


def _defined(value: float | None) -> bool:
    """A metric that exists: not a failed hospital's (None) nor one of a single class (NaN)."""
    return value is not None and not math.isnan(value)


def _mean_sd(rows: list[dict]) -> dict:
    out = {}
    for key in SUMMARY:
        values = [r[key] for r in rows if _defined(r[key])]
        out[key] = statistics.mean(values) if values else math.nan
        out[f"{key}_sd"] = statistics.stdev(values) if len(values) > 1 else math.nan
    return out


def _summary_table(summary: dict[str, dict], seeds: list[int]) -> Table:
    over = f"mean ± sd over seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else f"seed {seeds[0]}"
    table = Table(title=f"Each setting on its test split ({over})",
                  caption="worst AUROC, mean ECE: over the hospitals' own test splits")  # fmt: skip
    table.add_column("setting", overflow="fold")
    for header in SUMMARY_HEADERS:
        table.add_column(header, justify="right")
    for name, row in summary.items():
        table.add_row(name, *(_cell(row[k], row[f"{k}_sd"]) for k in SUMMARY))
    return table


def _cell(mean: float, sd: float) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.3f}" if math.isnan(sd) else f"{mean:.3f}±{sd:.3f}"
