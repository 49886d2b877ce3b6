"""The benchmark: its instruments (memory of the process tree), a real small scale run, and `fedicu bench --quick --json` end to end."""

import json
import subprocess
import sys

from fedicu.simulations import bench
from tests.conftest import PHYSIONET_DIR, requires_physionet


def test_peak_memory_counts_child_processes():
    child = "import time; block = bytearray(300 * 2**20); block[::4096] = b'x' * len(block[::4096]); time.sleep(1.5)"
    with bench._PeakMemory(interval=0.05) as alone:
        pass
    with bench._PeakMemory(interval=0.05) as with_child:
        subprocess.run([sys.executable, "-c", child], check=True)
    assert with_child.peak - alone.peak > 250 * 2**20


def test_the_two_sides_of_a_ratio_alternate_and_the_ratio_is_the_median_of_the_pairs():
    calls: list[str] = []

    def side(name: str, result):
        calls.append(name)
        return result() if callable(result) else result

    first, second = bench._alternate(lambda: side("a", lambda: len(calls)), lambda: side("b", 1.0), 3)
    assert calls == ["a", "b", "a", "b", "a", "b"] and first == [1, 3, 5] and second == [1.0, 1.0, 1.0]
    # pairs (1, 2), (10, 2), (100, 400): ratios 0.5, 5, 0.25; the ratio of the medians would be 5
    ratio = bench._ratio("r", [1.0, 10.0, 100.0], [2.0, 2.0, 400.0])
    assert ratio == {"r": 0.5, "r_min_max": [0.25, 5.0]}


@requires_physionet
def test_loader_times_a_cold_parse_and_a_cached_reload_without_touching_the_users_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDICU_CACHE_DIR", str(tmp_path / "users-cache"))
    result = bench.loader(str(PHYSIONET_DIR), repeats=1)
    assert 0 < result["cached_reload_s"] < result["parse_and_cache_s"]
    assert not (tmp_path / "users-cache").exists()


def test_quick_bench_ends_with_one_json_object_holding_the_goal_figures():
    done = subprocess.run(
        [sys.executable, "-c", "from fedicu.simulations.cli import main; main()", "bench", "--quick", "--json", "--repeats", "1"],
        capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["quick"] and report["loader"] == {"skipped": "no --data-dir (PhysioNet 2012 A+B)"}
    assert report["dp_over_plain_epoch_ratio"] == report["epoch"]["dp_epoch_s"] / report["epoch"]["plain_epoch_s"] > 0
    assert report["dp_over_plain_epoch_ratio_min_max"] == [report["dp_over_plain_epoch_ratio"]] * 2  # one pair
    (synthetic,) = report["overhead"]
    assert synthetic["cohort"] == "synthetic" and synthetic["hospitals"] == 4
    assert (
        report["federated_over_local_compute_ratio"]
        == synthetic["federated_round_s"] / synthetic["compute_per_round_s"]
    )
    assert 0 < synthetic["federated_round_s"] < synthetic["simulation_wall_s"]
    assert report["wall_over_local_compute_ratio"] == synthetic["simulation_wall_s"] / (
        synthetic["rounds"] * synthetic["compute_per_round_s"]
    )
    assert 0 < report["trivial"]["trivial_round_s"] < synthetic["simulation_wall_s"]
    assert report["max_virtual_hospitals_completed"] == 8
    (scale,) = report["scale"]  # virtual hospitals with about twenty training stays each
    assert scale["hospitals"] == 8 and scale["completed"], scale.get("error")
    assert scale["min_train_stays"] >= 20 and 0 < scale["round_s"] < scale["wall_s"]
    assert scale["peak_memory_gb"] > 0.1  # Ray and its workers are counted, not only this process
