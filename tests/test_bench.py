"""The benchmark's own instruments: memory of the process tree, and a real small scale run."""

import subprocess
import sys

from simulations import bench
from tests.conftest import PHYSIONET_DIR, requires_physionet


def test_peak_memory_counts_child_processes():
    child = "import time; block = bytearray(300 * 2**20); block[::4096] = b'x' * len(block[::4096]); time.sleep(1.5)"
    with bench._PeakMemory(interval=0.05) as alone:
        pass
    with bench._PeakMemory(interval=0.05) as with_child:
        subprocess.run([sys.executable, "-c", child], check=True)
    assert with_child.peak - alone.peak > 250 * 2**20


def test_scale_runs_virtual_hospitals_with_twenty_training_stays_each():
    reported = []
    (result,) = bench.scale([4], reported.append)
    assert reported == [result]
    assert result["completed"], result.get("error")
    assert result["min_train_stays"] >= 20
    assert 0 < result["round_s"] < result["wall_s"]
    assert result["peak_memory_gb"] > 0.1  # Ray and its workers are counted, not only this process


@requires_physionet
def test_loader_times_a_cold_parse_and_a_cached_reload_without_touching_the_users_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDICU_CACHE_DIR", str(tmp_path / "users-cache"))
    result = bench.loader(str(PHYSIONET_DIR), repeats=1)
    assert 0 < result["cached_reload_s"] < result["parse_and_cache_s"]
    assert not (tmp_path / "users-cache").exists()
