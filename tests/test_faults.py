"""Faults: hospitals that crash or straggle, too few replies, and a run killed with kill -9.

The round logic is tested on the in-process grid (no Ray: its point is the server's handling
of failures); the kill -9 test runs the real command line with the Simulation Engine."""

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from flwr.clientapp import ClientApp

from fedicu.client.client_app import app as hospital_app
from fedicu.server.federated_run import LogProgress
from fedicu.shared.config import RunConfig
from fedicu.shared.federation import prepare
from fedicu.shared.run_dir import RunDirectory
from fedicu.simulations.deployment.processes import with_environment
from fedicu.simulations.inprocess import run_in_process

from .deployments import wait_until

SMALL = dict(hospitals=3, synthetic_stays=900, rounds=2, seed=3)


def faulty(partition: int) -> ClientApp:
    """The hospital app, except that one hospital crashes when asked to train."""
    app = ClientApp()

    @app.query("feature_stats")
    def stats(msg, context):
        return hospital_app(msg, context)

    @app.train()
    def train(msg, context):
        if context.node_config["partition-id"] == partition:
            raise RuntimeError("simulated site outage")
        return hospital_app(msg, context)

    @app.evaluate()
    def evaluate(msg, context):
        return hospital_app(msg, context)

    return app


def run(tmp_path, client_app=hospital_app, slow_training=None, **overrides):
    config = RunConfig(**{**SMALL, **overrides})
    run_dir = RunDirectory(tmp_path / "run").create()
    run_in_process(config, prepare(config), run_dir, LogProgress(), client_app=client_app, slow_training=slow_training)
    return run_dir


def test_a_crashing_hospital_is_recorded_and_rounds_complete_without_it(tmp_path):
    run_dir = run(tmp_path, faulty(1), min_hospitals=2)
    assert run_dir.status == "complete"
    rows = run_dir.read_json("metrics.json")
    assert [(r["hospitals_trained"], r["hospitals_failed"]) for r in rows] == [(2, 1), (2, 1)]
    failed = [r for r in run_dir.read_json("hospital_metrics.json") if r["status"] != "ok"]
    assert len(failed) == 2 and len({r["hospital"] for r in failed}) == 1
    assert "simulated site outage" in failed[0]["status"]
    assert failed[0]["train_stays"] == 0


def test_a_straggler_past_the_round_timeout_is_skipped_every_round(tmp_path):
    # Round 2's training goes out while round 1's straggler still works: its timeout runs anew.
    never = threading.Event()  # hospital 0's training replies arrive only after the run
    run_dir = run(tmp_path, slow_training={0: never}, min_hospitals=2, rounds=2, round_timeout=5.0)
    assert run_dir.status == "complete"
    assert [row["hospitals_trained"] for row in run_dir.read_json("metrics.json")] == [2, 2]
    late = [r for r in run_dir.read_json("hospital_metrics.json") if "no reply within 5 s" in r["status"]]
    assert [r["round"] for r in late] == [1, 2] and len({r["hospital"] for r in late}) == 1


def test_too_few_replies_fail_the_run_clearly(tmp_path):
    with pytest.raises(RuntimeError, match="only 2 hospital\\(s\\) replied, fewer than the minimum 3"):
        run(tmp_path, faulty(2), min_hospitals=3)
    run_json = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run_json["status"] == "failed" and "simulated site outage" in run_json["error"]
    assert not (tmp_path / "run" / "model_card.json").exists()


def _fedicu(*args):
    return [sys.executable, "-c", "from fedicu.simulations.cli import main; main()", *args]


# FedAdam's moments and every hospital's privacy ledger must survive an interruption too.
RESUMABLE = [
    "--strategy", "fedadam", "--dp", "--target-epsilon", "4", "--rounds", "4",
    "--hospitals", "3", "--synthetic-stays", "600", "--hidden-size", "16", "--seed", "3",
]  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The run that the interrupted ones, once resumed, must reproduce."""
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    done = subprocess.run(
        _fedicu("simulate", *RESUMABLE, "--out", str(out)), capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr
    return RunDirectory(out)


def _start(run: Path, *options: str) -> tuple[subprocess.Popen, str]:
    """The command line in a session of its own, marked so that every process it starts is
    found; what it prints goes to `<run>.stderr` (a pipe nobody reads could fill and stall it)."""
    marker = f"{os.getpid()}-{run.name}"
    with _stderr(run).open("w") as stderr:
        process = subprocess.Popen(
            _fedicu("simulate", *options, "--out", str(run)),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
            env={**os.environ, "FEDICU_TEST_RUN": marker},
        )
    return process, marker


def _stderr(run: Path) -> Path:
    return run.with_name(f"{run.name}.stderr")


def _stop(process: subprocess.Popen, run: Path, signum: int, whole_group: bool) -> str:
    """Send `signum` (to the command, or to its process group as a terminal's Ctrl-C does) and
    return what the command printed; SIGKILL if it has not ended within a minute."""
    try:
        if whole_group:
            os.killpg(process.pid, signum)
        else:
            process.send_signal(signum)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return _stderr(run).read_text()


def _wait_for_round(process: subprocess.Popen, run: Path, rounds: int) -> None:
    def reached() -> bool:
        assert process.poll() is None, f"the run ended before round {rounds}: {_stderr(run).read_text()}"
        return (
            RunDirectory(run).status is not None
            and RunDirectory(run).read_json("run.json")["rounds_completed"] >= rounds
        )

    wait_until(reached, 600, f"round {rounds} of {run}")


def _resumes_to(run: Path, reference: RunDirectory) -> None:
    before = RunDirectory(run).read_json("run.json")
    resumed = subprocess.run(_fedicu("simulate", "--resume", str(run)), capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    assert f"after round {before['rounds_completed']}" in resumed.stderr
    expected, got = reference.read_json("metrics.json"), RunDirectory(run).read_json("metrics.json")
    assert [r["round"] for r in got] == [1, 2, 3, 4]
    for e, g in zip(expected, got, strict=True):
        for key, value in e.items():
            if key != "seconds" and isinstance(value, float):
                assert g[key] == pytest.approx(value, abs=1e-4), (e["round"], key)
    assert RunDirectory(run).status == "complete"
    assert RunDirectory(run).read_json("privacy.json") == reference.read_json("privacy.json")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_run_killed_after_round_two_resumes_to_the_same_result(tmp_path, uninterrupted):
    killed = tmp_path / "killed"
    process, _ = _start(killed, *RESUMABLE)
    try:
        _wait_for_round(process, killed, 2)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the whole session: the CLI and its Ray workers
        process.wait()
    interrupted = RunDirectory(killed).read_json("run.json")
    assert interrupted["status"] == "running" and 2 <= interrupted["rounds_completed"] < 4
    _resumes_to(killed, uninterrupted)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_ctrl_c_stops_the_run_and_every_process_it_started_and_it_resumes_to_the_same_result(tmp_path, uninterrupted):
    stopped = tmp_path / "stopped"
    process, marker = _start(stopped, *RESUMABLE)
    try:
        _wait_for_round(process, stopped, 2)
    finally:
        stderr = _stop(process, stopped, signal.SIGINT, whole_group=True)
    assert process.returncode == 130, stderr
    status = RunDirectory(stopped).read_json("run.json")
    assert status["status"] == "interrupted" and 2 <= status["rounds_completed"] < 4
    assert status["resume_command"] == f"fedicu simulate --resume {stopped}"
    assert f"interrupted (SIGINT): {stopped} keeps round {status['rounds_completed']} of 4" in stderr
    assert "Traceback" not in stderr and "ERROR" not in stderr
    wait_until(lambda: not with_environment("FEDICU_TEST_RUN", marker), 10, "every process of the run to end")
    assert RunDirectory(stopped).load_model("checkpoint.pt")["completed"] == status["rounds_completed"]
    _resumes_to(stopped, uninterrupted)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigterm_to_the_command_alone_stops_the_run_with_exit_code_143(tmp_path):
    # A supervisor's SIGTERM reaches only the command (Ray replaces the SIGTERM handler of the
    # process that starts it; the command must keep its own).
    run = tmp_path / "run"
    process, marker = _start(
        run, "--rounds", "20", "--hospitals", "2", "--synthetic-stays", "400", "--hidden-size", "8"
    )
    try:
        _wait_for_round(process, run, 1)
    finally:
        stderr = _stop(process, run, signal.SIGTERM, whole_group=False)
    assert process.returncode == 143, stderr
    assert "interrupted (SIGTERM)" in stderr
    assert RunDirectory(run).status == "interrupted"
    wait_until(lambda: not with_environment("FEDICU_TEST_RUN", marker), 10, "every process of the run to end")
