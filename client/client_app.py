"""The ClientApp a hospital runs: it trains and evaluates on that hospital's stays only.

What leaves the hospital, per message:
- `query.feature_stats`: its name and number of training stays; without DP also
  per-channel counts, sums and sums of squares of its training data (40
  channels). Runs with DP-SGD standardize with public reference ranges instead,
  so these statistics are never computed from training stays and sent;
- `train`: the locally trained model weights and the number of training stays;
  without DP also the mean training loss and the local model's validation
  AUROC; with DP-SGD instead its privacy ledger (noise multiplier, sample rate
  and steps per round) and epsilon so far, or, when its budget is spent, a
  refusal saying so. Under DP nothing computed from the training stays is sent
  except the DP-SGD weights (and the number of stays, which sets the sample rate).
  With secure aggregation (`secagg`) the weights leave masked, so that the server
  learns only their sum over hospitals (client/secure_aggregation.py), along with
  the keys and key shares the protocol exchanges;
- `evaluate`: the global model's validation metrics (n, AUROC, AUPRC, Brier,
  loss) and a 1,000-bin histogram of its validation scores per class.
No stay, measurement or individual prediction is ever sent.

A deployed site (node config `data-dir`) draws DP-SGD's noise and batches from the
operating system's entropy (Opacus's secure mode); simulations draw them from generators
seeded by the run's seed, so a study reproduces exactly (and anyone who knows the seed could
regenerate the noise: fine for a simulation, not for patients' data).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.secure_aggregation import secure_aggregation_mod
from shared.federation import HospitalData, load_hospital, load_site
from shared.metrics import ScoreHistogram, auroc, binary_metrics
from shared.model import ModelConfig, MortalityLSTM
from shared.preprocessing import FeatureStats, Normalization, to_features
from shared.training import predict, set_torch_threads, train_epochs

app = ClientApp()
PRIVACY_REFUSAL = 1  # error code of a refusal on privacy grounds
_features: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


def _hospital(msg: Message, context: Context) -> HospitalData:
    """This hospital's stays: its own folder when deployed, its partition in simulation."""
    config, node = msg.content["config"], context.node_config
    if "data-dir" in node:
        hospital = str(node.get("hospital", ""))
        return load_site(str(node["data-dir"]), hospital, float(config["val-fraction"]), int(config["seed"]))
    return load_hospital(str(config["prepared-data"]), int(node["partition-id"]))


def _inputs(hospital: HospitalData, config: ConfigRecord) -> tuple[np.ndarray, np.ndarray]:
    """Normalized training and validation inputs, built once per normalization."""
    mean, std = config["norm-mean"], config["norm-std"]
    key = (id(hospital), tuple(mean), tuple(std))
    if key not in _features:
        norm = Normalization(np.asarray(mean), np.asarray(std))
        _features[key] = (to_features(hospital.train, norm), to_features(hospital.val, norm))
    return _features[key]


def _ledger_file(context: Context, hospital: str) -> Path:
    """Where a deployed site keeps its privacy ledger for this run (node config `state-dir`)."""
    folder = Path(str(context.node_config.get("state-dir") or Path.home() / ".fedicu" / "state"))
    return folder / f"privacy-{hospital}-run{context.run_id}.json"


def _model(msg: Message) -> MortalityLSTM:
    config = msg.content["config"]
    model = MortalityLSTM(
        ModelConfig(
            n_features=int(config["model-n-features"]),
            hidden_size=int(config["model-hidden-size"]),
            num_layers=int(config["model-num-layers"]),
            dropout=float(config["model-dropout"]),
            attention=bool(config["model-attention"]),
        )
    )
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    return model


def _reply(msg: Message, hospital: HospitalData, **records) -> Message:
    content = RecordDict({**records, "site": ConfigRecord({"hospital": hospital.name})})
    return Message(content, reply_to=msg)


@app.query("feature_stats")
def feature_stats(msg: Message, context: Context) -> Message:
    hospital = _hospital(msg, context)
    config = msg.content["config"]
    if bool(config["dp"]) and float(config["delta"]) >= 1 / len(hospital.train):
        # Checked on first contact, before any training: a larger delta could expose whole stays.
        reason = (
            f"{hospital.name}: --delta {float(config['delta']):g} must be below 1/n = "
            f"1/{len(hospital.train)} training stays"
        )
        return Message(Error(PRIVACY_REFUSAL, reason), reply_to=msg)
    records = {"metrics": MetricRecord({"num-examples": len(hospital.train)})}
    if not bool(config["dp"]):
        stats = FeatureStats.of(hospital.train)
        records["stats"] = ArrayRecord({k: Array(getattr(stats, k)) for k in ("count", "total", "total_sq")})
    return _reply(msg, hospital, **records)


@app.train(mods=[secure_aggregation_mod])
def train(msg: Message, context: Context) -> Message:
    set_torch_threads(1)  # one hospital per core
    hospital = _hospital(msg, context)
    config = msg.content["config"]
    x_train, x_val = _inputs(hospital, config)
    model = _model(msg)
    # A seed per (run seed, round, hospital name): reproducible, yet hospitals differ.
    seed = int(
        np.random.SeedSequence(
            [int(config["seed"]), int(config["server-round"]), *hospital.name.encode()]
        ).generate_state(1)[0]
    )
    metrics = {"num-examples": len(hospital.train)}
    if bool(config["dp"]):
        from client import private_training  # Opacus takes seconds to import: only DP runs pay

        deployed = "data-dir" in context.node_config
        try:
            model, ledger = private_training.train_round(
                msg, context, model, x_train, hospital.train.labels, seed,
                secure_rng=deployed, state_file=_ledger_file(context, hospital.name) if deployed else None,
            )  # fmt: skip
        except private_training.BudgetExhausted as refusal:
            return Message(Error(PRIVACY_REFUSAL, f"{hospital.name}: {refusal}"), reply_to=msg)
        extra = {"privacy": ConfigRecord({"ledger": ledger})}
    else:
        loss = train_epochs(
            model, x_train, hospital.train.labels,
            epochs=int(config["local-epochs"]), lr=float(config["lr"]), batch_size=int(config["batch-size"]),
            seed=seed, proximal_mu=float(config.get("proximal-mu", 0.0)),
        )  # fmt: skip
        local_val_auroc = auroc(hospital.val.labels, predict(model, x_val))
        metrics.update({"train-loss": loss, "local-val-auroc": local_val_auroc})
        extra = {}
    return _reply(msg, hospital, arrays=ArrayRecord(model.state_dict()), metrics=MetricRecord(metrics), **extra)


@app.query("restore_privacy")
def restore_privacy(msg: Message, context: Context) -> Message:
    """A resumed run hands the hospital back the ledger it had reached."""
    from client import private_training

    hospital = _hospital(msg, context)
    private_training.restore(context, str(msg.content["config"]["ledger"]))
    return _reply(msg, hospital, metrics=MetricRecord({"num-examples": len(hospital.train)}))


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    set_torch_threads(1)
    hospital = _hospital(msg, context)
    _, x_val = _inputs(hospital, msg.content["config"])
    scores = predict(_model(msg), x_val)
    labels = hospital.val.labels
    m = binary_metrics(labels, scores, threshold=0.5)
    hist = ScoreHistogram.of(labels, scores)
    metrics = {"num-examples": len(labels), **{k: m[k] for k in ("auroc", "auprc", "brier", "loss")}}
    return _reply(
        msg,
        hospital,
        metrics=MetricRecord(metrics),
        histogram=ArrayRecord({"positives": Array(hist.positives), "negatives": Array(hist.negatives)}),
    )
