"""Privacy: the membership-inference audit of one model, and the privacy-accuracy sweep."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Group
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from fedicu.server.server_app import default_run_dir
from fedicu.shared.config import RunConfig
from fedicu.shared.stopping import StopRequested
from fedicu.simulations.cli.common import RayAddress, ci_caption, fmt_ci, run_options, titled, use_ray_cluster
from fedicu.simulations.cli.terminal import RunFailed, RunInterrupted, UserError, console


def audit(
    run_dir: Annotated[
        Path, typer.Argument(help="A completed federated or centralized run directory (a training command's --out).")
    ],
    model: Annotated[
        str,
        typer.Option(help="Which saved model: final (the last round) or best (the highest validation AUROC)."),
    ] = "final",
    shadow_models: Annotated[
        int,
        typer.Option(
            help="Shadow models (the run's architecture and recipe, trained centrally on half the targets each) "
            "for the calibrated-loss and LiRA attacks (0: the loss-threshold attack only; else at least 2)."
        ),
    ] = 8,
    max_targets: Annotated[
        int,
        typer.Option(help="At most this many training stays (members) attacked, against as many held-out test stays."),
    ] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the target sampling and the shadow models.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
) -> None:
    """Membership-inference audit of a trained model: can an attacker tell training stays from others?"""
    from fedicu.shared.privacy.audit import AUDIT_JSON, AUDIT_PNG
    from fedicu.shared.privacy.audit import audit as run_audit

    bar = Progress(
        TextColumn("[bold]Shadow models"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    )
    task = bar.add_task("shadow", total=shadow_models)
    try:
        with bar:
            report = run_audit(
                run_dir, which=model, shadow_models=shadow_models, seed=seed, max_targets=max_targets,
                on_progress=lambda done, total: bar.update(task, completed=done),
            )  # fmt: skip
    except ValueError as error:
        raise UserError(str(error)) from error
    if as_json:
        print(json.dumps(report))
        return
    console.print(
        f"{report['members']} members vs {report['non_members']} non-members (matched by outcome); "
        f"mean loss members {report['mean_loss']['members']:.3f} vs non-members {report['mean_loss']['non_members']:.3f}"
    )
    table = Table()
    for column in ("attack", "AUROC", "TPR @ 1% FPR", "advantage"):
        table.add_column(column, justify="left" if column == "attack" else "right")
    for key, name in (("loss_threshold", "loss threshold"), ("calibrated_loss", "calibrated loss"),
                      ("lira", "LiRA (online)"), ("lira_offline", "LiRA (offline)")):  # fmt: skip
        columns = ("auroc", "tpr_at_1pct_fpr", "advantage")
        result = report.get(key) or dict.fromkeys(columns, float("nan"))  # an attack that needs shadow models
        table.add_row(name, *(fmt_ci(result, k) for k in columns))
    console.print(titled(f"Membership inference on {run_dir} ({model} model)", table))
    caption = f"{ci_caption(report['seed'])}; members and non-members resampled, shadow models kept"
    console.print(caption, style="table.caption", highlight=False)  # wider than the table
    if report.get("dp"):
        dp = report["dp"]
        console.print(
            f"DP guarantee epsilon={dp['epsilon']:.2f}, delta={dp['delta']:g}: any attack has "
            f"TPR@1%FPR <= {dp['tpr_at_1pct_fpr_bound']:.3f} and AUROC <= {dp['auroc_bound']:.3f}"
        )
    console.print(f"Wrote {run_dir / AUDIT_JSON} and {run_dir / AUDIT_PNG}")


@run_options(dp_per_cell=True)
def sweep(
    config: RunConfig,
    epsilons: Annotated[
        str,
        typer.Option(
            help="Target epsilons, comma-separated: one federated DP-SGD setting each, every hospital's epsilon "
            "for the whole run (delta: --delta); inf: the same federated run without DP."
        ),
    ] = "0.5,1,2,4,8,inf",
    seeds: Annotated[
        str,
        typer.Option(
            help="Seeds, comma-separated: every setting runs once per seed, which changes the splits, the "
            "initialization and the noise (the tables show mean ± sd over them)."
        ),
    ] = "0,1,2",
    baselines: Annotated[
        bool,
        typer.Option(help="Also run the non-private centralized and local-only baselines, once per seed."),
    ] = True,
    shadow_models: Annotated[
        int,
        typer.Option(
            help="Shadow models per membership-inference audit of a federated or centralized model (0: the "
            "loss-threshold attack only; else at least 2)."
        ),
    ] = 4,
    max_targets: Annotated[
        int,
        typer.Option(help="At most this many training stays attacked per audit, against as many held-out test stays."),
    ] = 1000,
    ray_address: RayAddress = "",
) -> None:
    """The privacy-accuracy study: federated DP-SGD over epsilons x seeds, baselines, audits; resumable."""
    from rich.progress import TimeRemainingColumn

    from fedicu.simulations import sweep as study

    use_ray_cluster(ray_address)
    try:
        cells = study.grid(study.parse_epsilons(epsilons), _parse_seeds(seeds), baselines)
    except ValueError as error:
        raise UserError(str(error)) from error
    root = Path(config.out) if config.out else Path(f"{default_run_dir()}-sweep")
    plan = study.Sweep(root, config, cells, shadow_models, max_targets)
    bar = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
        speed_estimate_period=24 * 3600,  # cells take minutes: average over the whole sweep
    )  # fmt: skip
    overall = bar.add_task("Sweep", total=len(cells), status="")
    current = bar.add_task("", total=1, status="", visible=False)

    class CellProgress:
        def __init__(self, cell):
            self.cell = cell

        def begin(self, rounds: int, done: int) -> None:
            bar.reset(current, total=rounds, completed=done, description=self.cell.name, status="", visible=True)

        def round_done(self, row: dict) -> None:
            bar.update(current, advance=1, status=f"test AUROC {row['test_auroc']:.3f}")

    def on_cell(cell, row, skipped: bool) -> None:
        verb = "done before" if skipped else "done"
        bar.update(overall, advance=1, status=f"{cell.name} {verb}: test AUROC {row['test_auroc']:.3f}")

    try:
        with bar:
            rows = study.run(plan, CellProgress, on_cell)
    except ValueError as error:
        raise UserError(str(error)) from error
    except RuntimeError as error:
        raise RunFailed(f"{error} (the sweep continues from here when rerun with the same options)") from error
    except (KeyboardInterrupt, StopRequested) as error:
        raise RunInterrupted(f"{root} keeps its finished cells; rerun the same command to continue") from error
    summary = study.table_rows(study.summarize(rows))
    console.print(sweep_tables(config.dataset, study.TABLE_HEADER, summary, study.SUMMARY_CI))
    console.print(f"Wrote {root / study.SWEEP_CSV}, {root / study.SWEEP_MD} and {root / study.SWEEP_PNG}")


def _parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"--seeds must be comma-separated integers, not {text!r}") from None
    if len(set(seeds)) != len(seeds):
        raise ValueError("--seeds lists a seed twice")
    return seeds


# The sweep's nine columns (`sweep.TABLE_HEADER`, as in sweep.md) do not fit 80 columns as one
# table. The terminal gets two, accuracy then privacy, each led by the setting and target ε;
# the seeds column becomes part of the first title.
SWEEP_TABLES = (
    ("Privacy-accuracy sweep ({dataset}, {spread})", ("test AUROC", "AUROC lost to DP (paired)", "test AUPRC")),
    ("Privacy: ε spent and the strongest membership-inference attack",
     ("ε spent (max hospital)", "attack AUROC", "attack TPR @ 1 % FPR")),
)  # fmt: skip
SWEEP_HEADERS = {  # two lines instead of one wide column
    "AUROC lost to DP (paired)": "AUROC lost to\nDP (paired)",
    "ε spent (max hospital)": "ε spent (max\nhospital)",
    "attack TPR @ 1 % FPR": "attack TPR\n@ 1 % FPR",
}


def _spread(seed_counts: set[str]) -> str:
    if not seed_counts:
        return "mean ± sd over seeds"
    fewest, most = min(seed_counts, key=int), max(seed_counts, key=int)
    if most == "1":
        return "one seed"
    return f"mean ± sd over {most if fewest == most else f'{fewest}–{most}'} seeds"


def sweep_tables(dataset: str, header: tuple[str, ...], rows: list[tuple[str, ...]], footnote: str) -> Group:
    """The sweep's summary as `sweep.table_rows` gives it (in `header` order), as two tables
    with `footnote` (how the intervals were computed) under them."""
    spread = _spread({row[header.index("seeds")] for row in rows})
    tables = []
    for title, metrics in SWEEP_TABLES:
        table = Table(title=title.format(dataset=dataset, spread=spread))
        columns = [header.index(name) for name in ("setting", "target ε", *metrics)]
        for i in columns:
            if header[i] == "setting":  # wraps as "centralized," / "no DP" rather than being cut to "centr…"
                table.add_column(header[i], min_width=12, max_width=14)
            else:
                table.add_column(SWEEP_HEADERS.get(header[i], header[i]), justify="right", no_wrap=True)
        for row in rows:
            table.add_row(*(row[i] for i in columns))
        tables.append(table)
    return Group(*tables, Text(footnote, style="table.caption"))
