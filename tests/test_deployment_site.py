"""`fedicu site start`: a hospital joins a real SuperLink over TLS with its key, trains in a
federated run, and stops everything it started when its service manager stops it."""

import json
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from fedicu.simulations.deployment import certs
from fedicu.simulations.deployment.processes import with_environment
from fedicu.simulations.deployment.rehearsal import LocalDeployment, write_sites
from tests.deployments import FEDICU, wait_until


def _site_processes(state_dir) -> list[int]:
    return with_environment("FLWR_HOME", str(state_dir / "flwr-home"))


def _clientapp(state_dir) -> int:
    (pid,) = (
        p for p in _site_processes(state_dir) if b"fedicu.client.resident" in Path(f"/proc/{p}/cmdline").read_bytes()
    )
    return pid


def _clientapp_starts(state_dir) -> int:
    log = state_dir / "logs" / "clientapp.log"
    return log.read_text().count("ready: claiming") if log.exists() else 0


def test_a_site_started_in_one_command_trains_and_stops_with_everything_it_started(tmp_path):
    """Also: its ClientApp, killed, is started again, and the one process answers every message."""
    folders, test_dir = write_sites(tmp_path, 1, seed=0)
    ((site, folder),) = folders.items()
    certs.create(tmp_path / "certs", ["127.0.0.1"], [site])
    state = tmp_path / "site-state"
    with LocalDeployment(tmp_path, [site]) as deployment:
        deployment.start_superlink()
        deployment.register(site)
        command = [str(FEDICU), "site", "start", "--data-dir", str(folder),
                   "--superlink", f"127.0.0.1:{deployment.port}", "--ca", str(tmp_path / "certs" / certs.CA_CERT),
                   "--key", str(tmp_path / "certs" / certs.SITES_DIR / f"{site}.key"), "--state-dir", str(state),
                   "--runtime-port", str(deployment.node_ports[site])]  # fmt: skip
        started = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "COLUMNS": "200"}
        )
        try:
            wait_until(lambda: _clientapp_starts(state) == 1, 120, "the ClientApp is ready")
            os.kill(_clientapp(state), signal.SIGKILL)
            wait_until(lambda: _clientapp_starts(state) == 2, 120, "the site starts its ClientApp again")
            run_dir = tmp_path / "run"
            run_id = deployment.submit({"sites": 1, "rounds": 1, "test-dir": str(test_dir), "out": str(run_dir)})
            deployment.wait(run_id, run_dir, 600, lambda done: None)
            assert started.poll() is None  # still serving the federation
        finally:
            started.send_signal(signal.SIGTERM)  # as systemd stops a service
            output, _ = started.communicate(timeout=120)
    assert started.returncode == 128 + signal.SIGTERM, output
    assert f"{folder} can be used" in output
    assert f"SuperNode of {site} started" in output and "interrupted (SIGTERM)" in output
    assert "the ClientApp ended (exit code -9); starting it again" in output
    log = (state / "logs" / "clientapp.log").read_text()
    assert log.count("task answered") == 1 + 2 + 2  # feature statistics, train, evaluate, 2 cross-site
    assert log.count("ready: claiming") == 2
    assert _site_processes(state) == []
    rows = json.loads((run_dir / "metrics.json").read_text())
    assert len(rows) == 1
    hospitals = json.loads((run_dir / "hospital_metrics.json").read_text())
    assert {row["hospital"] for row in hospitals} == {site}  # named after its key


def test_a_site_whose_supernode_is_refused_ends_with_its_log(tmp_path):
    """A key the SuperLink never registered: the SuperNode gives up; so does the command, with
    exit code 1 and the end of the SuperNode's log, and nothing left running."""
    folders, _ = write_sites(tmp_path, 1, seed=0)
    ((site, folder),) = folders.items()
    certs.create(tmp_path / "certs", ["127.0.0.1"], [site])
    state = tmp_path / "site-state"
    with LocalDeployment(tmp_path, [site]) as deployment:
        deployment.start_superlink()  # the site's key is not registered
        done = subprocess.run(
            [str(FEDICU), "site", "start", "--data-dir", str(folder), "--superlink", f"127.0.0.1:{deployment.port}",
             "--ca", str(tmp_path / "certs" / certs.CA_CERT),
             "--key", str(tmp_path / "certs" / certs.SITES_DIR / f"{site}.key"), "--state-dir", str(state),
             "--runtime-port", str(deployment.node_ports[site]), "--rejoin-timeout", "0"],
            capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"},
        )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "run failed: the SuperLink refused the SuperNode for 0 s: is the site's key registered there?" in done.stderr
    assert "Failed to activate SuperNode" in done.stderr  # the end of its log
    assert _site_processes(state) == []


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--superlink", "127.0.0.1:9092"], "--ca is required (or --insecure"),
        (
            ["--superlink", "127.0.0.1:9092", "--ca", "missing.crt", "--key", "missing.key"],
            "--ca missing.crt: no such file",
        ),
        (["--superlink", "127.0.0.1:9092", "--insecure", "--key", "site.key"], "--insecure takes no --ca or --key"),
        (["--superlink", "fl.example.org", "--insecure"], "--superlink fl.example.org: expected HOST:PORT"),
        (["--superlink", "127.0.0.1:9092", "--insecure", "--runtime-port", "0"], "--runtime-port must be a port"),
    ],
)
def test_a_site_start_with_a_mistake_is_refused_before_anything_starts(tmp_path, arguments, message):
    done = subprocess.run(
        [str(FEDICU), "site", "start", "--data-dir", str(tmp_path), "--state-dir", str(tmp_path / "state"), *arguments],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert not (tmp_path / "state").exists()


def test_a_site_whose_data_fails_the_check_never_joins(tmp_path):
    (tmp_path / "set-a").mkdir()  # no records, no Outcomes file
    done = subprocess.run(
        [str(FEDICU), "site", "start", "--data-dir", str(tmp_path), "--superlink", "127.0.0.1:9092", "--insecure",
         "--state-dir", str(tmp_path / "state")],
        capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "problem(s) in all; see the table above" in done.stderr
    assert not (tmp_path / "state").exists()


def test_a_closed_terminal_stops_the_site_and_its_supernode(tmp_path):
    """SIGHUP (the terminal or ssh session went away) stops the command like SIGTERM does: the
    SuperNode, in a session of its own, would not get it otherwise. No SuperLink answers here:
    the SuperNode keeps dialing until stopped."""
    folders, _ = write_sites(tmp_path, 1, seed=0)
    (folder,) = folders.values()
    state = tmp_path / "site-state"
    started = subprocess.Popen(
        [str(FEDICU), "site", "start", "--data-dir", str(folder), "--superlink", "127.0.0.1:9", "--insecure",
         "--state-dir", str(state.relative_to(tmp_path)), "--runtime-port", str(_free_port())],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    try:
        assert started.stdout is not None
        for line in started.stdout:  # the status line comes once the SuperNode is started
            if "SuperNode of" in line:
                break
        # found by its FLWR_HOME: absolute, from a relative --state-dir
        wait_until(lambda: bool(_site_processes(state)), 30, "the SuperNode is found by its FLWR_HOME")
        started.send_signal(signal.SIGHUP)
        rest, _ = started.communicate(timeout=120)
    finally:
        if started.poll() is None:
            started.kill()
            for pid in _site_processes(state):  # in sessions of their own: the kill does not reach them
                os.kill(pid, signal.SIGKILL)
    assert started.returncode == 128 + signal.SIGHUP, rest
    assert "interrupted (SIGHUP)" in rest
    assert _site_processes(state) == []
    assert (state / "logs" / "supernode.log").is_file()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
