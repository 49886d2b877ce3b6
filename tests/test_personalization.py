"""--personalization finetune: every hospital adapts the selected model to its own stays, keeps
it on its own disk, and sends back numbers only."""

import copy
import sys
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Context, RecordDict
from flwr.clientapp import ClientApp

from fedicu.client.client_app import _kept_file
from fedicu.client.client_app import app as hospital_app
from fedicu.client.personalization import finetune
from fedicu.server.federated_run import LogProgress
from fedicu.shared import compat
from fedicu.shared.config import RunConfig
from fedicu.shared.contract import PersonalizeReply, PersonalizeRequest, TrainReply, TrainRequest
from fedicu.shared.datasets import synthetic
from fedicu.shared.federation import prepare
from fedicu.shared.metrics import auroc
from fedicu.shared.model import ModelConfig, MortalityLSTM
from fedicu.shared.preprocessing import FeatureStats, Normalization, clean, n_features, to_features, to_sequences
from fedicu.shared.privacy.accounting import calibrate_noise, epsilon_of
from fedicu.shared.privacy.per_sample_lstm import PoissonSchedule
from fedicu.shared.run_dir import (
    BEST_MODEL,
    CROSS_SITE_JSON,
    HOSPITAL_JSON,
    MODEL_CARD,
    PERSONALIZATION_JSON,
    PRIVACY_FILE,
    SITES_DIR,
    RunDirectory,
)
from fedicu.shared.training import predict, train_epochs
from fedicu.simulations.cli import main
from fedicu.simulations.cli.common import personalization_table
from fedicu.simulations.inprocess import run_in_process
from tests.test_ditto import _recording
from tests.test_ditto import _run as _run_recorded

CONFIG = RunConfig(hospitals=3, synthetic_stays=900, rounds=2, seed=3, personalization="finetune", finetune_epochs=3)


def recording(replies: list) -> ClientApp:
    """The hospital app, keeping every reply it sends."""
    app = ClientApp()

    def kept(msg, context):
        reply = hospital_app(msg, context)
        replies.append((msg.metadata.message_type, reply))
        return reply

    app.query("feature_stats")(kept)
    app.query(PersonalizeRequest.action)(kept)
    app.query("cross_site")(kept)
    app.train()(kept)
    app.evaluate()(kept)
    return app


@pytest.fixture(scope="module")
def personalized(tmp_path_factory):
    replies: list = []
    federation = prepare(CONFIG)
    run_dir = RunDirectory(tmp_path_factory.mktemp("personalized") / "run").create()
    run_in_process(CONFIG, federation, run_dir, LogProgress(), client_app=recording(replies))
    return run_dir, federation, replies


def test_each_hospital_keeps_a_model_that_reproduces_the_numbers_it_sent(personalized):
    run_dir, federation, _ = personalized
    chosen = {row["hospital"]: row for row in run_dir.read_json(PERSONALIZATION_JSON)}
    rows = {(r["model"], r["hospital"]): r for r in run_dir.read_json(CROSS_SITE_JSON)}
    best = run_dir.load_model(BEST_MODEL)
    norm = Normalization.from_dict(run_dir.read_json(MODEL_CARD)["normalization"])
    assert sorted(chosen) == [h.name for h in federation.hospitals]
    for hospital in federation.hospitals:
        row = chosen[hospital.name]
        assert 0 <= row["epochs"] <= CONFIG.finetune_epochs
        assert row["val_auroc"] >= row["val_auroc_global"]  # chosen on validation: never below the start
        kept = torch.load(run_dir.path / SITES_DIR / hospital.name / "personal_model.pt", weights_only=True)
        assert kept["epochs"] == row["epochs"] and kept["personalization"] == "finetune"
        same = all(torch.equal(kept["state_dict"][k], best["state_dict"][k]) for k in best["state_dict"])
        assert same == (row["epochs"] == 0)  # epoch 0 is the global model itself
        model = MortalityLSTM(ModelConfig(**kept["model_config"]))
        model.load_state_dict(kept["state_dict"])
        for part, reported in ((hospital.val, row["val_auroc"]), (hospital.test, rows[("personal/finetune", hospital.name)]["auroc"])):  # fmt: skip
            assert auroc(part.labels, predict(model, to_features(part, norm))) == pytest.approx(reported, abs=1e-9)
        assert rows[("federated/best", hospital.name)]["status"] == "ok"
    assert any(row["epochs"] > 0 for row in chosen.values())  # this cohort gives fine-tuning something


def test_no_reply_carries_a_personal_model(personalized):
    """Every reply a hospital sent is inspected: personalize replies hold no weights at all, and
    no reply holds a personal model (those fine-tuned for at least one epoch: the others are the
    global model)."""
    run_dir, federation, replies = personalized
    kept = [torch.load(run_dir.path / SITES_DIR / h.name / "personal_model.pt", weights_only=True) for h in federation.hospitals]  # fmt: skip
    personal = [k["state_dict"] for k in kept if k["epochs"] > 0]
    assert personal
    kinds = [kind for kind, _ in replies]
    assert kinds.count(f"query.{PersonalizeRequest.action}") == len(federation.hospitals)
    for kind, reply in replies:
        if kind == f"query.{PersonalizeRequest.action}":
            assert not reply.content.array_records
        for record in reply.content.array_records.values():
            sent = record.to_torch_state_dict()
            for state in personal:
                assert set(state) != set(sent) or not all(torch.equal(state[k], sent[k]) for k in state), kind


def _trained(x: np.ndarray, y: np.ndarray, **settings):
    """Fine-tuning's training without DP-SGD, as a hospital runs it."""
    return lambda model, after_epoch: train_epochs(model, x, y, after_epoch=after_epoch, **settings)


def test_finetune_keeps_the_global_model_when_no_epoch_beats_it_on_validation():
    seqs = to_sequences(clean(synthetic.generate(hospitals=1, stays=200, seed=1))[0])
    x = to_features(seqs, Normalization.from_stats(FeatureStats.of(seqs)))
    torch.manual_seed(0)
    model = MortalityLSTM(ModelConfig(n_features=n_features(), hidden_size=8))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    one_class = (x[:40], np.zeros(40))  # validation AUROC is undefined: nothing can beat the start
    tuned = finetune(model, one_class, _trained(x, seqs.labels, epochs=2, lr=0.01, batch_size=64, seed=0))
    assert tuned.epochs == 0 and np.isnan(tuned.val_auroc_global)
    assert all(torch.equal(before[k], v) for k, v in tuned.model.state_dict().items())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--personalization", "fedper"], "--personalization must be one of finetune, ditto, fedrep"),
        (["--finetune-epochs", "3"], "--finetune-epochs has no effect without --personalization finetune"),
    ],
    ids=["unknown", "epochs-alone"],
)
def test_a_personalization_the_run_cannot_do_is_refused_before_it_starts(
    options, message, monkeypatch, capsys, tmp_path
):
    monkeypatch.setattr(sys, "argv", ["fedicu", "simulate", *options, "--out", str(tmp_path / "run")])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_the_epoch_kept_is_the_one_best_on_validation():
    seqs = to_sequences(clean(synthetic.generate(hospitals=1, stays=400, seed=2))[0])
    x = to_features(seqs, Normalization.from_stats(FeatureStats.of(seqs)))
    train, val = (x[:300], seqs.labels[:300]), (x[300:], seqs.labels[300:])
    torch.manual_seed(1)
    start = MortalityLSTM(ModelConfig(n_features=n_features(), hidden_size=8))
    replay = copy.deepcopy(start)
    scores = [auroc(val[1], predict(replay, val[0]))]  # the same training, each epoch's score recorded
    train_epochs(replay, *train, epochs=6, lr=0.02, batch_size=64, seed=5,
                 after_epoch=lambda epoch: scores.append(auroc(val[1], predict(replay, val[0]))))  # fmt: skip
    tuned = finetune(start, val, _trained(*train, epochs=6, lr=0.02, batch_size=64, seed=5))
    assert tuned.epochs == int(np.argmax(scores)) and 0 < tuned.epochs < 6, scores  # a peak inside the range
    assert tuned.val_auroc == scores[tuned.epochs] == auroc(val[1], predict(tuned.model, val[0]))


PERSONALIZE: dict[str, Any] = dict(
    seed=0, task="in_hospital_death", test_fraction=0.2, val_fraction=0.2, dp=False, delta=1e-5, accountant="rdp",
    server_round=1, norm_mean=[0.0], norm_std=[1.0], model=ModelConfig(n_features=n_features(), hidden_size=8),
    local_epochs=1, lr=0.01, batch_size=8, planned_rounds=1, target_epsilon=0.0, noise_multiplier=0.0,
    max_grad_norm=1.0, proximal_mu=0.0, freeze_body=False, augment_mask=0.0, augment_shift=0, member=0,
    ditto_lambda=0.0, finetune_epochs=1, method="finetune",
)  # fmt: skip


def test_a_site_refuses_a_personalization_it_does_not_offer(tmp_path):
    request = PersonalizeRequest(**{**PERSONALIZE, "method": "fedper"})
    model = MortalityLSTM(request.model)
    context = Context(run_id=1, node_id=1, node_config={"state-dir": str(tmp_path)}, state=RecordDict(), run_config={})
    with compat.in_a_task(run_id=1, node_id=1):
        reply = hospital_app(request.message(1, ArrayRecord(model.state_dict())), context)
    assert reply.has_error() and "this site offers finetune, ditto, fedrep" in str(reply.error.reason)
    assert list(tmp_path.iterdir()) == []  # nothing trained, nothing kept


def test_a_deployed_site_keeps_its_personal_model_in_its_own_state_dir(tmp_path):
    request = PersonalizeRequest(**PERSONALIZE, site_dir="/etc/elsewhere")
    deployed = Context(run_id=7, node_id=1, node_config={"data-dir": "/data", "state-dir": str(tmp_path)},
                       state=RecordDict(), run_config={})  # fmt: skip
    assert _kept_file(request, deployed, "north", "personal_model.pt") == tmp_path / "personal_model-north-run7.pt"


@pytest.mark.parametrize("method", ["ditto", "fedrep"])
def test_under_dp_sgd_both_trainings_of_a_round_are_counted_and_replies_carry_weights_and_ledger_only(method, tmp_path):
    config = RunConfig(hospitals=3, synthetic_stays=900, rounds=2, seed=4, hidden_size=16, personalization=method,
                       dp=True, target_epsilon=6.0)  # fmt: skip
    replies: list = []
    run_dir = _run_recorded(tmp_path / "dp", config, _recording(replies))
    federation = prepare(config)
    ledgers = {row["hospital"]: row for row in run_dir.read_json(PRIVACY_FILE)}
    for hospital in federation.hospitals:
        steps = 2 * PoissonSchedule.of(len(hospital.train), config.batch_size).steps(config.local_epochs)
        assert [entry["steps"] for entry in ledgers[hospital.name]["history"]] == [steps] * config.rounds
        assert 0 < ledgers[hospital.name]["epsilon"] <= config.target_epsilon
    trained = [TrainReply.from_content(r.content) for kind, r in replies if kind == TrainRequest.message_type]
    assert len(trained) == config.hospitals * config.rounds
    assert all(reply.ledger and reply.train_loss is None and reply.local_val_auroc is None for reply in trained)
    kept = [row for row in run_dir.read_json(PERSONALIZATION_JSON) if "epochs" in row]
    assert len(kept) == config.hospitals


def test_under_dp_sgd_fine_tuning_spends_from_the_ledger_the_rounds_planned_for(tmp_path):
    """The noise is calibrated at the first round for the rounds and the fine-tuning together:
    every entry has the same sigma, the fine-tuning is the ledger's last entry, and the whole
    ledger (the personal model's guarantee) ends within the target."""
    config = RunConfig(hospitals=3, synthetic_stays=900, rounds=2, seed=4, hidden_size=16, personalization="finetune",
                       dp=True, target_epsilon=6.0, finetune_epochs=2)  # fmt: skip
    replies: list = []
    run_dir = _run_recorded(tmp_path / "dp", config, _recording(replies))
    ledgers = {row["hospital"]: row for row in run_dir.read_json(PRIVACY_FILE)}
    chosen = {row["hospital"]: row for row in run_dir.read_json(PERSONALIZATION_JSON)}
    shared = {
        row["hospital"]: row["epsilon"] for row in run_dir.read_json(HOSPITAL_JSON) if row["round"] == config.rounds
    }
    for hospital in prepare(config).hospitals:
        schedule = PoissonSchedule.of(len(hospital.train), config.batch_size)
        ledger = ledgers[hospital.name]
        planned = [schedule.steps(config.local_epochs)] * config.rounds + [schedule.steps(config.finetune_epochs)]
        assert [entry["steps"] for entry in ledger["history"]] == planned
        sigma = calibrate_noise(
            config.accountant, config.target_epsilon, config.delta, schedule.sample_rate, sum(planned)
        )
        assert [entry["noise_multiplier"] for entry in ledger["history"]] == pytest.approx([sigma] * len(planned))
        history = [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in ledger["history"]]
        after_rounds = epsilon_of(config.accountant, history[:-1], config.delta)
        assert shared[hospital.name] == pytest.approx(after_rounds)  # what the hospital shared
        assert after_rounds < ledger["epsilon"] <= config.target_epsilon
        assert chosen[hospital.name]["epsilon"] == ledger["epsilon"]  # what it keeps
    spent = [ledger["epsilon"] for ledger in ledgers.values()]
    caption = f"personal models' epsilon {min(spent):.2f}–{max(spent):.2f}"
    assert caption in str(personalization_table(run_dir.path).caption)
    personalized = [r for kind, r in replies if kind == PersonalizeRequest.message_type]
    assert len(personalized) == config.hospitals
    assert all(not r.content.array_records and PersonalizeReply.from_content(r.content).ledger for r in personalized)
