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
    log = temp / "head.log"
    with open(log, "wb") as output:
        head = subprocess.Popen(
            [RAY, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
             "--disable-usage-stats", f"--temp-dir={temp}", "--block"],
            stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        for _ in range(600):  # up to a minute at 0.1 s for its port to answer
            if _answers(port) or head.poll() is not None:
                break
            try:
                head.wait(timeout=0.1)
            except subprocess.TimeoutExpired:
                pass
        # then ready once `ray status` reads the cluster: its node is up, not just the port
        status = [str(RAY), "status", f"--address=127.0.0.1:{port}"]
        ready = subprocess.run(status, capture_output=True, text=True, timeout=120)
        assert head.poll() is None and ready.returncode == 0, log.read_text() + ready.stderr
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


@pytest.mark.parametrize(
    ("command", "address", "message"),
    [
        ("simulate", None, "no Ray head answers there"),  # None: a free port, where nothing listens
        *[("sweep", a, "expected HOST:PORT of the Ray head") for a in ("localhost", "10.0.0.5:port", ":6379")],
        ("compare", "ray://10.0.0.5:10001", "expected HOST:PORT of the Ray head"),
    ],
)
def test_a_ray_address_without_a_head_is_refused_before_anything_runs(command, address, message, tmp_path):
    address = address or f"127.0.0.1:{_free_port()}"
    done = subprocess.run(
        [*FEDICU, command, "--ray-address", address, "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert f"--ray-address {address}: {message}" in done.stderr
    assert not (tmp_path / "run").exists()
