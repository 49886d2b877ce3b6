"""Privacy accounting across rounds, budget enforcement, and DP runs end to end."""

import json
import math
from typing import Any

import pytest
import torch
from opacus.accountants import RDPAccountant

from fedicu.server.federated_run import LogProgress
from fedicu.shared.config import RunConfig
from fedicu.shared.federation import prepare
from fedicu.shared.model import MortalityLSTM, model_config_of
from fedicu.shared.privacy.accounting import BudgetExhausted, PrivacyLedger, calibrate_noise, epsilon_of
from fedicu.shared.privacy.per_sample_lstm import PoissonSchedule
from fedicu.shared.run_dir import RunDirectory
from fedicu.simulations.inprocess import run_in_process as simulate  # DP accounting needs no Ray


def test_ledger_composes_rounds_instead_of_restarting():
    ledger = PrivacyLedger("rdp", 1e-5)
    for _ in range(3):
        ledger.record(1.2, 0.05, 40)
    assert ledger.epsilon == pytest.approx(epsilon_of("rdp", [(1.2, 0.05, 120)], 1e-5))
    assert ledger.epsilon > 1.5 * epsilon_of("rdp", [(1.2, 0.05, 40)], 1e-5)  # not one round's worth
    again = PrivacyLedger.from_json(json.loads(json.dumps(ledger.to_json())))
    assert again.history == ledger.history and again.epsilon == ledger.epsilon


@pytest.mark.parametrize("target", [0.5, 1.0, 4.0])
def test_calibrated_noise_meets_but_never_exceeds_the_target(target):
    sigma = calibrate_noise("rdp", target, 1e-5, 0.05, 200)
    spent = epsilon_of("rdp", [(sigma, 0.05, 200)], 1e-5)
    assert spent <= target and spent == pytest.approx(target, rel=0.01)


def test_budget_check_refuses_the_round_that_would_overspend():
    ledger = PrivacyLedger("rdp", 1e-5, [(1.0, 0.1, 30)])
    enough = epsilon_of("rdp", [(1.0, 0.1, 60)], 1e-5)
    ledger.check_budget(1.0, 0.1, 30, target_epsilon=enough + 1e-9)
    with pytest.raises(BudgetExhausted, match="declining to train"):
        ledger.check_budget(1.0, 0.1, 30, target_epsilon=enough * 0.99)


SMALL: dict[str, Any] = dict(hospitals=3, synthetic_stays=900, seed=3, dp=True)


def _run(tmp_path, **overrides):
    config = RunConfig(**{**SMALL, **overrides})
    run_dir = RunDirectory(tmp_path / "run").create()
    simulate(config, prepare(config), run_dir, LogProgress())
    return run_dir


def test_dp_run_accounts_every_round_and_stays_within_target(tmp_path):
    run_dir = _run(tmp_path, rounds=3, target_epsilon=1.0)
    assert run_dir.status == "complete"
    ledgers = run_dir.read_json("privacy.json")
    assert len(ledgers) == 3
    for ledger in ledgers:
        assert set(ledger) == {"hospital", "accountant", "delta", "epsilon", "history"}
        assert len(ledger["history"]) == 3
        accountant = RDPAccountant()
        accountant.history = [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in ledger["history"]]
        recomputed = accountant.get_epsilon(ledger["delta"])
        assert ledger["epsilon"] == pytest.approx(recomputed, rel=0.01)
        assert recomputed <= 1.0
    rows = run_dir.read_json("hospital_metrics.json")
    first = {r["hospital"]: r["epsilon"] for r in rows if r["round"] == 1}
    last = {r["hospital"]: r["epsilon"] for r in rows if r["round"] == 3}
    assert all(0 < first[h] < last[h] <= 1.0 for h in first)


def test_a_hospital_out_of_budget_declines_and_the_others_carry_on(tmp_path):
    config = RunConfig(**{**SMALL, "rounds": 2, "noise_multiplier": 1.0})
    federation = prepare(config)
    schedules = {h.name: PoissonSchedule.of(len(h.train), config.batch_size) for h in federation.hospitals}
    spend = {
        name: (
            epsilon_of("rdp", [(1.0, s.sample_rate, s.steps_per_epoch)], 1e-5),
            epsilon_of("rdp", [(1.0, s.sample_rate, 2 * s.steps_per_epoch)], 1e-5),
        )
        for name, s in schedules.items()
    }
    hungriest = max(spend, key=lambda n: spend[n][1])
    others_two_rounds = max(two for name, (_, two) in spend.items() if name != hungriest)
    target = (max(spend[hungriest][0], others_two_rounds) + spend[hungriest][1]) / 2
    assert spend[hungriest][0] <= target < spend[hungriest][1] and others_two_rounds <= target

    run_dir = _run(tmp_path, rounds=2, noise_multiplier=1.0, target_epsilon=target, min_hospitals=2)
    assert run_dir.status == "complete"
    assert [r["hospitals_trained"] for r in run_dir.read_json("metrics.json")] == [3, 2]
    declined = [r for r in run_dir.read_json("hospital_metrics.json") if r["status"] != "ok"]
    assert [(r["round"], r["hospital"]) for r in declined] == [(2, hungriest)]
    assert "privacy budget" in declined[0]["status"]
    ledgers = {entry["hospital"]: entry for entry in run_dir.read_json("privacy.json")}
    assert len(ledgers[hungriest]["history"]) == 1 and ledgers[hungriest]["epsilon"] <= target
    assert all(len(e["history"]) == 2 and e["epsilon"] <= target for n, e in ledgers.items() if n != hungriest)


def test_hospital_level_dp_clips_noises_and_accounts_every_round(tmp_path):
    z, clip = 2.0, 0.5
    # Together with DP-SGD at the hospitals: each guarantee holds for its own unit.
    run_dir = _run(
        tmp_path, rounds=2, hidden_size=16, noise_multiplier=1.0, delta=1e-3, hospital_dp_noise=z, hospital_dp_clip=clip
    )
    assert run_dir.status == "complete"
    ledger = run_dir.read_json("hospital_privacy.json")
    assert ledger["unit"] == "hospital" and ledger["clip"] == clip
    assert ledger["history"] == [{"noise_multiplier": z, "sample_rate": 1.0, "steps": 1}] * 2
    assert all(len(h["history"]) == 2 for h in run_dir.read_json("privacy.json"))
    accountant = RDPAccountant()
    accountant.history = [(z, 1.0, 2)]
    assert ledger["epsilon"] == pytest.approx(accountant.get_epsilon(ledger["delta"]), rel=0.01)
    assert [r["hospital_epsilon"] for r in run_dir.read_json("metrics.json")] == pytest.approx(
        [epsilon_of("rdp", [(z, 1.0, 1)], 1e-3), ledger["epsilon"]]
    )
    # Each round moves the global model by at most `clip` of signal plus noise of standard
    # deviation z * clip / n per weight: after two rounds, far more than the signal could.
    torch.manual_seed(SMALL["seed"])
    start = MortalityLSTM(model_config_of(RunConfig(hidden_size=16))).state_dict()
    final = torch.load(run_dir.path / "model_final.pt", weights_only=False)["state_dict"]
    moved = math.sqrt(sum(float(((final[k] - v) ** 2).sum()) for k, v in start.items()))
    noise = z * clip / SMALL["hospitals"] * math.sqrt(2 * sum(v.numel() for v in start.values()))
    assert 0.8 * noise < moved < 1.2 * noise + 2 * clip


def test_hospital_level_dp_refuses_fedadam():
    with pytest.raises(ValueError, match="fedavg or fedprox"):
        RunConfig(strategy="fedadam", hospital_dp_noise=1.0)
