"""What the interruption tests share: an uninterrupted reference run, starting the command line
in a session of its own, stopping it, and checking that a resumed run ends as the reference."""

import fcntl
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fedicu.shared.run_dir import RunDirectory

from .deployments import wait_until


def fedicu_command(*args):
    return [sys.executable, "-c", "from fedicu.simulations.cli import main; main()", *args]


# FedAdam's moments and every hospital's privacy ledger must survive an interruption too.
RESUMABLE = [
    "--strategy", "fedadam", "--dp", "--target-epsilon", "4", "--rounds", "4",
    "--hospitals", "3", "--synthetic-stays", "600", "--hidden-size", "16", "--seed", "3",
]  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, worker_id):
    """The run that the interrupted ones, once resumed, must reproduce: made once per test
    session, by the first worker that needs it, while the others wait on its lock."""
    session = tmp_path_factory.getbasetemp()
    session = session if worker_id == "master" else session.parent  # the workers' common folder
    out = session / "uninterrupted" / "run"
    with (session / "uninterrupted.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if RunDirectory(out).status != "complete":
            shutil.rmtree(out.parent, ignore_errors=True)
            out.parent.mkdir()
            done = subprocess.run(
                fedicu_command("simulate", *RESUMABLE, "--out", str(out)), capture_output=True, text=True, timeout=900
            )
            assert done.returncode == 0, done.stderr
    return RunDirectory(out)


def start(run: Path, *options: str) -> tuple[subprocess.Popen, str]:
    """The command line in a session of its own, marked so that every process it starts is
    found; what it prints goes to `<run>.stderr` (a pipe nobody reads could fill and stall it)."""
    marker = f"{os.getpid()}-{run.name}"
    with stderr_file(run).open("w") as printed:
        process = subprocess.Popen(
            fedicu_command("simulate", *options, "--out", str(run)),
            stdout=subprocess.DEVNULL,
            stderr=printed,
            start_new_session=True,
            env={**os.environ, "FEDICU_TEST_RUN": marker},
        )
    return process, marker


def stderr_file(run: Path) -> Path:
    return run.with_name(f"{run.name}.stderr")


def stop(process: subprocess.Popen, run: Path, signum: int, whole_group: bool) -> str:
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
    return stderr_file(run).read_text()


def wait_for_round(process: subprocess.Popen, run: Path, rounds: int) -> None:
    def reached() -> bool:
        assert process.poll() is None, f"the run ended before round {rounds}: {stderr_file(run).read_text()}"
        return (
            RunDirectory(run).status is not None
            and RunDirectory(run).read_json("run.json")["rounds_completed"] >= rounds
        )

    wait_until(reached, 600, f"round {rounds} of {run}")


def resumes_to(run: Path, reference: RunDirectory) -> None:
    before = RunDirectory(run).read_json("run.json")
    resumed = subprocess.run(
        fedicu_command("simulate", "--resume", str(run)), capture_output=True, text=True, timeout=900
    )
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
