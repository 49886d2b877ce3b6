import tomllib
from pathlib import Path

import pytest

from shared.config import RunConfig


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
    with pytest.raises(ValueError, match="--strategy"):
        RunConfig.from_flower({"strategy": "fedsgd"})
    with pytest.raises(ValueError, match="--data-dir is required"):
        RunConfig(dataset="physionet2012")
