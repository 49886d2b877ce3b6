"""Leave-one-hospital-out validation: a model that never saw a hospital, scored at it."""

import json
import subprocess
import sys

import pytest

from fedicu.server.federated_run import LogProgress
from fedicu.shared.config import RunConfig
from fedicu.shared.federation import prepare
from fedicu.shared.run_dir import HOSPITAL_JSON, RunDirectory
from fedicu.simulations import validate
from fedicu.simulations.inprocess import run_in_process

CONFIG = RunConfig(hospitals=3, synthetic_stays=900, rounds=2, seed=5)


def _in_process(config, federation, run_dir):
    run_in_process(config, federation, run_dir, LogProgress())


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("validate")
    federation = prepare(CONFIG)
    return root, federation, validate.run(CONFIG, federation, validate.ALL, root, _in_process)


def test_every_hospital_is_held_out_once_by_a_model_that_never_saw_its_stays(report):
    root, federation, result = report
    assert [r["hospital"] for r in result["hospitals"]] == [h.name for h in federation.hospitals]
    for hospital in federation.hospitals:
        used = RunDirectory(root / f"without-{hospital.name}").read_json("stays.json")
        seen = set(used["train"]) | set(used["validation"]) | set(used["test"])
        mine = {int(s) for part in (hospital.train, hospital.val, hospital.test) for s in part.stay_ids}
        assert seen and not seen & mine, hospital.name
    aurocs = [r["auroc"] for r in result["hospitals"]]
    assert result["mean_auroc"] == pytest.approx(sum(aurocs) / len(aurocs))
    assert result["worst_auroc"] == min(aurocs)


def test_the_included_score_is_the_full_federations_score_at_that_hospital(report):
    root, _, result = report
    everyone = RunDirectory(root / validate.INCLUDED_DIR)
    best = everyone.read_json("run.json")["best_round"]
    at_best = {r["hospital"]: r for r in everyone.read_json(HOSPITAL_JSON) if r["round"] == best}
    for r in result["hospitals"]:
        assert r["included_auroc"] == pytest.approx(at_best[r["hospital"]]["test_auroc"], abs=1e-6)
        assert r["included_ece"] == pytest.approx(at_best[r["hospital"]]["test_ece"], abs=1e-6)
        assert r["stays"] == at_best[r["hospital"]]["test_stays"]


def test_an_unknown_hospital_is_refused_naming_the_option_and_the_hospitals(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", "from fedicu.simulations.cli import main; main()", "validate",
         "--leave-out", "st-nowhere", "--hospitals", "3", "--out", str(tmp_path / "v")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--leave-out 'st-nowhere': no such hospital; the federation has hospital-1, hospital-2, hospital-3" in (
        done.stderr.replace("\n", " ")
    )
    assert not (tmp_path / "v").exists()


@pytest.mark.slow
def test_the_command_prints_a_table_and_ends_with_the_same_numbers_as_json(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", "from fedicu.simulations.cli import main; main()", "validate",
         "--leave-out", "hospital-2", "--hospitals", "3", "--synthetic-stays", "600", "--rounds", "1",
         "--out", str(tmp_path / "v"), "--json"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert [r["hospital"] for r in result["hospitals"]] == ["hospital-2"]
    row = result["hospitals"][0]
    table = done.stderr
    for key in ("auroc", "included_auroc", "auprc", "ece", "calibration_slope", "calibration_intercept"):
        assert f"{row[key]:.3f}" in table, key
    assert f"{row['stays']} stays" in table
    assert json.loads((tmp_path / "v" / "leave_one_out.json").read_text()) == result
