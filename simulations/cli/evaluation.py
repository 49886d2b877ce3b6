"""Scoring saved models: evaluate, and the cross-site matrix."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.table import Table

from fedicu.client.bedside.scoring import site_map
from fedicu.shared import cross_site
from fedicu.shared.config import RunConfig
from fedicu.shared.contract import SiteTest
from fedicu.shared.datasets import load_cohort
from fedicu.shared.ensemble import COMBINATION, scorer
from fedicu.shared.federation import load_folder, prepare
from fedicu.shared.files import safe_name
from fedicu.shared.metrics import CI_KEYS, binary_metrics, bootstrap_intervals, ci_method, event1
from fedicu.shared.model import fingerprint
from fedicu.shared.partition import assign_hospitals
from fedicu.shared.preprocessing import Sequences, clean, to_sequences
from fedicu.shared.run_dir import (
    CONFIG_FILE,
    CROSS_SITE_CSV,
    CROSS_SITE_PNG,
    MODEL_CARD,
    SITES_DIR,
    STAYS_FILE,
    RunDirectory,
    json_safe,
)
from fedicu.shared.tasks import check_same
from fedicu.simulations.cli.common import (
    OPTION_HELP,
    DataDir,
    DataFormat,
    Labels,
    MappingFile,
    Strict,
    ci_caption,
    cross_site_table,
    fmt_ci,
    report_skipped,
    site_tests,
    split_tables,
    titled,
)
from fedicu.simulations.cli.terminal import UserError, console

SPLITS = ("test",)
GROUPING_COLUMNS = {"icu-type": "icu_type", "hospital": "hospital", "set": "source"}  # of the stays table
GROUPINGS = tuple(GROUPING_COLUMNS)  # the deterministic partitions of shared.partition
EVALUATE_DATA_DEFAULTS = dict(
    dataset="physionet2012", data_dir="", sets="", labels="", mapping="", strict=False,
    synthetic_stays=RunConfig.synthetic_stays, hospitals=RunConfig.hospitals, seed=RunConfig.seed,
)  # fmt: skip


def default_sets(dataset: str) -> str:
    """Set C for PhysioNet 2012 (the held-out Challenge set); the default elsewhere (not read)."""
    return "c" if dataset == "physionet2012" else RunConfig.sets


def evaluate(
    run_dirs: Annotated[
        list[Path],
        typer.Argument(
            metavar="RUN_DIR...",
            help="A completed run directory, as a training command's --out names it (compare: its federated/, "
            "centralized/ or local/<hospital>/), or an ensemble run directory (simulate --ensemble); several run "
            "directories are scored as an ensemble of their models (the mean of their risks).",
        ),
    ],
    dataset: DataFormat = "physionet2012",
    data_dir: DataDir = "",
    sets: Annotated[
        str, typer.Option(help="PhysioNet 2012 sets to score, comma-separated (default: c, the held-out set).")
    ] = "",
    labels: Labels = "",
    mapping: MappingFile = "",
    task: Annotated[
        str, typer.Option(help="The task the stays' labels are for (default: the model's); another task is refused.")
    ] = "",
    strict: Strict = False,
    synthetic_stays: Annotated[int, typer.Option(help=OPTION_HELP["synthetic_stays"])] = 2400,
    hospitals: Annotated[int, typer.Option(help=OPTION_HELP["synthetic_hospitals"])] = 4,
    seed: Annotated[int, typer.Option(help=OPTION_HELP["synthetic_seed"])] = 0,
    split: Annotated[
        str,
        typer.Option(
            help="'test': score the run's own held-out test split, rebuilt from its configuration (no data "
            "options then; default: every stay of the cohort the data options name)."
        ),
    ] = "",
    model: Annotated[
        str,
        typer.Option(help="Which saved model: best (the round with the highest validation AUROC) or final (the last)."),
    ] = "best",
    recalibration: Annotated[
        Path | None,
        typer.Option(
            help="A site's recalibration file (its sites/<hospital>/recalibration.json in a simulation, "
            "recalibration-<hospital>-run<id>.json in a deployed site's state-dir): risks and threshold go "
            "through its map."
        ),
    ] = None,
    per: Annotated[
        str,
        typer.Option(
            help="Also score each group of the stays apart: icu-type (PhysioNet 2012's four units), hospital "
            "(the data's hospital column) or set (the PhysioNet 2012 set)."
        ),
    ] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON on stdout.")] = False,
) -> None:
    """Score a saved model (or an ensemble) on any cohort (every stay in it), or on its run's own test split."""
    try:
        scoring = scorer(run_dirs, model)
        if recalibration and len(scoring.members) > 1:
            raise ValueError("--recalibration maps one model's risks; an ensemble has no site map")
        first = scoring.members[0]
        recalibrated_by = (
            site_map(recalibration, fingerprint(first.model.state_dict()), model) if recalibration else None
        )
        run_dir, threshold = _run_of(first.path), scoring.threshold
        trained_for = first.task
        check_same(trained_for, task or trained_for)
        if split and split not in SPLITS:
            raise ValueError(f"--split must be {', '.join(SPLITS)}, not {split!r}")
        if per and per not in GROUPINGS:
            raise ValueError(f"--per must be one of {', '.join(GROUPINGS)}, not {per!r}")
        if per and split:
            raise ValueError("--per scores a cohort's groups; the run's own hospitals: fedicu cross-site RUN_DIR")
        data_options: dict[str, Any] = dict(
            dataset=dataset, data_dir=data_dir, sets=sets, labels=labels, mapping=mapping, strict=strict,
            synthetic_stays=synthetic_stays, hospitals=hospitals, seed=seed,
        )  # fmt: skip
        if split and data_options != EVALUATE_DATA_DEFAULTS:
            given = ", ".join(
                f"--{k.replace('_', '-')}" for k, v in data_options.items() if v != EVALUATE_DATA_DEFAULTS[k]
            )
            raise ValueError(f"{given} has no effect with --split test: it scores the run's own data")
        config = (
            None if split else RunConfig(**{**data_options, "sets": sets or default_sets(dataset)}, task=trained_for)
        )
    except (FileNotFoundError, ValueError) as error:
        raise UserError(str(error)) from error
    with console.status("Loading and scoring the cohort"):
        if config is None:
            seqs, described, groups = (*_own_test_split([m.path for m in scoring.members]), None)
        else:
            seqs, described, groups = given_cohort(config, per)
        scores = scoring.risks(seqs)
    if recalibrated_by is not None:
        scores, threshold = recalibrated_by.apply(scores), recalibrated_by.threshold
    if config is not None:
        _warn_about_stays_it_learnt_from([m.path for m in scoring.members], config, seqs)
    if seqs.labels.min() == seqs.labels.max():
        console.print(f"[yellow]every stay has label {int(seqs.labels[0])}: AUROC and AUPRC are undefined[/]")
    if not seqs.observed.any():
        console.print("[yellow]no stay has any time-series measurement: the scores rest on descriptors alone[/]")
    run_seed = _run_seed(run_dir)
    metrics = binary_metrics(seqs.labels, scores, threshold) | bootstrap_intervals(seqs.labels, scores, run_seed)
    metrics = {"n": len(seqs), "threshold": threshold, **{k: v for k, v in metrics.items() if k != "n"}}
    by_group = _per_group(groups, seqs.labels, scores, threshold, run_seed) if groups is not None else None
    if as_json:
        values = metrics | ({"groups": by_group} if by_group is not None else {})
        print(json.dumps(json_safe(values) | {"confidence_intervals": ci_method(run_seed)}))
        return
    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k in metrics:
        if k not in CI_KEYS:
            table.add_row(k, fmt_ci(metrics, k))
    through = f", {recalibrated_by.method} map of {recalibration}" if recalibrated_by else ""
    scored = str(run_dirs[0]) if len(run_dirs) == 1 else f"the ensemble of {', '.join(map(str, run_dirs))}"
    if len(scoring.members) > 1:
        through += f", {len(scoring.members)} members: {COMBINATION}"
    console.print(titled(f"{scored} ({model} model{through}, task {trained_for}) on {described}", table))
    console.print(ci_caption(run_seed), style="table.caption", highlight=False)  # wider than the table
    if groups is not None:
        pooled, rows = site_tests(seqs.labels, scores, groups, run_seed)
        console.print(*split_tables(f"Each {per}", pooled, rows, run_seed, column=per))


def _per_group(
    groups: np.ndarray, labels: np.ndarray, scores: np.ndarray, threshold: float, seed: int
) -> list[dict[str, Any]]:
    """What a hospital computes on its test stays (`SiteTest`), for each group of the stays,
    with Event-1 at the model's threshold."""
    rows = []
    for group in sorted(set(groups.tolist())):
        members = groups == group
        part_labels, part_scores = labels[members], scores[members]
        rows.append(
            {"group": group, **asdict(SiteTest.of(part_labels, part_scores, seed))}
            | {"event1": event1(part_labels, part_scores, threshold)[0]}
        )
    return rows


def _run_of(path: Path) -> Path:
    """The run directory a model comes from: itself, or for a hospital's personal model file the
    simulated run whose sites/ folder holds it (a deployed site's file: the folder it is in)."""
    if not path.is_file():
        return path
    run = path.parents[2] if len(path.parents) > 2 else path.parent
    return run if path.parents[1].name == SITES_DIR and (run / CONFIG_FILE).is_file() else path.parent


def _run_seed(run_dir: Path) -> int:
    """The run's seed, which also seeds the intervals of whatever its model scores."""
    if not (run_dir / MODEL_CARD).is_file():  # a deployed site's personal model: no run here
        return RunConfig.seed
    return int(RunDirectory(run_dir).read_json(MODEL_CARD).get("training", {}).get("seed", RunConfig.seed))


def given_cohort(config: RunConfig, per: str, to_score: bool = False) -> tuple[Sequences, str, np.ndarray | None]:
    """The cohort's stays, what they are, and with `per` the group of each stay. `to_score`:
    the stays are only scored, so they may come without outcomes."""
    try:
        loaded = load_cohort(replace(config.data_source(), to_score=to_score))
    except ValueError as error:  # DataError included: it names the file and line
        raise UserError(str(error)) from error
    cohort = clean(loaded)[0]
    groups = None
    if per:
        column = GROUPING_COLUMNS[per]
        if column not in cohort.stays or cohort.stays[column].isna().all():
            raise UserError(f"--per {per}: these stays record no {column}")
        try:
            groups = assign_hospitals(cohort, per).loc[cohort.stays.index].to_numpy(dtype=str)
        except ValueError as error:
            raise UserError(str(error).replace("--partition", "--per")) from error
    report_skipped(loaded.skipped)
    return to_sequences(cohort), config.data_source().describe(), groups


# What decides a run's hospitals and split: models trained alike on them share a test split.
SPLIT_FIELDS = ("dataset", "data_dir", "sets", "labels", "mapping", "task", "strict", "partition", "hospitals",
                "alpha", "synthetic_stays", "test_fraction", "val_fraction", "seed", "sites", "test_dir")  # fmt: skip


def _own_test_split(run_dirs: list[Path]) -> tuple[Sequences, str]:
    """The runs' held-out test split, as their configuration builds it again (same data, same
    seed); several runs (an ensemble) must share it. A personal model: its hospital's own."""
    if any(path.is_file() for path in run_dirs):
        return _hospitals_test_split(run_dirs)
    run_dir = run_dirs[0]
    try:
        configs = [RunConfig.from_flower(json.loads((path / CONFIG_FILE).read_text())) for path in run_dirs]
        config = configs[0]
        for other, path in zip(configs[1:], run_dirs[1:], strict=True):
            differ = [f for f in SPLIT_FIELDS if getattr(other, f) != getattr(config, f)]
            if differ:
                raise ValueError(
                    f"{path} was trained on another split than {run_dir} (--{differ[0].replace('_', '-')} differs); "
                    "score the ensemble on other stays (the data options)"
                )
        if config.sites == 0:
            return prepare(config).test, f"its own test split ({config.data_source().describe()})"
        if not config.test_dir:
            raise ValueError("this deployment's server held no test set (run-config test-dir)")
        test_data = replace(config.data_source(), data_dir=config.test_dir)
        return load_folder(test_data, "run-config test-dir")[0], f"its server's test set {config.test_dir}"
    except (OSError, ValueError) as error:
        raise UserError(f"RUN_DIR {run_dir}: cannot rebuild its test split: {error}") from error


def _hospitals_test_split(paths: list[Path]) -> tuple[Sequences, str]:
    """The test stays of the hospital that keeps this personal model, rebuilt from its run."""
    if len(paths) > 1:
        raise UserError("--split test scores one personal model, on its hospital's test stays; give a cohort instead")
    path, run_dir = paths[0], _run_of(paths[0])
    try:
        config = RunConfig.from_flower(json.loads((run_dir / CONFIG_FILE).read_text()))
        hospital = next((h for h in prepare(config).hospitals if safe_name(h.name) == path.parent.name), None)
    except (OSError, ValueError) as error:
        raise UserError(f"RUN_DIR {path}: cannot rebuild its hospital's test split: {error}") from error
    if hospital is None:
        raise UserError(f"RUN_DIR {path}: not in a simulated run's {SITES_DIR}/<hospital>/ folder; give a cohort")
    return hospital.test, f"{hospital.name}'s own test split ({config.data_source().describe()})"


def _warn_about_stays_it_learnt_from(run_dirs: list[Path], config: RunConfig, seqs: Sequences) -> None:
    """Scores on stays that trained or selected a model are optimistic: say how many."""
    used: dict[str, list[int]] = {"train": [], "validation": []}
    for run_dir in map(_run_of, run_dirs):
        if not (run_dir / STAYS_FILE).is_file():
            continue  # a deployment: the server never knew the sites' stays
        if same_data(RunConfig.from_flower(json.loads((run_dir / CONFIG_FILE).read_text())), config):
            for part, ids in json.loads((run_dir / STAYS_FILE).read_text()).items():
                used.setdefault(part, []).extend(ids)
    train, validation = (int(np.isin(seqs.stay_ids, used[part]).sum()) for part in ("train", "validation"))
    if train or validation:
        console.print(
            f"[bold yellow]warning:[/] {train:,} of these {len(seqs):,} stays trained the model and {validation:,} "
            "selected it (validation): these metrics are optimistic; score held-out stays or use --split test",
            highlight=False,
        )


def same_data(trained_on: RunConfig, scored: RunConfig) -> bool:
    """Whether the same stay id names the same stay in both: PhysioNet's RecordIDs always do; a
    synthetic cohort's ids only for the same generation; other formats only in the same folder."""
    if trained_on.dataset != scored.dataset:
        return False
    if scored.dataset == "synthetic":
        keys = ("synthetic_stays", "hospitals", "seed")
        return all(getattr(trained_on, k) == getattr(scored, k) for k in keys)
    if scored.dataset == "physionet2012":
        return True
    return Path(trained_on.data_dir).resolve() == Path(scored.data_dir).resolve()


def cross_site_(
    run_dirs: Annotated[
        list[Path],
        typer.Argument(
            help="Completed simulated runs, or folders holding them (compare's, validate's); each run's best model "
            "is scored."
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            help="Folder for cross_site.csv, .json and .png (default: the RUN_DIR, when it is one folder of runs)."
        ),
    ] = None,
) -> None:
    """Score every model on every hospital's own test split: the cross-site matrix."""
    from fedicu.simulations import cross_site as matrix

    try:
        models = matrix.models_in(run_dirs)
        if out is None:
            if len(run_dirs) > 1 or (run_dirs[0] / MODEL_CARD).is_file():
                raise ValueError("--out is needed unless one folder of runs (compare's, validate's) is given")
            out = run_dirs[0]
        config = matrix.configuration(models)
        with console.status("Rebuilding the hospitals' test splits"):
            federation = prepare(config)
        matrix.check_held_out(models, federation)
    except (OSError, ValueError) as error:
        raise UserError(str(error)) from error
    with console.status(f"Scoring {len(models)} models at {len(federation.hospitals)} hospitals"):
        rows = matrix.matrix(models, federation, config.seed)
    out.mkdir(parents=True, exist_ok=True)
    cross_site.write(RunDirectory(out), rows)
    console.print(cross_site_table(rows))
    console.print(f"Written to [bold]{out}[/]: {CROSS_SITE_CSV}, {CROSS_SITE_PNG}", highlight=False)
