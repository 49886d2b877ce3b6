"""The ClientApp a hospital runs: it trains and evaluates on that hospital's stays only.

What leaves the hospital, per message:
- `query.feature_stats`: its name and number of training stays; without DP also
  per-channel counts, sums and sums of squares of its training data (40
  channels), and per time series the number of its observed training hours in each
  of 20 fixed bins (the drift reference the model card carries). Runs with DP-SGD standardize with public reference ranges instead,
  so these statistics are never computed from training stays and sent;
- `train`: the locally trained model weights and the number of training stays;
  without DP also the mean training loss and the local model's validation
  AUROC, and with SCAFFOLD its control variate (the mean gradient of its training loss at the
  global model, one number per weight); with DP-SGD instead its privacy ledger (noise multiplier, sample rate
  and steps per round) and epsilon so far, or, when its budget is spent, a
  refusal saying so. Under DP nothing computed from the training stays is sent
  except the DP-SGD weights (and the number of stays, which sets the sample rate).
  With FedRep (`--personalization fedrep`) the weights are the body trained under the
  hospital's own head, sent with the head it received: its own head never leaves.
  With secure aggregation (`secagg`) the weights leave masked, so that the server
  learns only their sum over hospitals (client/secure_aggregation.py), along with
  the keys and key shares the protocol exchanges;
- `evaluate`: the global model's (FedRep: the global body's under the hospital's head) validation metrics (n, AUROC, AUPRC, Brier,
  loss) and a 1,000-bin histogram of its validation scores per class; and its metrics on
  the hospital's own test stays (discrimination with intervals, calibration), before and
  after the hospital's recalibration maps (fitted on its validation stays, never sent);
- `cross_site`: one model's metrics on the hospital's own test stays (the same numbers).
  For the model the run selected, the hospital also keeps its recalibration maps on its
  own disk (`recalibration-<hospital>-run<id>.json` in the state-dir), for later scoring.
- `personalize` (`--personalization`): the hospital adapts the selected model to its own
  stays (client/personalization.py) and keeps it on its own disk; it sends how many epochs it
  chose, the validation AUROC before and after, and the personal model's test metrics. The
  personal model's weights are never sent.
No stay, measurement or individual prediction is ever sent.

A deployed site (node config `data-dir`) draws DP-SGD's noise and batches from the
operating system's entropy (Opacus's secure mode); simulations draw them from generators
seeded by the run's seed, so a study reproduces exactly (and anyone who knows the seed could
regenerate the noise: fine for a simulation, not for patients' data).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Error, Message
from flwr.clientapp import ClientApp

from fedicu.client.personalization import (
    PersonalModel,
    PersonalState,
    ditto_round,
    fedrep_round,
    finetune,
    kept_personal,
    plain_training,
    states_to_keep,
    with_personal_head,
)
from fedicu.client.secure_aggregation import secure_aggregation_mod
from fedicu.shared import contract
from fedicu.shared.augmentation import Augmentation
from fedicu.shared.calibration import SiteRecalibration, recalibrated
from fedicu.shared.config import FEDREP, PERSONALIZATIONS, member_seed
from fedicu.shared.contract import (
    CONTRACT_REFUSAL,
    PRIVACY_REFUSAL,
    CrossSiteReply,
    CrossSiteRequest,
    EvaluateReply,
    EvaluateRequest,
    FeatureStatsReply,
    FeatureStatsRequest,
    PersonalizeReply,
    PersonalizeRequest,
    Request,
    RestorePrivacyReply,
    RestorePrivacyRequest,
    SiteTest,
    TrainReply,
    TrainRequest,
)
from fedicu.shared.federation import HospitalData, load_hospital, load_site, site_source
from fedicu.shared.files import safe_name
from fedicu.shared.metrics import ScoreHistogram, auroc, best_threshold, binary_metrics, event1
from fedicu.shared.model import MortalityLSTM, fingerprint, freeze_body
from fedicu.shared.preprocessing import FeatureStats, Normalization, to_features
from fedicu.shared.run_dir import PERSONAL_MODEL, save_model_file
from fedicu.shared.training import mean_gradient, predict, set_torch_threads, train_epochs

if TYPE_CHECKING:
    from fedicu.client import private_training

app = ClientApp()
_features: dict[tuple, tuple[HospitalData, tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}


def _hospital(request: Request, context: Context) -> HospitalData:
    """This hospital's stays: its own folder when deployed, its partition in simulation."""
    node = context.node_config
    if "data-dir" in node:
        source = site_source(node, request.task)
        return load_site(
            source, str(node.get("hospital", "")), request.test_fraction, request.val_fraction, request.seed
        )
    return load_hospital(request.prepared_data, int(node["partition-id"]))


def _inputs(hospital: HospitalData, request: EvaluateRequest) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalized training, validation and test inputs, built once per normalization and
    hospital data (a site whose folder changed is read again: its old inputs are dropped)."""
    key = (hospital.name, tuple(request.norm_mean), tuple(request.norm_std), request.model.variables)
    if key not in _features or _features[key][0] is not hospital:
        for stale in [k for k, (data, _) in _features.items() if k[0] == hospital.name and data is not hospital]:
            del _features[stale]
        norm, channels = _normalization(request), request.model.channels
        train, val, test = (to_features(part, norm, channels) for part in (hospital.train, hospital.val, hospital.test))
        _features[key] = (hospital, (train, val, test))
    return _features[key][1]


def _normalization(request: EvaluateRequest) -> Normalization:
    return Normalization(np.asarray(request.norm_mean), np.asarray(request.norm_std))


def _state_dir(context: Context) -> Path:
    """Where a deployed site keeps what outlives a message (node config `state-dir`)."""
    return Path(str(context.node_config.get("state-dir") or Path.home() / ".fedicu" / "state"))


def _study_tag(context: Context, request: Request) -> str:
    """What names the run in a deployed site's state-dir across the run's resumes (its `study`)."""
    return f"study-{request.study}" if request.study else f"run{context.run_id}"


def _ledger_file(context: Context, request: Request, hospital: str) -> Path:
    """The site's privacy ledger for this run, kept across the run's resumes."""
    return _state_dir(context) / f"privacy-{safe_name(hospital)}-{_study_tag(context, request)}.json"


def _kept_file(request: CrossSiteRequest | PersonalizeRequest, context: Context, hospital: str, kind: str) -> Path:
    """Where the hospital keeps what it fits for the run (`kind`: `recalibration.json` or
    `personal_model.pt`): its own folder of the run's `sites/` in a simulation, its state-dir
    when deployed (with the run's id in the name)."""
    if request.site_dir and "data-dir" not in context.node_config:  # a deployed site never writes where told
        return Path(request.site_dir) / safe_name(hospital) / kind
    return _state_dir(context) / f"{Path(kind).stem}-{safe_name(hospital)}-run{context.run_id}{Path(kind).suffix}"


def _after_recalibration(
    method: str, hospital: HospitalData, val_scores: np.ndarray, test_scores: np.ndarray, seed: int
) -> SiteTest:
    """The test stays scored through the map this hospital fits on its validation stays."""
    risks = recalibrated(method, hospital.val.labels, val_scores, test_scores)
    return SiteTest.of(hospital.test.labels, risks, seed)


def _model(msg: Message, request: EvaluateRequest) -> MortalityLSTM:
    model = MortalityLSTM(request.model)
    model.load_state_dict(contract.global_model(msg).to_torch_state_dict())
    return model


R = TypeVar("R", bound=Request)


def _speaks_the_contract(kind: type[R]) -> Callable[[Callable[[Message, R, Context], Message]], Callable]:
    """Read the request as `kind`; a request of another contract version is refused with an
    error naming both versions, before anything else is read."""

    def decorate(handler: Callable[[Message, R, Context], Message]) -> Callable[[Message, Context], Message]:
        @wraps(handler)
        def handle(msg: Message, context: Context) -> Message:
            try:
                request = kind.from_content(msg.content)
            except contract.ContractMismatch as mismatch:
                return Message(Error(CONTRACT_REFUSAL, str(mismatch)), reply_to=msg)
            return handler(msg, request, context)

        return handle

    return decorate


@app.query(FeatureStatsRequest.action)
@_speaks_the_contract(FeatureStatsRequest)
def feature_stats(msg: Message, request: FeatureStatsRequest, context: Context) -> Message:
    hospital = _hospital(request, context)
    if request.dp and request.delta >= 1 / len(hospital.train):
        # Checked on first contact, before any training: a larger delta could expose whole stays.
        reason = (
            f"{hospital.name}: --delta {request.delta:g} must be below 1/n = 1/{len(hospital.train)} training stays"
        )
        return Message(Error(PRIVACY_REFUSAL, reason), reply_to=msg)
    stats = None if request.dp else FeatureStats.of(hospital.train)
    skipped = None if request.dp else json.dumps({rows.name: rows.count for rows in hospital.skipped})
    reply = FeatureStatsReply(
        hospital=hospital.name, train_stays=len(hospital.train), stats=stats, rows_skipped=skipped
    )
    return reply.reply_to(msg)


@app.train(mods=[secure_aggregation_mod])
@_speaks_the_contract(TrainRequest)
def train(msg: Message, request: TrainRequest, context: Context) -> Message:
    set_torch_threads(1)  # one hospital per core
    hospital = _hospital(request, context)
    x_train, x_val, _ = _inputs(hospital, request)
    model = _model(msg, request)
    if request.freeze_body:
        freeze_body(model)
    # A seed per (run seed and ensemble member, round, hospital name): reproducible, yet hospitals differ.
    entropy = [member_seed(request.seed, request.member), request.server_round, *hospital.name.encode()]
    seed = int(np.random.SeedSequence(entropy).generate_state(1)[0])
    augmented = Augmentation(mask=request.augment_mask, shift=request.augment_shift).epoch_inputs(
        hospital.train, _normalization(request), request.model.channels, seed
    )
    if request.personal_head:
        return _train_fedrep(msg, request, context, hospital, model, (x_train, x_val), seed, augmented)
    if request.dp:
        return _train_private(msg, request, context, hospital, model, (x_train, x_val), seed, augmented)
    if request.ditto_lambda:

        def ditto(personal: MortalityLSTM, anchor: list[torch.Tensor]) -> float:
            return train_epochs(personal, x_train, hospital.train.labels, epochs=request.local_epochs, lr=request.lr,
                                batch_size=request.batch_size, seed=_ditto_seed(seed),
                                proximal_mu=request.ditto_lambda, anchor=anchor)  # fmt: skip

        _PersonalFiles(request, context, hospital.name).keep(
            request.server_round, _train_personal(request, context, hospital, model, x_val, ditto)
        )
    # SCAFFOLD: the control variate is taken at the global model, before it moves.
    control = mean_gradient(model, x_train, hospital.train.labels) if request.correction is not None else None
    loss = train_epochs(
        model,
        x_train,
        hospital.train.labels,
        epochs=request.local_epochs,
        lr=request.lr,
        batch_size=request.batch_size,
        seed=seed,
        proximal_mu=request.proximal_mu,
        epoch_inputs=augmented,
        correction=request.correction.to_torch_state_dict() if request.correction is not None else None,
    )
    return TrainReply(
        hospital=hospital.name,
        weights=_weights(model),
        train_stays=len(hospital.train),
        train_loss=loss,
        local_val_auroc=auroc(hospital.val.labels, predict(model, x_val)),
        control=ArrayRecord(control) if control is not None else None,
    ).reply_to(msg)


class _PersonalFiles:
    """The hospital's personal states (ditto, fedrep) of this run, one file per round: in its own
    folder of the run's `sites/` in a simulation, in its state-dir when deployed (kept across the
    run's resumes)."""

    def __init__(self, request: EvaluateRequest, context: Context, hospital: str):
        method = FEDREP if request.personal_head else "ditto"
        if request.site_dir and "data-dir" not in context.node_config:  # a deployed site never writes where told
            self.folder, self.prefix = Path(request.site_dir) / safe_name(hospital), f"{method}-round"
        else:
            tag = _study_tag(context, request)
            self.folder, self.prefix = _state_dir(context), f"{method}-{safe_name(hospital)}-{tag}-round"

    def path(self, server_round: int) -> Path:
        return self.folder / f"{self.prefix}{server_round}.pt"

    def rounds(self) -> list[int]:
        return sorted(int(p.stem.removeprefix(self.prefix)) for p in self.folder.glob(f"{self.prefix}*.pt"))

    def latest(self, before: int) -> PersonalState | None:
        """The latest state kept before round `before` (None: none)."""
        rounds = [r for r in self.rounds() if r < before]
        if not rounds:
            return None
        return PersonalState.from_file(torch.load(self.path(rounds[-1]), weights_only=True))

    def keep(self, server_round: int, state: PersonalState) -> None:
        """Round `server_round`'s state, beside those a rerun of it or of the round before could
        start from (the server sends a round before it checkpoints the last, so a resume may go
        back two); older states are removed."""
        save_model_file(self.path(server_round), state.to_file())
        for stale in set(self.rounds()) - states_to_keep(self.rounds(), server_round):
            self.path(stale).unlink()


def _ditto_seed(seed: int) -> int:
    return int(np.random.SeedSequence([seed, *b"ditto"]).generate_state(1)[0])


def _train_personal(
    request: TrainRequest, context: Context, hospital: HospitalData, received: MortalityLSTM, x_val: np.ndarray,
    train: Callable[[MortalityLSTM, list[torch.Tensor]], float],
) -> PersonalState:  # fmt: skip
    """Ditto: this round's personal state, its model trained by `train` (personal model, anchor)."""
    kept = _PersonalFiles(request, context, hospital.name).latest(request.server_round)
    return ditto_round(received, kept, (x_val, hospital.val.labels), server_round=request.server_round, train=train)


def _train_private(
    msg: Message, request: TrainRequest, context: Context, hospital: HospitalData, model: MortalityLSTM,
    inputs: tuple[np.ndarray, np.ndarray], seed: int, augmented: Callable[[int], np.ndarray] | None,
) -> Message:  # fmt: skip
    """DP-SGD: the global model and, with Ditto, first the personal model, both counted in the
    hospital's ledger; its reply carries the weights and the ledger only."""
    from fedicu.client import private_training  # Opacus takes seconds to import: only DP runs pay
    from fedicu.shared.privacy.per_sample_lstm import to_dp_model

    x, y = inputs[0], hospital.train.labels
    try:
        private = _private_round(request, context, hospital, passes=2 if request.ditto_lambda else 1)
    except private_training.BudgetExhausted as refusal:
        return Message(Error(PRIVACY_REFUSAL, f"{hospital.name}: {refusal}"), reply_to=msg)
    model = to_dp_model(model)
    personal = None
    if request.ditto_lambda:
        personal = _train_personal(request, context, hospital, model, inputs[1], lambda personal, anchor: private.train(
            personal, x, y, _ditto_seed(seed), proximal_mu=request.ditto_lambda, anchor=anchor))  # fmt: skip
    private.train(model, x, y, seed, augmented)
    ledger = private.finish()  # spent before anything is kept
    if personal is not None:
        _PersonalFiles(request, context, hospital.name).keep(request.server_round, personal)
    return TrainReply(hospital=hospital.name, weights=_weights(model), train_stays=len(hospital.train),
                      ledger=ledger).reply_to(msg)  # fmt: skip


def _private_round(
    request: TrainRequest, context: Context, hospital: HospitalData, passes: int = 1, finetune: bool = False
) -> private_training.PrivateRound:
    """The round's DP-SGD, or the fine-tuning's after the run (client/private_training.py); a
    deployed site draws its noise from the operating system and keeps its ledger in its state-dir."""
    from fedicu.client import private_training

    deployed = "data-dir" in context.node_config
    state_file = _ledger_file(context, request, hospital.name) if deployed else None
    return private_training.PrivateRound(request, context, len(hospital.train), deployed, state_file, passes, finetune)


def _train_fedrep(
    msg: Message, request: TrainRequest, context: Context, hospital: HospitalData, received: MortalityLSTM,
    inputs: tuple[np.ndarray, np.ndarray], seed: int, augmented: Callable[[int], np.ndarray] | None,
) -> Message:  # fmt: skip
    """FedRep: the hospital's head trained on the received body (kept here), then the body
    under it; the body goes back with the head received, never the hospital's own. Under
    DP-SGD both trainings are private and counted in the hospital's ledger."""
    files, rnd = _PersonalFiles(request, context, hospital.name), request.server_round
    x, y, val = inputs[0], hospital.train.labels, (inputs[1], hospital.val.labels)
    if not request.dp:
        train = plain_training(x, y, epochs=request.local_epochs, lr=request.lr, batch_size=request.batch_size,
                               seed=seed, proximal_mu=request.proximal_mu, epoch_inputs=augmented)  # fmt: skip
        done = fedrep_round(received, files.latest(rnd), val, server_round=rnd, train=train)
        files.keep(rnd, done.state)
        return TrainReply(
            hospital=hospital.name, weights=_weights(done.reply), train_stays=len(hospital.train),
            train_loss=done.train_loss, local_val_auroc=done.local_val_auroc,
        ).reply_to(msg)  # fmt: skip
    from fedicu.client import private_training
    from fedicu.shared.privacy.per_sample_lstm import to_dp_model

    try:
        private = _private_round(request, context, hospital, passes=2)
    except private_training.BudgetExhausted as refusal:
        return Message(Error(PRIVACY_REFUSAL, f"{hospital.name}: {refusal}"), reply_to=msg)
    done = fedrep_round(
        to_dp_model(received), files.latest(rnd), val, server_round=rnd,
        train=lambda model, phase: private.train(model, x, y, seed + phase, augmented, proximal_mu=None if phase else 0.0),
    )  # fmt: skip
    ledger = private.finish()  # spent before anything is kept
    files.keep(rnd, done.state)
    return TrainReply(hospital=hospital.name, weights=_weights(done.reply), train_stays=len(hospital.train),
                      ledger=ledger).reply_to(msg)  # fmt: skip


def _weights(model: MortalityLSTM) -> ArrayRecord:
    return ArrayRecord(model.state_dict())


@app.query(RestorePrivacyRequest.action)
@_speaks_the_contract(RestorePrivacyRequest)
def restore_privacy(msg: Message, request: RestorePrivacyRequest, context: Context) -> Message:
    """A resumed run hands the hospital back the ledger it had reached."""
    from fedicu.client import private_training

    hospital = _hospital(request, context)
    deployed = "data-dir" in context.node_config
    private_training.restore(
        context, request.ledger, _ledger_file(context, request, hospital.name) if deployed else None
    )
    return RestorePrivacyReply(hospital=hospital.name, train_stays=len(hospital.train)).reply_to(msg)


@app.evaluate()
@_speaks_the_contract(EvaluateRequest)
def evaluate(msg: Message, request: EvaluateRequest, context: Context) -> Message:
    set_torch_threads(1)
    hospital = _hospital(request, context)
    _, x_val, x_test = _inputs(hospital, request)
    model = _model(msg, request)
    if request.personal_head:  # the body under this hospital's latest head
        model = with_personal_head(
            model, _PersonalFiles(request, context, hospital.name).latest(request.server_round + 1)
        )
    scores = predict(model, x_val)
    labels = hospital.val.labels
    m = binary_metrics(labels, scores, threshold=0.5)
    test_scores = predict(model, x_test)
    return EvaluateReply(
        hospital=hospital.name,
        val_stays=len(labels),
        auroc=m["auroc"],
        auprc=m["auprc"],
        brier=m["brier"],
        loss=m["loss"],
        histogram=ScoreHistogram.of(labels, scores),
        test=SiteTest.of(hospital.test.labels, test_scores, request.seed),
        test_platt=_after_recalibration("platt", hospital, scores, test_scores, request.seed),
        test_isotonic=_after_recalibration("isotonic", hospital, scores, test_scores, request.seed),
    ).reply_to(msg)


@app.query(CrossSiteRequest.action)
@_speaks_the_contract(CrossSiteRequest)
def cross_site(msg: Message, request: CrossSiteRequest, context: Context) -> Message:
    """One model of the cross-site matrix on this hospital's test stays; numbers only."""
    set_torch_threads(1)
    hospital = _hospital(request, context)
    _, x_val, x_test = _inputs(hospital, request)
    model = _model(msg, request)
    labels, scores = hospital.test.labels, predict(model, x_test)
    at_site_threshold = None
    if request.keep_recalibration:
        kept = SiteRecalibration.fit(
            hospital.name, fingerprint(model.state_dict()), hospital.val.labels, predict(model, x_val)
        )
        kept.save(_kept_file(request, context, hospital.name, "recalibration.json"))
        at_site_threshold = event1(labels, kept.chosen.apply(scores), kept.chosen.threshold)[0]
    return CrossSiteReply(
        hospital=hospital.name,
        model_name=request.model_name,
        test=SiteTest.of(labels, scores, request.seed),
        event1=event1(labels, scores, request.threshold)[0],
        event1_site_threshold=at_site_threshold,
    ).reply_to(msg)


def _personal_model(
    msg: Message, request: PersonalizeRequest, context: Context, hospital: HospitalData, x_train: np.ndarray,
    x_val: np.ndarray, private: private_training.PrivateRound | None,
) -> PersonalModel | None:  # fmt: skip
    """Fine-tuned now (by `private`'s DP-SGD if given), or the one Ditto or FedRep kept over the
    rounds (None: it kept none)."""
    val = (x_val, hospital.val.labels)
    if request.method in ("ditto", FEDREP):
        kept = _PersonalFiles(request, context, hospital.name).latest(request.server_round + 1)
        if kept is None:
            return None
        return kept_personal(_model(msg, request), kept, val, headless=request.personal_head)
    seed = int(np.random.SeedSequence([request.seed, *b"personalize", *hospital.name.encode()]).generate_state(1)[0])
    x, y = x_train, hospital.train.labels
    if private is None:
        return finetune(_model(msg, request), val, lambda model, after_epoch: train_epochs(
            model, x, y, epochs=request.finetune_epochs, lr=request.lr, batch_size=request.batch_size, seed=seed,
            after_epoch=after_epoch))  # fmt: skip
    from fedicu.shared.privacy.per_sample_lstm import to_dp_model

    return finetune(to_dp_model(_model(msg, request)), val, lambda model, after_epoch: private.train(
        model, x, y, seed, proximal_mu=0.0, after_epoch=after_epoch))  # fmt: skip


@app.query(PersonalizeRequest.action)
@_speaks_the_contract(PersonalizeRequest)
def personalize(msg: Message, request: PersonalizeRequest, context: Context) -> Message:
    """The selected model adapted to this hospital and kept here; numbers only go back."""
    if request.method not in PERSONALIZATIONS:
        offered = ", ".join(PERSONALIZATIONS)
        return Message(
            Error(CONTRACT_REFUSAL, f"personalization {request.method!r}: this site offers {offered}"), reply_to=msg
        )
    set_torch_threads(1)
    hospital = _hospital(request, context)
    x_train, x_val, x_test = _inputs(hospital, request)
    private = None
    if request.dp and request.method == "finetune":  # within the budget, or refused before anything trains
        from fedicu.client import private_training  # Opacus takes seconds to import: only DP runs pay

        try:
            private = _private_round(request, context, hospital, finetune=True)
        except private_training.BudgetExhausted as refusal:
            return Message(Error(PRIVACY_REFUSAL, f"{hospital.name}: {refusal}"), reply_to=msg)
    tuned = _personal_model(msg, request, context, hospital, x_train, x_val, private)
    ledger = private.finish() if private is not None else None  # spent before anything is kept
    if tuned is None:
        reason = f"{hospital.name} kept no {request.method} personal model for this run (it trained no round)"
        return Message(Error(CONTRACT_REFUSAL, reason), reply_to=msg)
    threshold = best_threshold(hospital.val.labels, predict(tuned.model, x_val))
    saved = {  # what scoring with it later needs: the global model's normalization, task and fingerprint too
        "model_config": request.model.to_dict(), "state_dict": tuned.model.state_dict(), "threshold": threshold,
        "personalization": request.method, "epochs": tuned.epochs, "task": request.task,
        "norm_mean": request.norm_mean, "norm_std": request.norm_std,
        "started_from": fingerprint(contract.global_model(msg).to_torch_state_dict()),
    }  # fmt: skip
    save_model_file(_kept_file(request, context, hospital.name, PERSONAL_MODEL), saved)
    labels, scores = hospital.test.labels, predict(tuned.model, x_test)
    return PersonalizeReply(
        hospital=hospital.name, method=request.method, epochs=tuned.epochs, val_auroc_global=tuned.val_auroc_global,
        val_auroc=tuned.val_auroc, test=SiteTest.of(labels, scores, request.seed),
        event1=event1(labels, scores, threshold)[0], ledger=ledger,
    ).reply_to(msg)  # fmt: skip
