"""`flwr run .`, Flower's own command line, on the app as installed."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fedicu.shared.run_dir import RunDirectory
from fedicu.simulations.deployment.processes import with_environment

from .deployments import wait_until

ROOT = Path(__file__).resolve().parents[1]
FLWR = Path(sys.executable).parent / "flwr"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_flwr_run_with_fewer_supernodes_than_hospitals_fails_fast_naming_num_supernodes(tmp_path):
    home, out = tmp_path / "flwr-home", tmp_path / "run"
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "PATH": f"{FLWR.parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # flwr starts flower-superlink by name  # fmt: skip
    run_config = f"hospitals=3 synthetic-stays=300 rounds=1 out='{out}'"
    try:
        done = subprocess.run(
            [str(FLWR), "run", ".", "--federation-config", "num-supernodes=2", "--run-config", run_config, "--stream"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
    finally:
        # `flwr run` leaves the local SuperLink it started running (the README says how to stop it).
        for pid in with_environment("FLWR_HOME", str(home)):
            os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not with_environment("FLWR_HOME", str(home)), 30, "the local SuperLink to stop")
    output = done.stdout + done.stderr
    assert "2 SuperNodes for 3 hospitals" in output, output
    assert "--federation-config 'num-supernodes=3'" in output
    assert RunDirectory(out).status == "failed"
