"""`fedicu bench`: where the time and memory of a run go, measured on this machine.

1. `loader`: parse + cache PhysioNet 2012 A+B into an empty cache, then reload it (needs
   `--data-dir`; skipped otherwise).
2. `epoch`: one centralized training epoch over the training stays, plain and with DP-SGD
   (`shared.privacy.per_sample_lstm`), and their ratio. PhysioNet A+B with `--data-dir`,
   the synthetic cohort otherwise.
3. `overhead`: a federated simulation of four hospitals against the pure compute of the same
   work (`round_compute`): PhysioNet A+B split by ICU type with `--data-dir` (first, the
   figure the goal is judged on), and always the main job's synthetic cohort. Start-up
   (imports done, Ray, first contact) is reported apart from the rounds. Plus the time per
   round with trivial compute.
4. `scale`: three rounds with many virtual hospitals (iid split of a synthetic cohort with
   at least 20 training stays per hospital): time per round and the peak resident memory of
   the whole process tree (this process, Ray and its workers), sampled every 0.2 s.

Every timing is the median of `repeats` runs. Every ratio is the median of `repeats` per-pair
ratios, its two sides run alternately (A B A B ...: the machine's drift lands on both alike), with
the range of the pairs beside it (`<ratio>_min_max`); `--quick` runs one simulation per cohort.
`--quick` shrinks everything for a CI-sized check.
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from fedicu.shared import stopping
from fedicu.shared.config import RunConfig
from fedicu.shared.federation import Federation, prepare
from fedicu.shared.model import MortalityLSTM, model_config_of
from fedicu.shared.preprocessing import FeatureStats, Normalization, Sequences, to_features
from fedicu.shared.run_dir import METRICS_JSON, RunDirectory
from fedicu.shared.training import predict, set_torch_threads, torch_threads, train_epochs
from fedicu.simulations.deployment.processes import tree_rss

A = TypeVar("A")
B = TypeVar("B")


def machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def _seconds(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def _median_time(work: Callable[[], object], repeats: int, warm_up: bool = True) -> float:
    """Median wall time of `work` over `repeats` runs, after one untimed run (first-call costs)."""
    if warm_up:
        work()
    return statistics.median(_seconds(work) for _ in range(repeats))


def loader(data_dir: str, repeats: int) -> dict:
    from fedicu.shared.datasets import physionet2012

    cold, warm = [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="fedicu-bench-cache-") as cache:
            previous = os.environ.get("FEDICU_CACHE_DIR")
            os.environ["FEDICU_CACHE_DIR"] = cache  # never the user's cache
            try:
                cold.append(_median_time(lambda: physionet2012.load(data_dir, sets=("a", "b")), 1, warm_up=False))
                warm.append(_median_time(lambda: physionet2012.load(data_dir, sets=("a", "b")), 1, warm_up=False))
            finally:
                if previous is None:
                    del os.environ["FEDICU_CACHE_DIR"]
                else:
                    os.environ["FEDICU_CACHE_DIR"] = previous
    return {"parse_and_cache_s": statistics.median(cold), "cached_reload_s": statistics.median(warm)}


def _ratio(name: str, numerators: list[float], denominators: list[float]) -> dict:
    """Median of the per-pair ratios under `name`, and their range under `name_min_max`."""
    ratios = [a / b for a, b in zip(numerators, denominators, strict=True)]
    return {name: statistics.median(ratios), f"{name}_min_max": [min(ratios), max(ratios)]}


def _alternate(first: Callable[[], A], second: Callable[[], B], pairs: int) -> tuple[list[A], list[B]]:
    """`pairs` results of each, run as first, second, first, second, ...: the machine's speed
    drifts (other load, clock), and alternating puts the drift on both sides of a ratio alike."""
    results: tuple[list[A], list[B]] = ([], [])
    for _ in range(pairs):
        results[0].append(first())
        results[1].append(second())
    return results


def epoch(federation: Federation, config: RunConfig, repeats: int) -> dict:
    from opacus.accountants import RDPAccountant

    from fedicu.shared.privacy.per_sample_lstm import make_dp_model, train_epochs_dp

    train = Sequences.concat([h.train for h in federation.hospitals])
    x = to_features(train, Normalization.from_stats(FeatureStats.of(train)))
    y = train.labels
    set_torch_threads(os.cpu_count() or 1)
    model_config = model_config_of(config)
    args: dict[str, Any] = dict(epochs=1, lr=config.lr, batch_size=config.batch_size, seed=0)

    def plain() -> float:
        model = MortalityLSTM(model_config)
        return _seconds(lambda: train_epochs(model, x, y, **args))

    def private() -> float:
        model = make_dp_model(model_config)
        return _seconds(
            lambda: train_epochs_dp(
                model, x, y, **args, noise_multiplier=1.0, max_grad_norm=1.0, accountant=RDPAccountant()
            )
        )

    plain(), private()  # first-call costs
    plain_s, dp_s = _alternate(plain, private, repeats)
    return {
        "stays": len(x),
        "plain_epoch_s": statistics.median(plain_s),
        "dp_epoch_s": statistics.median(dp_s),
        **_ratio("dp_over_plain", dp_s, plain_s),
    }


class _PeakMemory:
    """Peak resident memory of this process and all its descendants, sampled in a thread."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, tree_rss(os.getpid()))

    def __enter__(self) -> _PeakMemory:
        self.peak = tree_rss(os.getpid())
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class _Rounds:
    """Progress that notes when the first round begins (every hospital has answered)."""

    def __init__(self):
        self.first_contact: float | None = None
        self.started = time.perf_counter()

    def begin(self, rounds: int, done: int) -> None:
        self.first_contact = time.perf_counter() - self.started  # normalization statistics are in

    def round_done(self, row: dict) -> None:
        pass


def _simulate(config: RunConfig, federation: Federation) -> tuple[float, float, list[dict], int]:
    """Wall time, time to first contact, metric rows and peak tree memory of one simulation."""
    from fedicu.simulations.simulate import simulate

    with tempfile.TemporaryDirectory(prefix="fedicu-bench-run-") as out:
        run_dir = RunDirectory(Path(out) / "run").create()
        progress = _Rounds()
        with _PeakMemory() as memory:
            started = time.perf_counter()
            simulate(config, federation, run_dir, progress)
            wall = time.perf_counter() - started
        return wall, progress.first_contact or 0.0, run_dir.read_json(METRICS_JSON), memory.peak


def round_compute(federation: Federation, config: RunConfig, repeats: int = 3) -> float:
    """The pure compute of one round, without the framework: every hospital's local epoch and
    its two validation scorings (local model, then global model), and the server's scoring
    of the test split, each timed alone on one thread, all spread perfectly over the cores
    (as in a run, where the server scores while the hospitals train the next round)."""
    norm = Normalization.from_stats(FeatureStats.sum([FeatureStats.of(h.train) for h in federation.hospitals]))
    hospitals = 0.0
    for h in federation.hospitals:
        x, x_val = to_features(h.train, norm), to_features(h.val, norm)

        def work(x: np.ndarray = x, y: np.ndarray = h.train.labels, x_val: np.ndarray = x_val) -> None:
            model = MortalityLSTM(model_config_of(config))
            train_epochs(model, x, y, epochs=config.local_epochs, lr=config.lr,
                         batch_size=config.batch_size, seed=0)  # fmt: skip
            predict(model, x_val)
            predict(model, x_val)

        with torch_threads(1):
            hospitals += _median_time(work, repeats)
    x_test, model = to_features(federation.test, norm), MortalityLSTM(model_config_of(config))
    with torch_threads(1):
        server = _median_time(lambda: predict(model, x_test), repeats)
    return (hospitals + server) / min(os.cpu_count() or 1, len(federation.hospitals))


def overhead(config: RunConfig, pairs: int = 1) -> dict:
    """A simulation against the pure compute of its rounds, in `pairs` alternating pairs."""
    federation = prepare(config)
    compute, simulations = _alternate(
        lambda: round_compute(federation, config, repeats=1), lambda: _simulate(config, federation), pairs
    )
    round_s = [statistics.median(r["seconds"] for r in rows) for _, _, rows, _ in simulations]
    wall = [wall for wall, _, _, _ in simulations]
    return {
        "cohort": config.dataset,
        "hospitals": len(federation.hospitals),
        "rounds": config.rounds,
        "pairs": pairs,
        "compute_per_round_s": statistics.median(compute),
        "federated_round_s": statistics.median(round_s),
        **_ratio("federated_over_local_compute_ratio", round_s, compute),
        "simulation_wall_s": statistics.median(wall),
        "start_up_to_first_contact_s": statistics.median(first for _, first, _, _ in simulations),
        **_ratio("wall_over_local_compute_ratio", wall, [config.rounds * c for c in compute]),
    }


def trivial_round(rounds: int) -> dict:
    """Time per round when the hospitals have almost nothing to compute: the framework alone."""
    config = RunConfig(synthetic_stays=80, hidden_size=2, rounds=rounds)
    _, _, rows, _ = _simulate(config, prepare(config))
    return {"trivial_round_s": statistics.median(r["seconds"] for r in rows)}


def scale(hospital_counts: list[int], on_done: Callable[[dict], None]) -> list[dict]:
    results = []
    for n in hospital_counts:
        stays = 32 * n  # after 20 % test and 20 % validation: about 20 training stays each
        config = RunConfig(synthetic_stays=stays, hospitals=n, partition="iid", rounds=3)
        try:
            federation = prepare(config)
            smallest = min(len(h.train) for h in federation.hospitals)
            wall, first_contact, rows, peak = _simulate(config, federation)
            result = {
                "hospitals": n, "stays": stays, "min_train_stays": smallest, "completed": True,
                "round_s": statistics.median(r["seconds"] for r in rows), "wall_s": wall,
                "start_up_to_first_contact_s": first_contact, "peak_memory_gb": peak / 1e9,
            }  # fmt: skip
        except Exception as error:  # a scale that fails is a result, not a crash of the bench
            if stopping.interrupted(error):
                raise
            result = {"hospitals": n, "stays": stays, "completed": False, "error": f"{type(error).__name__}: {error}"}
        results.append(result)
        on_done(result)
    return results


def run(data_dir: str, quick: bool, repeats: int, on_step: Callable[[str, dict], None]) -> dict:
    """All four parts; `on_step(name, result)` after each."""
    report: dict = {"machine": machine(), "quick": quick}
    if data_dir:
        report["loader"] = loader(data_dir, repeats)
        on_step("loader", report["loader"])
        epoch_config = RunConfig(dataset="physionet2012", data_dir=data_dir)
    else:
        report["loader"] = {"skipped": "no --data-dir (PhysioNet 2012 A+B)"}
        on_step("loader", report["loader"])
        epoch_config = RunConfig(synthetic_stays=600 if quick else 2400)
    report["epoch"] = {"cohort": epoch_config.dataset, **epoch(prepare(epoch_config), epoch_config, repeats)}
    on_step("epoch", report["epoch"])
    rounds = 2 if quick else 10  # the median of ten is past the first rounds' warm-up
    # Four hospitals: PhysioNet A+B split by ICU type when given, and the main job's synthetic cohort.
    cohorts = [RunConfig(synthetic_stays=600 if quick else 2400, rounds=rounds)]
    if data_dir:
        cohorts.insert(0, RunConfig(dataset="physionet2012", data_dir=data_dir, rounds=rounds))
    report["overhead"] = []
    for config in cohorts:
        report["overhead"].append(overhead(config, pairs=1 if quick else repeats))
        on_step("overhead", report["overhead"][-1])
    report["trivial"] = trivial_round(3 if quick else 5)
    on_step("overhead", report["trivial"])
    counts = [8] if quick else [4, 64, 256, 1000]
    report["scale"] = scale(counts, lambda r: on_step("scale", r))
    report["dp_over_plain_epoch_ratio"] = report["epoch"]["dp_over_plain"]
    report["dp_over_plain_epoch_ratio_min_max"] = report["epoch"]["dp_over_plain_min_max"]
    for ratio in ("federated_over_local_compute_ratio", "wall_over_local_compute_ratio"):
        for key in (ratio, f"{ratio}_min_max"):  # the first cohort's: PhysioNet when given
            report[key] = report["overhead"][0][key]
    report["max_virtual_hospitals_completed"] = max(
        (r["hospitals"] for r in report["scale"] if r["completed"]), default=0
    )
    return report
