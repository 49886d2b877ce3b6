"""Training commands: simulate (federated), the centralized and local-only baselines, compare."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from click.core import ParameterSource
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedicu.server.checkpoint import RunState, interrupted_run
from fedicu.server.server_app import default_run_dir
from fedicu.shared.config import RunConfig, with_recipe
from fedicu.shared.ensemble import COMBINATION, member_name, scorer, write_ensemble
from fedicu.shared.federation import Federation, prepare
from fedicu.shared.metrics import event1
from fedicu.shared.model import model_config_of
from fedicu.shared.privacy.accounting import BudgetExhausted, PrivacyLedger
from fedicu.shared.privacy.per_sample_lstm import PoissonSchedule
from fedicu.shared.run_dir import CONFIG_FILE, METRICS_JSON, RUN_FILE, RunDirectory
from fedicu.shared.stopping import StopRequested
from fedicu.shared.transfer import starting_weights
from fedicu.simulations.cli.common import (
    RayAddress,
    best_round_tables,
    leave_out_table,
    personalization_table,
    report_skipped,
    results_table,
    rounds_table,
    run_options,
    site_tests,
    split_tables,
    use_ray_cluster,
)
from fedicu.simulations.cli.terminal import RunFailed, RunInterrupted, UserError, console
from fedicu.simulations.tracking import NO_TRACKING, Backend, Track, Tracking, TrackingUri


def _prepare(config: RunConfig, resuming: bool = False) -> Federation:
    """The federation, with every check of the configuration against its data; a resumed run
    continues from its checkpoint, not from --init-from."""
    try:
        with console.status("Preparing data: loading, cleaning, splitting into hospitals"):
            federation = prepare(config)
    except ValueError as error:  # configuration that does not fit the data
        raise UserError(str(error)) from error
    if config.min_hospitals > len(federation.hospitals):
        raise UserError(f"--min-hospitals {config.min_hospitals} exceeds the {len(federation.hospitals)} hospitals")
    from fedicu.server.strategies import make_strategy  # Flower's strategies are slow to import

    try:
        make_strategy(config, len(federation.hospitals))  # a strategy the hospitals cannot run is refused now
    except ValueError as error:
        raise UserError(str(error)) from error
    if config.dp:
        _check_privacy_settings(config, federation)
    if config.init_from and not resuming:
        _check_transfer(config)
    report_skipped(federation.skipped)
    sizes = ", ".join(f"{h.name} {len(h.train) + len(h.val)}" for h in federation.hospitals)
    console.print(
        f"[bold]{len(federation.hospitals)} hospitals[/] ({sizes} stays); "
        f"{len(federation.test)} stays held out for testing"
    )
    return federation


def _check_transfer(config: RunConfig) -> None:
    """--init-from read and fitted to this run's model now, before anything is written."""
    try:
        _, not_taken = starting_weights(config, model_config_of(config))
    except (FileNotFoundError, ValueError) as error:
        raise UserError(str(error)) from error
    fresh = f"; not taken (they do not fit): {', '.join(not_taken)}" if not_taken else ""
    console.print(f"Starting from the best model of {config.init_from}{fresh}")


def _check_privacy_settings(config: RunConfig, federation: Federation) -> None:
    """DP-SGD settings that no hospital's data can honour, refused before anything is written."""
    smallest = min(federation.hospitals, key=lambda h: len(h.train))
    if config.delta >= 1 / len(smallest.train):
        raise UserError(
            f"--delta {config.delta:g} must be below 1/n for every hospital; {smallest.name} "
            f"has n = {len(smallest.train)} training stays"
        )
    if config.noise_multiplier > 0 and config.target_epsilon > 0:  # a fixed noise within a budget
        for hospital in federation.hospitals:  # the hospitals' own check, before their first round
            schedule = PoissonSchedule.of(len(hospital.train), config.batch_size)
            ledger = PrivacyLedger(config.accountant, config.delta)
            try:
                ledger.check_budget(
                    config.noise_multiplier, schedule.sample_rate, schedule.steps(config.local_epochs),
                    config.target_epsilon,
                )  # fmt: skip
            except BudgetExhausted as error:
                raise UserError(
                    f"--target-epsilon {config.target_epsilon:g} with --noise-multiplier {config.noise_multiplier:g}: "
                    f"{hospital.name} could not train a single round ({error}); raise either, or give "
                    "--target-epsilon alone to calibrate the noise to it"
                ) from None


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

    def hospital_done(self, row: dict) -> None:
        """A local-only hospital finished training."""
        self.bar.update(self.task, advance=1, status=f"{row['hospital']} test AUROC {row['test_auroc']:.3f}")

    def close(self) -> None:
        self.bar.stop()


def _tracking(track: Backend | None, tracking_uri: str) -> Tracking:
    """The command's tracking, checked before anything runs."""
    try:
        return Tracking.connect(track, tracking_uri)
    except ValueError as error:
        raise UserError(str(error)) from error


def _federated(
    config: RunConfig,
    federation: Federation,
    run_dir: RunDirectory,
    state: RunState | None = None,
    tracking: Tracking = NO_TRACKING,
) -> dict:
    """A federated run with its progress bar, then its tables."""
    result = _train_federated(config, federation, run_dir, f"Federated {config.strategy}", state, tracking)
    rows = run_dir.read_json(METRICS_JSON)
    console.print(rounds_table(f"Federated ({config.strategy})", rows, config.seed))
    console.print(best_round_tables(run_dir.path, config.seed))
    if config.personalization:
        console.print(personalization_table(run_dir.path))
    return result


def _train_federated(
    config: RunConfig,
    federation: Federation,
    run_dir: RunDirectory,
    label: str,
    state: RunState | None = None,
    tracking: Tracking = NO_TRACKING,
    resumable: bool = True,
) -> dict:
    from fedicu.simulations.simulate import simulate as run_simulation  # imports Ray lazily

    bar = tracking.follow(RoundBar(label), config, run_dir, "federated")
    try:
        return run_simulation(config, federation, run_dir, bar, state)
    except RuntimeError as error:  # the run directory's run.json says "failed" and why
        raise RunFailed(f"{error} (run directory: {run_dir.path}, marked failed)") from error
    except (KeyboardInterrupt, StopRequested) as error:
        raise _interrupted(run_dir, config.rounds, resumable) from error
    finally:
        bar.close()


def _interrupted(run_dir: RunDirectory, rounds: int, resumable: bool) -> RunInterrupted:
    """Record in run.json how to go on; the message says the same. A run that is part of a
    larger study (a leave-one-out run: its config does not say which hospital it left out) is
    not resumed on its own."""
    done = run_dir.read_json(RUN_FILE).get("rounds_completed", 0)
    if not resumable:
        return RunInterrupted(f"{run_dir.path} stopped after round {done} of {rounds}; rerun the whole command")
    command = f"fedicu simulate --resume {run_dir.path}"
    run_dir.set_status("interrupted", resume_command=command)
    return RunInterrupted(f"{run_dir.path} keeps round {done} of {rounds}; to go on: {command}")


def _resume(path: Path) -> tuple[RunConfig, RunDirectory, RunState | None]:
    """The configuration and last checkpoint of an interrupted run."""
    try:
        config, run_dir, state = interrupted_run(path)
    except ValueError as error:
        raise UserError(f"--resume {error}") from error
    if config.ensemble > 1:
        done = sum(RunDirectory(run_dir.path / member_name(k)).status == "complete" for k in range(config.ensemble))
        console.print(f"Resuming the ensemble {path}: {done} of {config.ensemble} members complete")
        return config, run_dir, state
    done = state.completed if state else 0
    console.print(f"Resuming {path} after round {done} of {config.rounds} (its own configuration applies)")
    return config, run_dir, state


@run_options(ensembles=True)
def simulate(
    ctx: typer.Context,
    config: RunConfig,
    resume: Annotated[
        Path | None,
        typer.Option(
            help="Run directory of an interrupted run to continue after its last completed round, with the "
            "configuration it was started with (the other options are ignored; default: start a new run)."
        ),
    ] = None,
    recipe: Annotated[
        str,
        typer.Option(
            help="A named configuration: best (the strongest federated model found on PhysioNet 2012, README: The "
            "best federated model). It sets the options it names, except those given on the command line."
        ),
    ] = "",
    track: Track = None,
    tracking_uri: TrackingUri = "",
    ray_address: RayAddress = "",
) -> None:
    """Train the LSTM across simulated hospitals with Flower (the main job)."""
    use_ray_cluster(ray_address)
    tracking = _tracking(track, tracking_uri)
    state = None
    if recipe:
        given = {p.name for p in ctx.command.params if ctx.get_parameter_source(p.name) is ParameterSource.COMMANDLINE}
        config = _with_recipe(config, recipe, given, resume)
    if resume is not None:
        config, run_dir, state = _resume(resume)
    if config.ensemble > 1:
        _ensemble(config, run_dir if resume is not None else _run_dir(config), tracking)
        return
    federation = _prepare(config, resuming=resume is not None)
    if resume is None:
        run_dir = _run_dir(config)
    result = _federated(config, federation, run_dir, state, tracking)
    console.print(
        f"Best round {result['best_round']} (by pooled validation AUROC). Run directory: [bold]{run_dir.path}[/]"
    )


def _with_recipe(config: RunConfig, recipe: str, given: set[str], resume: Path | None) -> RunConfig:
    """The recipe's options, except those given on the command line."""
    if resume is not None:
        raise UserError("--recipe has no effect with --resume: the run's own configuration applies")
    try:
        config, taken = with_recipe(config, recipe, given)
    except ValueError as error:
        raise UserError(str(error)) from error
    settings = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in taken.items()) or "nothing (every option given)"
    console.print(f"Recipe {recipe}: {settings}", highlight=False)
    return config


def _ensemble(config: RunConfig, root: RunDirectory, tracking: Tracking) -> None:
    """--ensemble K: members 0..K-1, federated runs on the same hospitals and split, each in a
    run directory inside `root`; then the ensemble of their best models, scored on the split's
    test stays. A resumed ensemble keeps its complete members and resumes the interrupted one."""
    federation = _prepare(config)
    root.write_json(CONFIG_FILE, config.to_flower())
    root.set_status("running", ensemble=True)
    tracking = tracking.within(root.path.name)
    for k in range(config.ensemble):
        member = replace(config, ensemble=1, member=k, out=str(root.path / member_name(k)))
        run_dir = RunDirectory(member.out)
        if run_dir.status == "complete":
            continue
        state = interrupted_run(run_dir.path)[2] if (run_dir.path / CONFIG_FILE).is_file() else None
        if state is None:  # nothing of it was kept: it starts again
            shutil.rmtree(run_dir.path, ignore_errors=True)
            run_dir.create()
        label = f"Member {k + 1} of {config.ensemble}"
        try:
            _train_federated(member, federation, run_dir, label, state, tracking, resumable=False)
        except RunInterrupted as stopped:
            command = f"fedicu simulate --resume {root.path}"
            root.set_status("interrupted", resume_command=command)
            raise RunInterrupted(f"{root.path}: {label.lower()} stopped; to go on: {command}") from stopped
        except RunFailed as failed:
            root.set_status("failed", error=f"{member_name(k)}: {failed}")
            raise
    members = scorer([root.path / member_name(k) for k in range(config.ensemble)])
    # The hospitals' validation histograms of the ensemble's risks, pooled as a round pools them.
    threshold = members.validation_threshold([h.val for h in federation.hospitals])
    ensemble = replace(members, chosen_threshold=threshold)
    labels, risks = federation.test.labels, ensemble.risks(federation.test)
    pooled, hospitals = site_tests(labels, risks, np.array(federation.test_hospitals()), config.seed)
    pooled["test_event1"] = event1(labels, risks, threshold)[0]
    write_ensemble(root, list(range(config.ensemble)), threshold, {"test": pooled, "hospitals": hospitals})
    console.print(*split_tables(f"Ensemble of {config.ensemble} ({COMBINATION})", pooled, hospitals, config.seed))
    console.print(
        f"Event-1 at the ensemble's threshold {ensemble.threshold:.3f}: {pooled['test_event1']:.3f}. "
        f"Ensemble run directory: [bold]{root.path}[/] (fedicu evaluate {root.path} scores it)",
        highlight=False,
    )


@run_options
def centralized(config: RunConfig, track: Track = None, tracking_uri: TrackingUri = "") -> None:
    """Baseline: all stays pooled in one place, same model and training budget."""
    tracking = _tracking(track, tracking_uri)
    federation = _prepare(config)
    run_dir = _run_dir(config, "-centralized")
    _centralized(config, federation, run_dir, tracking)
    console.print(rounds_table("Centralized", run_dir.read_json(METRICS_JSON), config.seed))
    console.print(f"Run directory: [bold]{run_dir.path}[/]")


def _centralized(config: RunConfig, federation: Federation, run_dir: RunDirectory, tracking: Tracking) -> dict:
    from fedicu.simulations.baselines import centralized as run_centralized

    bar = tracking.follow(RoundBar("Centralized"), config, run_dir, "centralized")
    bar.begin(config.rounds)
    try:
        return run_centralized(config, federation, run_dir, bar.round_done)
    finally:
        bar.close()


def _local(config: RunConfig, federation: Federation, run_dir: RunDirectory, tracking: Tracking) -> dict:
    from fedicu.simulations.baselines import local as run_local

    bar = tracking.follow(RoundBar("Local-only hospitals"), config, run_dir, "local")
    bar.begin(len(federation.hospitals))
    try:
        result = run_local(config, federation, run_dir, bar.hospital_done)
    finally:
        bar.close()
    table = results_table(
        {r["hospital"]: r for r in result["hospitals"]} | {"mean of hospitals": result["mean"]}, config.seed
    )
    table.title = "Local-only training, held-out test split"
    console.print(table)
    return result


@run_options
def local_(config: RunConfig, track: Track = None, tracking_uri: TrackingUri = "") -> None:
    """Baseline: each hospital trains alone (a run directory each); all are scored on the same test split."""
    tracking = _tracking(track, tracking_uri)
    federation = _prepare(config)
    run_dir = _run_dir(config, "-local")
    _local(config, federation, run_dir, tracking)
    console.print(f"Run directory: [bold]{run_dir.path}[/]")


@run_options
def validate(
    config: RunConfig,
    leave_out: Annotated[
        str,
        typer.Option(help="The hospital the federation trains without and is then scored at, or all (each in turn)."),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="End with the report as one JSON object on stdout.")] = False,
    ray_address: RayAddress = "",
) -> None:
    """Leave-one-hospital-out: train without a hospital, score the model at it, beside its score when included."""
    from fedicu.simulations import validate as study

    use_ray_cluster(ray_address)
    federation = _prepare(config)
    try:
        names = study.held_out_names(federation, leave_out)
    except ValueError as error:
        raise UserError(str(error)) from error
    root = _run_dir(config, "-validate").path

    def train(run_config: RunConfig, hospitals: Federation, run_dir: RunDirectory) -> None:
        _train_federated(run_config, hospitals, run_dir, run_dir.path.name, resumable=False)

    console.print(f"{len(names) + 1} federated runs: all hospitals, then without {', '.join(names)}")
    report = study.run(config, federation, leave_out, root, train)
    RunDirectory(root).write_json(VALIDATION_FILE, report)
    console.print(leave_out_table(report, config.seed))
    console.print(f"Run directories under [bold]{root}[/]")
    if as_json:  # as written: NaN (an AUROC a one-class split lacks) becomes null
        print(json.dumps(RunDirectory(root).read_json(VALIDATION_FILE)))


VALIDATION_FILE = "leave_one_out.json"
