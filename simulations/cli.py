"""The `fedicu` command line."""

from __future__ import annotations

import functools
import inspect
import json
import math
import sys
from dataclasses import fields
from pathlib import Path
from typing import Annotated

import click
import typer
from flwr.common.config import parse_config_args
from rich.console import Console, Group
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from server.federated_run import RunState
from server.run_dir import CHECKPOINT, CONFIG_FILE, RunDirectory, load_trained
from server.server_app import default_run_dir
from shared.config import RunConfig
from shared.datasets import load_cohort
from shared.errors import DataError
from shared.federation import Federation, prepare
from shared.metrics import binary_metrics
from shared.preprocessing import clean, to_features, to_sequences
from shared.training import predict

app = typer.Typer(
    help="Federated ICU mortality prediction: simulate hospitals, compare baselines, evaluate models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)  # progress and tables; stdout stays clean for --json

OPTION_HELP = {
    "dataset": "Cohort: 'synthetic' (built in) or 'physionet2012'.",
    "data_dir": "Folder with PhysioNet 2012 set-X/ or set-X.tar.gz and Outcomes-X.txt.",
    "sets": "PhysioNet 2012 sets to load, comma-separated (a, b, c).",
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
    "target_epsilon": "Each hospital's epsilon for the whole run; noise is calibrated up front.",
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


class UserError(Exception):
    """A mistake in the command's input: reported in one line, exit code 2."""


class RunFailed(Exception):
    """A run that started but could not finish (e.g. too few hospitals replied): exit code 1."""


def run_options(command):
    """Give a command every RunConfig field as an option; it receives `config`."""
    names = [f.name for f in fields(RunConfig) if f.name not in DEPLOYMENT_ONLY]
    defaults = RunConfig()
    params = [
        inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            annotation=Annotated[type(getattr(defaults, name)), typer.Option(help=OPTION_HELP[name])],
            default=getattr(defaults, name),
        )
        for name in names
    ]
    own = [p for p in inspect.signature(command).parameters.values() if p.name != "config"]

    @functools.wraps(command)
    def wrapper(**kwargs):
        try:
            config = RunConfig(**{n: kwargs.pop(n) for n in names})
        except ValueError as error:
            raise UserError(str(error)) from error
        return command(config=config, **kwargs)

    wrapper.__signature__ = inspect.Signature(own + params)
    return wrapper


def _prepare(config: RunConfig) -> Federation:
    try:
        with console.status("Preparing data: loading, cleaning, splitting into hospitals"):
            federation = prepare(config)
    except ValueError as error:  # configuration that does not fit the data
        raise UserError(str(error)) from error
    if config.min_hospitals > len(federation.hospitals):
        raise UserError(f"--min-hospitals {config.min_hospitals} exceeds the {len(federation.hospitals)} hospitals")
    smallest = min(federation.hospitals, key=lambda h: len(h.train))
    if config.dp and config.delta >= 1 / len(smallest.train):
        raise UserError(
            f"--delta {config.delta:g} must be below 1/n for every hospital; {smallest.name} "
            f"has n = {len(smallest.train)} training stays"
        )
    sizes = ", ".join(f"{h.name} {len(h.train) + len(h.val)}" for h in federation.hospitals)
    console.print(
        f"[bold]{len(federation.hospitals)} hospitals[/] ({sizes} stays); "
        f"{len(federation.test)} stays held out for testing"
    )
    return federation


def _run_dir(config: RunConfig, suffix: str = "") -> RunDirectory:
    path = Path(config.out) if config.out else Path(f"{default_run_dir()}{suffix}")
    try:
        return RunDirectory(path).create()
    except FileExistsError as error:
        raise UserError(str(error)) from error


class RoundBar:
    """A progress bar over rounds that shows the latest AUROCs."""

    def __init__(self, label: str):
        self.label = label
        self.bar = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=console,
        )  # fmt: skip

    def begin(self, rounds: int, done: int = 0) -> None:
        self.task = self.bar.add_task(self.label, total=rounds, completed=done, status="")
        self.bar.start()

    def round_done(self, row: dict) -> None:
        status = f"val AUROC {row['val_auroc']:.3f}  test AUROC {row['test_auroc']:.3f}"
        if row.get("hospitals_failed"):
            status += f"  [yellow]{row['hospitals_failed']} hospital(s) failed[/]"
        self.bar.update(self.task, advance=1, status=status)

    def close(self) -> None:
        self.bar.stop()


def _fmt(value) -> str:
    if value is None:  # NaN in the run's JSON files: a metric that does not exist (e.g. train loss under DP)
        return "–"
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def rounds_table(title: str, rows: list[dict]) -> Table:
    table = Table(title=title)
    columns = ["round", "train_loss", "val_auroc", "test_auroc", "test_auprc", "test_brier", "test_event1"]
    if any(row.get("hospitals_failed") for row in rows):
        columns.insert(1, "hospitals_failed")
    for c in columns:
        table.add_column(c.replace("_", " "), justify="right")
    for row in rows:
        table.add_row(*(_fmt(row[c]) for c in columns))
    return table


METRIC_NAMES = {"auroc": "AUROC", "auprc": "AUPRC", "brier": "Brier", "event1": "Event-1"}


def results_table(results: dict[str, dict]) -> Table:
    table = Table(title="Held-out test split")
    keys = ["test_auroc", "test_auprc", "test_brier", "test_event1"]
    table.add_column("setting")
    for k in keys:
        table.add_column(METRIC_NAMES[k.removeprefix("test_")], justify="right")
    for name, r in results.items():
        table.add_row(name, *(_fmt(r[k]) for k in keys))
    return table


def _federated(
    config: RunConfig, federation: Federation, run_dir: RunDirectory, state: RunState | None = None
) -> dict:
    from simulations.simulate import simulate as run_simulation  # imports Ray lazily

    bar = RoundBar(f"Federated {config.strategy}")
    try:
        result = run_simulation(config, federation, run_dir, bar, state)
    except RuntimeError as error:  # the run directory's run.json says "failed" and why
        raise RunFailed(f"{error} (run directory: {run_dir.path}, marked failed)") from error
    finally:
        bar.close()
    console.print(rounds_table(f"Federated ({config.strategy})", run_dir.read_json("metrics.json")))
    return result


def _resume(path: Path) -> tuple[RunConfig, RunDirectory, RunState | None]:
    """The configuration and last checkpoint of an interrupted run."""
    run_dir = RunDirectory(path)
    if not (run_dir.path / CONFIG_FILE).is_file():
        raise UserError(f"--resume {path}: not a run directory (no {CONFIG_FILE})")
    if run_dir.status == "complete":
        raise UserError(f"--resume {path}: the run is already complete")
    config = RunConfig.from_flower(run_dir.read_json(CONFIG_FILE))
    checkpoint = run_dir.path / CHECKPOINT
    state = RunState.from_checkpoint(run_dir.load_model(CHECKPOINT)) if checkpoint.is_file() else None
    done = state.completed if state else 0
    console.print(f"Resuming {path} after round {done} of {config.rounds} (its own configuration applies)")
    return config, run_dir, state


@app.command()
@run_options
def simulate(
    config: RunConfig,
    resume: Annotated[
        Path | None, typer.Option(help="Continue an interrupted run directory from its last completed round.")
    ] = None,
) -> None:
    """Train the LSTM across simulated hospitals with Flower (the main job)."""
    state = None
    if resume is not None:
        config, run_dir, state = _resume(resume)
    federation = _prepare(config)
    if resume is None:
        run_dir = _run_dir(config)
    result = _federated(config, federation, run_dir, state)
    console.print(
        f"Best round {result['best_round']} (by pooled validation AUROC). "
        f"Run directory: [bold]{run_dir.path}[/]"
    )


@app.command()
@run_options
def centralized(config: RunConfig) -> None:
    """Baseline: all stays pooled in one place, same model and training budget."""
    from simulations.baselines import centralized as run_centralized

    federation = _prepare(config)
    run_dir = _run_dir(config, "-centralized")
    bar = RoundBar("Centralized")
    bar.begin(config.rounds)
    try:
        run_centralized(config, federation, run_dir, bar.round_done)
    finally:
        bar.close()
    console.print(rounds_table("Centralized", run_dir.read_json("metrics.json")))
    console.print(f"Run directory: [bold]{run_dir.path}[/]")


def _local(config: RunConfig, federation: Federation, run_dir: RunDirectory) -> dict:
    from simulations.baselines import local as run_local

    bar = RoundBar("Local-only hospitals")
    bar.begin(len(federation.hospitals))
    try:
        result = run_local(
            config, federation, run_dir,
            lambda r: bar.bar.update(bar.task, advance=1, status=f"{r['hospital']} test AUROC {r['test_auroc']:.3f}"),
        )  # fmt: skip
    finally:
        bar.close()
    table = results_table({r["hospital"]: r for r in result["hospitals"]} | {"mean of hospitals": result["mean"]})
    table.title = "Local-only training, held-out test split"
    console.print(table)
    return result


@app.command("local")
@run_options
def local_(config: RunConfig) -> None:
    """Baseline: each hospital trains alone; all are scored on the same test split."""
    federation = _prepare(config)
    run_dir = _run_dir(config, "-local")
    _local(config, federation, run_dir)
    console.print(f"Run directory: [bold]{run_dir.path}[/]")


@app.command()
@run_options
def compare(config: RunConfig) -> None:
    """Federated vs centralized vs local-only, on one test split, in one table."""
    from simulations.baselines import centralized as run_centralized

    federation = _prepare(config)
    root = _run_dir(config, "-compare").path
    federated = _federated(config, federation, RunDirectory(root / "federated").create())
    bar = RoundBar("Centralized")
    bar.begin(config.rounds)
    try:
        central = run_centralized(config, federation, RunDirectory(root / "centralized").create(), bar.round_done)
    finally:
        bar.close()
    local = _local(config, federation, RunDirectory(root / "local").create())
    best_federated = RunDirectory(root / "federated").read_json("metrics.json")[federated["best_round"] - 1]
    results = {
        f"federated ({config.strategy}, best round)": best_federated,
        "centralized (best round)": central,
        "local only (mean of hospitals)": local["mean"],
    }
    RunDirectory(root).write_json("comparison.json", results)
    console.print(results_table(results))
    console.print(f"Run directories under [bold]{root}[/]")


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A completed run directory.")],
    dataset: Annotated[str, typer.Option(help=OPTION_HELP["dataset"])] = "physionet2012",
    data_dir: Annotated[str, typer.Option(help=OPTION_HELP["data_dir"])] = "",
    sets: Annotated[str, typer.Option(help=OPTION_HELP["sets"])] = "c",
    synthetic_stays: Annotated[int, typer.Option(help=OPTION_HELP["synthetic_stays"])] = 2400,
    hospitals: Annotated[int, typer.Option(help=OPTION_HELP["hospitals"])] = 4,
    seed: Annotated[int, typer.Option(help=OPTION_HELP["seed"])] = 0,
    model: Annotated[str, typer.Option(help="Which saved model: best or final.")] = "best",
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON on stdout.")] = False,
) -> None:
    """Score a saved model on any cohort (every stay in it)."""
    try:
        trained, norm, threshold = load_trained(run_dir, model)
        config = RunConfig(
            dataset=dataset, data_dir=data_dir, sets=sets, synthetic_stays=synthetic_stays,
            hospitals=hospitals, seed=seed,
        )  # fmt: skip
    except (FileNotFoundError, ValueError) as error:
        raise UserError(str(error)) from error
    with console.status("Loading and scoring the cohort"):
        cohort, _ = clean(load_cohort(config))
        seqs = to_sequences(cohort)
        scores = predict(trained, to_features(seqs, norm))
    metrics = binary_metrics(seqs.labels, scores, threshold)
    metrics = {"n": len(seqs), "threshold": threshold, **{k: v for k, v in metrics.items() if k != "n"}}
    if as_json:
        print(json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}))
        return
    table = Table(title=f"{run_dir} ({model} model) on {dataset} {sets if dataset == 'physionet2012' else ''}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        table.add_row(k, _fmt(v))
    console.print(table)


@app.command()
def audit(
    run_dir: Annotated[Path, typer.Argument(help="A completed run directory.")],
    model: Annotated[str, typer.Option(help="Which saved model: final or best.")] = "final",
    shadow_models: Annotated[int, typer.Option(help="Reference models for the calibrated and LiRA attacks.")] = 8,
    max_targets: Annotated[int, typer.Option(help="At most this many members (and as many non-members).")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed for target sampling and shadow models.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
) -> None:
    """Membership-inference audit of a trained model: can an attacker tell training stays from others?"""
    from simulations.audit import audit as run_audit

    bar = Progress(TextColumn("[bold]Shadow models"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console)
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
    table = Table(title=f"Membership inference on {run_dir} ({model} model)")
    for column in ("attack", "AUROC", "TPR @ 1% FPR", "advantage"):
        table.add_column(column, justify="left" if column == "attack" else "right")
    for key, name in (("loss_threshold", "loss threshold"), ("calibrated_loss", "calibrated loss"),
                      ("lira", "LiRA (online)"), ("lira_offline", "LiRA (offline)")):  # fmt: skip
        result = report.get(key) or {}
        table.add_row(name, *(_fmt(result.get(k, float("nan"))) for k in ("auroc", "tpr_at_1pct_fpr", "advantage")))
    console.print(table)
    if report.get("dp"):
        dp = report["dp"]
        console.print(
            f"DP guarantee epsilon={dp['epsilon']:.2f}, delta={dp['delta']:g}: any attack has "
            f"TPR@1%FPR <= {dp['tpr_at_1pct_fpr_bound']:.3f} and AUROC <= {dp['auroc_bound']:.3f}"
        )
    console.print(f"Wrote {run_dir / 'audit.json'} and {run_dir / 'audit_roc.png'}")


@app.command()
@run_options
def sweep(
    config: RunConfig,
    epsilons: Annotated[
        str, typer.Option(help="Target epsilons per hospital for federated DP-SGD, comma-separated; inf = no DP.")
    ] = "0.5,1,2,4,8,inf",
    seeds: Annotated[str, typer.Option(help="Seeds, comma-separated: each changes splits, initialization and noise.")] = "0,1,2",
    baselines: Annotated[bool, typer.Option(help="Also run the non-private centralized and local-only baselines.")] = True,
    shadow_models: Annotated[int, typer.Option(help="Shadow models per membership-inference audit (0: loss attack only).")] = 4,
    max_targets: Annotated[int, typer.Option(help="At most this many members (and non-members) per audit.")] = 1000,
) -> None:
    """The privacy-accuracy study: federated DP-SGD over epsilons x seeds, baselines, audits; resumable."""
    from rich.progress import TimeRemainingColumn

    from simulations import sweep as study

    if config.dp or config.target_epsilon or config.noise_multiplier:
        raise UserError("sweep sets --dp and --target-epsilon for each cell; give the grid with --epsilons")
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
    table = Table(title=f"Privacy-accuracy sweep ({config.dataset}, mean ± sd over seeds)")
    for column in study.TABLE_HEADER:
        table.add_column(column, justify="left" if column == "setting" else "right")
    for row in study.table_rows(study.summarize(rows)):
        table.add_row(*row)
    console.print(table)
    console.print(f"Wrote {root / 'sweep.csv'}, {root / 'sweep.md'} and {root / 'sweep.png'}")


def _parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"--seeds must be comma-separated integers, not {text!r}") from None
    if len(set(seeds)) != len(seeds):
        raise ValueError("--seeds lists a seed twice")
    return seeds


@app.command()
def bench(
    data_dir: Annotated[str, typer.Option(help="PhysioNet 2012 folder for the loader and epoch parts (else synthetic).")] = "",
    quick: Annotated[bool, typer.Option(help="A small version for CI-sized checks.")] = False,
    repeats: Annotated[int, typer.Option(help="Repeats of each timing (the median is reported).")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="End with the whole report as one JSON object on stdout.")] = False,
) -> None:
    """Measure loading, DP cost, framework overhead and scale on this machine (see BENCHMARKS.md)."""
    from simulations import bench as benchmark

    if repeats < 1:
        raise UserError(f"--repeats must be at least 1, not {repeats}")
    if data_dir and not Path(data_dir).is_dir():
        raise UserError(f"--data-dir {data_dir}: no such folder")
    table = Table(title=f"fedicu bench{' --quick' if quick else ''} (median of {repeats} where repeated)")
    table.add_column("part")
    table.add_column("measure")
    table.add_column("value", justify="right")

    with console.status("Benchmarking: loader") as status:

        def on_step(part: str, result: dict) -> None:
            for key, value in result.items():
                table.add_row(part, key, _fmt(value))
            status.update(f"Benchmarking: {part} done, next part running")

        report = benchmark.run(data_dir, quick, repeats, on_step)
    console.print(table)
    if as_json:
        print(json.dumps(report, default=str))


@app.command()
def certs(
    out: Annotated[Path, typer.Option(help="Folder to create for the certificates and keys (never overwritten).")],
    host: Annotated[list[str], typer.Option(help="The SuperLink's host name or IP address, as sites dial it (repeatable).")],
    site: Annotated[list[str], typer.Option(help="A site name that gets a key pair for node authentication (repeatable).")],
) -> None:
    """Create a CA, the SuperLink's TLS certificate and one authentication key pair per site."""
    from server.certs import create

    try:
        written = create(out, host, site)
    except (ValueError, FileExistsError) as error:
        raise UserError(str(error)) from error
    console.print(f"Wrote {len(written)} files to {out}: give each site ca.crt and its own sites/<site>.key; keep ca.key private")


@app.command("deploy-demo")
def deploy_demo(
    out: Annotated[
        Path | None,
        typer.Option(help="Folder to create for certificates, site data, logs and the run directory (default: runs/deploy-demo-<timestamp>)."),
    ] = None,
    sites: Annotated[int, typer.Option(help="Hospitals: one SuperNode each, with its own synthetic data.")] = 3,
    rounds: Annotated[int, typer.Option(help=OPTION_HELP["rounds"])] = 2,
    secagg: Annotated[bool, typer.Option(help=OPTION_HELP["secagg"])] = False,
    insecure: Annotated[
        bool, typer.Option(help="No TLS and no node authentication: local experiments only, never with patient data.")
    ] = False,
    run_config: Annotated[
        str, typer.Option(help="More run-config for `flwr run`, e.g. 'dp=true target-epsilon=4.0'.")
    ] = "",
    timeout: Annotated[float, typer.Option(help="Seconds the run may take before the rehearsal fails.")] = 1800.0,
) -> None:
    """Rehearse a deployment here: a SuperLink and one SuperNode per site as processes, TLS, node keys, `flwr run`."""
    from simulations.deploy_demo import DeploymentError, rehearse

    out = (out or default_run_dir().with_name(f"deploy-demo-{default_run_dir().name}")).absolute()
    if out.exists():
        raise UserError(f"--out {out}: exists; give a folder to create")
    if not (2 if secagg else 1) <= sites <= 16:
        raise UserError(f"--sites must lie in {2 if secagg else 1}..16{' with --secagg' if secagg else ''}, not {sites}")
    if rounds < 1:
        raise UserError("--rounds must be at least 1")
    try:  # refused here rather than by the ServerApp once every process is up
        RunConfig.from_flower({"sites": sites, "rounds": rounds, "secagg": secagg, **parse_config_args([run_config])})
    except (ValueError, click.ClickException) as error:
        message = error.message if isinstance(error, click.ClickException) else str(error)
        raise UserError(f"--run-config {run_config!r}: {message}") from None
    if insecure:
        console.print(
            "[bold red]WARNING: --insecure: traffic is unencrypted and any process that reaches the port can join as a "
            "hospital. Local experiments only, never with patient data.[/]"
        )
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console)
    with progress:
        task = progress.add_task("Deployment rounds", total=rounds)
        try:
            run_dir = rehearse(
                out, sites, rounds, secagg, insecure, run_config, timeout,
                on_step=lambda text: progress.console.print(f"[green]✓[/] {escape(text)}", highlight=False),
                on_round=lambda done: progress.update(task, completed=done),
            )  # fmt: skip
        except DeploymentError as error:
            raise RunFailed(f"{error}\nLogs: {out / 'logs'}") from error
    rows = json.loads((run_dir / "metrics.json").read_text())
    title = f"Deployment rehearsal ({'SecAgg+' if secagg else 'plain aggregation'}{', INSECURE' if insecure else ''})"
    console.print(rounds_table(title, rows))
    console.print(f"Run directory: {run_dir}", highlight=False)


@app.command("export-synthetic")
def export_synthetic(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write set-<SET>/ and Outcomes-<SET>.txt into.")],
    synthetic_stays: Annotated[int, typer.Option(help=OPTION_HELP["synthetic_stays"])] = 2400,
    hospitals: Annotated[int, typer.Option(help=OPTION_HELP["hospitals"])] = 4,
    seed: Annotated[int, typer.Option(help=OPTION_HELP["seed"])] = 0,
    set_name: Annotated[str, typer.Option("--set", help="Set name to write: a, b or c.")] = "a",
) -> None:
    """Write the synthetic cohort as PhysioNet 2012 files (to rehearse the real loader or a site)."""
    from shared.datasets import physionet2012, synthetic

    if set_name not in physionet2012.VALID_SETS:
        raise UserError(f"--set must be one of {', '.join(physionet2012.VALID_SETS)}, not {set_name!r}")
    try:
        cohort = synthetic.generate(hospitals=hospitals, stays=synthetic_stays, seed=seed)
        written = physionet2012.write(cohort, out_dir, set_name)
    except (ValueError, FileExistsError) as error:
        raise UserError(str(error)) from error
    console.print(f"Wrote {len(cohort)} stays to {written} and {out_dir / f'Outcomes-{set_name}.txt'}")


site_app = typer.Typer(help="Checks a hospital runs on its own data before joining a federation.", no_args_is_help=True)
app.add_typer(site_app, name="site")
SEVERITY_STYLE = {"ok": "green", "warning": "yellow", "error": "bold red"}


@site_app.command("check")
def check_site(
    data_dir: Annotated[Path, typer.Option(help=OPTION_HELP["data_dir"])],
    val_fraction: Annotated[float, typer.Option(help=OPTION_HELP["val_fraction"])] = RunConfig.val_fraction,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
) -> None:
    """Validate a site's PhysioNet 2012 folder: exit 0 if it can be used (warnings allowed), 2 if not."""
    from shared.site_check import check

    if not 0 < val_fraction < 1:
        raise UserError(f"--val-fraction must lie in (0, 1), not {val_fraction:g}")
    with console.status(f"Checking {escape(str(data_dir))}"):
        report = check(data_dir, val_fraction)
    if as_json:
        print(json.dumps(report.to_dict()))
    else:
        console.print(site_tables(report))
    if not report.usable:
        where = "the JSON report" if as_json else "the table above"
        raise UserError(f"{report.first_error} ({report.error_count} problem(s) in all; see {where})")
    warnings = sum(f.severity == "warning" for f in report.findings)
    console.print(f"[green]{escape(str(data_dir))} can be used[/] ({warnings} warning(s))", highlight=False)


def site_tables(report) -> Group:
    """The per-set counts and the findings of a site check."""
    counts = Table(title=f"Sets in {escape(report.data_dir)}", title_justify="left")
    columns = {"record files": "record_files", "unusable": "unusable_records", "Outcomes rows": "outcome_rows",
               "usable stays": "stays", "deaths": "deaths", "measurements": "measurements",
               "descriptors only": "descriptors_only"}  # fmt: skip
    counts.add_column("set")
    for name in columns:
        counts.add_column(name, justify="right")
    for s in report.sets:
        counts.add_row(s.name, *("–" if getattr(s, k) is None else f"{getattr(s, k):,}" for k in columns.values()))
    findings = Table(title="Findings", title_justify="left", show_lines=True)
    for column in ("severity", "check", "finding"):
        findings.add_column(column)
    for f in report.findings:
        shown = [escape(f.message)] + [f"  {escape(str(p))}" for p in f.problems[:3]]
        if len(f.problems) > 3:
            shown.append(f"  ... and {len(f.problems) - 3} more")
        findings.add_row(f"[{SEVERITY_STYLE[f.severity]}]{f.severity}[/]", f.check, "\n".join(shown))
    return Group(counts, findings) if report.sets else Group(findings)


def main() -> None:
    """Entry point: user mistakes become one clear line and exit code 2."""
    try:
        app(standalone_mode=False)
    except (UserError, DataError) as error:
        console.print(f"[bold red]error:[/] {escape(str(error))}", soft_wrap=True, highlight=False)
        sys.exit(2)
    except RunFailed as error:
        console.print(f"[bold red]run failed:[/] {escape(str(error))}", soft_wrap=True, highlight=False)
        sys.exit(1)
    except click.ClickException as error:  # unknown option, bad value: click's own message
        error.show()
        sys.exit(error.exit_code)
    except typer.Exit as exit_:
        sys.exit(exit_.exit_code)
    except typer.Abort:
        console.print("aborted")
        sys.exit(130)
