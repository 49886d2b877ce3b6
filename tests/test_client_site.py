"""The ClientApp as deployed: its data comes from the node config, not from a simulation."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from flwr.supercore.task_identity import TaskIdentity

from client.client_app import app
from shared.datasets import physionet2012, synthetic
from shared.config import RunConfig
from shared.model import MortalityLSTM, model_config_of
from shared.preprocessing import NORMALIZED_CHANNELS


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch):
    """Flower's runtime sets which task this process runs before any message is built."""
    for name, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 7)):
        monkeypatch.setattr(TaskIdentity, name, value)


@pytest.fixture
def site(tmp_path):
    physionet2012.write(synthetic.generate(hospitals=2, stays=300, seed=8), tmp_path, "b")
    return Context(
        run_id=1, node_id=7,
        node_config={"data-dir": str(tmp_path), "hospital": "st-elsewhere", "state-dir": str(tmp_path / "state")},
        state=RecordDict(), run_config={},
    )  # fmt: skip


def _config(**extra) -> ConfigRecord:
    base = {"seed": 0, "val-fraction": 0.2, "dp": False, "delta": 1e-5, "accountant": "rdp"}
    return ConfigRecord({**base, **extra})


def test_a_deployed_hospital_reads_its_own_folder_and_names_itself(site):
    msg = Message(RecordDict({"config": _config()}), dst_node_id=7, message_type="query.feature_stats")
    reply = app(msg, site)
    assert not reply.has_error(), reply.error
    assert reply.content["site"]["hospital"] == "st-elsewhere"
    n_train = reply.content["metrics"]["num-examples"]
    assert n_train == pytest.approx(0.8 * 300, abs=2)  # 20 % of its stays kept for validation
    counts = reply.content["stats"]["count"].numpy()
    assert counts.shape == (len(NORMALIZED_CHANNELS),) and counts.sum() > 0


def _train_message(torch_state: dict, **extra) -> Message:
    model_config = model_config_of(RunConfig())
    config = _config(
        **{f"model-{k.replace('_', '-')}": v for k, v in model_config.to_dict().items()},
        **{"norm-mean": [0.0] * len(NORMALIZED_CHANNELS), "norm-std": [1.0] * len(NORMALIZED_CHANNELS)},
        **{"server-round": 1, "local-epochs": 1, "lr": 0.003, "batch-size": 64},
        **extra,
    )
    return Message(RecordDict({"arrays": ArrayRecord(torch_state), "config": config}), dst_node_id=7, message_type="train")


def test_a_deployed_hospital_trains_the_global_model(site):
    torch_state = MortalityLSTM(model_config_of(RunConfig())).state_dict()
    reply = app(_train_message(torch_state), site)
    assert not reply.has_error(), reply.error
    trained = reply.content["arrays"].to_torch_state_dict()
    assert set(trained) == set(torch_state)
    assert any(not np.allclose(trained[k].numpy(), torch_state[k].numpy()) for k in trained)
    assert reply.content["metrics"]["train-loss"] > 0


def test_a_site_without_physionet_sets_is_refused_by_name(tmp_path):
    context = Context(run_id=1, node_id=7, node_config={"data-dir": str(tmp_path)}, state=RecordDict(), run_config={})
    msg = Message(RecordDict({"config": _config()}), dst_node_id=7, message_type="query.feature_stats")
    with pytest.raises(ValueError, match="no set-a, set-b or set-c"):  # Flower sends this back as the error
        app(msg, context)


def test_a_hospital_refuses_dp_with_delta_not_below_one_over_n_before_training(site):
    msg = Message(RecordDict({"config": _config(dp=True, delta=0.01)}), dst_node_id=7, message_type="query.feature_stats")
    reply = app(msg, site)
    assert reply.has_error()
    assert "st-elsewhere: --delta 0.01 must be below 1/n" in reply.error.reason


DP_TRAIN = {
    "dp": True, "target-epsilon": 0.0, "noise-multiplier": 1.0, "max-grad-norm": 1.0, "planned-rounds": 1,
    "delta": 1e-3,
}  # fmt: skip


def test_under_dp_nothing_computed_from_training_stays_leaves_but_the_weights(site):
    stats = app(Message(RecordDict({"config": _config(dp=True, delta=1e-3)}), dst_node_id=7, message_type="query.feature_stats"), site)
    assert not stats.has_error(), stats.error
    assert "stats" not in stats.content and set(stats.content["metrics"]) == {"num-examples"}

    torch_state = MortalityLSTM(model_config_of(RunConfig())).state_dict()
    reply = app(_train_message(torch_state, **DP_TRAIN), site)
    assert not reply.has_error(), reply.error
    assert set(reply.content["metrics"]) == {"num-examples"}  # no raw training loss, no local AUROC
    assert set(reply.content) == {"arrays", "metrics", "privacy", "site"}


def _fresh_site(site: Context) -> Context:
    return Context(run_id=1, node_id=7, node_config=site.node_config, state=RecordDict(), run_config={})


def _dp_weights(context: Context, torch_state: dict) -> dict:
    reply = app(_train_message(torch_state, **DP_TRAIN), context)
    assert not reply.has_error(), reply.error
    return reply.content["arrays"].to_torch_state_dict()


def test_a_deployed_site_draws_dp_noise_from_the_os_not_from_the_public_seed(site):
    # Same seed, round, hospital and starting weights: seeded noise would give identical weights.
    torch.manual_seed(0)
    start = MortalityLSTM(model_config_of(RunConfig())).state_dict()
    first, second = _dp_weights(_fresh_site(site), start), _dp_weights(_fresh_site(site), start)
    assert any(not np.allclose(first[k].numpy(), second[k].numpy()) for k in first)


def test_a_deployed_site_keeps_its_ledger_on_disk_and_a_restart_goes_on_from_it(site):
    torch.manual_seed(0)
    start = MortalityLSTM(model_config_of(RunConfig())).state_dict()
    _dp_weights(site, start)
    ledger_file = Path(site.node_config["state-dir"]) / "privacy-st-elsewhere-run1.json"
    first = json.loads(ledger_file.read_text())
    assert len(first["history"]) == 1 and first["epsilon"] > 0
    _dp_weights(_fresh_site(site), start)  # the SuperNode restarted: its node state is gone
    second = json.loads(ledger_file.read_text())
    assert len(second["history"]) == 2 and second["epsilon"] > first["epsilon"]
