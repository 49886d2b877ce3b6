"""The main job end to end: the `fedicu` command, Flower's Simulation Engine, a run directory."""

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import asdict

import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from fedicu.shared.calibration import Calibration, SiteRecalibration, calibration_line, expected_calibration_error
from fedicu.shared.config import RunConfig
from fedicu.shared.datasets import load_cohort
from fedicu.shared.metrics import ci_method, event1
from fedicu.shared.model import fingerprint
from fedicu.shared.partition import ICU_TYPE_SITES
from fedicu.shared.preprocessing import clean, to_features, to_sequences
from fedicu.shared.run_dir import RunDirectory, load_trained
from fedicu.shared.training import predict

REQUIRED_COLUMNS = {"round", "test_auroc", "test_auprc", "test_loss"}


def fedicu(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}
    return subprocess.run(
        [sys.executable, "-c", "from fedicu.simulations.cli import main; main()", *args],
        capture_output=True, text=True, timeout=900, cwd=cwd, env=env,
    )  # fmt: skip


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "run"
    result = fedicu("simulate", "--hospitals", "3", "--rounds", "2", "--synthetic-stays", "1200", "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out, result


def test_three_hospitals_two_rounds_beat_chance_and_write_a_complete_run(synthetic_run):
    out, result = synthetic_run
    assert RunDirectory(out).status == "complete"
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["round"]) for r in rows] == [1, 2]
    assert REQUIRED_COLUMNS <= set(rows[0])
    assert float(rows[-1]["test_auroc"]) > 0.70  # chance is 0.5
    for r in rows:  # pooled validation (from histograms) and test AUROC and AUPRC, each with its interval
        for key in ("val_auroc", "val_auprc", "test_auroc", "test_auprc"):
            assert float(r[f"{key}_ci_low"]) <= float(r[key]) <= float(r[f"{key}_ci_high"]), key
    assert all(int(r["hospitals_trained"]) == 3 for r in rows)
    hospital_rows = json.loads((out / "hospital_metrics.json").read_text())
    assert len(hospital_rows) == 2 * 3 and {r["hospital"] for r in hospital_rows} == {
        "hospital-1",
        "hospital-2",
        "hospital-3",
    }
    for name in ("config.json", "metrics.json", "model_best.pt", "model_final.pt", "learning_curves.png"):
        assert (out / name).stat().st_size > 0, name
    card = json.loads((out / "model_card.json").read_text())
    assert 0 < card["threshold"]["best"] < 1
    assert len(card["normalization"]["mean"]) == len(card["normalization"]["channels"])
    assert set(card["data"]["hospitals"]) == {"hospital-1", "hospital-2", "hospital-3"}
    assert card["metrics"]["confidence_intervals"] == ci_method(0)  # the run's seed
    # A small hospital's validation stays can be separated perfectly: AUROC 1 and an interval of [1, 1].
    assert all(r["val_auroc_ci_low"] <= r["val_auroc"] <= r["val_auroc_ci_high"] for r in hospital_rows)
    assert "test auroc" in result.stderr.lower()  # the final table
    low, high = (float(rows[-1][k]) for k in ("test_auroc_ci_low", "test_auroc_ci_high"))
    assert f"({low:.2f}–{high:.2f})" in result.stderr and "1000 resamples, seed 0" in result.stderr


def test_evaluate_scores_a_saved_model_as_json(synthetic_run):
    out, _ = synthetic_run
    result = fedicu("evaluate", str(out), "--dataset", "synthetic", "--synthetic-stays", "600", "--seed", "5", "--json")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert metrics["n"] == 600
    assert 0.6 < metrics["auroc"] <= 1 and 0 < metrics["auprc"] <= 1
    assert metrics["auroc_ci_low"] < metrics["auroc"] < metrics["auroc_ci_high"]
    assert metrics["auprc_ci_low"] < metrics["auprc"] < metrics["auprc_ci_high"]
    assert metrics["confidence_intervals"] == ci_method(0)  # seeded by the run, not by the cohort's --seed 5
    assert 0 <= metrics["brier"] < 0.25 and 0 <= metrics["event1"] <= 1


def test_an_existing_run_directory_is_never_overwritten(synthetic_run):
    out, _ = synthetic_run
    before = (out / "metrics.csv").read_bytes()
    result = fedicu("simulate", "--rounds", "1", "--out", str(out))
    assert result.returncode == 2
    assert str(out) in result.stderr and "not empty" in result.stderr
    assert (out / "metrics.csv").read_bytes() == before


def test_exported_synthetic_cohort_loads_back_through_the_physionet_loader(tmp_path):
    from fedicu.shared.datasets import physionet2012, synthetic

    result = fedicu("export-synthetic", str(tmp_path), "--synthetic-stays", "200", "--hospitals", "2", "--seed", "4")
    assert result.returncode == 0, result.stderr
    loaded = physionet2012.load(tmp_path, sets=["a"], cache=False)
    original = synthetic.generate(hospitals=2, stays=200, seed=4)
    assert loaded.stays.index.tolist() == sorted(original.stays.index.tolist())
    assert (loaded.stays["label"] == original.stays["label"].loc[loaded.stays.index]).all()
    assert len(loaded.measurements) == len(original.measurements)
    again = fedicu("export-synthetic", str(tmp_path))
    assert again.returncode == 2 and "already exists" in again.stderr


def test_each_hospital_is_scored_on_its_own_test_split_and_its_numbers_follow_from_the_saved_predictions(
    synthetic_run,
):
    out, result = synthetic_run
    best = json.loads((out / "run.json").read_text())["best_round"]
    at_best = {r["hospital"]: r for r in json.loads((out / "hospital_metrics.json").read_text()) if r["round"] == best}
    predictions = pd.read_csv(out / "test_predictions.csv")
    stays = json.loads((out / "stays.json").read_text())
    assert sorted(predictions["stay_id"]) == stays["test"]  # every test stay, and only those
    assert not set(stays["test"]) & (set(stays["train"]) | set(stays["validation"]))
    for name, part in predictions.groupby("hospital"):
        reported, labels, risks = at_best[name], part["label"].to_numpy(), part["risk"].to_numpy()
        assert reported["test_stays"] == len(part) and reported["test_deaths"] == labels.sum()
        assert reported["test_ece"] == pytest.approx(expected_calibration_error(labels, risks), abs=1e-6)
        slope, intercept = calibration_line(labels, risks)
        assert reported["test_calibration_slope"] == pytest.approx(slope, abs=1e-4)
        assert reported["test_calibration_intercept"] == pytest.approx(intercept, abs=1e-4)
        assert reported["test_auroc"] == pytest.approx(roc_auc_score(labels, risks), abs=1e-6)
    pooled = json.loads((out / "metrics.json").read_text())[best - 1]
    assert pooled["test_stays"] == len(predictions)
    assert pooled["test_auroc_worst_hospital"] == min(r["test_auroc"] for r in at_best.values())
    worst = min(at_best.values(), key=lambda r: r["test_auroc"])["hospital"]
    assert f"worst: {worst}" in result.stderr  # the table leads with it, after the pooled split
    assert result.stderr.index("pooled") < result.stderr.index(f"worst: {worst}")


def test_every_hospital_scores_the_final_models_and_keeps_recalibration_maps_that_reproduce_its_numbers(
    synthetic_run,
):
    out, _ = synthetic_run
    best = json.loads((out / "run.json").read_text())["best_round"]
    at_best = {r["hospital"]: r for r in json.loads((out / "hospital_metrics.json").read_text()) if r["round"] == best}
    matrix = json.loads((out / "cross_site.json").read_text())
    assert [(r["model"], r["hospital"]) for r in matrix] == [
        (model, h) for model in ("federated/best", "federated/final") for h in sorted(at_best)
    ]
    assert all(r["status"] == "ok" for r in matrix) and (out / "cross_site.png").stat().st_size > 0
    for r in matrix[: len(at_best)]:  # the best model, as each hospital scored it in its best round
        for key in ("stays", "auroc", "auprc", "ece", "calibration_slope", "observed_expected", "auroc_ci_low"):
            assert r[key] == pytest.approx(at_best[r["hospital"]][f"test_{key}"], abs=1e-9), key
    saved = RunDirectory(out).load_model("model_best.pt")
    best_weights, threshold = fingerprint(saved["state_dict"]), saved["threshold"]
    predictions = pd.read_csv(out / "test_predictions.csv")
    for name, part in predictions.groupby("hospital"):
        kept = SiteRecalibration.load(out / "sites" / name / "recalibration.json")
        assert kept.hospital == name and kept.model_sha256 == best_weights
        labels, risks = part["label"].to_numpy(), part["risk"].to_numpy()
        cell = next(r for r in matrix if r["model"] == "federated/best" and r["hospital"] == name)
        assert cell["event1"] == pytest.approx(event1(labels, risks, threshold)[0], abs=1e-12)
        at_site = event1(labels, kept.chosen.apply(risks), kept.chosen.threshold)[0]
        assert cell["event1_site_threshold"] == pytest.approx(at_site, abs=1e-12)
        for method, site_map in kept.maps.items():  # applied to the saved risks: what the hospital reported
            after = Calibration.of(part["label"].to_numpy(), site_map.apply(part["risk"].to_numpy()))
            for key, value in asdict(after).items():
                reported = at_best[name][f"test_{method}_{key}"]  # JSON writes NaN as null
                expected = math.nan if reported is None else reported
                assert value == pytest.approx(expected, abs=1e-6, nan_ok=True), (name, method, key)


def test_evaluate_goes_through_a_site_s_map_and_refuses_a_map_of_another_model(synthetic_run, tmp_path):
    out, _ = synthetic_run
    site_file = out / "sites" / "hospital-1" / "recalibration.json"
    plain = json.loads(fedicu("evaluate", str(out), "--split", "test", "--json").stdout)
    result = fedicu("evaluate", str(out), "--split", "test", "--recalibration", str(site_file), "--json")
    assert result.returncode == 0, result.stderr
    mapped = json.loads(result.stdout)
    assert mapped["threshold"] == SiteRecalibration.load(site_file).chosen.threshold != plain["threshold"]
    assert mapped["auroc"] == pytest.approx(plain["auroc"], abs=1e-12)  # Platt keeps the order
    assert mapped["brier"] != plain["brier"]
    other = tmp_path / "other.json"
    other.write_text(json.dumps(json.loads(site_file.read_text()) | {"model_sha256": "0" * 64}))
    refused = fedicu("evaluate", str(out), "--split", "test", "--recalibration", str(other))
    assert refused.returncode == 2
    assert f"--recalibration {other}: fitted at hospital-1 for another model" in " ".join(refused.stderr.split())


def test_the_cross_site_command_rebuilds_the_sites_numbers_and_refuses_runs_it_cannot_score_honestly(
    synthetic_run, tmp_path
):
    out, _ = synthetic_run
    result = fedicu("cross-site", str(out), "--out", str(tmp_path / "matrix"))
    assert result.returncode == 0, result.stderr
    rebuilt = json.loads((tmp_path / "matrix" / "cross_site.json").read_text())
    by_sites = [r for r in json.loads((out / "cross_site.json").read_text()) if r["model"] == "federated/best"]
    assert [r["model"] for r in rebuilt] == [out.name] * len(by_sites)
    for mine, theirs in zip(rebuilt, by_sites, strict=True):
        assert mine["hospital"] == theirs["hospital"]
        assert mine["auroc"] == pytest.approx(theirs["auroc"], abs=1e-9)
        assert mine["ece"] == pytest.approx(theirs["ece"], abs=1e-9)
    assert (tmp_path / "matrix" / "cross_site.png").stat().st_size > 0
    assert "worst" in result.stderr

    without_out = fedicu("cross-site", str(out))
    assert without_out.returncode == 2 and "--out is needed" in without_out.stderr
    leaky = tmp_path / "leaky"
    shutil.copytree(out, leaky)
    stays = json.loads((leaky / "stays.json").read_text())
    (leaky / "stays.json").write_text(json.dumps(stays | {"train": stays["train"] + stays["test"][:3]}))
    refused = fedicu("cross-site", str(leaky), "--out", str(tmp_path / "x"))
    assert refused.returncode == 2 and "3 of its train stays are in the hospitals' test splits" in refused.stderr
    (leaky / "stays.json").unlink()
    deployed = fedicu("cross-site", str(leaky), "--out", str(tmp_path / "x"))
    assert deployed.returncode == 2 and "a deployment (no stays.json)" in " ".join(deployed.stderr.split())
    assert not (tmp_path / "x").exists()


def test_evaluate_per_icu_type_scores_each_unit_as_a_site_would(synthetic_run):
    out, _ = synthetic_run
    cohort_options = ("--dataset", "synthetic", "--synthetic-stays", "600", "--seed", "5")
    result = fedicu("evaluate", str(out), *cohort_options, "--per", "icu-type", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    cohort = clean(load_cohort(RunConfig(dataset="synthetic", synthetic_stays=600, seed=5).data_source()))[0]
    model, norm, threshold = load_trained(out)
    seqs = to_sequences(cohort)
    risks = predict(model, to_features(seqs, norm, model.config.channels))
    units = cohort.stays["icu_type"].astype(int).map(ICU_TYPE_SITES).to_numpy()
    assert [g["group"] for g in report["groups"]] == sorted(set(units))
    assert sum(g["stays"] for g in report["groups"]) == report["n"] == len(seqs)
    for group in report["groups"]:
        members = units == group["group"]
        labels, scores = seqs.labels[members], risks[members]
        assert group["deaths"] == labels.sum()
        assert group["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)
        assert group["ece"] == pytest.approx(expected_calibration_error(labels, scores), abs=1e-9)
        assert group["event1"] == pytest.approx(event1(labels, scores, threshold)[0], abs=1e-12)
    table = fedicu("evaluate", str(out), *cohort_options, "--per", "icu-type")
    assert "Each icu-type: calibration" in table.stderr and "worst: " in table.stderr

    for options, words in (
        (("--per", "ward"), "--per must be one of icu-type, hospital, set, not 'ward'"),
        (("--split", "test", "--per", "hospital"), "--per scores a cohort's groups"),
    ):
        refused = fedicu("evaluate", str(out), *options)
        assert refused.returncode == 2 and words in refused.stderr, refused.stderr
