"""--personalization ditto: every round each hospital also trains a personal model pulled towards
the global one, keeps the round best on its validation stays, and sends numbers only; the global
model trains as without it, and a resumed run ends as an uninterrupted one."""

import json
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Message
from flwr.clientapp import ClientApp

from fedicu.client.client_app import app as hospital_app
from fedicu.client.personalization import PersonalState, ditto_round, states_to_keep
from fedicu.server.checkpoint import interrupted_run
from fedicu.server.federated_run import LogProgress
from fedicu.shared.config import RunConfig
from fedicu.shared.contract import PersonalizeRequest, TrainRequest
from fedicu.shared.datasets import synthetic
from fedicu.shared.federation import prepare
from fedicu.shared.metrics import auroc
from fedicu.shared.model import ModelConfig, MortalityLSTM
from fedicu.shared.preprocessing import FeatureStats, Normalization, clean, n_features, to_features, to_sequences
from fedicu.shared.run_dir import (
    CROSS_SITE_JSON,
    MODEL_CARD,
    PERSONAL_MODEL,
    PERSONALIZATION_JSON,
    SITES_DIR,
    RunDirectory,
)
from fedicu.shared.training import predict, train_epochs
from fedicu.simulations.inprocess import run_in_process
from tests.test_site_check import fedicu as fedicu_here

SETTINGS: dict[str, Any] = dict(hospitals=3, synthetic_stays=900, rounds=3, seed=3, hidden_size=16)
DITTO = RunConfig(**SETTINGS, personalization="ditto", ditto_lambda=0.5)


def _data(seed: int) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    seqs = to_sequences(clean(synthetic.generate(hospitals=1, stays=300, seed=seed))[0])
    x = to_features(seqs, Normalization.from_stats(FeatureStats.of(seqs)))
    return (x[:200], seqs.labels[:200]), (x[200:], seqs.labels[200:])


def _distance(a: MortalityLSTM, state: dict[str, torch.Tensor]) -> float:
    return float(sum(torch.sum((p.detach() - state[n]) ** 2) for n, p in a.named_parameters()))


def test_a_stronger_pull_keeps_the_personal_model_nearer_the_global_one_which_is_left_as_it_was():
    train, val = _data(1)
    torch.manual_seed(0)
    received = MortalityLSTM(ModelConfig(n_features=n_features(), hidden_size=8))
    before = {k: v.clone() for k, v in received.state_dict().items()}
    far, near = (
        ditto_round(received, None, val, server_round=1, train=_pulled(train, lam, epochs=2, seed=4))
        for lam in (0.001, 100.0)
    )
    assert all(torch.equal(before[k], v) for k, v in received.state_dict().items())
    assert 0 < _distance(received, near.latest) < _distance(received, far.latest) / 5
    assert far.best_round == 1 and far.best_val_auroc == auroc(val[1], predict(_loaded(far.latest), val[0]))


def _pulled(train: tuple[np.ndarray, np.ndarray], lam: float, epochs: int, seed: int):
    """Ditto's training of a personal model without DP, as the hospital does it."""
    return lambda personal, anchor: train_epochs(personal, *train, epochs=epochs, lr=0.02, batch_size=32, seed=seed,
                                                 proximal_mu=lam, anchor=anchor)  # fmt: skip


def _loaded(state: dict[str, torch.Tensor], hidden: int = 8) -> MortalityLSTM:
    model = MortalityLSTM(ModelConfig(n_features=n_features(), hidden_size=hidden))
    model.load_state_dict(state)
    return model


def test_a_round_worse_on_validation_keeps_the_best_personal_model_but_trains_on_from_the_latest():
    train, val = _data(2)
    torch.manual_seed(0)
    received = MortalityLSTM(ModelConfig(n_features=n_features(), hidden_size=8))
    start = {k: v.clone() for k, v in received.state_dict().items()}
    unbeatable = PersonalState(latest=start, best=start, best_round=4, best_val_auroc=1.0)
    state = ditto_round(received, unbeatable, val, server_round=5, train=_pulled(train, 0.1, epochs=1, seed=0))
    assert state.best_round == 4 and state.best is start and state.best_val_auroc == 1.0
    assert not all(torch.equal(start[k], v) for k, v in state.latest.items())


def _recording(replies: list, fail_after_round: int = 0) -> ClientApp:
    """The hospital app, keeping every reply; from `fail_after_round` on, every hospital trains
    (and keeps its Ditto state) but its reply is lost."""
    app = ClientApp()

    def kept(msg: Message, context):
        reply = hospital_app(msg, context)
        if fail_after_round and msg.metadata.message_type == TrainRequest.message_type:
            if TrainRequest.from_content(msg.content).server_round >= fail_after_round:
                raise RuntimeError("the reply was lost")
        replies.append((msg.metadata.message_type, reply))
        return reply

    for action in ("feature_stats", PersonalizeRequest.action, "cross_site"):
        app.query(action)(kept)
    app.train()(kept)
    app.evaluate()(kept)
    return app


def _run(path, config: RunConfig, app: ClientApp, resume=None) -> RunDirectory:
    run_dir = RunDirectory(path) if resume is not None else RunDirectory(path).create()
    run_in_process(config, prepare(config), run_dir, LogProgress(), client_app=app, resume=resume)
    return run_dir


@pytest.fixture(scope="module")
def ditto_run(tmp_path_factory):
    replies: list = []
    run_dir = _run(tmp_path_factory.mktemp("ditto") / "run", DITTO, _recording(replies))
    return run_dir, replies


def _rows(run_dir: RunDirectory) -> list[dict]:  # without the rounds' durations
    return [{k: v for k, v in row.items() if k != "seconds"} for row in run_dir.read_json("metrics.json")]


def test_each_hospital_keeps_a_personal_model_that_reproduces_its_numbers(ditto_run):
    run_dir, _ = ditto_run
    federation = prepare(DITTO)
    chosen = {row["hospital"]: row for row in run_dir.read_json(PERSONALIZATION_JSON)}
    matrix = {(r["model"], r["hospital"]): r for r in run_dir.read_json(CROSS_SITE_JSON)}
    norm = Normalization.from_dict(run_dir.read_json(MODEL_CARD)["normalization"])
    for hospital in federation.hospitals:
        row = chosen[hospital.name]
        kept = torch.load(run_dir.path / SITES_DIR / hospital.name / "personal_model.pt", weights_only=True)
        assert kept["personalization"] == "ditto" and 1 <= kept["epochs"] == row["epochs"] <= DITTO.rounds
        model = MortalityLSTM(ModelConfig(**kept["model_config"]))
        model.load_state_dict(kept["state_dict"])
        test = matrix[("personal/ditto", hospital.name)]["auroc"]
        for part, reported in ((hospital.val, row["val_auroc"]), (hospital.test, test)):
            assert auroc(part.labels, predict(model, to_features(part, norm))) == pytest.approx(reported, abs=1e-9)


def test_the_global_model_trains_exactly_as_without_ditto(ditto_run, tmp_path):
    run_dir, _ = ditto_run
    plain = _run(tmp_path / "plain", RunConfig(**SETTINGS), hospital_app)
    assert _rows(plain) == _rows(run_dir)


def test_no_reply_carries_a_personal_model(ditto_run):
    run_dir, replies = ditto_run
    personal = [
        torch.load(path, weights_only=True) for path in sorted((run_dir.path / SITES_DIR).glob("*/ditto-round*.pt"))
    ]
    states = [s[key] for s in personal for key in ("latest", "best")]
    assert len(personal) == 3 * 3 and replies  # three rounds kept at each of three hospitals
    for kind, reply in replies:
        for record in reply.content.array_records.values():
            sent = record.to_torch_state_dict()
            for state in states:
                assert set(state) != set(sent) or not all(torch.equal(state[k], sent[k]) for k in state), kind


def test_a_round_rerun_after_a_resume_starts_from_the_personal_model_before_it(ditto_run, tmp_path):
    reference, _ = ditto_run
    interrupted = tmp_path / "interrupted"
    with pytest.raises(RuntimeError, match="round 3 training"):
        _run(interrupted, DITTO, _recording([], fail_after_round=3))  # round 3's states were kept, its replies lost
    resumed = _run(interrupted, DITTO, hospital_app, resume=interrupted_run(interrupted)[2])
    assert _rows(resumed) == _rows(reference)
    assert resumed.read_json(PERSONALIZATION_JSON) == reference.read_json(PERSONALIZATION_JSON)


def test_ditto_options_are_checked():
    with pytest.raises(ValueError, match="--ditto-lambda has no effect without --personalization ditto"):
        RunConfig(ditto_lambda=0.3)
    with pytest.raises(ValueError, match="--ditto-lambda must be positive"):
        RunConfig(personalization="ditto", ditto_lambda=0.0)


def test_evaluate_scores_a_personal_model_on_its_hospitals_test_stays_as_the_hospital_did(
    ditto_run, monkeypatch, capsys
):
    run_dir, _ = ditto_run
    matrix = {(r["model"], r["hospital"]): r for r in run_dir.read_json(CROSS_SITE_JSON)}
    files = sorted((run_dir.path / SITES_DIR).glob(f"*/{PERSONAL_MODEL}"))
    for path in files:
        code, stdout, stderr = fedicu_here(monkeypatch, capsys, "evaluate", str(path), "--split", "test", "--json")
        assert code == 0, stderr
        assert json.loads(stdout)["auroc"] == pytest.approx(matrix[("personal/ditto", path.parent.name)]["auroc"])
    code, _, stderr = fedicu_here(monkeypatch, capsys, "evaluate", *map(str, files), "--split", "test")
    assert code == 2 and "--split test scores one personal model" in stderr
    code, _, stderr = fedicu_here(monkeypatch, capsys, "evaluate", str(files[0].parent / "recalibration.json"))
    assert code == 2 and "not a model file" in stderr


@pytest.mark.parametrize(
    ("rounds", "training", "kept"),
    [([], 1, {1}), ([1], 2, {1, 2}), ([1, 2], 3, {1, 2, 3}), ([1, 2, 3], 4, {2, 3, 4}),
     ([1, 3], 5, {3, 5}), ([2, 3, 4, 5], 5, {3, 4, 5})],
    ids=["first", "second", "third", "fourth", "after-missed-rounds", "a-rerun"],
)  # fmt: skip
def test_a_hospital_keeps_the_states_a_rerun_of_this_round_or_the_last_starts_from(rounds, training, kept):
    """The server sends round r + 1 before it checkpoints round r: a resume may run either again."""
    assert states_to_keep(rounds, training) == kept
