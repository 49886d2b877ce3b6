"""Local-only training (`fedicu local`, and `compare`'s local/): one run directory per hospital."""

import json

import pytest

from fedicu.shared.run_dir import (
    BEST_MODEL,
    CONFIG_FILE,
    CURVES_PNG,
    FINAL_MODEL,
    METRICS_JSON,
    MODEL_CARD,
    STAYS_FILE,
    RunDirectory,
)
from fedicu.simulations.baselines import _folders
from tests.test_simulation import fedicu as fedicu_process
from tests.test_site_check import fedicu as fedicu_here

LOCAL_METRICS = "local_metrics.json"


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("local")
    out = root / "local"
    result = fedicu_process(
        "local", "--hospitals", "2", "--synthetic-stays", "300", "--rounds", "2", "--hidden-size", "16",
        "--out", str(out), cwd=root,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out, json.loads((out / LOCAL_METRICS).read_text())


def test_each_hospital_s_model_is_a_complete_run_directory(local_run):
    out, rows = local_run
    assert [r["hospital"] for r in rows] == ["hospital-1", "hospital-2"]
    for row in rows:
        run = out / row["run_dir"]
        assert RunDirectory(run).status == "complete"
        for name in (CONFIG_FILE, STAYS_FILE, METRICS_JSON, BEST_MODEL, FINAL_MODEL, MODEL_CARD, CURVES_PNG):
            assert (run / name).stat().st_size > 0, name
        card = json.loads((run / MODEL_CARD).read_text())
        assert list(card["data"]["hospitals"]) == [row["hospital"]]  # its own stays, no other hospital's
        assert card["best_round"] == row["round"]
        assert len(json.loads((run / STAYS_FILE).read_text())["train"]) == row["train_stays"]
    # The folder keeps its summary of all hospitals.
    assert RunDirectory(out).status == "complete"
    assert (out / "local_metrics.csv").is_file() and (out / CONFIG_FILE).is_file()


def test_evaluate_reproduces_a_hospital_model_s_recorded_test_auroc(local_run, monkeypatch, capsys):
    out, rows = local_run
    for row in rows:
        code, stdout, stderr = fedicu_here(monkeypatch, capsys, "evaluate", str(out / row["run_dir"]), "--split",
                                           "test", "--json")  # fmt: skip
        assert code == 0, stderr
        assert json.loads(stdout)["auroc"] == pytest.approx(row["test_auroc"], abs=1e-9)


def test_evaluate_on_the_local_folder_names_the_hospitals_run_directories(local_run, monkeypatch, capsys):
    out, rows = local_run
    code, _, stderr = fedicu_here(monkeypatch, capsys, "evaluate", str(out), "--split", "test")
    assert code == 2
    assert f"RUN_DIR {out}: no model of its own" in stderr
    for row in rows:
        assert str(out / row["run_dir"]) in stderr
    assert "Traceback" not in stderr


def test_a_hospital_s_folder_is_its_name_made_safe_and_never_shared():
    assert _folders(["hospital-1", "St. Mary's/North", "St_ Mary_s_North", "../x"]) == [
        "hospital-1",
        "St__Mary_s_North",
        "St__Mary_s_North-3",
        "___x",
    ]
