import tomllib
from pathlib import Path

import pytest

from fedicu.shared.config import RunConfig


def test_flower_app_defaults_are_the_run_config_defaults():
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert pyproject["tool"]["flwr"]["app"]["config"] == RunConfig().to_flower()


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
     ({"dp": True}, "--dp needs"), ({"accountant": "gdp"}, "--accountant")],
)  # fmt: skip
def test_bad_privacy_settings_are_rejected_before_anything_runs(changes, message):
    with pytest.raises(ValueError, match=message):
        RunConfig(**changes)
