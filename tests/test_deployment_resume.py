"""A deployed run survives its coordinator: the SuperLink, its SuperExec and the ServerApp are
killed with SIGKILL mid-run, the SuperLink is started again on its database, and `flwr run`
with run-config `resume` continues the run from its last completed round. The sites keep
running throughout, and their privacy ledgers go on from what they had spent."""

import json

import pytest

from fedicu.shared.privacy.accounting import PrivacyLedger
from fedicu.shared.run_dir import METRICS_JSON, PRIVACY_FILE, RUN_FILE
from fedicu.simulations.deployment.rehearsal import CONNECTION, write_sites
from tests.deployments import SITES, rounds_completed, wait_until

ROUNDS = 3


def _ledgers(run_dir) -> dict[str, PrivacyLedger]:
    return {row["hospital"]: PrivacyLedger.from_json(row) for row in json.loads((run_dir / PRIVACY_FILE).read_text())}


@pytest.mark.timeout(1800)  # two runs of DP rounds
def test_a_deployed_run_resumes_after_its_coordinator_is_killed(deployment, tmp_path):
    folders, test_dir = write_sites(tmp_path / "data", len(SITES), seed=0)
    assert list(folders) == SITES
    deployment.start_superlink()
    for site, folder in folders.items():
        deployment.register(site)
        deployment.start_supernode(site, folder)
    run_dir = tmp_path / "run"
    deployment.submit({"sites": len(SITES), "rounds": ROUNDS, "dp": True, "noise-multiplier": 1.0,
                       "test-dir": str(test_dir), "out": str(run_dir)})  # fmt: skip
    wait_until(lambda: rounds_completed(run_dir) >= 1, 600, "round 1 completes")
    deployment.kill("superlink")  # SIGKILL, with the SuperExec and ServerApp it started
    checkpointed = _ledgers(run_dir)

    deployment.start_superlink()  # on the same database: it knows the registered sites still

    def online() -> int:
        return sum(n["status"] == "online" for n in deployment.flwr("supernode", "list", CONNECTION)["nodes"])

    wait_until(lambda: online() == len(SITES), 180, "the sites rejoin the restarted SuperLink")
    run_id = deployment.submit({"resume": str(run_dir)})
    deployment.wait(run_id, run_dir, 900, lambda done: None)

    assert [row["round"] for row in json.loads((run_dir / METRICS_JSON).read_text())] == list(range(1, ROUNDS + 1))
    study = json.loads((run_dir / RUN_FILE).read_text())["study"]
    final = _ledgers(run_dir)
    assert sorted(final) == SITES
    for site in SITES:
        before, after = checkpointed[site].history, final[site].history
        # Continuous: the resumed rounds extend what was spent; a round trained after the last
        # checkpoint (its reply lost with the coordinator) still counts.
        assert after[: len(before)] == before and len(after) >= ROUNDS
        assert len(set(after)) == 1  # every round the same noise, sample rate and steps
        assert final[site].epsilon > checkpointed[site].epsilon
        own = tmp_path / "state" / site / f"privacy-{site}-study-{study}.json"
        assert PrivacyLedger.from_json(json.loads(own.read_text())).history == after
