"""The privacy-accuracy sweep: a real small grid, resuming, and refusing to mix sweeps."""

import csv
import json
import math
from pathlib import Path

import pytest

from fedicu.shared.config import RunConfig
from fedicu.simulations import sweep as study
from fedicu.simulations.cli import main

# a sweep base: DP-SGD on at a stand-in epsilon, as the sweep command builds it (cells set their own)
TINY = RunConfig(synthetic_stays=600, hospitals=2, rounds=1, hidden_size=16, delta=1e-3, dp=True, target_epsilon=1.0)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One private federated cell and both non-private baselines, audited."""
    root = tmp_path_factory.mktemp("sweep") / "study"
    plan = study.Sweep(root, TINY, study.grid([2.0], [0], baselines=True), shadow_models=2, max_targets=100)
    rows = study.run(plan, _NoProgress, lambda cell, row, skipped: None)
    return root, rows


class _NoProgress:
    def __init__(self, cell):
        pass

    def begin(self, rounds, done):
        pass

    def round_done(self, row):
        pass


def test_every_cell_lands_in_the_csv_with_accuracy_privacy_and_audit(finished):
    root, _ = finished
    with open(root / "sweep.csv") as f:
        table = list(csv.DictReader(f))
    assert [(r["setting"], r["epsilon"]) for r in table] == [
        ("federated", "2.0"),
        ("centralized", "inf"),
        ("local", "inf"),
    ]
    private = table[0]
    assert 0 < float(private["epsilon_spent"]) <= 2.0  # the budget is met, never exceeded
    assert table[1]["epsilon_spent"] == "nan"  # no DP, nothing spent
    for r in table[:2]:  # one model each: audited
        assert 0 <= float(r["attack_auroc"]) <= 1 and 0 <= float(r["attack_tpr_at_1pct_fpr"]) <= 1
    assert table[2]["attack_auroc"] == "nan"  # local-only is several models: not audited
    assert all(0.3 < float(r["test_auroc"]) <= 1 for r in table)
    for r in table:  # every AUROC and AUPRC with its interval (local only: of the hospitals' mean)
        for key in ("test_auroc", "test_auprc") + (("attack_auroc",) if r["setting"] != "local" else ()):
            assert float(r[f"{key}_ci_low"]) <= float(r[key]) <= float(r[f"{key}_ci_high"]), (r["setting"], key)
    markdown = (root / "sweep.md").read_text()
    assert study.SUMMARY_CI in markdown
    assert "| federated | 2 | 1 |" in markdown and "| centralized, no DP | – | 1 |" in markdown
    assert (root / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    # Each cell is an ordinary run directory, complete and auditable on its own.
    assert json.loads((root / "cells" / "federated-eps2-seed0" / "run.json").read_text())["status"] == "complete"
    assert (root / "cells" / "federated-eps2-seed0" / "privacy.json").is_file()


def test_a_rerun_skips_finished_cells_and_reruns_an_unfinished_one(finished, monkeypatch):
    root, rows = finished
    (root / "cells" / "centralized-seed0" / study.CELL_FILE).unlink()  # as if killed before it finished
    ran, skipped = [], []

    def fake_run_cell(self, cell, federation, progress):
        ran.append(cell.name)
        return next(r for r in rows if r["setting"] == cell.setting and r["epsilon"] == cell.epsilon)

    monkeypatch.setattr(study.Sweep, "run_cell", fake_run_cell)
    plan = study.Sweep(root, TINY, study.grid([2.0], [0], baselines=True), shadow_models=2, max_targets=100)
    again = study.run(plan, _NoProgress, lambda cell, row, was_skipped: skipped.append(was_skipped))
    assert ran == ["centralized-seed0"]
    assert skipped == [True, False, True]
    assert len(again) == 3


def test_a_sweep_directory_is_not_mixed_with_other_settings(finished):
    root, _ = finished
    other = study.Sweep(root, TINY, study.grid([1.0], [0], baselines=False), shadow_models=2, max_targets=100)
    with pytest.raises(ValueError, match=r"other settings .*cells"):
        other.open()


def test_summary_gives_mean_and_spread_over_seeds():
    rows = [
        {"setting": "federated", "epsilon": 1.0, "seed": s, "test_auroc": a, "test_auprc": 0.4,
         "epsilon_spent": 0.99, "attack_auroc": 0.5, "attack_tpr_at_1pct_fpr": 0.01}
        for s, a in ((0, 0.70), (1, 0.80), (2, 0.90))
    ]  # fmt: skip
    rows += [{**rows[0], "epsilon": math.inf, "seed": s, "test_auroc": a} for s, a in ((0, 0.75), (1, 0.86), (2, 0.95))]
    private, no_dp = study.summarize(rows)
    assert private["seeds"] == 3
    assert private["test_auroc"] == pytest.approx(0.80)
    assert private["test_auroc_sd"] == pytest.approx(0.10)  # sample standard deviation
    # Paired by seed: 0.05, 0.06, 0.05 lost; far tighter than the spread between seeds.
    assert private["cost_of_privacy"] == pytest.approx(0.16 / 3)
    assert private["cost_of_privacy_sd"] < 0.01
    assert study.table_rows([private])[0][3:5] == ("0.800 ± 0.100", "0.053 ± 0.006")
    assert study.table_rows([no_dp])[0][4] == "–"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--epsilons", "1,abc"], "'abc' is not a number"),
        (["--epsilons", "0,1"], "must be positive"),
        (["--seeds", "0,x"], "--seeds must be comma-separated integers"),
        (["--target-epsilon", "3"], "No such option '--target-epsilon'"),  # the sweep sets it per cell
    ],
)
def test_bad_sweep_options_fail_before_any_training(args, message, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["fedicu", "sweep", "--out", str(tmp_path / "s"), *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err.replace("\n", " ")
    assert not Path(tmp_path / "s").exists()
