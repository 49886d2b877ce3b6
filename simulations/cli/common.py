"""What several commands share: the console, option help, errors, `run_options` and the tables."""

from __future__ import annotations

import functools
import inspect
import json
import math
import os
import socket
from dataclasses import asdict, fields
from pathlib import Path
from typing import Annotated, Any, cast

import numpy as np
import typer
from rich.console import Group
from rich.table import Table
from rich.text import Text

from fedicu.shared import cross_site
from fedicu.shared.calibration import CALIBRATION_FIELDS, ECE_BINNING, RECALIBRATION_METHODS
from fedicu.shared.cohort import SkippedRows, skipped_summary
from fedicu.shared.config import RunConfig
from fedicu.shared.contract import SiteTest
from fedicu.shared.metrics import CI_CAPTION, interval_text
from fedicu.shared.run_dir import CROSS_SITE_JSON, HOSPITAL_JSON, METRICS_JSON, MODEL_CARD, PERSONALIZATION_JSON
from fedicu.shared.tasks import BUILT_IN
from fedicu.simulations.cli.terminal import UserError, console

OPTION_HELP = {
    "dataset": "Data format: synthetic (built in), physionet2012, tables (stays and events as CSV or Parquet) or meds.",
    "data_dir": "The data folder: PhysioNet 2012 set-X/ or set-X.tar.gz with Outcomes-X.txt; stays and events "
    "tables; or a MEDS dataset.",
    "sets": "PhysioNet 2012 sets to load, comma-separated letters of a, b, c (other formats: not read).",
    "labels": "MEDS label file or folder (subject_id, prediction_time, boolean_value).",
    "mapping": "TOML file mapping the site's columns and codes to the federation's variables (tables, meds).",
    "task": f"What the label means: {', '.join(BUILT_IN)}, or a label column of a stays table.",
    "variables": "Time series the model reads, comma-separated (e.g. HR,SysABP,DiasABP,Temp; default: all).",
    "strict": "Refuse rows with an empty or unknown variable instead of skipping and counting them.",
    "partition": "How stays are split into hospitals: hospital (the data's own sites), icu-type, set (PhysioNet "
    "2012 set), iid or dirichlet (default: the data format's own: icu-type for physionet2012, hospital otherwise).",
    "hospitals": "Number of hospitals: of the synthetic cohort, and of an iid or dirichlet partition.",
    "alpha": "Dirichlet concentration for --partition dirichlet (smaller = more skew).",
    "synthetic_stays": "ICU stays in the synthetic cohort, all hospitals together (--dataset synthetic).",
    # The synthetic cohort's generation, for the commands that only read a cohort (no partition, no training)
    "synthetic_hospitals": "Hospitals the synthetic cohort is generated with (--dataset synthetic).",
    "synthetic_seed": "Seed the synthetic cohort is generated with (--dataset synthetic).",
    "test_fraction": "Share of stays (0 to 1) held out as the test split, scored at the server and never trained on.",
    "val_fraction": "Share (0 to 1) of each hospital's remaining stays kept for validation (model selection).",
    "seed": "Random seed of the synthetic cohort, the splits and training (initialization, batches, noise).",
    "input_decay": "Let a value measured long ago decay towards the mean before the LSTM reads it, at a learnt "
    "rate per time series (GRU-D's input decay).",
    "lr_schedule": "The local learning rate round by round: constant (--lr every round) or cosine (from --lr down "
    "towards 0 along a half cosine over --rounds).",
    "member": "Ensemble member k: other starting weights and training draws than member 0 (the run of --seed), "
    "on the same hospitals and data split.",
    "ensemble": "Train this many models (members 0..K-1, in RUN_DIR/member-k) and score the mean of their risks: "
    "an ensemble run directory (README: Ensembles).",
    "hidden_size": "LSTM hidden units per layer.",
    "layers": "Stacked LSTM layers.",
    "dropout": "Dropout probability (0 to 1) before the output layer; 0: none.",
    "attention": "Attention pooling over hours instead of the last hidden state.",
    "strategy": "Aggregation: fedavg, fedprox, scaffold (drift correction) or fedadam; robust to a bad hospital: "
    "fedmedian, trimmed-mean or krum.",
    "max_update_ratio": "Reject a hospital's update longer than this many times the median of the others' "
    "(0: no bound); NaN, infinite or misshapen weights are always rejected.",
    "rounds": "Federated rounds; the centralized and local-only baselines train rounds x local-epochs epochs.",
    "local_epochs": "Epochs (passes over its training stays) each hospital trains per round.",
    "lr": "Adam learning rate of local training (at the hospitals; in the baselines, of the one model).",
    "batch_size": "Mini-batch size, in ICU stays.",
    "proximal_mu": "FedProx proximal term weight mu (--strategy fedprox only).",
    "server_lr": "FedAdam server learning rate (--strategy fedadam only).",
    "round_timeout": "Seconds to wait for hospitals in each round; later replies count as failures.",
    "min_hospitals": "Hospitals that must reply for a round to count; failed ones are recorded and skipped "
    "(default 1: go on while any hospital replies).",
    "init_from": "Start from the best model of this completed run directory (another cohort, task or variable "
    "set): every weight with the same name and shape is taken; the architecture options must match.",
    "freeze_body": "With --init-from: train only the output head, the LSTM taken from --init-from kept as it is.",
    "augment_mask": "Local training drops each hourly observation with this probability, a new draw every "
    "epoch (0: off).",
    "augment_shift": "Local training moves each stay by up to this many hours, earlier or later, a new draw "
    "every epoch (0: off).",
    "personalization": "Each hospital also gets a model of its own, which it keeps: finetune (after training, "
    "local epochs from the selected model, their number chosen on the hospital's validation stays), ditto "
    "(every round, a personal model trained with a pull of --ditto-lambda towards the global model; the round "
    "kept chosen on validation) or fedrep (the LSTM body federated, each hospital's output head its own; the "
    "global model is then a body, scored only under the hospitals' heads).",
    "ditto_lambda": "Ditto's lambda: how strongly each personal model is pulled towards the global model "
    "(--personalization ditto).",
    "finetune_epochs": "The most epochs a hospital fine-tunes for (--personalization finetune); it keeps the "
    "epoch, 0 included, whose model scores best on its validation stays.",
    "dp": "Train with DP-SGD at every hospital (privacy unit: one ICU stay).",
    "target_epsilon": "Each hospital's epsilon for the whole run: the noise is calibrated to it, or, with "
    "--noise-multiplier, it is the budget at which a hospital stops training (0: no budget; --dp then "
    "needs --noise-multiplier).",
    "noise_multiplier": "Fixed DP-SGD noise multiplier (noise sd / clipping norm) instead of calibrating from "
    "--target-epsilon (0: calibrate).",
    "delta": "DP delta per hospital; must be below 1 / its training stays.",
    "max_grad_norm": "DP-SGD clipping bound: the L2 norm of each stay's gradient is cut to this.",
    "accountant": "Privacy accountant that turns noise and steps into epsilon: rdp (Renyi DP) or prv (privacy "
    "random variables, usually tighter).",
    "hospital_dp_noise": "Hospital-level DP: noise multiplier on the average of clipped hospital updates (0: off).",
    "hospital_dp_clip": "Hospital-level DP: L2 bound on each hospital's model update.",
    "secagg": "Secure aggregation (SecAgg+): the server sees only the sum of the hospitals' weights.",
    "out": "Run directory to create, new or empty (default: runs/<timestamp>, with the command's suffix such as "
    "-compare).",
}
DEPLOYMENT_ONLY = ("sites", "test_dir")  # run-config keys of a real deployment, not options here
OPTION_NAMES = {"dataset": ("--dataset", "--data-format")}  # one option, two spellings

# The options of every command that reads stays (run_options gives the training commands all of them).
DataFormat = Annotated[str, typer.Option(*OPTION_NAMES["dataset"], help=OPTION_HELP["dataset"])]
DataDir = Annotated[str, typer.Option(help=OPTION_HELP["data_dir"])]
Labels = Annotated[str, typer.Option(help=OPTION_HELP["labels"])]
MappingFile = Annotated[str, typer.Option("--mapping", help=OPTION_HELP["mapping"])]
Strict = Annotated[bool, typer.Option(help=OPTION_HELP["strict"])]
RAY_HEAD_TIMEOUT_S = 5
RayAddress = Annotated[
    str,
    typer.Option(
        help="HOST:PORT of an existing Ray cluster's head to run the hospitals on, instead of a local Ray "
        "(README: On a Ray cluster)."
    ),
]


def use_ray_cluster(address: str) -> None:
    """Simulations of this command attach to the Ray cluster whose head is at `address` (none: a
    local Ray). Ray reads the address from its own variable, RAY_ADDRESS, which this sets for
    the rest of the process; a head that does not answer is reported now, not after Ray's own
    minute of retries."""
    if not address:
        return
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        raise UserError(f"--ray-address {address}: expected HOST:PORT of the Ray head, e.g. 10.0.0.5:6379")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=RAY_HEAD_TIMEOUT_S).close()
    except OSError as error:
        raise UserError(f"--ray-address {address}: no Ray head answers there ({error})") from error
    os.environ["RAY_ADDRESS"] = address


def report_skipped(skipped: tuple[SkippedRows, ...]) -> None:
    """The one line a command prints about rows its reader skipped."""
    if skipped:
        console.print(f"[yellow]{skipped_summary(skipped)}[/] (--strict refuses them)", highlight=False)


def run_options(command=None, *, dp_per_cell: bool = False, ensembles: bool = False):
    """Give a command every RunConfig field as an option; it receives `config`.

    `dp_per_cell`: the command sets --dp and --target-epsilon itself for each run it makes (the
    sweep), so it does not offer them, and the DP-SGD options it is given are checked as
    acting (the configuration it receives has DP-SGD on at a stand-in epsilon of 1).
    `ensembles`: the command trains an ensemble given --ensemble (simulate); others offer no such option."""
    if command is None:
        return functools.partial(run_options, dp_per_cell=dp_per_cell, ensembles=ensembles)
    per_cell = ("dp", "target_epsilon", "noise_multiplier") if dp_per_cell else ()
    not_offered = DEPLOYMENT_ONLY + per_cell + (() if ensembles else ("ensemble",))
    names = [f.name for f in fields(RunConfig) if f.name not in not_offered]
    defaults = RunConfig()
    params = [
        inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            annotation=Annotated[
                type(getattr(defaults, name)), typer.Option(*OPTION_NAMES.get(name, ()), help=OPTION_HELP[name])
            ],
            default=getattr(defaults, name),
        )
        for name in names
    ]
    # Evaluated annotations: typer finds a typer.Option (and its help) only in an evaluated one,
    # and it reads the `__signature__` below as it stands.
    own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "config"]
    stand_in: dict[str, Any] = {"dp": True, "target_epsilon": 1.0} if dp_per_cell else {}

    @functools.wraps(command)
    def wrapper(**kwargs):
        try:
            config = RunConfig(**{n: kwargs.pop(n) for n in names}, **stand_in)
        except ValueError as error:
            raise UserError(str(error)) from error
        return command(config=config, **kwargs)

    cast(Any, wrapper).__signature__ = inspect.Signature(own + params)  # what typer reads the options from
    return wrapper


def fmt(value) -> str:
    if value is None:  # NaN in the run's JSON files: a metric that does not exist (e.g. train loss under DP)
        return "–"
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.3f}"
    if isinstance(value, list):  # a range: [min, max]
        return " to ".join(map(fmt, value))
    return str(value)


def fmt_ci(row: dict, key: str) -> str:
    """`row[key]` with its interval if the row has one: "0.804 (0.78–0.83)"."""
    return f"{fmt(row[key])} {interval_text(row, key)}".rstrip()


def ci_caption(seed: int) -> str:
    """The footnote of every table whose cells `fmt_ci` wrote."""
    return f"{CI_CAPTION}, seed {seed}"


def titled(title: str, table: Table) -> Group:
    """A narrow table under a long title (one with a path): the title on lines of its own, as wide
    as the terminal allows, instead of wrapped to the table's width. Plain text, no markup."""
    return Group(Text(title, style="table.title", overflow="fold"), table)


METRIC_NAMES = {"auroc": "AUROC", "auprc": "AUPRC", "brier": "Brier", "event1": "Event-1"}


def _round_header(column: str) -> str:
    """Two-line headers ("test" over "AUROC"), so eight columns fit in 80."""
    if column == "round":
        return column
    if column == "hospitals_failed":
        return "hospitals\nfailed"
    split, metric = column.split("_", 1)
    return f"{split}\n{METRIC_NAMES.get(metric, metric)}"


WITH_CI = ("val_auroc", "test_auroc", "test_auprc")  # the columns that show their interval


def rounds_table(title: str, rows: list[dict], seed: int) -> Table:
    """One line per round from about 95 columns on; narrower, an interval wraps under its value.
    `seed`: the run's, which seeded its intervals."""
    table = Table(title=title, caption=ci_caption(seed))
    columns = ["round", "train_loss", "val_auroc", "test_auroc", "test_auprc", "test_brier", "test_event1"]
    if any(row.get("hospitals_failed") for row in rows):
        columns.insert(1, "hospitals_failed")
    for c in columns:
        table.add_column(_round_header(c), justify="right", no_wrap=c not in WITH_CI)
    for row in rows:
        table.add_row(*(fmt_ci(row, c) if c in WITH_CI else fmt(row[c]) for c in columns))
    return table


def results_table(results: dict[str, dict], seed: int) -> Table:
    table = Table(title="Held-out test split", caption=ci_caption(seed))
    keys = ["test_auroc", "test_auprc", "test_brier", "test_event1"]
    table.add_column("setting", overflow="fold")
    for k in keys:
        table.add_column(METRIC_NAMES[k.removeprefix("test_")], justify="right", no_wrap=k not in WITH_CI)
    for name, r in results.items():
        table.add_row(name, *(fmt_ci(r, k) if k in WITH_CI else fmt(r[k]) for k in keys))
    return table


def by_hospital(pooled: dict, hospital_rows: list[dict]) -> list[tuple[str, dict]]:
    """The pooled test split, then the worst hospital (lowest test AUROC), then the others from
    worse to better: the order in which a site should read them."""

    def auroc(row: dict) -> float:  # null in the run's JSON files: the hospital failed, or one class
        value = row["test_auroc"]
        return math.nan if value is None else value

    ranked = sorted(hospital_rows, key=lambda r: (math.isnan(auroc(r)), auroc(r)))
    worst = ranked[0] if ranked and not math.isnan(auroc(ranked[0])) else None
    return [("pooled", pooled), *((f"worst: {r['hospital']}" if r is worst else r["hospital"], r) for r in ranked)]


def _count(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.0f}"


def best_round_tables(run_dir: Path, seed: int) -> Group:
    """A finished federated run's best round at each hospital (`hospital_tables`)."""
    rows = json.loads((run_dir / METRICS_JSON).read_text())
    best = json.loads((run_dir / MODEL_CARD).read_text())["best_round"]
    at_best = [r for r in json.loads((run_dir / HOSPITAL_JSON).read_text()) if r["round"] == best]
    return hospital_tables(f"Best round {best} at each hospital", rows[best - 1], at_best, seed)


def hospital_tables(title: str, pooled: dict, hospital_rows: list[dict], seed: int) -> Group:
    """Discrimination, calibration, and calibration after each hospital's own recalibration, on
    each hospital's own test split (three tables: together they would not fit 80 columns)."""
    return Group(*split_tables(title, pooled, hospital_rows, seed), _recalibration_table(title, hospital_rows))


def split_tables(
    title: str, pooled: dict, hospital_rows: list[dict], seed: int, column: str = "test split"
) -> tuple[Table, Table]:
    """Discrimination and calibration of the pooled stays, then of each part (`hospital`: its
    name), worst first; rows hold `test_`-prefixed metrics."""
    rows = by_hospital(pooled, hospital_rows)
    discrimination = Table(title=f"{title}: discrimination", caption=ci_caption(seed))
    discrimination.add_column(column, no_wrap=True)
    discrimination.add_column("stays (died)", justify="right", no_wrap=True)
    for key in ("test_auroc", "test_auprc"):
        discrimination.add_column(METRIC_NAMES[key.removeprefix("test_")], justify="right")
    calibration = Table(
        title=f"{title}: calibration",
        caption=f"ECE: {ECE_BINNING}; slope, intercept: logistic fit on the logit of the risk",
    )
    calibration.add_column(column, no_wrap=True)
    for header in ("Brier", "ECE", "slope", "intercept", "obs/exp"):
        calibration.add_column(header, justify="right", no_wrap=True)
    for name, r in rows:
        stays = f"{_count(r['test_stays'])} ({_count(r['test_deaths'])})"
        discrimination.add_row(name, stays, fmt_ci(r, "test_auroc"), fmt_ci(r, "test_auprc"))
        calibration.add_row(name, *(fmt(r[f"test_{k}"]) for k in ("brier", *CALIBRATION_FIELDS)))
    return discrimination, calibration


def site_tests(labels: np.ndarray, risks: np.ndarray, groups: np.ndarray, seed: int) -> tuple[dict, list[dict]]:
    """What a hospital computes on its test stays (`SiteTest`) for all stays and for each group
    of them, `test_`-prefixed as `split_tables` reads them (a group's name under `hospital`)."""

    def of(part: np.ndarray) -> dict:
        return {f"test_{k}": v for k, v in asdict(SiteTest.of(labels[part], risks[part], seed)).items()}

    groups = np.asarray(groups)
    return of(np.ones(len(labels), dtype=bool)), [
        {"hospital": g, **of(groups == g)} for g in sorted(set(groups.tolist()))
    ]


def _recalibration_table(title: str, hospital_rows: list[dict]) -> Table:
    """Calibration before and after each hospital's own map (fitted on its validation stays)."""
    table = Table(
        title=f"{title}: recalibrated there", caption="each map fitted on the hospital's validation stays, kept there"
    )
    table.add_column("test split", no_wrap=True)
    for metric in ("ECE", "obs/exp"):
        for stage in ("", "Platt", "isotonic"):
            table.add_column(f"{metric}\n{stage or 'global'}", justify="right", no_wrap=True)
    for r in hospital_rows:
        cells = [
            fmt(r[f"test{stage}_{key}"])
            for key in ("ece", "observed_expected")
            for stage in ("", *(f"_{m}" for m in RECALIBRATION_METHODS))
        ]
        table.add_row(r["hospital"], *cells)
    return table


def leave_out_table(report: dict, seed: int) -> Table:
    """Each held-out hospital's scores beside the same hospital's when it took part."""
    table = Table(title="Left out of training, scored on its own test split", caption=ci_caption(seed))
    table.add_column("held out", no_wrap=True)
    table.add_column("AUROC", justify="right")
    for header in ("AUROC\nincluded", "AUPRC", "ECE", "slope", "inter-\ncept"):
        table.add_column(header, justify="right", no_wrap=True)
    for r in report["hospitals"]:
        cells = (fmt(r["included_auroc"]), fmt(r["auprc"]), fmt(r["ece"]), fmt(r["calibration_slope"]))
        name = f"{r['hospital']}\n{r['stays']} stays"
        table.add_row(name, fmt_ci(r, "auroc"), *cells, fmt(r["calibration_intercept"]))
    table.add_section()
    table.add_row("mean", fmt(report["mean_auroc"]), *[""] * 5)
    table.add_row("worst", fmt(report["worst_auroc"]), *[""] * 5)
    return table


def personalization_table(run_dir: Path) -> Table:
    """Each hospital's personal model against the best global model (FedRep's has no score of
    its own): the epochs (finetune) or the round (ditto, fedrep) it chose, then AUROC on its
    validation stays (where it chose) and on its test stays."""
    chosen = json.loads((run_dir / PERSONALIZATION_JSON).read_text())
    matrix = json.loads((run_dir / CROSS_SITE_JSON).read_text())
    personal = f"personal/{chosen[0]['method']}"
    test = {(r["model"], r["hospital"]): r["auroc"] for r in matrix}
    against = (
        "(the global model is a body: no score of its own)"
        if personal == "personal/fedrep"
        else "against the best global one"
    )
    table = Table(title=f"{personal}: each hospital's own model, {against}")
    table.add_column("hospital", no_wrap=True)
    table.add_column("epochs" if chosen[0]["method"] == "finetune" else "round", justify="right")
    for split in ("val", "test"):
        table.add_column(f"{split} AUROC\nglobal", justify="right")
        table.add_column(f"{split} AUROC\npersonal", justify="right")
    notes = [f"{row['hospital']}: {row['status']}" for row in chosen if "epochs" not in row]
    if spent := [row["epsilon"] for row in chosen if "epsilon" in row]:
        notes.append(
            f"DP-SGD: personal models' epsilon {min(spent):.2f}–{max(spent):.2f} (each hospital's whole ledger)"
        )
    table.caption = "\n".join(notes) or None
    for row in chosen:
        h, done = row["hospital"], "epochs" in row
        table.add_row(
            h, str(row["epochs"]) if done else "failed", fmt(row.get("val_auroc_global")), fmt(row.get("val_auroc")),
            fmt(test.get(("federated/best", h))), fmt(test.get((personal, h))),
        )  # fmt: skip
    return table


def cross_site_table(rows: list[dict]) -> Table:
    """AUROC of each model (rows) at each hospital's test split (columns), worst hospital last."""
    table = Table(title="Cross-site AUROC: each model on each hospital's own test split")
    table.add_column("model", no_wrap=True)
    hospitals = cross_site.hospitals(rows)
    for name in hospitals:
        table.add_column(name, justify="right")
    table.add_column("worst", justify="right", style="bold")
    auroc = {(r["model"], r["hospital"]): r["auroc"] for r in rows}
    for model in cross_site.models(rows):
        cells = [fmt(auroc.get((model, h), math.nan)) for h in hospitals]
        table.add_row(model, *cells, fmt(cross_site.worst_auroc(rows, model)))
    return table
