"""`--ray-address`: a simulation runs on a Ray cluster that already exists, and leaves it running."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from fedicu.simulations.deployment.processes import descendants

RAY = Path(sys.executable).parent / "ray"
FEDICU = [sys.executable, "-c", "from fedicu.simulations.cli import main; main()"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.fixture
def ray_head():
    """A real Ray head on loopback with two CPUs, in its own session and temporary folder (short:
    Ray's socket paths must fit in 107 characters), stopped with everything it started. Not
    `ray stop`: that would stop every Ray on the machine, other tests' included."""
    port = _free_port()
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    head = subprocess.Popen(
        [RAY, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
         "--disable-usage-stats", f"--temp-dir={temp}", "--block"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        for _ in range(600):  # up to a minute at 0.1 s: the head is ready when its port answers
            if _answers(port) or head.poll() is not None:
                break
            try:
                head.wait(timeout=0.1)
            except subprocess.TimeoutExpired:
                pass
        assert head.poll() is None and _answers(port), head.stderr.read().decode() if head.stderr else ""
        yield f"127.0.0.1:{port}", temp
    finally:
        started = [head.pid, *descendants(head.pid)]
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        for pid in started:  # Ray's own processes leave with the head's session
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_a_simulation_attaches_to_a_running_ray_head_and_leaves_it_running(ray_head, tmp_path):
    address, head_temp = ray_head
    run = tmp_path / "run"
    done = subprocess.run(
        [*FEDICU, "simulate", "--ray-address", address, "--rounds", "2", "--synthetic-stays", "300",
         "--out", str(run)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(json.loads((run / "metrics.json").read_text())) == 2
    # The hospitals ran in the head's cluster: its session logs hold the workers of this driver;
    # a local Ray would have written under its own default folder instead.
    logs = list(head_temp.glob("session_*/logs/*"))
    assert any(p.name.startswith("python-core-driver-") for p in logs), sorted(p.name for p in logs)
    assert any(p.name.startswith("python-core-worker-") for p in logs)
    assert _answers(int(address.rpartition(":")[2]))  # the cluster outlives the run


def test_an_address_where_no_ray_head_answers_is_refused_before_anything_runs(tmp_path):
    address = f"127.0.0.1:{_free_port()}"
    done = subprocess.run(
        [*FEDICU, "simulate", "--ray-address", address, "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert f"--ray-address {address}: no Ray head answers there" in done.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("address", ["localhost", "10.0.0.5:port", ":6379"])
def test_an_address_without_host_and_port_is_refused(address, tmp_path):
    done = subprocess.run(
        [*FEDICU, "sweep", "--ray-address", address, "--out", str(tmp_path / "sweep")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert f"--ray-address {address}: expected HOST:PORT of the Ray head" in done.stderr
    assert not (tmp_path / "sweep").exists()
