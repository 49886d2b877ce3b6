"""Experiment tracking: `--track mlflow` or `--track tensorboard` on the training commands.

A tracked run holds the run's configuration, each round's pooled row (the columns of
`metrics.csv`), each hospital's row of that round (`hospital_metrics.csv`, ε per hospital under
--dp) as `<hospital>/<column>`, and at the end the run directory's files and how the run ended.

Tracking follows the progress display the commands already have: the server and the baselines
call `round_done(row)` after each round's files are written, so neither knows about tracking.
How a run ended is read from its run directory (`run.json`), which the run keeps up to date
whether it completed, failed or was interrupted.

Both backends are an optional extra (`pip install 'fedicu[tracking]'`), imported only when asked for.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Protocol
from urllib.parse import urlparse

import typer

from fedicu.shared.config import RunConfig
from fedicu.shared.run_dir import (
    HOSPITAL_JSON,
    METRICS_JSON,
    RUN_FILE,
    SITES_DIR,
    STAYS_FILE,
    TEST_PREDICTIONS,
    RunDirectory,
)

INSTALL = "pip install 'fedicu[tracking]'"
EXPERIMENT = "fedicu"  # the MLflow experiment every run goes to
# Files with one line per stay (ids, labels, risks) stay in the run directory: a tracking server
# may be shared or remote, and nothing about a single patient belongs there. Nor does what the
# simulated hospitals keep on their own disks (`sites/`: recalibration maps fitted on their stays).
STAY_LEVEL = frozenset({STAYS_FILE, TEST_PREDICTIONS})
TENSORBOARD_DIR = "tensorboard"  # inside the run directory, unless --tracking-uri names a folder


class Backend(StrEnum):
    MLFLOW = "mlflow"
    TENSORBOARD = "tensorboard"


Track = Annotated[
    Backend | None,
    typer.Option(
        help="Also log the configuration, per-round and per-hospital metrics and the run's files to MLflow or "
        "TensorBoard (needs pip install 'fedicu\\[tracking]')."  # \[: not markup in --help
    ),
]
TrackingUri = Annotated[
    str,
    typer.Option(
        help="Where --track logs. MLflow: a tracking URI (default: sqlite:///mlflow.db here, files in ./mlruns; "
        "file:DIR is MLflow's plain-folder store). TensorBoard: a folder that gets one subfolder per run "
        "(default: the run directory's tensorboard/)."
    ),
]


class Display(Protocol):
    """What the commands show while a run trains (`RoundBar`)."""

    def begin(self, rounds: int, done: int = 0) -> None: ...
    def round_done(self, row: dict) -> None: ...
    def hospital_done(self, row: dict) -> None: ...
    def close(self) -> None: ...


class _Run(Protocol):
    """One tracked run in a backend."""

    def log(self, step: int, metrics: dict[str, float]) -> None: ...
    def finish(self, run_dir: RunDirectory, outcome: str) -> None: ...


@dataclass(frozen=True)
class Tracking:
    """A command's --track and --tracking-uri, checked before anything runs; `follow` tracks one run."""

    store: _MLflowStore | _TensorBoardFolder | None = None  # None: not tracking
    prefix: str = ""  # of tracked runs' names

    @staticmethod
    def connect(backend: Backend | None, uri: str) -> Tracking:
        """Raises ValueError naming the option when tracking cannot work."""
        if backend is None:
            if uri:
                raise ValueError("--tracking-uri has no effect without --track")
            return Tracking()
        return Tracking(_MLflowStore(uri) if backend is Backend.MLFLOW else _TensorBoardFolder(uri))

    def within(self, name: str) -> Tracking:
        """Tracked runs named `name/<run directory>`: the settings of one comparison."""
        return replace(self, prefix=f"{self.prefix}{name}/")

    def follow(self, display: Display, config: RunConfig, run_dir: RunDirectory, setting: str) -> Display:
        """`display`, logging what it is shown to a new tracked run named after the run directory
        (`display` itself when not tracking). `setting`: federated, centralized or local."""
        if self.store is None:
            return display
        run = self.store.start(config, run_dir, setting, self.prefix + run_dir.path.name)
        return _Tracked(display, run, run_dir, per_hospital_epsilon=config.dp)


NO_TRACKING = Tracking()


class _Tracked:
    """A display that also logs each round, and at its close the run's files and outcome."""

    def __init__(self, display: Display, run: _Run, run_dir: RunDirectory, per_hospital_epsilon: bool):
        self.display, self.run, self.run_dir = display, run, run_dir
        self.per_hospital_epsilon = per_hospital_epsilon

    def begin(self, rounds: int, done: int = 0) -> None:
        self.display.begin(rounds, done)
        if done:  # a resumed run: its tracked run holds the rounds before too
            for row in self.run_dir.read_json(METRICS_JSON)[:done]:
                self._log_round(row)

    def round_done(self, row: dict) -> None:
        self.display.round_done(row)
        self._log_round(row)

    def hospital_done(self, row: dict) -> None:
        """A local-only hospital's result: its best round's row."""
        self.display.hospital_done(row)
        self.run.log(row["round"], _measurements(row, prefix=f"{_name(row['hospital'])}/"))

    def close(self) -> None:
        try:
            self.display.close()
        finally:
            self.run.finish(self.run_dir, _outcome(self.run_dir))

    def _log_round(self, row: dict) -> None:
        metrics = _measurements(row)
        for hospital_row in self._hospital_rows(row["round"]):
            if not self.per_hospital_epsilon:  # without DP-SGD no hospital has an ε (the row says 0)
                hospital_row.pop("epsilon", None)
            metrics |= _measurements(hospital_row, prefix=f"{_name(hospital_row['hospital'])}/")
        self.run.log(row["round"], metrics)

    def _hospital_rows(self, rnd: int) -> list[dict]:
        """The round's rows of `hospital_metrics.json`, written before the display is told of the round."""
        if not (self.run_dir.path / HOSPITAL_JSON).is_file():  # the centralized baseline has none
            return []
        return [r for r in self.run_dir.read_json(HOSPITAL_JSON) if r["round"] == rnd]


def _measurements(row: dict, prefix: str = "") -> dict[str, float]:
    """A row's numbers by column. The round is the step, not a metric; NaN or null mark a metric
    that does not exist (train loss under DP-SGD, a failed hospital's), so it is left out."""
    return {
        f"{prefix}{key}": float(value)
        for key, value in row.items()
        if key != "round" and isinstance(value, int | float) and math.isfinite(value)
    }


def _name(hospital: str) -> str:
    """A hospital's name as a metric prefix: MLflow takes letters, digits and `_-. :` (and `/`,
    which here would split the name) only."""
    return re.sub(r"[^\w\-. :]", "_", hospital)


def _outcome(run_dir: RunDirectory) -> str:
    """complete, failed or interrupted, as `run.json` records it when the display closes; a run
    still marked running there was stopped before it could say so."""
    record = run_dir.read_json(RUN_FILE) if (run_dir.path / RUN_FILE).is_file() else {}
    status = record.get("status")
    return status if status in ("complete", "failed") else "interrupted"


def _require(backend: Backend, module: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError as error:
        raise ValueError(f"--track {backend} needs the tracking extra: {INSTALL} ({error})") from error


# ---- MLflow ---------------------------------------------------------------------------------------

MLFLOW_STATUS = {"complete": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}


def default_mlflow_uri() -> str:
    """MLflow 3's own local default, without its guess: MLflow logs to ./mlruns as a plain folder
    if one with runs exists and to sqlite:///mlflow.db otherwise. fedicu always takes the database
    (MLflow refuses a plain-folder store unless MLFLOW_ALLOW_FILE_STORE is set); the run's files
    go to ./mlruns either way."""
    return f"sqlite:///{Path('mlflow.db').resolve()}"


class _MLflowStore:
    def __init__(self, uri: str):
        # Telemetry stays off unless the user turned it on: fedicu sends nothing anywhere unasked.
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        if uri and urlparse(uri).scheme in ("", "file"):  # naming a plain-folder store is the opt-in MLflow asks for
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        _require(Backend.MLFLOW, "mlflow")
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # its database set-up notes, under the progress bar
        logging.getLogger("alembic").setLevel(logging.WARNING)
        self.uri = uri or default_mlflow_uri()
        try:
            self.client = MlflowClient(self.uri)
            experiment = self.client.get_experiment_by_name(EXPERIMENT)
            self.experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(EXPERIMENT)
        except MlflowException as error:
            raise ValueError(f"--tracking-uri {self.uri}: {error.message}") from error

    def start(self, config: RunConfig, run_dir: RunDirectory, setting: str, name: str) -> _MLflowRun:
        from mlflow.entities import Param

        tags = {"fedicu.setting": setting, "fedicu.run_dir": str(run_dir.path.resolve())}
        run_id = self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id
        self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in config.to_flower().items()])
        return _MLflowRun(self.client, run_id)


class _MLflowRun:
    def __init__(self, client: Any, run_id: str):
        self.client, self.run_id = client, run_id

    def log(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def finish(self, run_dir: RunDirectory, outcome: str) -> None:
        for file in sorted(run_dir.path.rglob("*")):
            if file.is_file() and file.name not in STAY_LEVEL and SITES_DIR not in file.relative_to(run_dir.path).parts:
                where = file.parent.relative_to(run_dir.path).as_posix()
                self.client.log_artifact(self.run_id, str(file), None if where == "." else where)
        self.client.set_terminated(self.run_id, MLFLOW_STATUS[outcome])


# ---- TensorBoard ----------------------------------------------------------------------------------


class _TensorBoardFolder:
    def __init__(self, uri: str):
        _require(Backend.TENSORBOARD, "torch.utils.tensorboard")
        self.folder = Path(uri) if uri else None

    def start(self, config: RunConfig, run_dir: RunDirectory, setting: str, name: str) -> _TensorBoardRun:
        from torch.utils.tensorboard import SummaryWriter

        log_dir = self.folder / name if self.folder else run_dir.path / TENSORBOARD_DIR
        writer = SummaryWriter(log_dir=str(log_dir))
        writer.add_text("setting", setting)
        writer.add_text("config", f"```json\n{json.dumps(config.to_flower(), indent=2)}\n```")
        return _TensorBoardRun(writer)


class _TensorBoardRun:
    """TensorBoard keeps no files: the Text tab gets the run directory's listing, each file with its path."""

    def __init__(self, writer: Any):
        self.writer = writer

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()  # a TensorBoard watching the folder shows the round now, not minutes later

    def finish(self, run_dir: RunDirectory, outcome: str) -> None:
        files = sorted(p.relative_to(run_dir.path) for p in run_dir.path.rglob("*") if p.is_file())
        listing = "\n".join(
            f"| {f} | {(run_dir.path / f).stat().st_size} | {(run_dir.path / f).resolve()} |"
            for f in files
            if f.parts[0] != TENSORBOARD_DIR
        )
        self.writer.add_text("files", f"| file | bytes | path |\n| --- | --- | --- |\n{listing}")
        self.writer.add_text("status", outcome)
        self.writer.close()
