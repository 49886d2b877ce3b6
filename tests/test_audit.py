"""The privacy audit: ROC helpers, attacks on models that did and did not memorize, a real run."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from fedicu.shared.config import RunConfig
from fedicu.shared.datasets.synthetic import generate
from fedicu.shared.metrics import ci_method
from fedicu.shared.model import ModelConfig, MortalityLSTM
from fedicu.shared.preprocessing import FeatureStats, Normalization, clean, n_features, to_features, to_sequences
from fedicu.shared.privacy import audit as A
from fedicu.shared.training import train_epochs

# --- ROC helpers -------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_auroc_and_tpr_at_low_fpr_agree_with_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    n = 200 + 50 * seed
    is_member = rng.random(n) < 0.5
    scores = rng.normal(size=n) + 0.7 * is_member
    if seed % 2:  # ties, as from a coarse score
        scores = np.round(scores, 1)
    fpr, tpr, _ = roc_curve(is_member, scores, drop_intermediate=False)
    assert A.auroc(scores, is_member) == pytest.approx(roc_auc_score(is_member, scores), abs=1e-12)
    for max_fpr in (0.0, 0.01, 0.05, 0.3, 1.0):
        expected = tpr[fpr <= max_fpr].max()
        assert A.tpr_at_fpr(scores, is_member, max_fpr) == pytest.approx(expected, abs=1e-12)
    metrics = A.attack_metrics(scores, is_member, seed=0)
    assert metrics["auroc"] == pytest.approx(roc_auc_score(is_member, scores), abs=1e-12)
    assert metrics["auroc_ci_low"] < metrics["auroc"] < metrics["auroc_ci_high"]  # over the targets, seeded
    assert metrics["tpr_at_1pct_fpr"] == pytest.approx(tpr[fpr <= 0.01].max(), abs=1e-12)
    assert metrics["advantage"] == pytest.approx(np.max(tpr - fpr), abs=1e-12)


def test_tpr_at_one_percent_fpr_is_read_off_without_interpolating_upwards():
    # 100 non-members: one false positive is exactly 1 % FPR, a second would be 2 %.
    non_members = np.arange(100, dtype=float)  # scores 0..99
    members = np.r_[np.full(30, 200.0), np.full(30, 98.5), np.full(40, -1.0)]
    scores = np.r_[members, non_members]
    is_member = np.r_[np.ones(100, bool), np.zeros(100, bool)]
    # Above 99 (the top non-member): 30 members at 0 % FPR; above 98: 60 members at 1 % FPR.
    assert A.tpr_at_fpr(scores, is_member, 0.0) == pytest.approx(0.30)
    assert A.tpr_at_fpr(scores, is_member, 0.01) == pytest.approx(0.60)
    assert A.tpr_at_fpr(scores, is_member, 0.0199) == pytest.approx(0.60)


def test_the_dp_bound_is_the_known_curve():
    bound = A.dp_bound(1.0, 0.0)
    assert bound["auroc_bound"] == pytest.approx(np.e / (1 + np.e), abs=1e-6)  # pure 1-DP
    assert bound["tpr_at_1pct_fpr_bound"] == pytest.approx(np.e * 0.01)
    assert A.dp_bound(0.0, 0.0)["auroc_bound"] == pytest.approx(0.5, abs=1e-6)


def test_a_dp_run_reports_the_largest_epsilon_any_hospital_spent(tmp_path):
    ledgers = [{"hospital": "a", "epsilon": 1.5, "delta": 1e-5}, {"hospital": "b", "epsilon": 2.0, "delta": 1e-5}]
    (tmp_path / A.PRIVACY_FILE).write_text(json.dumps(ledgers))
    dp = A._dp_guarantee(tmp_path, RunConfig(dp=True, target_epsilon=1.0, delta=1e-6))
    assert dp == A.dp_bound(2.0, 1e-5)
    assert A._dp_guarantee(tmp_path, RunConfig(dp=False, delta=1e-5)) is None


# --- Target selection and shadow assignment ---------------------------------------------


def test_members_and_non_members_are_matched_by_outcome_and_capped():
    rng = np.random.default_rng(0)
    members, non_members = (rng.random(800) < 0.2).astype(np.int8), (rng.random(250) < 0.1).astype(np.int8)
    matchable = sum(min(int((members == o).sum()), int((non_members == o).sum())) for o in (0, 1))
    for cap in (10_000, 101):
        pick_m, pick_n = A.matched_targets(members, non_members, cap, seed=3)
        assert len(pick_m) == len(pick_n) == min(cap, matchable)
        assert len(set(pick_m)) == len(pick_m) and len(set(pick_n)) == len(pick_n)
        assert members[pick_m].sum() == non_members[pick_n].sum()  # equally many deaths
    again = A.matched_targets(members, non_members, 101, seed=3)
    assert np.array_equal(again[0], pick_m) and np.array_equal(again[1], pick_n)
    other = A.matched_targets(members, non_members, 101, seed=4)
    assert not np.array_equal(other[0], pick_m) and not np.array_equal(other[1], pick_n)


def test_every_target_is_in_for_half_of_the_shadow_models():
    for models in (2, 5, 8):
        in_mask = A.assign_halves(300, models, seed=1)
        assert in_mask.shape == (models, 300)
        assert (in_mask.sum(axis=0) == models // 2).all()
        assert (in_mask.sum(axis=1) > 100).all()  # each model gets a real training set
    assert not np.array_equal(A.assign_halves(300, 8, 1), A.assign_halves(300, 8, 2))
    with pytest.raises(ValueError, match="at least 2"):
        A.assign_halves(10, 1, 0)


def test_lira_separates_members_that_raw_confidence_cannot():
    """Stays differ wildly in difficulty; membership shifts confidence by a little, per stay."""
    rng = np.random.default_rng(0)
    n, models = 400, 16
    difficulty = rng.normal(0, 4, size=n)  # per-stay OUT mean
    in_mask = A.assign_halves(n, models, seed=0)
    shadow = difficulty + 1.5 * in_mask + rng.normal(0, 0.5, size=(models, n))
    is_member = rng.random(n) < 0.5
    target = difficulty + 1.5 * is_member + rng.normal(0, 0.5, size=n)
    online, offline = A.lira_scores(target, shadow, in_mask)
    assert A.auroc(target, is_member) < 0.7
    assert A.auroc(online, is_member) > 0.9
    assert A.auroc(offline, is_member) > 0.9
    assert A.auroc(A.calibrated_loss_scores(target, shadow, in_mask), is_member) > 0.8


# --- Attacks on real (tiny) models --------------------------------------------------------


def _random_outcomes(seqs, rng):
    """The same stays with outcomes drawn at random, half deaths: only memorizing can fit them."""
    return dataclasses.replace(seqs, labels=rng.permutation(np.arange(len(seqs)) % 2).astype(np.int8))


@pytest.fixture(scope="module")
def small_cohort():
    """40 synthetic stays a small LSTM memorizes (60 epochs), and 300 it never sees.

    Outcomes are random coin flips, so the model can fit its 40 stays only by
    memorizing each one, and nothing it learns carries over to unseen stays.
    """
    seqs = to_sequences(clean(generate(hospitals=2, stays=400, seed=1))[0])
    rng = np.random.default_rng(0)
    order = rng.permutation(len(seqs))
    members, unseen = (_random_outcomes(seqs.take(order[a:b]), rng) for a, b in ((0, 40), (40, 340)))
    norm = Normalization.from_stats(FeatureStats.of(members))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = MortalityLSTM(ModelConfig(n_features(), hidden_size=32, dropout=0.0))
    x = to_features(members, norm)
    train_epochs(model, x, members.labels, epochs=60, lr=0.01, batch_size=16, seed=0)
    torch.set_num_threads(threads)
    return {"model": model, "norm": norm, "members": members, "unseen": unseen}


def _features_of(cohort, *parts):
    x = np.concatenate([to_features(p, cohort["norm"]) for p in parts])
    return x, np.concatenate([p.labels for p in parts])


def test_the_loss_attack_detects_a_model_that_memorized_its_training_stays(small_cohort):
    members, unseen = small_cohort["members"], small_cohort["unseen"].take(np.arange(150))
    x, y = _features_of(small_cohort, members, unseen)
    is_member = np.r_[np.ones(len(members), bool), np.zeros(len(unseen), bool)]
    result = A.run_attacks(small_cohort["model"], x, y, is_member, recipe=None, shadow_models=0)
    assert result.metrics["loss_threshold"]["auroc"] > 0.7
    assert result.metrics["lira"] is None  # no shadow models, no LiRA


def test_the_loss_attack_is_at_chance_on_stays_the_model_never_saw(small_cohort):
    unseen = small_cohort["unseen"]
    x, y = _features_of(small_cohort, unseen.take(np.arange(150)), unseen.take(np.arange(150, 300)))
    is_member = np.r_[np.ones(150, bool), np.zeros(150, bool)]  # "members" the model never trained on
    result = A.run_attacks(small_cohort["model"], x, y, is_member, recipe=None, shadow_models=0)
    assert abs(result.metrics["loss_threshold"]["auroc"] - 0.5) < 0.1


SMALL_RECIPE = A.ShadowRecipe(ModelConfig(n_features(), hidden_size=16, dropout=0.0), epochs=15, lr=0.01, batch_size=16)


def test_shadow_based_attacks_are_at_chance_on_stays_the_model_never_saw(small_cohort):
    """The shadow models train on halves of all targets, chosen blind to membership: no built-in bias."""
    unseen = small_cohort["unseen"]
    x, y = _features_of(small_cohort, unseen.take(np.arange(100)), unseen.take(np.arange(100, 200)))
    is_member = np.r_[np.ones(100, bool), np.zeros(100, bool)]
    result = A.run_attacks(small_cohort["model"], x, y, is_member, SMALL_RECIPE, shadow_models=4, seed=1)
    for name in A.ATTACKS:
        assert abs(result.metrics[name]["auroc"] - 0.5) < 0.15, name


def test_lira_runs_end_to_end_and_is_reproducible(small_cohort):
    members, unseen = small_cohort["members"].take(np.arange(30)), small_cohort["unseen"].take(np.arange(30))
    x, y = _features_of(small_cohort, members, unseen)
    is_member = np.r_[np.ones(30, bool), np.zeros(30, bool)]
    progress = []
    runs = [
        A.run_attacks(
            small_cohort["model"],
            x,
            y,
            is_member,
            SMALL_RECIPE,
            shadow_models=4,
            seed=7,
            on_progress=lambda done, total: progress.append((done, total)),
        )
        for _ in range(2)
    ]
    assert progress[:4] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    for name in A.ATTACKS:
        metrics = runs[0].metrics[name]
        assert metrics is not None, name
        assert all(0.0 <= v <= 1.0 for v in metrics.values()), (name, metrics)
        assert metrics == runs[1].metrics[name], name  # seeded: the same numbers twice
        assert np.isfinite(runs[0].scores[name]).all()


# --- A real run directory -----------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A completed run to audit. A centralized one: the audit reads any run directory alike and
    this one needs no Ray start-up (the sweep's tests audit federated runs)."""
    root = tmp_path_factory.mktemp("audit")
    out = root / "run"
    env = {**os.environ, "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0", "FEDICU_CACHE_DIR": str(root / "cache")}
    result = subprocess.run(
        [sys.executable, "-c", "from fedicu.simulations.cli import main; main()", "centralized",
         "--hospitals", "2", "--synthetic-stays", "300", "--rounds", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=900, cwd=root, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out


def test_audit_of_a_run_writes_the_report_and_the_roc_plot(run_dir):
    report = A.audit(run_dir)
    saved = json.loads((run_dir / A.AUDIT_JSON).read_text())
    assert saved == json.loads(json.dumps(report))
    for key in ("members", "non_members", "loss_threshold", "calibrated_loss", "lira", "shadow_models", "model"):
        assert key in saved, key
    assert saved["model"] == "final" and saved["shadow_models"] == A.DEFAULT_SHADOW_MODELS
    assert saved["members"] == saved["non_members"] > 0
    assert saved["members"] <= min(saved["training_stays"], saved["test_stays"])
    for name in A.ATTACKS:
        assert set(saved[name]) == {"auroc", "auroc_ci_low", "auroc_ci_high", "tpr_at_1pct_fpr", "advantage"}
        assert all(0.0 <= v <= 1.0 for v in saved[name].values())
        assert saved[name]["auroc_ci_low"] <= saved[name]["auroc"] <= saved[name]["auroc_ci_high"]
    assert saved["confidence_intervals"] == ci_method(0)  # the audit's seed
    assert saved["dp"] is None
    assert (run_dir / A.AUDIT_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p.name for p in run_dir.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_audit_of_the_best_model_with_few_targets_and_no_shadows(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    report = A.audit(copy, which="best", shadow_models=0, max_targets=25)
    assert report["model"] == "best" and report["members"] == report["non_members"] == 25
    assert report["lira"] is None and report["calibrated_loss"] is None
    assert 0.0 <= report["loss_threshold"]["auroc"] <= 1.0


def test_an_incomplete_run_directory_is_refused_by_name(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (copy / A.AUDIT_JSON).unlink(missing_ok=True)
    (copy / "model_final.pt").unlink()
    with pytest.raises(ValueError, match=f"{copy}.*model_final.pt"):
        A.audit(copy)
    run = json.loads((copy / "run.json").read_text())
    (copy / "run.json").write_text(json.dumps({**run, "status": "running"}))
    with pytest.raises(ValueError, match=f"{copy}.*not complete"):
        A.audit(copy, which="best")
    with pytest.raises(ValueError, match="no such directory"):
        A.audit(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a run directory"):
        A.audit(tmp_path / "empty")
    assert not (copy / A.AUDIT_JSON).exists()
