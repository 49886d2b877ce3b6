"""Deployment with SecAgg+: a real SuperLink and SuperNodes on loopback, TLS and node
authentication on; a site killed in the middle of the protocol (its own file, so that it runs
beside the other deployment tests)."""

import json

import pytest

from fedicu.simulations.deployment.rehearsal import write_sites
from tests.deployments import SITES, wait_until


@pytest.mark.timeout(900)  # its stage timeouts make it the longest test; the default 300 s is too close
def test_secure_aggregation_goes_on_without_a_site_killed_mid_round(deployment):
    folders, test_dir = write_sites(deployment.out, len(SITES), seed=0)
    deployment.start_superlink()
    for site, folder in folders.items():
        deployment.register(site)
        deployment.start_supernode(site, folder)
    run_dir = deployment.out / "run"
    run_config = {
        "sites": 3,
        "rounds": 2,
        "secagg": True,
        "round-timeout": 40.0,  # a ClientApp process per message: slow under load
        "test-dir": str(test_dir),
        "out": str(run_dir),
    }
    run_id = deployment.submit(run_config)

    # SecAgg+ sends each site four train messages a round: keys, key shares, masking, unmasking.
    # Killed once the key shares arrive (before or after it sent its own: each stage is covered
    # in test_secure_aggregation.py), the site leaves mid-protocol and stays down in round 2.
    victim = "hospital-3"
    wait_until(
        lambda: deployment.log(victim).read_text().count("Receiving: train message") >= 2,
        600,
        f"{victim} gets its key shares",
    )
    deployment.kill(victim)
    deployment.wait(run_id, run_dir, timeout=600, on_round=lambda done: None)

    rows = json.loads((run_dir / "metrics.json").read_text())
    assert [(r["round"], r["hospitals_trained"], r["hospitals_failed"]) for r in rows] == [(1, 2, 1), (2, 2, 1)]
    assert rows[-1]["test_auroc"] > 0.7
    for row in json.loads((run_dir / "hospital_metrics.json").read_text()):
        assert (row["status"] == "ok") == (row["hospital"] != victim), row
