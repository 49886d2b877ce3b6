"""Faults: hospitals that crash or straggle, too few replies, and a run killed with kill -9.

The round logic is tested on the in-process grid (no Ray: its point is the server's handling
of failures); the kill -9 test runs the real command line with the Simulation Engine."""

import json
import os
import signal
import threading

import pytest
from flwr.clientapp import ClientApp

from fedicu.client.client_app import app as hospital_app
from fedicu.server.federated_run import LogProgress
from fedicu.shared.config import RunConfig
from fedicu.shared.federation import prepare
from fedicu.shared.run_dir import RunDirectory
from fedicu.simulations.inprocess import run_in_process

from .interruptions import RESUMABLE, resumes_to, start, uninterrupted, wait_for_round

__all__ = ["uninterrupted"]  # the fixture, used by name

SMALL = dict(hospitals=3, synthetic_stays=900, rounds=2, seed=3)


def faulty(partition: int) -> ClientApp:
    """The hospital app, except that one hospital crashes when asked to train."""
    app = ClientApp()

    @app.query("feature_stats")
    def stats(msg, context):
        return hospital_app(msg, context)

    @app.train()
    def train(msg, context):
        if context.node_config["partition-id"] == partition:
            raise RuntimeError("simulated site outage")
        return hospital_app(msg, context)

    @app.evaluate()
    def evaluate(msg, context):
        return hospital_app(msg, context)

    return app


def run(tmp_path, client_app=hospital_app, slow_training=None, **overrides):
    config = RunConfig(**{**SMALL, **overrides})
    run_dir = RunDirectory(tmp_path / "run").create()
    run_in_process(config, prepare(config), run_dir, LogProgress(), client_app=client_app, slow_training=slow_training)
    return run_dir


def test_a_crashing_hospital_is_recorded_and_rounds_complete_without_it(tmp_path):
    run_dir = run(tmp_path, faulty(1), min_hospitals=2)
    assert run_dir.status == "complete"
    rows = run_dir.read_json("metrics.json")
    assert [(r["hospitals_trained"], r["hospitals_failed"]) for r in rows] == [(2, 1), (2, 1)]
    failed = [r for r in run_dir.read_json("hospital_metrics.json") if r["status"] != "ok"]
    assert len(failed) == 2 and len({r["hospital"] for r in failed}) == 1
    assert "simulated site outage" in failed[0]["status"]
    assert failed[0]["train_stays"] == 0


def test_a_straggler_past_the_round_timeout_is_skipped_every_round(tmp_path):
    # Round 2's training goes out while round 1's straggler still works: its timeout runs anew.
    # The timeout also bounds the others' replies, so it leaves room for a loaded machine.
    never = threading.Event()  # hospital 0's training replies arrive only after the run
    run_dir = run(tmp_path, slow_training={0: never}, min_hospitals=2, rounds=2, round_timeout=15.0)
    assert run_dir.status == "complete"
    assert [row["hospitals_trained"] for row in run_dir.read_json("metrics.json")] == [2, 2]
    late = [r for r in run_dir.read_json("hospital_metrics.json") if "no reply within 15 s" in r["status"]]
    assert [r["round"] for r in late] == [1, 2] and len({r["hospital"] for r in late}) == 1


def test_too_few_replies_fail_the_run_clearly(tmp_path):
    with pytest.raises(RuntimeError, match="only 2 hospital\\(s\\) replied, fewer than the minimum 3"):
        run(tmp_path, faulty(2), min_hospitals=3)
    run_json = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run_json["status"] == "failed" and "simulated site outage" in run_json["error"]
    assert not (tmp_path / "run" / "model_card.json").exists()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_run_killed_after_round_two_resumes_to_the_same_result(tmp_path, uninterrupted):
    killed = tmp_path / "killed"
    process, _ = start(killed, *RESUMABLE)
    try:
        wait_for_round(process, killed, 2)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the whole session: the CLI and its Ray workers
        process.wait()
    interrupted = RunDirectory(killed).read_json("run.json")
    assert interrupted["status"] == "running" and 2 <= interrupted["rounds_completed"] < 4
    resumes_to(killed, uninterrupted)
