"""Secure aggregation (SecAgg+) in simulation: the same average as plain aggregation, whichever
protocol stage a hospital drops out in, and a clear failure when too few hospitals remain."""

import pytest
import torch
from flwr.clientapp import ClientApp
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Stage

from client.client_app import app as hospital_app
from client.client_app import train as hospital_train
from client.secure_aggregation import secure_aggregation_mod
from server.federated_run import LogProgress
from server.run_dir import FINAL_MODEL, RunDirectory
from shared.config import RunConfig
from shared.federation import prepare
from simulations.simulate import simulate

SMALL = dict(hospitals=3, synthetic_stays=900, rounds=1, seed=5)


def crashing(partitions: set[int], stage: str = Stage.COLLECT_MASKED_VECTORS) -> ClientApp:
    """The hospital app, except that some hospitals crash at one stage of the protocol (at
    their training, in a run without secure aggregation)."""
    app = ClientApp()

    def outage(msg, context, call_next):
        protocol = msg.content.config_records.get(RECORD_KEY_CONFIGS)
        at_stage = protocol["stage"] == stage if protocol else True
        if at_stage and context.node_config["partition-id"] in partitions:
            raise RuntimeError("simulated site outage")
        return call_next(msg, context)

    @app.query("feature_stats")
    def stats(msg, context):
        return hospital_app(msg, context)

    @app.train(mods=[outage, secure_aggregation_mod])
    def train(msg, context):
        return hospital_train(msg, context)  # the handler: the whole app would apply the mod twice

    @app.evaluate()
    def evaluate(msg, context):
        return hospital_app(msg, context)

    return app


def run(path, client_app, **overrides) -> RunDirectory:
    config = RunConfig(**{**SMALL, **overrides})
    run_dir = RunDirectory(path).create()
    simulate(config, prepare(config), run_dir, LogProgress(), client_app=client_app)
    return run_dir


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> dict[str, dict]:
    """Final weights of plain-aggregation runs: all three hospitals, and without hospital 1."""
    path = tmp_path_factory.mktemp("plain")
    return {
        "all": run(path / "all", crashing(set())).load_model(FINAL_MODEL)["state_dict"],
        "without 1": run(path / "without-1", crashing({1})).load_model(FINAL_MODEL)["state_dict"],
    }


@pytest.mark.parametrize(
    "stage, trained, expected",
    [
        (Stage.SETUP, 2, "without 1"),
        (Stage.SHARE_KEYS, 2, "without 1"),
        (Stage.COLLECT_MASKED_VECTORS, 2, "without 1"),
        (Stage.UNMASK, 3, "all"),  # its masked weights had arrived: it stays in the sum
    ],
)
def test_secure_average_equals_the_plain_one_whatever_stage_a_hospital_drops_out_in(tmp_path, plain, stage, trained, expected):
    secure = run(tmp_path / "secure", crashing({1}, stage), secagg=True)

    row = secure.read_json("metrics.json")[0]
    assert (row["hospitals_trained"], row["hospitals_failed"]) == (trained, 3 - trained)
    # Masks cancel and a dropped hospital's are removed: only quantization error (~1e-5) remains.
    weights = secure.load_model(FINAL_MODEL)["state_dict"]
    for name, value in plain[expected].items():
        assert torch.allclose(weights[name], value, atol=5e-5), name
    assert not torch.equal(weights["head.weight"], plain[expected]["head.weight"])  # it went through quantization


def test_too_few_hospitals_left_stop_secure_aggregation_clearly(tmp_path):
    with pytest.raises(RuntimeError, match="stopped with 1 of 3 hospitals; SecAgg\\+ needs at least half"):
        run(tmp_path / "run", crashing({0, 2}), secagg=True)
    assert (tmp_path / "run" / "run.json").exists()
    assert not (tmp_path / "run" / "model_card.json").exists()
