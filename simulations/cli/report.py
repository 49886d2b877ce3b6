"""`fedicu report`: one self-contained HTML page describing a finished run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import typer

from fedicu.shared.config import RunConfig
from fedicu.shared.files import atomic_write_bytes
from fedicu.shared.run_dir import CONFIG_FILE, STAYS_FILE, load_trained, trained_task
from fedicu.simulations.cli.common import OPTION_NAMES, DataDir, Labels, MappingFile, Strict
from fedicu.simulations.cli.evaluation import default_sets, given_cohort, same_data
from fedicu.simulations.cli.terminal import UserError, console

if TYPE_CHECKING:
    from fedicu.shared.preprocessing import Sequences
    from fedicu.simulations.report import ExplainedStays

REPORT_FILE = "report.html"
MAX_EXPLAINED = 2000  # stays explained at most (about 20 s per 1,000 on two cores); more: a seeded sample


def report(
    run_dir: Annotated[Path, typer.Argument(help="A completed run directory (a training command's --out).")],
    out: Annotated[Path | None, typer.Option(help=f"The HTML file to write (default: RUN_DIR/{REPORT_FILE}).")] = None,
    data_dir: DataDir = "",
    dataset: Annotated[
        str,
        typer.Option(
            *OPTION_NAMES["dataset"],
            help="Data format of --data-dir (default: the run's); synthetic: explain the built-in cohort, "
            "generated as the run's was.",
        ),
    ] = "",
    sets: Annotated[
        str, typer.Option(help="PhysioNet 2012 sets to read, comma-separated (default: the run's own).")
    ] = "",
    labels: Labels = "",
    mapping: MappingFile = "",
    strict: Strict = False,
) -> None:
    """Describe a finished run in one HTML page (no external requests): curves, hospitals, privacy, importance.

    Variable importance needs the stays: give --data-dir (the run's test stays are explained when
    they are among them)."""
    try:
        load_trained(run_dir, "best")  # a completed run, or what it lacks
    except (FileNotFoundError, ValueError) as error:
        raise UserError(str(error)) from error
    target = out if out is not None else run_dir / REPORT_FILE
    if target.suffix.lower() not in (".html", ".htm"):
        raise UserError(f"--out {target}: give an .html file (the report never overwrites a run's other files)")
    if target.is_dir():
        raise UserError(f"--out {target}: a folder; give the file to write")
    if not target.parent.is_dir():
        raise UserError(f"--out {target}: no folder {target.parent}")
    from fedicu.simulations.report import build_report

    try:
        stays = _stays_to_explain(run_dir, dataset, data_dir, sets, labels, mapping, strict)
        with console.status("Writing the report" + (f" and explaining {len(stays.seqs):,} stays" if stays else "")):
            page = build_report(run_dir, stays)
    except (FileNotFoundError, ValueError) as error:
        raise UserError(str(error)) from error
    except (KeyError, TypeError, AttributeError) as error:  # a run file edited or damaged by hand
        raise UserError(f"RUN_DIR {run_dir}: a file of the run does not read as fedicu wrote it "
                        f"({type(error).__name__}: {error})") from error  # fmt: skip
    try:
        atomic_write_bytes(target, page.encode())
    except OSError as error:
        raise UserError(f"--out {target}: cannot write it: {error.strerror or error}") from error
    if stays is None:
        console.print("[yellow]no variable importance[/]: run with --data-dir to include it", highlight=False)
    console.print(f"Report of {run_dir} written to [bold]{target}[/]", highlight=False, soft_wrap=True)


def _stays_to_explain(
    run_dir: Path, dataset: str, data_dir: str, sets: str, labels: str, mapping: str, strict: bool
) -> ExplainedStays | None:
    """The stays the data options name (read as `fedicu predict` reads them), only the run's
    test stays when they are among them; None without --data-dir (or --data-format synthetic)."""
    from fedicu.simulations.report import ExplainedStays

    if not data_dir and dataset != "synthetic":
        return None
    config_file = run_dir / CONFIG_FILE
    trained_on = RunConfig.from_flower(json.loads(config_file.read_text())) if config_file.is_file() else RunConfig()
    dataset = dataset or trained_on.dataset
    own_sets = trained_on.sets if dataset == trained_on.dataset else default_sets(dataset)
    generation: dict[str, Any] = {}  # the built-in cohort: generated as the run's was
    if trained_on.dataset == "synthetic":
        generation = dict(
            synthetic_stays=trained_on.synthetic_stays, hospitals=trained_on.hospitals, seed=trained_on.seed
        )
    config = RunConfig(dataset=dataset, data_dir=data_dir, sets=sets or own_sets, labels=labels, mapping=mapping,
                       strict=strict, task=trained_task(run_dir), **generation)  # fmt: skip
    seqs, described, _ = given_cohort(config, "")
    test = _test_stays(run_dir, seqs) if same_data(trained_on, config) else None
    if test is not None:
        seqs, described = seqs.take(test), f"the run's held-out test stays of {described}"
    else:
        described = f"every stay of {described} (not the run's own test split)"
    if len(seqs) > MAX_EXPLAINED:
        described += f", {MAX_EXPLAINED:,} of its {len(seqs):,} drawn at random (seed {trained_on.seed})"
        seqs = seqs.take(
            np.sort(np.random.default_rng(trained_on.seed).choice(len(seqs), MAX_EXPLAINED, replace=False))
        )
    return ExplainedStays(seqs, described)


def _test_stays(run_dir: Path, seqs: Sequences) -> np.ndarray | None:
    """Where the run's held-out test stays are among `seqs` (None: the run recorded none of them)."""
    if not (run_dir / STAYS_FILE).is_file():
        return None  # a deployment: the server never knew the sites' stays
    test = np.flatnonzero(np.isin(seqs.stay_ids, json.loads((run_dir / STAYS_FILE).read_text())["test"]))
    return test if len(test) else None
