"""A site whose machine fails mid-run: `fedicu site start` and everything it started are killed
with SIGKILL after round 1, and the command is run again. The SuperLink still counts the dead
SuperNode online until its heartbeats are overdue (60 s), so it refuses the new one at first;
the command keeps trying, the site rejoins the running federation and trains in the last round,
and the run completes with every round once."""

import json
import os
import signal
import subprocess

import pytest

from fedicu.shared.run_dir import CROSS_SITE_JSON, HOSPITAL_JSON, METRICS_JSON, RUN_FILE
from fedicu.simulations.deployment import certs
from fedicu.simulations.deployment.processes import with_environment
from fedicu.simulations.deployment.rehearsal import write_sites
from tests.deployments import FEDICU, SITES, rounds_completed, wait_until

ROUNDS = 6  # rounds without the site take seconds: enough of them after it is back
VICTIM = "hospital-2"


@pytest.mark.timeout(900)  # mostly waiting: a round's 30 s timeouts and the SuperLink's 60 s
def test_a_site_restarted_mid_run_rejoins_and_the_run_completes(deployment, tmp_path):
    folders, test_dir = write_sites(tmp_path / "data", len(SITES), seed=0)
    deployment.start_superlink()
    for site, folder in folders.items():
        deployment.register(site)
        if site != VICTIM:
            deployment.start_supernode(site, folder)
    state = tmp_path / "victim-state"
    command = [str(FEDICU), "site", "start", "--data-dir", str(folders[VICTIM]),
               "--superlink", f"127.0.0.1:{deployment.port}", "--ca", str(tmp_path / "certs" / certs.CA_CERT),
               "--key", str(tmp_path / "certs" / certs.SITES_DIR / f"{VICTIM}.key"), "--state-dir", str(state),
               "--runtime-port", str(deployment.node_ports[VICTIM])]  # fmt: skip

    def start_site() -> subprocess.Popen:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "COLUMNS": "200"})  # fmt: skip

    joined = start_site()
    try:
        run_dir = tmp_path / "run"
        run_id = deployment.submit(
            {"sites": len(SITES), "rounds": ROUNDS, "round-timeout": 30.0, "test-dir": str(test_dir),
             "out": str(run_dir)}
        )  # fmt: skip
        wait_until(lambda: rounds_completed(run_dir) >= 1, 600, "round 1 completes")
        for pid in [joined.pid, *with_environment("FLWR_HOME", str(state / "flwr-home"))]:  # the machine fails
            os.kill(pid, signal.SIGKILL)
        joined.wait()
        joined = start_site()
        deployment.wait(run_id, run_dir, 900, lambda done: None)
    finally:
        joined.send_signal(signal.SIGTERM)
        output, _ = joined.communicate(timeout=120)
    assert output.count("the SuperLink refused the SuperNode") == 1 and "trying again every 2 s" in output

    rows = json.loads((run_dir / METRICS_JSON).read_text())
    assert [row["round"] for row in rows] == list(range(1, ROUNDS + 1))
    hospital_rows = json.loads((run_dir / HOSPITAL_JSON).read_text())
    for row in rows:  # every site accounted for in every round, a site killed between its two replies too
        statuses = [h["status"] for h in hospital_rows if h["round"] == row["round"]]
        assert sorted(h["hospital"] for h in hospital_rows if h["round"] == row["round"]) == sorted(SITES)
        assert row["hospitals_failed"] == sum(status != "ok" for status in statuses), row["round"]
    last = {row["hospital"]: row["status"] for row in hospital_rows if row["round"] == ROUNDS}
    assert last == dict.fromkeys(SITES, "ok")  # the restarted site is back by the last round
    scored = {
        (row["model"], row["hospital"]): row["status"] for row in json.loads((run_dir / CROSS_SITE_JSON).read_text())
    }
    assert set(scored.values()) == {"ok"} and len(scored) == 2 * len(SITES)
    assert json.loads((run_dir / RUN_FILE).read_text())["status"] == "complete"
    assert with_environment("FLWR_HOME", str(state / "flwr-home")) == []
