"""What several commands share: the console, option help, errors, `run_options` and the tables."""

from __future__ import annotations

import functools
import inspect
import math
from dataclasses import fields
from typing import Annotated, Any, cast

import typer
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from fedicu.shared.cohort import SkippedRows, skipped_summary
from fedicu.shared.config import RunConfig
from fedicu.shared.tasks import BUILT_IN

console = Console(stderr=True)  # progress and tables; stdout stays clean for --json

OPTION_HELP = {
    "dataset": "Data format: synthetic (built in), physionet2012, tables (stays and events as CSV or Parquet) or meds.",
    "data_dir": "The data folder: PhysioNet 2012 set-X/ or set-X.tar.gz with Outcomes-X.txt; stays and events "
    "tables; or a MEDS dataset.",
    "sets": "PhysioNet 2012 sets to load, comma-separated (a, b, c).",
    "labels": "MEDS label file or folder (subject_id, prediction_time, boolean_value).",
    "mapping": "TOML file mapping the site's columns and codes to the federation's variables (tables, meds).",
    "task": f"What the label means: {', '.join(BUILT_IN)}, or a label column of a stays table.",
    "variables": "Time series the model reads, comma-separated (e.g. HR,SysABP,DiasABP,Temp; default: all).",
    "strict": "Refuse rows with an empty or unknown variable instead of skipping and counting them.",
    "partition": "How stays are split into hospitals: hospital, icu-type, set, iid, dirichlet "
    "(default: the dataset's natural sites).",
    "hospitals": "Number of hospitals (synthetic cohort, iid and dirichlet partitions).",
    "alpha": "Dirichlet concentration for --partition dirichlet (smaller = more skew).",
    "synthetic_stays": "Total ICU stays in the synthetic cohort.",
    "test_fraction": "Share of stays held out for server-side testing.",
    "val_fraction": "Share of each hospital's remaining stays used for validation.",
    "seed": "Seed for data generation, splits and training.",
    "hidden_size": "LSTM hidden units.",
    "layers": "Stacked LSTM layers.",
    "dropout": "Dropout before the output layer.",
    "attention": "Attention pooling over hours instead of the last hidden state.",
    "strategy": "Aggregation: fedavg, fedprox or fedadam.",
    "rounds": "Federated rounds (baselines train rounds x local-epochs epochs).",
    "local_epochs": "Epochs each hospital trains per round.",
    "lr": "Adam learning rate at the hospitals.",
    "batch_size": "Mini-batch size.",
    "proximal_mu": "FedProx proximal term weight.",
    "server_lr": "FedAdam server learning rate.",
    "round_timeout": "Seconds to wait for hospitals in each round; later replies count as failures.",
    "min_hospitals": "Replies a round needs to complete; failed hospitals are recorded and skipped.",
    "dp": "Train with DP-SGD at every hospital (privacy unit: one ICU stay).",
    "target_epsilon": "Each hospital's epsilon for the whole run: the noise is calibrated to it, or, with "
    "--noise-multiplier, it is the budget at which a hospital stops training.",
    "noise_multiplier": "Fixed DP-SGD noise multiplier instead of calibrating from --target-epsilon.",
    "delta": "DP delta per hospital; must be below 1 / its training stays.",
    "max_grad_norm": "DP-SGD per-stay gradient clipping norm.",
    "accountant": "Privacy accountant: rdp or prv.",
    "hospital_dp_noise": "Hospital-level DP: noise multiplier on the average of clipped hospital updates (0: off).",
    "hospital_dp_clip": "Hospital-level DP: L2 bound on each hospital's model update.",
    "secagg": "Secure aggregation (SecAgg+): the server sees only the sum of the hospitals' weights.",
    "out": "Run directory to create (default: runs/<timestamp>).",
}
DEPLOYMENT_ONLY = ("sites", "test_dir")  # run-config keys of a real deployment, not options here
OPTION_NAMES = {"dataset": ("--dataset", "--data-format")}  # one option, two spellings

# The options of every command that reads stays (run_options gives the training commands all of them).
DataFormat = Annotated[str, typer.Option(*OPTION_NAMES["dataset"], help=OPTION_HELP["dataset"])]
DataDir = Annotated[str, typer.Option(help=OPTION_HELP["data_dir"])]
Labels = Annotated[str, typer.Option(help=OPTION_HELP["labels"])]
MappingFile = Annotated[str, typer.Option("--mapping", help=OPTION_HELP["mapping"])]
Strict = Annotated[bool, typer.Option(help=OPTION_HELP["strict"])]


def report_skipped(skipped: tuple[SkippedRows, ...]) -> None:
    """The one line a command prints about rows its reader skipped."""
    if skipped:
        console.print(f"[yellow]{skipped_summary(skipped)}[/] (--strict refuses them)", highlight=False)


class UserError(Exception):
    """A mistake in the command's input: reported in one line, exit code 2."""


class RunFailed(Exception):
    """A run that started but could not finish (e.g. too few hospitals replied): exit code 1."""


def run_options(command=None, *, dp_per_cell: bool = False):
    """Give a command every RunConfig field as an option; it receives `config`.

    `dp_per_cell`: the command sets --dp and --target-epsilon itself for each run it makes (the
    sweep), so it does not offer them, and the DP-SGD options it is given are checked as
    acting (the configuration it receives has DP-SGD on at a stand-in epsilon of 1)."""
    if command is None:
        return functools.partial(run_options, dp_per_cell=dp_per_cell)
    per_cell = ("dp", "target_epsilon", "noise_multiplier") if dp_per_cell else ()
    names = [f.name for f in fields(RunConfig) if f.name not in DEPLOYMENT_ONLY + per_cell]
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
    own = [p for p in inspect.signature(command).parameters.values() if p.name != "config"]
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
    return str(value)


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


def rounds_table(title: str, rows: list[dict]) -> Table:
    table = Table(title=title)
    columns = ["round", "train_loss", "val_auroc", "test_auroc", "test_auprc", "test_brier", "test_event1"]
    if any(row.get("hospitals_failed") for row in rows):
        columns.insert(1, "hospitals_failed")
    for c in columns:
        table.add_column(_round_header(c), justify="right", no_wrap=True)
    for row in rows:
        table.add_row(*(fmt(row[c]) for c in columns))
    return table


def results_table(results: dict[str, dict]) -> Table:
    table = Table(title="Held-out test split")
    keys = ["test_auroc", "test_auprc", "test_brier", "test_event1"]
    table.add_column("setting", overflow="fold")
    for k in keys:
        table.add_column(METRIC_NAMES[k.removeprefix("test_")], justify="right", no_wrap=True)
    for name, r in results.items():
        table.add_row(name, *(fmt(r[k]) for k in keys))
    return table
