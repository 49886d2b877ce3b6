import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from fedicu.server import server_app
from fedicu.shared.config import ALWAYS_EFFECTIVE, EFFECTIVE_ONLY, RunConfig


def test_flower_app_defaults_are_the_run_config_defaults():
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert pyproject["tool"]["flwr"]["app"]["config"] == RunConfig().to_flower() | {server_app.RESUME: ""}


def test_from_flower_converts_and_validates():
    config = RunConfig.from_flower({"rounds": 3, "lr": 1, "strategy": "fedprox"})
    assert (config.rounds, config.lr, config.strategy) == (3, 1.0, "fedprox")
    with pytest.raises(ValueError, match="unknown run-config key 'roundz'"):
        RunConfig.from_flower({"roundz": 3})
    with pytest.raises(ValueError, match="'rounds' must be int"):
        RunConfig.from_flower({"rounds": "many"})
    with pytest.raises(ValueError, match=r"^run-config strategy must be one of"):  # as the user spelt it
        RunConfig.from_flower({"strategy": "fedsgd"})
    with pytest.raises(ValueError, match=r"^run-config dp needs run-config target-epsilon > 0"):
        RunConfig.from_flower({"dp": True})
    with pytest.raises(ValueError, match="--data-dir is required"):
        RunConfig(dataset="physionet2012")


@pytest.mark.parametrize(
    "changes, message",
    [({"target_epsilon": -1.0}, "--target-epsilon"), ({"delta": 0.0}, "--delta"), ({"delta": 1.0}, "--delta"),
     ({"max_grad_norm": 0.0}, "--max-grad-norm"), ({"noise_multiplier": -0.5}, "--noise-multiplier"),
     ({"dp": True}, "--dp needs"), ({"accountant": "gdp"}, "--accountant"),
     ({"init_from": "r", "freeze_body": True, "dp": True, "target_epsilon": 1.0}, "--freeze-body cannot .* --dp"),
     ({"init_from": "r", "freeze_body": True, "personalization": "finetune"}, "--freeze-body cannot .* --personalization")],
)  # fmt: skip
def test_bad_privacy_settings_are_rejected_before_anything_runs(changes, message):
    with pytest.raises(ValueError, match=message):
        RunConfig(**changes)


def test_every_run_option_either_always_acts_or_says_when_it_does_not():
    conditional = {name for name, _, _ in EFFECTIVE_ONLY}
    assert conditional.isdisjoint(ALWAYS_EFFECTIVE)
    assert conditional | ALWAYS_EFFECTIVE == {f.name for f in fields(RunConfig)}  # a new option must pick one


NO_EFFECT: list[tuple[dict[str, Any], tuple[str, str]]] = [  # (options, the two options the error names)
    (dict(data_dir="/data"), ("--data-dir", "--data-format synthetic")),
    (dict(dataset="tables", data_dir="/d", sets="c"), ("--sets", "--data-format tables")),
    (dict(dataset="physionet2012", data_dir="/d", synthetic_stays=900), ("--synthetic-stays", "--data-format physionet2012")),
    (dict(dataset="physionet2012", data_dir="/d", hospitals=3), ("--hospitals", "--partition")),
    (dict(alpha=0.1), ("--alpha", "--partition")),
    (dict(partition="iid", alpha=0.1), ("--alpha", "--partition iid")),
    (dict(target_epsilon=1.0), ("--target-epsilon", "--dp")),
    (dict(noise_multiplier=1.0), ("--noise-multiplier", "--dp")),
    (dict(max_grad_norm=0.5), ("--max-grad-norm", "--dp")),
    (dict(delta=1e-6), ("--delta", "--dp")),
    (dict(accountant="prv"), ("--accountant", "--dp")),
    (dict(proximal_mu=0.1), ("--proximal-mu", "--strategy fedavg")),
    (dict(strategy="fedprox", server_lr=0.1), ("--server-lr", "--strategy fedprox")),
    (dict(hospital_dp_clip=2.0), ("--hospital-dp-clip", "--hospital-dp-noise")),
    (dict(secagg=True, max_update_ratio=5.0), ("--max-update-ratio", "--secagg")),
    (dict(finetune_epochs=3), ("--finetune-epochs", "--personalization")),
    (dict(personalization="finetune", ditto_lambda=0.3), ("--ditto-lambda", "--personalization ditto")),
    (dict(freeze_body=True), ("--freeze-body", "--init-from")),
]  # fmt: skip


@pytest.mark.parametrize(("options", "named"), NO_EFFECT, ids=[next(iter(o)) + "-" + n[1] for o, n in NO_EFFECT])
def test_an_option_without_effect_is_an_error_naming_both_options(options, named):
    with pytest.raises(ValueError) as refused:
        RunConfig(**options)
    assert all(option in str(refused.value) for option in named), str(refused.value)


def test_every_conditional_option_is_refused_where_it_does_not_act():
    covered = {named[0].removeprefix("--").replace("-", "_") for _, named in NO_EFFECT}
    assert covered >= {name for name, _, _ in EFFECTIVE_ONLY} - {"labels", "mapping"}  # those two: test_cli_errors


def test_options_that_act_are_accepted():
    RunConfig(dp=True, noise_multiplier=1.0, max_grad_norm=0.5, delta=1e-6, accountant="prv")
    RunConfig(dp=True, noise_multiplier=1.0, target_epsilon=3.0)  # a fixed noise with a budget
    RunConfig(hospital_dp_noise=1.0, hospital_dp_clip=2.0, delta=1e-6)
    RunConfig(strategy="fedprox", proximal_mu=0.1)
    RunConfig(personalization="finetune", finetune_epochs=3)
    RunConfig(partition="dirichlet", alpha=0.1, hospitals=6)
    RunConfig(dataset="physionet2012", data_dir="/d", sets="c", partition="iid", hospitals=3)
    without = RunConfig(dp=True, target_epsilon=2.0, max_grad_norm=0.5, delta=1e-6).without_dp()
    assert (without.dp, without.target_epsilon, without.max_grad_norm, without.delta) == (False, 0.0, 1.0, 1e-5)


def test_a_cosine_schedule_decays_the_local_learning_rate_over_the_planned_rounds():
    import math

    cosine = RunConfig(rounds=4, lr=0.01, lr_schedule="cosine")
    assert [cosine.round_lr(r) for r in (1, 3)] == [0.01, pytest.approx(0.005)]
    assert cosine.round_lr(4) == pytest.approx(0.01 * (1 + math.cos(3 * math.pi / 4)) / 2)
    assert {RunConfig(rounds=4, lr=0.01).round_lr(r) for r in range(1, 5)} == {0.01}
    with pytest.raises(ValueError, match="--lr-schedule must be one of constant, cosine"):
        RunConfig(lr_schedule="step")
