"""What the deployment tests share: the sites, the process census, waiting."""

import json
import sys
import time
from pathlib import Path

import pytest

from fedicu.shared.run_dir import RUN_FILE
from fedicu.simulations.deployment.processes import with_environment

SITES = ["hospital-1", "hospital-2", "hospital-3"]
FEDICU = Path(sys.executable).parent / "fedicu"


def live_processes(out: Path) -> list[int]:
    """Processes still running with this deployment's Flower home (children inherit it)."""
    return with_environment("FLWR_HOME", str(out / "flwr-home"))


def rounds_completed(run_dir: Path) -> int:
    """The rounds a run directory's run.json says are done (0 before it exists)."""
    run_json = run_dir / RUN_FILE
    return int(json.loads(run_json.read_text()).get("rounds_completed", 0)) if run_json.is_file() else 0


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.2)
