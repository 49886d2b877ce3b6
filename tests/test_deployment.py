"""Deployment: a real SuperLink and real SuperNodes as OS processes on loopback, TLS and node
authentication on, the app submitted with `flwr run`.

Every process a test starts is stopped when it ends, failed or not (`LocalDeployment` in a
`with` block), and the tests check that nothing is left running."""

import json
import math
import os
import signal
import socket
import ssl
import subprocess
import sys

import pytest

from fedicu.simulations.deployment.processes import with_environment
from fedicu.simulations.deployment.rehearsal import CONNECTION, LocalDeployment
from tests.deployments import FEDICU, SITES, live_processes, wait_until


def test_processes_are_found_by_their_environment_even_when_orphaned(tmp_path):
    marker = str(tmp_path)
    quiet = "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL"
    script = f"import subprocess; print(subprocess.Popen(['sleep', '60'], {quiet}).pid)"  # the parent exits at once
    done = subprocess.run(
        [sys.executable, "-c", script], env={**os.environ, "FEDICU_TEST": marker}, capture_output=True, text=True
    )
    orphan = int(done.stdout)
    try:
        assert with_environment("FEDICU_TEST", marker) == [orphan]
        assert with_environment("FEDICU_TEST", marker + "-other") == []
    finally:
        os.kill(orphan, signal.SIGKILL)
    wait_until(lambda: with_environment("FEDICU_TEST", marker) == [], 10, "the killed orphan no longer counts")


@pytest.mark.timeout(900)  # the rehearsal, then the same sites simulated (--json)
def test_deploy_demo_trains_across_three_sites_and_leaves_nothing_running(tmp_path):
    """Run as a service manager would: by the venv's absolute path, the venv not activated and
    PATH the system's, so every Flower process must be found beside the interpreter."""
    out = tmp_path / "demo"
    command = [str(FEDICU), "deploy-demo", "--out", str(out), "--sites", "3", "--rounds", "2", "--timeout", "600",
               "--json"]  # fmt: skip
    environment = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"} | {
        "PATH": "/usr/bin:/bin",
        "COLUMNS": "200",
    }
    demo = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment)
    try:
        output, _ = demo.communicate(timeout=900)
    finally:  # the demo stops what it started on SIGTERM; whatever it could not stop, the test does
        if demo.poll() is None:
            demo.terminate()
            demo.wait(timeout=60)
        left = live_processes(out)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
    assert left == []
    assert demo.returncode == 0, output[-5000:]
    assert "TLS, SuperNode authentication" in output
    rows = json.loads((out / "run" / "metrics.json").read_text())
    assert [(r["round"], r["hospitals_trained"], r["hospitals_failed"]) for r in rows] == [(1, 3, 0), (2, 3, 0)]
    for row in rows:
        assert math.isfinite(row["val_auroc"]) and row["test_auroc"] > 0.7  # the synthetic signal is learnt
    hospitals = json.loads((out / "run" / "hospital_metrics.json").read_text())
    assert {r["hospital"] for r in hospitals} == set(SITES)
    assert all(r["status"] == "ok" for r in hospitals)
    for r in hospitals:  # each site scored the global model on its own test split and sent numbers only
        assert r["test_stays"] > 0 and 0 < r["test_auroc"] < 1 and 0 <= r["test_ece"] < 1, r
        assert math.isfinite(r["test_calibration_slope"]) and math.isfinite(r["test_observed_expected"])
    assert not (out / "run" / "test_predictions.csv").exists()  # no stay's prediction reaches the server
    matrix = json.loads((out / "run" / "cross_site.json").read_text())  # the models went to the sites
    assert sorted((r["model"], r["hospital"]) for r in matrix) == sorted(
        (model, site) for model in ("federated/best", "federated/final") for site in SITES
    )
    final = {r["hospital"]: r for r in hospitals if r["round"] == 2}  # the best round is 1 or 2: final is 2
    for r in matrix:
        assert r["status"] == "ok" and r["stays"] > 0 and 0 < r["auroc"] < 1, r
        if r["model"] == "federated/final":
            assert r["auroc"] == pytest.approx(final[r["hospital"]]["test_auroc"], abs=1e-9)
    for site in SITES:  # each site kept its recalibration maps on its own disk; the server has none
        (kept,) = (out / "state" / site).glob(f"recalibration-{site}-run*.json")
        assert json.loads(kept.read_text())["hospital"] == site
    assert not list((out / "run").rglob("recalibration*"))
    assert "Cross-site AUROC" in output and "recalibrated there" in output
    assert json.loads((out / "run" / "run.json").read_text())["status"] == "complete"
    for site in SITES:  # one ClientApp process per site answered every message of the run
        log = (out / "logs" / f"{site}-clientapp.log").read_text()
        assert log.count("ready: claiming") == 1
        assert log.count("task answered") == 1 + 2 * 2 + 2  # feature statistics, 2 × (train, evaluate), 2 cross-site
    # --json: the deployed round against the same sites through the Simulation Engine
    report = json.loads(next(line for line in reversed(output.splitlines()) if line.startswith("{")))
    twin = json.loads((out / "simulated" / "metrics.json").read_text())
    assert [r["round"] for r in twin] == [1, 2]
    assert report["deployed_round_s"] == rows[1]["seconds"] and report["simulated_round_s"] == twin[1]["seconds"]
    assert report["deployed_over_simulated"] == report["deployed_round_s"] / report["simulated_round_s"]


def test_only_registered_sites_holding_the_ca_certificate_can_join(deployment):
    deployment.start_superlink()
    deployment.register("hospital-1")
    deployment.register("hospital-3")
    registered = deployment.start_supernode("hospital-1", deployment.out)
    unregistered = deployment.start_supernode("hospital-2", deployment.out)
    without_ca = deployment.start_supernode("hospital-3", deployment.out, trust_ca=False, max_retries=1)

    wait_until(lambda: None not in (unregistered.poll(), without_ca.poll()), 60, "the refused SuperNodes exit")
    assert unregistered.returncode != 0
    assert "Failed to activate SuperNode" in deployment.log("hospital-2").read_text()
    assert without_ca.returncode != 0
    assert "CERTIFICATE_VERIFY_FAILED" in deployment.log("hospital-3").read_text()

    def online() -> list[dict]:
        nodes = deployment.flwr("supernode", "list", CONNECTION)["nodes"]
        return [n for n in nodes if n["status"] == "online"]

    wait_until(lambda: len(online()) == 1, 30, "the registered SuperNode is online")
    assert registered.poll() is None


def test_insecure_mode_has_no_tls_and_lets_any_node_join(tmp_path):
    with LocalDeployment(tmp_path, ["hospital-1"], insecure=True) as insecure:
        insecure.start_superlink()
        node = insecure.start_supernode("hospital-1", tmp_path)  # no key, nothing registered
        wait_until(lambda: len(insecure.flwr("supernode", "list", CONNECTION)["nodes"]) == 1, 30, "the node joins")
        assert node.poll() is None
        with socket.create_connection(("127.0.0.1", insecure.port), timeout=5) as raw:
            with pytest.raises(ssl.SSLError):  # plain HTTP: a TLS handshake finds no TLS
                ssl.create_default_context().wrap_socket(raw, server_hostname="127.0.0.1")
    assert live_processes(tmp_path) == []
