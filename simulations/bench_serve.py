"""The bedside service under measurement: a real `fedicu serve` on loopback, pinned to one core.

- single-stay latency: one client posts stays to `/predict` one after another, with and
  without their explanation (`?explain=false`); the time of each request, as the client sees
  it, HTTP included;
- load: `clients` clients post `requests` stays in all, concurrently; errors (any answer but
  200, or none) are counted.

Without `taskset` or a second core, the service and the clients share the machine (reported).

Stays come from the synthetic cohort, as a site's systems would send them. The client runs on
the other core, so the service's core is its own.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from fedicu.shared.config import RunConfig
from fedicu.shared.datasets import load_cohort


def stays_as_json(n: int, seed: int = 11) -> list[dict]:
    cohort = load_cohort(RunConfig(dataset="synthetic", synthetic_stays=n, seed=seed).data_source())
    by_stay = cohort.measurements.groupby("stay_id", observed=True)
    bodies = []
    for stay_id, stay in cohort.stays.iterrows():
        static = {"Age": stay.age, "Gender": stay.gender, "Height": stay.height, "Weight": stay.weight,
                  "ICUType": stay.icu_type}  # fmt: skip
        static = {k: int(v) if k in ("Gender", "ICUType") else float(v) for k, v in static.items() if not math.isnan(v)}
        rows = by_stay.get_group(stay_id) if stay_id in by_stay.groups else cohort.measurements.iloc[:0]
        measurements = [{"minute": int(m), "variable": str(v), "value": float(x)}
                        for m, v, x in zip(rows["minute"], rows["variable"], rows["value"], strict=True)]  # fmt: skip
        bodies.append({"stay_id": f"bench-{stay_id}", "static": static, "measurements": measurements})
    return bodies


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(run_dir: Path, requests: int = 2000, clients: int = 8, single: int = 300) -> dict:
    port = _free_port()
    fedicu = Path(sys.executable).parent / "fedicu"
    pinned = shutil.which("taskset") is not None and len(os.sched_getaffinity(0)) >= 2
    with tempfile.TemporaryDirectory(prefix="fedicu-bench-serve-") as tmp:
        command = [*(["taskset", "-c", "0"] if pinned else []), str(fedicu), "serve", str(run_dir), "--port",
                   str(port), "--store", str(Path(tmp) / "stays.sqlite")]  # fmt: skip
        log = Path(tmp) / "serve.log"
        service = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT)
        clients_on = os.sched_getaffinity(0)
        try:
            if pinned:
                os.sched_setaffinity(0, {1})  # the clients on the other core
            url = f"http://127.0.0.1:{port}"
            _wait_until_up(url, service, log)
            bodies = stays_as_json(max(single, 200))
            with httpx.Client(base_url=url, timeout=30) as client:
                for body in bodies[:20]:  # warm-up
                    client.post("/predict", json=body)
                latencies: dict[str, list[float]] = {"explained": [], "risk_only": []}
                for i in range(single):  # the two kinds alternate: the machine's speed drifts
                    for kind, explain in (("explained", "true"), ("risk_only", "false")):
                        started = time.perf_counter()
                        answer = client.post("/predict", params={"explain": explain}, json=bodies[i % len(bodies)])
                        answer.raise_for_status()
                        latencies[kind].append(time.perf_counter() - started)
            load = _load(url, bodies, requests, clients)
        finally:
            os.sched_setaffinity(0, clients_on)
            service.terminate()
            service.wait(timeout=30)
    ms = {kind: np.array(times) * 1e3 for kind, times in latencies.items()}
    return {
        "service_pinned_to_one_core": pinned,
        "single_requests": single,
        **{f"single_{kind}_p{q}_ms": float(np.percentile(ms[kind], q)) for kind in ms for q in (50, 99)},
        "measurements_per_stay_median": float(np.median([len(b["measurements"]) for b in bodies])),
        **load,
    }


def _wait_until_up(url: str, service: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.poll() is not None:
            raise RuntimeError(f"fedicu serve exited with {service.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"fedicu serve did not answer within {timeout:.0f} s")


def _load(url: str, bodies: list[dict], requests: int, clients: int) -> dict:
    def one_client(first: int) -> tuple[list[float], int]:
        times, errors = [], 0
        with httpx.Client(base_url=url, timeout=60) as client:
            for i in range(first, requests, clients):
                started = time.perf_counter()
                try:
                    ok = client.post("/predict", json=bodies[i % len(bodies)]).status_code == 200
                except httpx.HTTPError:
                    ok = False
                times.append(time.perf_counter() - started)
                errors += not ok
        return times, errors

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one_client, range(clients)))
    wall = time.perf_counter() - started
    ms = np.concatenate([t for t, _ in results]) * 1e3
    return {
        "load_requests": requests,
        "load_clients": clients,
        "load_errors": int(sum(e for _, e in results)),
        "load_requests_per_s": requests / wall,
        "load_p50_ms": float(np.percentile(ms, 50)),
        "load_p99_ms": float(np.percentile(ms, 99)),
    }
