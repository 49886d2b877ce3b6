"""--personalization fedrep: the LSTM body is federated, each hospital keeps its own output head.
Every reply carries the head the hospital received, never its own; the rounds are scored with
each hospital's head on the body; the run's global model, a body, is refused where a whole model
is needed; a resumed run ends as an uninterrupted one."""

from typing import Any

import pytest
import torch

from fedicu.client.client_app import app as hospital_app
from fedicu.client.personalization import PersonalState, fedrep_round, plain_training, with_personal_head
from fedicu.server.checkpoint import interrupted_run
from fedicu.shared.config import RunConfig
from fedicu.shared.federation import prepare
from fedicu.shared.metrics import auroc
from fedicu.shared.model import HEAD, ModelConfig, MortalityLSTM, model_config_of
from fedicu.shared.preprocessing import Normalization, n_features, to_features
from fedicu.shared.run_dir import (
    CROSS_SITE_JSON,
    FINAL_MODEL,
    HOSPITAL_JSON,
    METRICS_JSON,
    MODEL_CARD,
    PERSONAL_MODEL,
    PERSONALIZATION_JSON,
    SITES_DIR,
    RunDirectory,
)
from fedicu.shared.training import predict
from fedicu.shared.transfer import starting_weights
from tests.test_ditto import _data, _loaded, _recording, _rows, _run
from tests.test_site_check import fedicu as fedicu_here

SETTINGS: dict[str, Any] = dict(hospitals=3, synthetic_stays=900, rounds=3, seed=4, hidden_size=16)
FEDREP = RunConfig(**SETTINGS, personalization="fedrep")


def _parts(state: dict[str, torch.Tensor], head: bool) -> dict[str, torch.Tensor]:
    return {name: tensor for name, tensor in state.items() if name.startswith(HEAD) == head}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_a_round_trains_the_head_on_the_received_body_then_sends_the_body_with_the_received_head():
    train, val = _data(1)
    torch.manual_seed(0)
    received = MortalityLSTM(ModelConfig(n_features=n_features(), hidden_size=8))
    sent = {k: v.clone() for k, v in received.state_dict().items()}
    training = plain_training(*train, epochs=2, lr=0.02, batch_size=32, seed=4)
    done = fedrep_round(received, None, val, server_round=1, train=training)
    assert _same(received.state_dict(), sent)  # what was received is left as it was
    kept, reply = done.state.latest, done.reply.state_dict()
    assert _same(_parts(kept, head=False), _parts(sent, head=False))  # the head alone trained first...
    assert not _same(_parts(kept, head=True), _parts(sent, head=True))
    assert _same(_parts(reply, head=True), _parts(sent, head=True))  # ...then the body, sent with the head received
    assert not _same(_parts(reply, head=False), _parts(sent, head=False))
    assert done.state.best_val_auroc == auroc(val[1], predict(_loaded(kept, 8), val[0]))
    local = _loaded({**_parts(reply, head=False), **_parts(kept, head=True)}, 8)
    assert done.local_val_auroc == auroc(val[1], predict(local, val[0]))


def test_the_next_round_puts_the_hospitals_own_head_on_the_body_it_receives():
    torch.manual_seed(0)
    body, own = (MortalityLSTM(ModelConfig(n_features=n_features(), hidden_size=8)) for _ in range(2))
    kept = PersonalState(latest=own.state_dict(), best=own.state_dict(), best_round=1, best_val_auroc=0.7)
    personal = with_personal_head(body, kept).state_dict()
    assert _same(_parts(personal, head=False), _parts(body.state_dict(), head=False))
    assert _same(_parts(personal, head=True), _parts(own.state_dict(), head=True))
    assert _same(with_personal_head(body, None).state_dict(), body.state_dict())


@pytest.fixture(scope="module")
def fedrep_run(tmp_path_factory):
    replies: list = []
    run_dir = _run(tmp_path_factory.mktemp("fedrep") / "run", FEDREP, _recording(replies))
    return run_dir, replies


def _kept_states(run_dir: RunDirectory) -> dict[tuple[str, int], PersonalState]:
    return {
        (path.parent.name, int(path.stem.removeprefix("fedrep-round"))): PersonalState.from_file(
            torch.load(path, weights_only=True)
        )
        for path in (run_dir.path / SITES_DIR).glob("*/fedrep-round*.pt")
    }


def test_no_reply_carries_a_personal_head_and_the_global_head_never_moves(fedrep_run):
    run_dir, replies = fedrep_run
    states = _kept_states(run_dir)
    heads = [_parts(s, head=True) for state in states.values() for s in (state.latest, state.best)]
    assert len(states) == 3 * 3 and replies  # three rounds kept at each of three hospitals
    start, _ = starting_weights(FEDREP, model_config_of(FEDREP))
    assert _same(_parts(run_dir.load_model(FINAL_MODEL)["state_dict"], head=True), _parts(start, head=True))
    for kind, reply in replies:
        for record in reply.content.array_records.values():
            sent = _parts(record.to_torch_state_dict(), head=True)
            if sent:
                assert _same(sent, _parts(start, head=True)), kind
            assert not any(_same(sent, head) for head in heads), kind


def test_each_round_is_scored_with_each_hospitals_head_on_the_global_body(fedrep_run):
    run_dir, _ = fedrep_run
    federation = prepare(FEDREP)
    norm = Normalization.from_dict(run_dir.read_json(MODEL_CARD)["normalization"])
    body = _parts(run_dir.load_model(FINAL_MODEL)["state_dict"], head=False)
    rows = {(r["hospital"], r["round"]): r for r in run_dir.read_json(HOSPITAL_JSON)}
    states = _kept_states(run_dir)
    for hospital in federation.hospitals:
        head = _parts(states[(hospital.name, FEDREP.rounds)].latest, head=True)
        model = _loaded({**body, **head}, FEDREP.hidden_size)
        scores = predict(model, to_features(hospital.val, norm))
        assert auroc(hospital.val.labels, scores) == pytest.approx(rows[(hospital.name, FEDREP.rounds)]["val_auroc"])
    assert all(r["test_auroc"] is None for r in run_dir.read_json(METRICS_JSON))  # no head to score it here


def test_each_hospital_keeps_a_personal_model_that_reproduces_its_numbers(fedrep_run):
    run_dir, _ = fedrep_run
    federation = prepare(FEDREP)
    chosen = {row["hospital"]: row for row in run_dir.read_json(PERSONALIZATION_JSON)}
    matrix = {(r["model"], r["hospital"]): r for r in run_dir.read_json(CROSS_SITE_JSON)}
    assert {model for model, _ in matrix} == {"personal/fedrep"}  # the global body has no row of its own
    norm = Normalization.from_dict(run_dir.read_json(MODEL_CARD)["normalization"])
    for hospital in federation.hospitals:
        row = chosen[hospital.name]
        kept = torch.load(run_dir.path / SITES_DIR / hospital.name / PERSONAL_MODEL, weights_only=True)
        assert kept["personalization"] == "fedrep" and 1 <= kept["epochs"] == row["epochs"] <= FEDREP.rounds
        assert row["val_auroc_global"] is None  # the body alone has no score
        model = _loaded(kept["state_dict"], FEDREP.hidden_size)
        test = matrix[("personal/fedrep", hospital.name)]["auroc"]
        for part, reported in ((hospital.val, row["val_auroc"]), (hospital.test, test)):
            assert auroc(part.labels, predict(model, to_features(part, norm))) == pytest.approx(reported, abs=1e-9)


def test_the_global_body_is_refused_where_a_whole_model_is_needed(fedrep_run, monkeypatch, capsys):
    run_dir, _ = fedrep_run
    run = str(run_dir.path)
    commands = (["evaluate", run], ["predict", run, "--out", "unused.csv"], ["export", run, "--onnx", "x.onnx"],
                ["serve", run], ["audit", run], ["report", run], ["simulate", "--init-from", run, "--out", "unused"])  # fmt: skip
    for command in commands:
        code, _, stderr = fedicu_here(monkeypatch, capsys, *command)
        assert code == 2 and "trained with --personalization fedrep" in stderr and PERSONAL_MODEL in stderr
    code, _, stderr = fedicu_here(monkeypatch, capsys, "cross-site", run)
    assert code == 2 and "already scored their own models" in stderr
    personal = run_dir.path / SITES_DIR / "hospital-1" / PERSONAL_MODEL
    code, _, stderr = fedicu_here(monkeypatch, capsys, "evaluate", str(personal), "--split", "test")
    assert code == 0, stderr


def test_a_round_rerun_after_a_resume_starts_from_the_head_before_it(fedrep_run, tmp_path):
    reference, _ = fedrep_run
    interrupted = tmp_path / "interrupted"
    with pytest.raises(RuntimeError, match="round 3 training"):
        _run(interrupted, FEDREP, _recording([], fail_after_round=3))  # round 3's heads were kept, its replies lost
    resumed = _run(interrupted, FEDREP, hospital_app, resume=interrupted_run(interrupted)[2])
    assert _rows(resumed) == _rows(reference)
    assert resumed.read_json(PERSONALIZATION_JSON) == reference.read_json(PERSONALIZATION_JSON)


@pytest.mark.parametrize(
    ("settings", "message"),
    [(dict(strategy="scaffold"), "cannot be combined with --strategy scaffold"),
     (dict(ensemble=3), "--ensemble averages global models")],
    ids=["scaffold", "ensemble"],
)  # fmt: skip
def test_what_fedrep_cannot_do_is_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        RunConfig(personalization="fedrep", **settings)
