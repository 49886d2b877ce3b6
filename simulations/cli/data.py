"""`fedicu data`: convert a cohort to MEDS, and make a task's labels from a MEDS dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedicu.shared.config import RunConfig
from fedicu.shared.datasets import load_cohort
from fedicu.shared.errors import DataError
from fedicu.simulations.cli.common import OPTION_HELP, DataDir, DataFormat, Labels, MappingFile, Strict, report_skipped
from fedicu.simulations.cli.terminal import UserError, console

data_app = typer.Typer(
    help="Data conversion and task labels.",
    no_args_is_help=True,
    suggest_commands=False,  # click suggests the closest name itself
)


@data_app.command("to-meds")
def to_meds(
    out_dir: Annotated[Path, typer.Argument(help="Folder to create: the MEDS dataset, its labels in labels/.")],
    dataset: DataFormat = "synthetic",
    data_dir: DataDir = "",
    sets: Annotated[str, typer.Option(help=OPTION_HELP["sets"])] = RunConfig.sets,
    labels: Labels = "",
    mapping: MappingFile = "",
    task: Annotated[str, typer.Option(help=OPTION_HELP["task"])] = RunConfig.task,
    strict: Strict = False,
    synthetic_stays: Annotated[int, typer.Option(help=OPTION_HELP["synthetic_stays"])] = RunConfig.synthetic_stays,
    hospitals: Annotated[int, typer.Option(help=OPTION_HELP["synthetic_hospitals"])] = RunConfig.hospitals,
    seed: Annotated[int, typer.Option(help=OPTION_HELP["synthetic_seed"])] = RunConfig.seed,
) -> None:
    """Write any cohort as a MEDS dataset with a label file for its task (codes are the variables' names)."""
    from fedicu.shared.datasets import meds_write

    try:
        config = RunConfig(
            dataset=dataset, data_dir=data_dir, sets=sets, labels=labels, mapping=mapping, task=task, strict=strict,
            synthetic_stays=synthetic_stays, hospitals=hospitals, seed=seed,
        )  # fmt: skip
        with console.status("Loading the cohort"):
            cohort = load_cohort(config.data_source())
        report_skipped(cohort.skipped)
        with console.status(f"Writing {out_dir}"):
            written = meds_write.write(cohort, out_dir)
    except (ValueError, FileExistsError) as error:  # DataError included
        raise UserError(str(error)) from error
    console.print(f"Wrote {len(cohort):,} stays as MEDS to {written} (labels: {written / 'labels'})")


@data_app.command("diabetes-labels")
def diabetes_labels(
    meds_dir: Annotated[Path, typer.Option(help="Root of a MEDS dataset (data/**/*.parquet), e.g. MIMIC-IV.")],
    out: Annotated[Path, typer.Option(help="Label file to write (Parquet; never overwritten).")],
) -> None:
    """Labels of the diabetes-complications task (docs/diabetes-task.md) as a MEDS label file."""
    from fedicu.shared.datasets import diabetes_task

    try:
        with console.status(f"Reading {meds_dir}"):
            summary = diabetes_task.extract_labels(meds_dir, out)
    except (DataError, FileExistsError, OSError) as error:
        raise UserError(str(error)) from error
    console.print(summary.describe(), highlight=False)
    console.print(f"Wrote {out}; train with --data-format meds --labels {out} --task {diabetes_task.TASK_NAME}")
