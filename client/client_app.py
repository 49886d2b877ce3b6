"""The ClientApp a hospital runs: it trains and evaluates on that hospital's stays only.

What leaves the hospital, per message:
- `query.feature_stats`: per-channel counts, sums and sums of squares of its
  training data (40 channels), its number of training stays, its name;
- `train`: the locally trained model weights, the number of training stays,
  the mean training loss and the local model's validation AUROC;
- `evaluate`: the global model's validation metrics (n, AUROC, AUPRC, Brier,
  loss) and a 1,000-bin histogram of its validation scores per class.
No stay, measurement or individual prediction is ever sent.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from shared.federation import HospitalData, load_hospital
from shared.metrics import ScoreHistogram, binary_metrics
from shared.model import ModelConfig, MortalityLSTM
from shared.preprocessing import FeatureStats, Normalization, to_features
from shared.training import predict, set_torch_threads, train_epochs

app = ClientApp()
_features: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


def _hospital(msg: Message, context: Context) -> HospitalData:
    config = msg.content["config"]
    return load_hospital(str(config["prepared-data"]), int(context.node_config["partition-id"]))


def _inputs(hospital: HospitalData, config: ConfigRecord) -> tuple[np.ndarray, np.ndarray]:
    """Normalized training and validation inputs, built once per normalization."""
    mean, std = config["norm-mean"], config["norm-std"]
    key = (id(hospital), tuple(mean), tuple(std))
    if key not in _features:
        norm = Normalization(np.asarray(mean), np.asarray(std))
        _features[key] = (to_features(hospital.train, norm), to_features(hospital.val, norm))
    return _features[key]


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
    stats = FeatureStats.of(hospital.train)
    arrays = {k: Array(getattr(stats, k)) for k in ("count", "total", "total_sq")}
    return _reply(
        msg,
        hospital,
        stats=ArrayRecord(arrays),
        metrics=MetricRecord({"num-examples": len(hospital.train)}),
    )


@app.train()
def train(msg: Message, context: Context) -> Message:
    set_torch_threads(1)  # one hospital per core
    hospital = _hospital(msg, context)
    config = msg.content["config"]
    x_train, x_val = _inputs(hospital, config)
    model = _model(msg)
    # A seed per (run seed, round, hospital): reproducible, yet hospitals differ.
    seed = np.random.SeedSequence(
        [int(config["seed"]), int(config["server-round"]), int(context.node_config["partition-id"])]
    ).generate_state(1)[0]
    loss = train_epochs(
        model,
        x_train,
        hospital.train.labels,
        epochs=int(config["local-epochs"]),
        lr=float(config["lr"]),
        batch_size=int(config["batch-size"]),
        seed=int(seed),
        proximal_mu=float(config.get("proximal-mu", 0.0)),
    )
    local_val = binary_metrics(hospital.val.labels, predict(model, x_val), threshold=0.5)
    metrics = {"num-examples": len(hospital.train), "train-loss": loss, "local-val-auroc": local_val["auroc"]}
    return _reply(msg, hospital, arrays=ArrayRecord(model.state_dict()), metrics=MetricRecord(metrics))


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
