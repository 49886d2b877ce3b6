"""A site whose machine fails mid-run: `fedicu deploy-demo --restart-site` kills the site's
SuperNode and ClientApp with SIGKILL after round 1 and starts the site again with `fedicu site
start`. The SuperLink still counts the dead SuperNode online until its heartbeats are overdue
(60 s), so it refuses the new one at first; the command keeps trying, the site rejoins the
running federation and trains in the last round, and the run completes with every round once."""

import json
import os
import signal
import subprocess

import pytest

from fedicu.shared.run_dir import CROSS_SITE_JSON, HOSPITAL_JSON, METRICS_JSON, RUN_FILE
from fedicu.simulations.deployment.processes import with_environment
from tests.deployments import FEDICU, SITES, live_processes

ROUNDS = 6  # rounds without the site take seconds: enough of them after it is back
VICTIM = "hospital-2"


@pytest.mark.timeout(900)  # mostly waiting: a round's 60 s timeout (3 sites) and the SuperLink's 60 s
def test_a_site_restarted_mid_run_rejoins_and_the_run_completes(tmp_path):
    out = tmp_path / "demo"
    command = [str(FEDICU), "deploy-demo", "--out", str(out), "--sites", str(len(SITES)), "--rounds", str(ROUNDS),
               "--restart-site", VICTIM, "--timeout", "800"]  # fmt: skip
    demo = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "COLUMNS": "200"})  # fmt: skip
    try:
        output, _ = demo.communicate(timeout=850)
    finally:
        if demo.poll() is None:
            demo.terminate()
            demo.wait(timeout=60)
        left = [*live_processes(out), *with_environment("FLWR_HOME", str(out / "state" / VICTIM / "flwr-home"))]
        for pid in left:
            os.kill(pid, signal.SIGKILL)
    assert demo.returncode == 0, output[-5000:]
    assert left == []
    assert f"{VICTIM}: its machine killed after round 1; started again with `fedicu site start`" in output
    site_log = (out / "logs" / f"{VICTIM}.log").read_text()
    assert site_log.count("the SuperLink refused the SuperNode") == 1 and "trying again every 2 s" in site_log

    run_dir = out / "run"
    rows = json.loads((run_dir / METRICS_JSON).read_text())
    assert [row["round"] for row in rows] == list(range(1, ROUNDS + 1))
    hospital_rows = json.loads((run_dir / HOSPITAL_JSON).read_text())
    for row in rows:  # every site accounted for in every round, a site killed between its two replies too
        this_round = [h for h in hospital_rows if h["round"] == row["round"]]
        assert sorted(h["hospital"] for h in this_round) == sorted(SITES)
        assert row["hospitals_failed"] == sum(h["status"] != "ok" for h in this_round), row["round"]
    assert any(h["hospital"] == VICTIM and h["status"] != "ok" for h in hospital_rows)  # it was gone a while
    last = {row["hospital"]: row["status"] for row in hospital_rows if row["round"] == ROUNDS}
    assert last == dict.fromkeys(SITES, "ok")  # the restarted site is back by the last round
    scored = {
        (row["model"], row["hospital"]): row["status"] for row in json.loads((run_dir / CROSS_SITE_JSON).read_text())
    }
    assert set(scored.values()) == {"ok"} and len(scored) == 2 * len(SITES)
    assert json.loads((run_dir / RUN_FILE).read_text())["status"] == "complete"
