"""What the deployment tests share: the sites, the process census, waiting."""

import sys
import time
from pathlib import Path

import pytest

from fedicu.simulations.deployment.processes import with_environment

SITES = ["hospital-1", "hospital-2", "hospital-3"]
FEDICU = Path(sys.executable).parent / "fedicu"


def live_processes(out: Path) -> list[int]:
    """Processes still running with this deployment's Flower home (children inherit it)."""
    return with_environment("FLWR_HOME", str(out / "flwr-home"))


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.2)
