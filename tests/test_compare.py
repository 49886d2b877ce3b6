"""compare: several strategies, personalizations and seeds in one table, each number traceable
to the run directories it summarizes."""

import json
import math

import pytest

from fedicu.shared.config import RunConfig
from fedicu.shared.run_dir import CROSS_SITE_JSON, METRICS_JSON, MODEL_CARD
from fedicu.simulations.cli.comparison import COMPARISON_FILE, _mean_sd, adjusted
from tests.test_simulation import fedicu as fedicu_process
from tests.test_site_check import fedicu as fedicu_here

TINY = ["--hospitals", "2", "--synthetic-stays", "300", "--rounds", "1", "--hidden-size", "8"]


def test_a_changed_strategy_drops_the_options_that_no_longer_act():
    prox = RunConfig(strategy="fedprox", proximal_mu=0.3, seed=2)
    assert adjusted(prox, strategy="scaffold") == RunConfig(strategy="scaffold", seed=2)
    assert adjusted(prox, seed=5).proximal_mu == 0.3


def test_the_summary_is_the_mean_and_sd_over_seeds_of_what_each_seed_has():
    rows = [dict(auroc=0.8, auprc=0.4, worst_auroc=0.7, mean_ece=math.nan),
            dict(auroc=0.9, auprc=0.5, worst_auroc=0.6, mean_ece=0.05)]  # fmt: skip
    summary = _mean_sd(rows)
    assert summary["auroc"] == pytest.approx(0.85) and summary["auroc_sd"] == pytest.approx(0.0707107, abs=1e-6)
    assert summary["mean_ece"] == 0.05 and math.isnan(summary["mean_ece_sd"])


@pytest.mark.parametrize(
    ("options", "message"),
    [(["--strategies", "fedsgd"], "--strategies: fedsgd not among"), (["--seeds", "1,x"], "--seeds must be"),
     (["--personalizations", "fedper"], "--personalizations: fedper not among")],
    ids=["strategy", "seeds", "personalization"],
)  # fmt: skip
def test_bad_lists_are_refused_before_anything_is_written(options, message, monkeypatch, capsys, tmp_path):
    code, _, stderr = fedicu_here(monkeypatch, capsys, "compare", *options, "--out", str(tmp_path / "cmp"))
    assert code == 2 and message in stderr and not (tmp_path / "cmp").exists()


@pytest.mark.timeout(600)  # six trainings through the Simulation Engine, in a process of their own
def test_every_setting_is_summarized_from_its_own_run(tmp_path):
    out = tmp_path / "cmp"
    result = fedicu_process(
        "compare", *TINY, "--strategies", "scaffold", "--personalizations", "ditto,fedrep", "--seed", "1",
        "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads((out / COMPARISON_FILE).read_text())
    names = ["federated (fedavg)", "federated (scaffold)", "personal/ditto (fedavg)", "personal/fedrep (fedavg)",
             "centralized", "local only (mean of hospitals)"]  # fmt: skip
    assert list(report["summary"]) == names and list(report["seeds"]) == ["1"]
    rows = report["seeds"]["1"]
    card = json.loads((out / "federated-scaffold" / MODEL_CARD).read_text())
    best = json.loads((out / "federated-scaffold" / METRICS_JSON).read_text())[card["best_round"] - 1]
    assert (
        rows["federated (scaffold)"]["auroc"]
        == best["test_auroc"]
        == report["summary"]["federated (scaffold)"]["auroc"]
    )
    matrix = json.loads((out / CROSS_SITE_JSON).read_text())
    worst = min(r["auroc"] for r in matrix if r["model"] == "federated-scaffold" and r["auroc"] is not None)
    assert rows["federated (scaffold)"]["worst_auroc"] == worst
    personal = json.loads((out / "personal-ditto" / CROSS_SITE_JSON).read_text())
    assert rows["personal/ditto (fedavg)"]["worst_auroc"] == min(
        r["auroc"] for r in personal if r["model"] == "personal/ditto" and r["auroc"] is not None
    )
    assert rows["personal/ditto (fedavg)"]["auroc"] is None  # each hospital scores its own model
    assert "personal-fedrep" not in {r["model"] for r in matrix}  # its global model is a body: no row to score
    assert rows["personal/fedrep (fedavg)"]["worst_auroc"] == min(
        r["auroc"]
        for r in json.loads((out / "personal-fedrep" / CROSS_SITE_JSON).read_text())
        if r["auroc"] is not None
    )
    local = json.loads((out / "local" / "local_metrics.json").read_text())
    own = {(f"local/{r['run_dir']}", r["hospital"]) for r in local}
    aurocs = [r["auroc"] for r in matrix if (r["model"], r["hospital"]) in own and r["auroc"] is not None]
    assert rows["local only (mean of hospitals)"]["worst_auroc"] == min(aurocs)


def test_each_seed_is_compared_in_its_own_folder_and_the_summary_is_their_mean(tmp_path):
    out = tmp_path / "cmp"
    result = fedicu_process("compare", *TINY, "--seeds", "1,2", "--out", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads((out / COMPARISON_FILE).read_text())
    assert sorted(report["seeds"]) == ["1", "2"]
    for seed in ("1", "2"):
        assert json.loads((out / f"seed-{seed}" / "federated" / "config.json").read_text())["seed"] == int(seed)
    mean = (report["seeds"]["1"]["centralized"]["auroc"] + report["seeds"]["2"]["centralized"]["auroc"]) / 2
    assert report["summary"]["centralized"]["auroc"] == pytest.approx(mean)
    assert "mean ± sd over seeds 1, 2" in " ".join(result.stderr.split())


def test_a_recipe_leaves_the_options_given_on_the_command_line(monkeypatch, capsys, tmp_path):
    code, _, stderr = fedicu_here(
        monkeypatch, capsys, "simulate", "--recipe", "best", "--rounds", "10", "--dataset", "physionet2012",
        "--data-dir", str(tmp_path / "absent"), "--out", str(tmp_path / "run"),
    )  # fmt: skip
    printed = " ".join(stderr.split())
    assert code == 2 and "Recipe best: --strategy scaffold, --ensemble 5" in printed and "--rounds 20" not in printed
