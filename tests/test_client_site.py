"""The ClientApp as deployed: its data comes from the node config, not from a simulation."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Context, Message, RecordDict

from fedicu.client.client_app import app
from fedicu.shared import compat
from fedicu.shared.config import RunConfig
from fedicu.shared.contract import (
    ARRAYS,
    METRICS,
    SITE,
    WEIGHT,
    FeatureStatsReply,
    FeatureStatsRequest,
    PersonalizeReply,
    PersonalizeRequest,
    TrainReply,
    TrainRequest,
)
from fedicu.shared.datasets import physionet2012, synthetic
from fedicu.shared.model import MortalityLSTM, model_config_of
from fedicu.shared.preprocessing import NORMALIZED_CHANNELS
from tests.test_tables import folder_records, write_tables


@pytest.fixture(autouse=True)
def _task_identity():
    """Flower's runtime sets which task this process runs before any message is built."""
    with compat.in_a_task(run_id=1, node_id=7):
        yield


@pytest.fixture
def site(tmp_path):
    physionet2012.write(synthetic.generate(hospitals=2, stays=300, seed=8), tmp_path, "b")
    return Context(
        run_id=1,
        node_id=7,
        node_config={"data-dir": str(tmp_path), "hospital": "st-elsewhere", "state-dir": str(tmp_path / "state")},
        state=RecordDict(),
        run_config={},
    )


RUN = dict(
    seed=0, task="in_hospital_death", test_fraction=0.2, val_fraction=0.2, dp=False, delta=1e-5, accountant="rdp"
)


def _stats_message(**settings) -> Message:
    return FeatureStatsRequest(**{**RUN, **settings}).message(7)


def test_a_deployed_hospital_reads_its_own_folder_and_names_itself(site):
    reply = app(_stats_message(), site)
    assert not reply.has_error(), reply.error
    stats = FeatureStatsReply.from_content(reply.content)
    assert stats.hospital == "st-elsewhere"
    # 20 % of its stays kept for its own test split, 20 % of the rest for validation
    assert stats.train_stays == pytest.approx(0.8 * 0.8 * 300, abs=2)
    assert stats.stats is not None
    counts = stats.stats.count
    assert counts.shape == (len(NORMALIZED_CHANNELS),) and counts.sum() > 0


def test_a_site_reads_the_data_format_its_node_config_names_and_sends_only_skip_counts(tmp_path):
    physionet = tmp_path / "physionet"
    physionet2012.write(synthetic.generate(hospitals=1, stays=120, seed=3), physionet, "a")
    tables = write_tables(folder_records(physionet, "a"), tmp_path / "tables")  # the same stays as tables
    first = min((physionet / "set-a").glob("*.txt"), key=lambda path: int(path.stem))
    first.write_text(first.read_text() + "10:45,,1.9\n11:00,,2\n")  # rows a real export holds
    nodes: dict[str, dict[str, bool | float | int | str]] = {
        "physionet": {"data-dir": str(physionet)},
        "tables": {"data-dir": str(tables), "data-format": "tables"},
    }
    replies = {}
    for name, node in nodes.items():
        context = Context(
            run_id=1, node_id=7, node_config={**node, "hospital": name}, state=RecordDict(), run_config={}
        )
        reply = app(_stats_message(), context)
        assert not reply.has_error(), reply.error
        replies[name] = FeatureStatsReply.from_content(reply.content)
    assert json.loads(replies["physionet"].rows_skipped or "") == {"": 2}  # counts only: no file name leaves
    assert json.loads(replies["tables"].rows_skipped or "") == {}
    assert replies["physionet"].train_stays == replies["tables"].train_stays
    got, want = replies["tables"].stats, replies["physionet"].stats
    assert got is not None and want is not None
    np.testing.assert_allclose(got.total, want.total) and np.testing.assert_array_equal(got.count, want.count)


def test_an_unknown_data_format_in_the_node_config_is_refused_by_name(tmp_path):
    node: dict[str, bool | float | int | str] = {"data-dir": str(tmp_path), "data-format": "hl7", "hospital": "x"}
    context = Context(run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config={})
    with pytest.raises(ValueError, match="node config data-format: unknown data format 'hl7'"):
        app(_stats_message(), context)


def _train_fields(**settings) -> dict:
    return {
        **RUN,
        "model": model_config_of(RunConfig()),
        "norm_mean": [0.0] * len(NORMALIZED_CHANNELS),
        "norm_std": [1.0] * len(NORMALIZED_CHANNELS),
        "server_round": 1,
        "local_epochs": 1,
        "lr": 0.003,
        "batch_size": 64,
        "planned_rounds": 1,
        "target_epsilon": 0.0,
        "noise_multiplier": 0.0,
        "max_grad_norm": 1.0,
        "proximal_mu": 0.0,
        "freeze_body": False,
        "augment_mask": 0.0,
        "augment_shift": 0,
        "member": 0,
        "ditto_lambda": 0.0,
        "finetune_epochs": 0,
        **settings,
    }


def _train_message(torch_state: dict, **settings) -> Message:
    request = TrainRequest(**_train_fields(**settings))
    content = request.to_content()
    content[ARRAYS] = ArrayRecord(torch_state)
    return Message(content, dst_node_id=7, message_type=TrainRequest.message_type)


def test_a_deployed_hospital_trains_the_global_model(site):
    torch_state = MortalityLSTM(model_config_of(RunConfig())).state_dict()
    reply = app(_train_message(torch_state), site)
    assert not reply.has_error(), reply.error
    trained_reply = TrainReply.from_content(reply.content)
    assert trained_reply.weights is not None
    trained = trained_reply.weights.to_torch_state_dict()
    assert set(trained) == set(torch_state)
    assert any(not np.allclose(trained[k].numpy(), torch_state[k].numpy()) for k in trained)
    assert trained_reply.train_loss is not None and trained_reply.train_loss > 0


def test_a_site_without_physionet_sets_is_refused_by_name(tmp_path):
    context = Context(run_id=1, node_id=7, node_config={"data-dir": str(tmp_path)}, state=RecordDict(), run_config={})
    with pytest.raises(ValueError, match="no set-a, set-b or set-c"):  # Flower sends this back as the error
        app(_stats_message(), context)


def test_a_hospital_refuses_dp_with_delta_not_below_one_over_n_before_training(site):
    reply = app(_stats_message(dp=True, delta=0.01), site)
    assert reply.has_error()
    assert "st-elsewhere: --delta 0.01 must be below 1/n" in str(reply.error.reason)


DP_TRAIN = dict(dp=True, noise_multiplier=1.0, delta=1e-3)


def test_under_dp_nothing_computed_from_training_stays_leaves_but_the_weights(site):
    stats = app(_stats_message(dp=True, delta=1e-3), site)
    assert not stats.has_error(), stats.error
    assert set(stats.content) == {METRICS, SITE} and set(stats.content[METRICS]) == {WEIGHT}

    torch_state = MortalityLSTM(model_config_of(RunConfig())).state_dict()
    reply = app(_train_message(torch_state, **DP_TRAIN), site)
    assert not reply.has_error(), reply.error
    assert set(reply.content[METRICS]) == {WEIGHT}  # no raw training loss, no local AUROC
    assert set(reply.content) == {ARRAYS, METRICS, "privacy", SITE}


def _fresh_site(site: Context) -> Context:
    return Context(run_id=1, node_id=7, node_config=site.node_config, state=RecordDict(), run_config={})


def _dp_weights(context: Context, torch_state: dict) -> dict:
    reply = app(_train_message(torch_state, **DP_TRAIN), context)
    assert not reply.has_error(), reply.error
    return reply.content.array_records[ARRAYS].to_torch_state_dict()


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


def _finetune(context: Context, torch_state: dict, **settings) -> Message:
    request = PersonalizeRequest(**_train_fields(**{**DP_TRAIN, "finetune_epochs": 1, **settings}), method="finetune")
    return app(request.message(7, ArrayRecord(torch_state)), context)


def test_a_deployed_sites_fine_tuning_under_dp_goes_into_its_ledger_on_disk(site):
    torch.manual_seed(0)
    start = MortalityLSTM(model_config_of(RunConfig())).state_dict()
    _dp_weights(site, start)
    reply = _finetune(_fresh_site(site), start)  # after a restart, too: the ledger is read from disk
    assert not reply.has_error(), reply.error
    state_dir = Path(site.node_config["state-dir"])
    on_disk = json.loads((state_dir / "privacy-st-elsewhere-run1.json").read_text())
    assert [entry["steps"] > 0 for entry in on_disk["history"]] == [True, True]
    ledger = PersonalizeReply.from_content(reply.content).ledger
    assert ledger is not None and json.loads(ledger) == on_disk
    assert (state_dir / "personal_model-st-elsewhere-run1.pt").exists()


def test_a_deployed_site_declines_fine_tuning_its_budget_cannot_pay_for(site):
    """A fixed noise multiplier too small for the target: refused before anything trains."""
    start = MortalityLSTM(model_config_of(RunConfig())).state_dict()
    reply = _finetune(site, start, noise_multiplier=0.5, target_epsilon=0.5, finetune_epochs=3)
    assert reply.has_error() and "st-elsewhere: privacy budget" in str(reply.error.reason)
    state_dir = Path(site.node_config["state-dir"])
    assert not state_dir.exists() or list(state_dir.iterdir()) == []  # no personal model, no ledger


def test_a_long_lived_site_reads_its_folder_again_only_when_a_file_in_it_changed(site, tmp_path):
    """A site's ClientApp runs as one process for many messages (client/resident.py)."""
    from fedicu.shared.datasets import DataSource
    from fedicu.shared.federation import load_site

    source = DataSource("physionet2012", str(tmp_path), sets="b")
    first = load_site(source, "st-elsewhere", 0.2, 0.2, 0)
    assert load_site(source, "st-elsewhere", 0.2, 0.2, 0) is first  # unchanged: not read again
    before = FeatureStatsReply.from_content(app(_stats_message(), site).content).train_stays

    shutil.rmtree(tmp_path / "set-b")  # the site's new export replaces the old one
    (tmp_path / "Outcomes-b.txt").unlink()
    physionet2012.write(synthetic.generate(hospitals=2, stays=400, seed=9), tmp_path, "b")
    again = load_site(source, "st-elsewhere", 0.2, 0.2, 0)
    assert again is not first and len(again.train) + len(again.val) + len(again.test) == 400
    after = FeatureStatsReply.from_content(app(_stats_message(), site).content).train_stays
    assert (before, after) == (pytest.approx(0.64 * 300, abs=2), pytest.approx(0.64 * 400, abs=2))
