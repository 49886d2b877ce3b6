"""Ensembles: members trained on one split with their own draws, scored as the mean of their
risks by simulate and evaluate alike, and an interrupted ensemble resumed member by member."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from fedicu.shared.config import RunConfig, member_seed
from fedicu.shared.ensemble import Ensemble, Member, scorer
from fedicu.shared.federation import prepare
from fedicu.shared.metrics import ScoreHistogram, auroc
from fedicu.shared.model import MortalityLSTM, model_config_of
from fedicu.shared.preprocessing import FeatureStats, Normalization, to_features
from fedicu.shared.run_dir import (
    CONFIG_FILE,
    ENSEMBLE_FILE,
    MODEL_CARD,
    RUN_FILE,
    STAYS_FILE,
    TEST_PREDICTIONS,
    RunDirectory,
)
from fedicu.shared.training import predict
from fedicu.shared.transfer import starting_weights
from tests.test_simulation import fedicu as fedicu_process
from tests.test_site_check import fedicu as fedicu_here

SMALL = ["--hospitals", "2", "--synthetic-stays", "300", "--rounds", "1", "--hidden-size", "8", "--seed", "4"]


def test_members_start_apart_on_the_same_split_and_member_0_is_the_plain_run():
    assert member_seed(7, 0) == 7 and len({member_seed(7, k) for k in range(5)}) == 5
    plain, other = RunConfig(seed=7, synthetic_stays=300, hospitals=2), RunConfig(seed=7, synthetic_stays=300,
                                                                                    hospitals=2, member=1)  # fmt: skip
    a, b = (starting_weights(c, model_config_of(c))[0] for c in (plain, other))
    assert not torch.equal(a["head.weight"], b["head.weight"])
    assert np.array_equal(prepare(plain).test.stay_ids, prepare(other).test.stay_ids)


def test_an_ensembles_risk_is_the_mean_of_its_members_each_on_its_own_normalization(tmp_path):
    config = RunConfig(synthetic_stays=300, hospitals=2, hidden_size=8)
    seqs = prepare(config).test
    members = []
    for k, shift in enumerate((0.0, 2.0)):
        torch.manual_seed(k)
        model = MortalityLSTM(model_config_of(config))
        stats = FeatureStats.of(seqs)
        norm = Normalization.from_stats(stats)
        norm = Normalization(mean=norm.mean + shift, std=norm.std, histogram=None) if shift else norm
        members.append(Member(tmp_path / f"m{k}", model, norm, threshold=0.2 + 0.2 * k, task="in_hospital_death"))
    ensemble = Ensemble(tuple(members))
    expected = np.mean([predict(m.model, to_features(seqs, m.norm, m.model.config.channels)) for m in members], 0)
    np.testing.assert_allclose(ensemble.risks(seqs), expected)
    assert ensemble.threshold == pytest.approx(0.3)  # none chosen on validation: the members' mean
    halves = [seqs.take(np.arange(30)), seqs.take(np.arange(30, len(seqs)))]
    pooled = ScoreHistogram.sum([ScoreHistogram.of(h.labels, ensemble.risks(h)) for h in halves])
    assert ensemble.validation_threshold(halves) == pooled.best_threshold()
    assert ScoreHistogram.of(seqs.labels, expected).best_threshold() == pooled.best_threshold()


@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ensemble") / "run"
    result = fedicu_process("simulate", *SMALL, "--ensemble", "2", "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out, result.stderr


def test_the_members_are_runs_on_one_split_and_evaluate_scores_their_mean(ensemble_run, monkeypatch, capsys):
    out, printed = ensemble_run
    card = json.loads((out / ENSEMBLE_FILE).read_text())
    assert card["members"] == ["member-0", "member-1"] and "Ensemble of 2" in printed
    configs = [json.loads((out / m / CONFIG_FILE).read_text()) for m in card["members"]]
    assert [c["member"] for c in configs] == [0, 1] and {c["ensemble"] for c in configs} == {1}
    assert len({(out / m / STAYS_FILE).read_text() for m in card["members"]}) == 1  # the same stays
    risks = [pd.read_csv(out / m / TEST_PREDICTIONS) for m in card["members"]]
    assert not np.allclose(risks[0]["risk"], risks[1]["risk"])
    mean_auroc = auroc(risks[0]["label"].to_numpy(), (risks[0]["risk"] + risks[1]["risk"]).to_numpy() / 2)
    assert card["metrics"]["test"]["test_auroc"] == pytest.approx(mean_auroc, abs=1e-9)
    federation = prepare(RunConfig.from_flower(configs[0]))
    validation = Ensemble(scorer([out]).members).validation_threshold([h.val for h in federation.hospitals])
    assert card["threshold"] == validation
    member_thresholds = [json.loads((out / m / MODEL_CARD).read_text())["threshold"]["best"] for m in card["members"]]
    for given, threshold in (([str(out)], validation), ([str(out / "member-0"), str(out / "member-1")],
                                                        np.mean(member_thresholds))):  # fmt: skip
        code, stdout, stderr = fedicu_here(monkeypatch, capsys, "evaluate", *given, "--split", "test", "--json")
        assert code == 0, stderr
        scored = json.loads(stdout)
        assert scored["auroc"] == pytest.approx(mean_auroc, abs=1e-9)
        assert scored["threshold"] == pytest.approx(threshold)


def test_evaluate_refuses_what_it_cannot_score_as_one_ensemble(ensemble_run, monkeypatch, capsys, tmp_path):
    out, _ = ensemble_run
    code, _, stderr = fedicu_here(monkeypatch, capsys, "evaluate", str(out), str(out / "member-0"), "--split", "test")
    assert code == 2 and f"RUN_DIR {out}: an ensemble; give it alone, or its members" in stderr
    code, _, stderr = fedicu_here(monkeypatch, capsys, "evaluate", str(out), "--recalibration", str(tmp_path / "x"))
    assert code == 2 and "--recalibration maps one model's risks" in stderr
    other = tmp_path / "other-seed"
    shutil.copytree(out / "member-1", other)
    config = json.loads((other / CONFIG_FILE).read_text())
    (other / CONFIG_FILE).write_text(json.dumps({**config, "seed": 5}))
    code, _, stderr = fedicu_here(monkeypatch, capsys, "evaluate", str(out / "member-0"), str(other), "--split", "test")
    assert code == 2 and "was trained on another split" in stderr and "--seed differs" in stderr


def test_a_resumed_ensemble_keeps_its_complete_members_and_trains_the_missing_one(ensemble_run, tmp_path):
    out, _ = ensemble_run
    resumed = tmp_path / "run"
    shutil.copytree(out, resumed)
    shutil.rmtree(resumed / "member-1")
    (resumed / ENSEMBLE_FILE).unlink()
    RunDirectory(resumed).set_status("interrupted")
    kept = (resumed / "member-0" / "model_best.pt").stat().st_mtime_ns
    result = fedicu_process("simulate", "--resume", str(resumed))
    assert result.returncode == 0, result.stderr
    assert f"Resuming the ensemble {resumed}: 1 of 2 members complete" in " ".join(result.stderr.split())
    assert (resumed / "member-0" / "model_best.pt").stat().st_mtime_ns == kept
    assert json.loads((resumed / RUN_FILE).read_text())["status"] == "complete"
    again, first = (json.loads((d / ENSEMBLE_FILE).read_text())["metrics"] for d in (resumed, out))
    assert again == first
    assert len(scorer([resumed]).members) == 2


def test_the_ensemble_options_are_checked(monkeypatch, capsys):
    code, _, stderr = fedicu_here(monkeypatch, capsys, "simulate", "--ensemble", "2", "--member", "1")
    assert code == 2 and "--member names one member; --ensemble trains them all" in stderr
    code, _, stderr = fedicu_here(monkeypatch, capsys, "centralized", "--ensemble", "2")
    assert code == 2 and "--ensemble" in stderr
