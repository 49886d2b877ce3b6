"""--init-from RUN_DIR starts a run from a trained model; --freeze-body trains its head alone."""

import dataclasses

import pytest
import torch
from flwr.clientapp import ClientApp

from fedicu.client.client_app import app as hospital_app
from fedicu.server.federated_run import LogProgress
from fedicu.shared.config import RunConfig
from fedicu.shared.contract import TrainReply
from fedicu.shared.federation import prepare
from fedicu.shared.model import HEAD, INPUT_WEIGHTS, MortalityLSTM, model_config_of
from fedicu.shared.run_dir import BEST_MODEL, FINAL_MODEL, RunDirectory
from fedicu.shared.transfer import starting_weights
from fedicu.simulations import baselines
from fedicu.simulations.inprocess import run_in_process

PRETRAIN = RunConfig(hospitals=2, synthetic_stays=400, rounds=2, seed=5)
TUNE = RunConfig(hospitals=3, synthetic_stays=600, rounds=2, seed=6)  # another cohort


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    run_dir = RunDirectory(tmp_path_factory.mktemp("pretrained") / "run").create()
    run_in_process(PRETRAIN, prepare(PRETRAIN), run_dir, LogProgress())
    return run_dir


def body(state: dict) -> dict:
    return {name: tensor for name, tensor in state.items() if not name.startswith(HEAD)}


def test_a_run_starts_from_the_trained_best_model(pretrained):
    config = dataclasses.replace(TUNE, init_from=str(pretrained.path))
    start, not_taken = starting_weights(config, model_config_of(config))
    best = pretrained.load_model(BEST_MODEL)["state_dict"]
    assert not_taken == [] and sorted(start) == sorted(best)
    assert all(torch.equal(start[name], best[name]) for name in best)
    fresh, _ = starting_weights(TUNE, model_config_of(TUNE))
    assert not torch.equal(fresh["head.weight"], best["head.weight"])  # without --init-from: a new model


@pytest.mark.parametrize("decay", [False, True], ids=["plain", "input-decay"])
@pytest.mark.parametrize("variables", ["HR,MAP,Temp", "HR,MAP"])
def test_a_model_reading_other_variables_takes_all_but_its_input_weights(pretrained, tmp_path, variables, decay):
    """Other variables, as many (same shape, other meaning) or not: new input weights, and new
    decay rates (one per variable)."""
    source = dataclasses.replace(PRETRAIN, variables="HR,Temp", input_decay=decay)
    pretrained_on_two = RunDirectory(tmp_path / "two").create()
    run_in_process(source, prepare(source), pretrained_on_two, LogProgress())
    config = dataclasses.replace(TUNE, init_from=str(pretrained_on_two.path), variables=variables, input_decay=decay)
    start, not_taken = starting_weights(config, model_config_of(config))
    best = pretrained_on_two.load_model(BEST_MODEL)["state_dict"]
    fresh, _ = starting_weights(dataclasses.replace(config, init_from=""), model_config_of(config))
    per_variable = [INPUT_WEIGHTS, *(["decay.weight", "decay.bias"] if decay else [])]
    assert sorted(not_taken) == sorted(per_variable)
    assert all(torch.equal(start[name], fresh[name]) for name in per_variable)
    assert all(torch.equal(start[name], best[name]) for name in best if name not in not_taken)
    with pytest.raises(ValueError, match=r"--freeze-body: .*lstm.weight_ih_l0 of --init-from .* do not fit"):
        starting_weights(dataclasses.replace(config, freeze_body=True), model_config_of(config))


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"hidden_size": 32}, r"hidden size 64, this run asks for 32 \(--hidden-size\)"),
     ({"attention": True}, r"attention False, this run asks for True \(--attention\)"),
     ({"layers": 2}, r"num layers 1, this run asks for 2 \(--layers\)"),
     ({"input_decay": True}, r"input decay False, this run asks for True \(--input-decay\)")],
)  # fmt: skip
def test_another_architecture_is_refused_naming_the_option(pretrained, changes, message):
    config = dataclasses.replace(TUNE, init_from=str(pretrained.path), **changes)
    with pytest.raises(ValueError, match=message):
        starting_weights(config, model_config_of(config))


def recording(replies: list) -> ClientApp:
    """The hospital app, keeping every training reply it sends."""
    app = ClientApp()

    def kept(msg, context):
        reply = hospital_app(msg, context)
        replies.append(reply)
        return reply

    app.query("feature_stats")(kept)
    app.query("cross_site")(kept)
    app.evaluate()(hospital_app)
    app.train()(kept)
    return app


@pytest.mark.parametrize(
    "server", [{}, {"strategy": "fedadam"}, {"hospital_dp_noise": 0.5}], ids=["fedavg", "fedadam", "hospital-dp"]
)
def test_a_frozen_body_leaves_federated_training_unchanged_and_the_head_learns(pretrained, tmp_path, server):
    config = dataclasses.replace(TUNE, init_from=str(pretrained.path), freeze_body=True, **server)
    run_dir = RunDirectory(tmp_path / "run").create()
    replies: list = []
    run_in_process(config, prepare(config), run_dir, LogProgress(), client_app=recording(replies))
    start = pretrained.load_model(BEST_MODEL)["state_dict"]
    trained = [
        TrainReply.from_content(reply.content).weights.to_torch_state_dict()
        for reply in replies
        if reply.metadata.message_type == "train"
    ]
    assert len(trained) == config.rounds * config.hospitals
    for weights in trained:  # every hospital kept the body as it came
        assert all(torch.equal(tensor, start[name]) for name, tensor in body(weights).items())
    for saved in (BEST_MODEL, FINAL_MODEL):
        state = run_dir.load_model(saved)["state_dict"]
        assert all(torch.equal(tensor, start[name]) for name, tensor in body(state).items())
    final = run_dir.load_model(FINAL_MODEL)["state_dict"]
    assert not torch.equal(final["head.weight"], start["head.weight"])


def test_the_centralized_baseline_starts_there_too(pretrained, tmp_path):
    config = dataclasses.replace(TUNE, init_from=str(pretrained.path), freeze_body=True, rounds=1)
    run_dir = RunDirectory(tmp_path / "central").create()
    baselines.centralized(config, prepare(config), run_dir)
    start = pretrained.load_model(BEST_MODEL)["state_dict"]
    state = run_dir.load_model(BEST_MODEL)["state_dict"]
    assert all(torch.equal(tensor, start[name]) for name, tensor in body(state).items())
    assert not torch.equal(state["head.weight"], start["head.weight"])
    model = MortalityLSTM(model_config_of(config))
    model.load_state_dict(state)  # a model of this run's own architecture
