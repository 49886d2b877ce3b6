"""--track mlflow and --track tensorboard: each run's configuration, per-round pooled and
per-hospital metrics, ε per hospital and files, read back with MLflow's client and TensorBoard's
event reader. The federated runs use the in-process engine: the same server and hospital code as
the Simulation Engine, without starting Ray."""

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fedicu.shared.run_dir import SITES_DIR
from fedicu.simulations import simulate as simulation_engine
from fedicu.simulations.cli import app, main
from fedicu.simulations.cli.terminal import RunFailed
from fedicu.simulations.inprocess import run_in_process
from fedicu.simulations.tracking import EXPERIMENT, STAY_LEVEL

# MLflow's own database code, on the SQLAlchemy that Flower pins.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated:DeprecationWarning")

TINY = ["--hospitals", "2", "--synthetic-stays", "400", "--rounds", "2", "--hidden-size", "16", "--seed", "1"]
DP = ["--dp", "--target-epsilon", "4"]


def in_process(config, federation, run_dir, progress, resume=None):
    """`fedicu simulate`'s engine, in this process."""
    return run_in_process(config, federation, run_dir, progress, resume=resume)


def fedicu(*args: str) -> None:
    """A training command, its exceptions raised as they are."""
    app(list(args), standalone_mode=False)


@pytest.fixture(scope="module")
def patched():
    """The in-process engine, and MLflow's settings restored afterwards (fedicu sets two for itself)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(simulation_engine, "simulate", in_process)
        patch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        patch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # to read the plain-folder stores back
        yield patch


def rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def numbers(row: dict, prefix: str = "") -> dict[str, float]:
    """A CSV row's finite numbers by column (what a tracked run holds of it), without the round."""
    out = {}
    for key, text in row.items():
        try:
            value = float(text)
        except ValueError:
            continue
        if key != "round" and math.isfinite(value):
            out[prefix + key] = value
    return out


def files(folder: Path) -> set[str]:
    """The run directory's files a tracking server gets: all but those with a line per stay and
    what the simulated hospitals keep (`sites/`)."""
    kept = {p.relative_to(folder) for p in folder.rglob("*") if p.is_file() and p.name not in STAY_LEVEL}
    return {p.as_posix() for p in kept if SITES_DIR not in p.parts}


# ---- MLflow ---------------------------------------------------------------------------------------


def only_run(uri: str, monkeypatch) -> mlflow.entities.Run:
    """The one run of the store, read back with `mlflow.get_run`."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None
    (found,) = client.search_runs([experiment.experiment_id])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return mlflow.get_run(found.info.run_id)


def history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, key)]


def artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return found


@pytest.fixture(scope="module")
def mlflow_run(patched, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mlflow")
    uri = f"file:{tmp / 'mlruns'}"
    fedicu("simulate", *TINY, *DP, "--track", "mlflow", "--tracking-uri", uri, "--out", str(tmp / "run"))
    return uri, tmp / "run"


def test_an_mlflow_run_holds_every_round_of_metrics_csv(mlflow_run, monkeypatch):
    uri, out = mlflow_run
    run = only_run(uri, monkeypatch)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    metrics_csv = rows(out / "metrics.csv")
    logged = {key for row in metrics_csv for key in numbers(row)}
    assert set(run.data.metrics) >= logged and {"val_auroc", "test_auroc", "hospitals_trained"} <= logged
    for key in logged:
        assert history(uri, run.info.run_id, key) == [(int(r["round"]), float(r[key])) for r in metrics_csv], key
    assert "train_loss" not in run.data.metrics  # NaN under DP-SGD: no such measurement


def test_its_params_are_the_config_and_its_tags_name_the_run_directory(mlflow_run, monkeypatch):
    uri, out = mlflow_run
    run = only_run(uri, monkeypatch)
    config = json.loads((out / "config.json").read_text())
    assert run.data.params == {key: str(value) for key, value in config.items()}
    assert run.data.tags["fedicu.setting"] == "federated"
    assert run.data.tags["fedicu.run_dir"] == str(out.resolve())


def test_each_hospitals_round_and_its_epsilon_are_logged_under_its_name(mlflow_run, monkeypatch):
    uri, out = mlflow_run
    run = only_run(uri, monkeypatch)
    hospital_rows = rows(out / "hospital_metrics.csv")
    for hospital in {r["hospital"] for r in hospital_rows}:
        own = [r for r in hospital_rows if r["hospital"] == hospital]
        for key in numbers(own[0], f"{hospital}/"):
            column = key.removeprefix(f"{hospital}/")
            assert history(uri, run.info.run_id, key) == [(int(r["round"]), float(r[column])) for r in own], key
    ledgers = json.loads((out / "privacy.json").read_text())
    assert len(ledgers) == 2
    for ledger in ledgers:
        assert run.data.metrics[f"{ledger['hospital']}/epsilon"] == ledger["epsilon"] > 0


def test_the_run_directorys_files_are_its_artifacts(mlflow_run, monkeypatch):
    uri, out = mlflow_run
    run = only_run(uri, monkeypatch)
    listed = artifacts(MlflowClient(uri), run.info.run_id)
    assert not any(path.startswith(f"{SITES_DIR}/") for path in listed)  # the hospitals' maps stay with them
    assert any((out / SITES_DIR).rglob("recalibration.json"))
    assert listed == files(out) and {"metrics.csv", "model_card.json", "model_final.pt"} <= listed
    assert (out / "stays.json").is_file() and (out / "test_predictions.csv").is_file()
    assert not {"stays.json", "test_predictions.csv"} & listed  # nothing about a single patient


def test_the_simulation_engine_run_of_the_command_line_is_tracked_the_same(patched, tmp_path, monkeypatch):
    """The `fedicu` process with Ray: rounds are logged from Flower's ServerApp thread."""
    uri, out = f"file:{tmp_path / 'mlruns'}", tmp_path / "run"
    env = {**os.environ, "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}
    command = "from fedicu.simulations.cli import main; main()"
    args = ["simulate", *TINY, "--track", "mlflow", "--tracking-uri", uri, "--out", str(out)]
    done = subprocess.run([sys.executable, "-c", command, *args], capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr
    run = only_run(uri, monkeypatch)
    assert run.info.status == "FINISHED"
    for key in ("val_auroc", "test_auroc", "train_loss"):
        assert history(uri, run.info.run_id, key) == [
            (int(r["round"]), float(r[key])) for r in rows(out / "metrics.csv")
        ]
    assert artifacts(MlflowClient(uri), run.info.run_id) == files(out)


def test_without_a_tracking_uri_mlflow_logs_to_a_database_and_folder_in_the_working_directory(
    patched, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")  # MLflow's default: no plain-folder store
    fedicu("centralized", *TINY, "--track", "mlflow", "--out", "run")
    assert {p.name for p in tmp_path.iterdir()} == {"mlflow.db", "mlruns", "run"}
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = only_run(uri, monkeypatch)
    assert run.info.status == "FINISHED" and run.data.tags["fedicu.setting"] == "centralized"
    for row in rows(tmp_path / "run" / "metrics.csv"):
        for key, value in numbers(row).items():
            assert (int(row["round"]), value) in history(uri, run.info.run_id, key)
    assert artifacts(MlflowClient(uri), run.info.run_id) == files(tmp_path / "run")
    where = f"{run.info.experiment_id}/{run.info.run_id}/artifacts"
    assert files(tmp_path / "mlruns") == {f"{where}/{f}" for f in files(tmp_path / "run")}


class Stops:
    """The engine, with a run that stops after round 1 as `error` says."""

    def __init__(self, error: BaseException):
        self.error = error

    def __call__(self, config, federation, run_dir, progress, resume=None):
        outer = self

        class Progress:
            def begin(self, rounds, done):
                progress.begin(rounds, done)

            def round_done(self, row):
                progress.round_done(row)
                raise outer.error

        return in_process(config, federation, run_dir, Progress(), resume)


@pytest.mark.parametrize(
    ("error", "status", "raised"),
    [(KeyboardInterrupt(), "KILLED", Exception), (RuntimeError("a hospital vanished"), "FAILED", RunFailed)],
    ids=["interrupted", "failed"],
)
def test_a_run_that_stops_is_closed_with_its_status_and_its_files(
    patched, tmp_path, monkeypatch, error, status, raised
):
    monkeypatch.setattr(simulation_engine, "simulate", Stops(error))
    uri = f"file:{tmp_path / 'mlruns'}"
    with pytest.raises(raised):
        fedicu("simulate", *TINY, "--track", "mlflow", "--tracking-uri", uri, "--out", str(tmp_path / "run"))
    run = only_run(uri, monkeypatch)
    assert run.info.status == status
    assert "hospital-1/val_auroc" in run.data.metrics and "hospital-1/epsilon" not in run.data.metrics  # no DP-SGD
    assert history(uri, run.info.run_id, "val_auroc") == [
        (1, float(rows(tmp_path / "run" / "metrics.csv")[0]["val_auroc"]))
    ]
    assert artifacts(MlflowClient(uri), run.info.run_id) == files(tmp_path / "run")


def test_a_resumed_run_is_tracked_with_the_rounds_before_it(patched, tmp_path, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setattr(simulation_engine, "simulate", Stops(KeyboardInterrupt()))
    with pytest.raises(Exception):  # noqa: B017  # whatever the command makes of the Ctrl-C
        fedicu("simulate", *TINY, "--out", str(out))
    monkeypatch.setattr(simulation_engine, "simulate", in_process)
    uri = f"file:{tmp_path / 'mlruns'}"
    fedicu("simulate", "--resume", str(out), "--track", "mlflow", "--tracking-uri", uri)
    run = only_run(uri, monkeypatch)
    assert run.info.status == "FINISHED"
    assert history(uri, run.info.run_id, "test_auroc") == [
        (int(r["round"]), float(r["test_auroc"])) for r in rows(out / "metrics.csv")
    ]


# ---- TensorBoard ----------------------------------------------------------------------------------


def events(folder: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def text(accumulator: EventAccumulator, tag: str) -> str:
    (event,) = accumulator.Tensors(f"{tag}/text_summary")
    return event.tensor_proto.string_val[0].decode()


def scalars(accumulator: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in accumulator.Scalars(tag)]


@pytest.fixture(scope="module")
def tensorboard_compare(patched, tmp_path_factory):
    """`compare` into one TensorBoard folder: a subfolder per setting."""
    tmp = tmp_path_factory.mktemp("tensorboard")
    fedicu(
        "compare", *TINY, *DP, "--track", "tensorboard", "--tracking-uri", str(tmp / "tb"), "--out", str(tmp / "cmp")
    )
    return tmp / "tb" / "cmp", tmp / "cmp"


def test_tensorboard_gets_each_rounds_pooled_and_hospital_metrics(tensorboard_compare):
    logs, out = tensorboard_compare
    federated = events(logs / "federated")
    for row in rows(out / "federated" / "metrics.csv"):
        for key, value in numbers(row).items():
            assert (int(row["round"]), pytest.approx(value, rel=1e-6)) in scalars(federated, key), key
    for row in rows(out / "federated" / "hospital_metrics.csv"):
        for key, value in numbers(row, f"{row['hospital']}/").items():
            assert (int(row["round"]), pytest.approx(value, rel=1e-6)) in scalars(federated, key), key
    assert {"hospital-1/epsilon", "hospital-2/epsilon"} <= set(federated.Tags()["scalars"])
    centralized = events(logs / "centralized")
    assert [step for step, _ in scalars(centralized, "test_auroc")] == [1, 2]


def test_tensorboard_gets_the_config_the_status_and_the_files_of_each_setting(tensorboard_compare):
    logs, out = tensorboard_compare
    for setting in ("federated", "centralized", "local"):
        accumulator = events(logs / setting)
        config = json.loads(text(accumulator, "config").removeprefix("```json\n").removesuffix("\n```"))
        assert config == json.loads((out / setting / "config.json").read_text())
        assert text(accumulator, "setting") == setting and text(accumulator, "status") == "complete"
        listing = text(accumulator, "files")
        assert all(
            f"| {f} |" in listing and str((out / setting / f).resolve()) in listing for f in files(out / setting)
        )
    local = events(logs / "local")
    for row in rows(out / "local" / "local_metrics.csv"):
        assert scalars(local, f"{row['hospital']}/test_auroc") == [
            (int(row["round"]), pytest.approx(float(row["test_auroc"]), rel=1e-6))
        ]


def test_tensorboard_logs_into_the_run_directory_by_default(patched, tmp_path):
    fedicu("centralized", *TINY, "--track", "tensorboard", "--out", str(tmp_path / "run"))
    accumulator = events(tmp_path / "run" / "tensorboard")
    assert [step for step, _ in scalars(accumulator, "val_auroc")] == [1, 2]
    assert "| tensorboard" not in text(accumulator, "files")  # its own folder is no file of the run


# ---- mistakes -------------------------------------------------------------------------------------


def run_main(monkeypatch, capsys, *args: str) -> tuple[object, str]:
    monkeypatch.setattr(sys, "argv", ["fedicu", *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    return exit_.value.code, capsys.readouterr().err


@pytest.mark.parametrize("command", ["simulate", "centralized", "local", "compare"])
def test_a_tracking_uri_without_track_is_refused_naming_both(patched, monkeypatch, capsys, tmp_path, command):
    monkeypatch.chdir(tmp_path)
    code, err = run_main(monkeypatch, capsys, command, "--tracking-uri", str(tmp_path / "tb"))
    assert code == 2 and "--tracking-uri has no effect without --track" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("backend", "module"), [("mlflow", "mlflow"), ("tensorboard", "torch.utils.tensorboard")])
def test_a_missing_extra_is_one_line_naming_track_and_the_install_command(
    patched, monkeypatch, capsys, tmp_path, backend, module
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, module, None)  # what an install without the extra gives
    code, err = run_main(monkeypatch, capsys, "simulate", "--track", backend)
    assert code == 2 and f"--track {backend} needs the tracking extra: pip install 'fedicu[tracking]'" in err
    assert "Traceback" not in err and list(tmp_path.iterdir()) == []
