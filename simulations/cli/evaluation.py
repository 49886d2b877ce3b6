"""Scoring a saved model: evaluate."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fedicu.shared.config import RunConfig
from fedicu.shared.datasets import load_cohort
from fedicu.shared.metrics import binary_metrics
from fedicu.shared.preprocessing import clean, to_features, to_sequences
from fedicu.shared.run_dir import load_trained, trained_task
from fedicu.shared.tasks import check_same
from fedicu.shared.training import predict
from fedicu.simulations.cli.common import (
    OPTION_HELP,
    DataDir,
    DataFormat,
    Labels,
    MappingFile,
    Strict,
    UserError,
    console,
    fmt,
    report_skipped,
    titled,
)


def _default_sets(dataset: str) -> str:
    """Set C for PhysioNet 2012 (the held-out Challenge set); the default elsewhere (not read)."""
    return "c" if dataset == "physionet2012" else RunConfig.sets


def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A completed run directory.")],
    dataset: DataFormat = "physionet2012",
    data_dir: DataDir = "",
    sets: Annotated[str, typer.Option(help="PhysioNet 2012 sets to score, comma-separated (default: c).")] = "",
    labels: Labels = "",
    mapping: MappingFile = "",
    task: Annotated[str, typer.Option(help="The stays' task (default: the model's); another is refused.")] = "",
    strict: Strict = False,
    synthetic_stays: Annotated[int, typer.Option(help=OPTION_HELP["synthetic_stays"])] = 2400,
    hospitals: Annotated[int, typer.Option(help=OPTION_HELP["hospitals"])] = 4,
    seed: Annotated[int, typer.Option(help=OPTION_HELP["seed"])] = 0,
    model: Annotated[str, typer.Option(help="Which saved model: best or final.")] = "best",
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON on stdout.")] = False,
) -> None:
    """Score a saved model on any cohort (every stay in it)."""
    try:
        trained, norm, threshold = load_trained(run_dir, model)
        trained_for = trained_task(run_dir)
        check_same(trained_for, task or trained_for)
        config = RunConfig(
            dataset=dataset, data_dir=data_dir, sets=sets or _default_sets(dataset), labels=labels, mapping=mapping, task=trained_for,
            strict=strict, synthetic_stays=synthetic_stays, hospitals=hospitals, seed=seed,
        )  # fmt: skip
    except (FileNotFoundError, ValueError) as error:
        raise UserError(str(error)) from error
    with console.status("Loading and scoring the cohort"):
        try:
            loaded = load_cohort(config.data_source())
        except ValueError as error:  # DataError included: it names the file and line
            raise UserError(str(error)) from error
        cohort, _ = clean(loaded)
        seqs = to_sequences(cohort)
        scores = predict(trained, to_features(seqs, norm, trained.config.channels))
    report_skipped(loaded.skipped)
    if seqs.labels.min() == seqs.labels.max():
        console.print(f"[yellow]every stay has label {int(seqs.labels[0])}: AUROC and AUPRC are undefined[/]")
    if not seqs.observed.any():
        console.print("[yellow]no stay has any time-series measurement: the scores rest on descriptors alone[/]")
    metrics = binary_metrics(seqs.labels, scores, threshold)
    metrics = {"n": len(seqs), "threshold": threshold, **{k: v for k, v in metrics.items() if k != "n"}}
    if as_json:
        print(json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}))
        return
    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        table.add_row(k, fmt(v))
    console.print(titled(f"{run_dir} ({model} model, task {trained_for}) on {config.data_source().describe()}", table))
