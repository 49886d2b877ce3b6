"""One federated training run, as the ServerApp drives it.

1. Federated normalization: every hospital sends per-channel counts, sums and
   sums of squares of its training data; the server adds them up.
2. Each round: hospitals train the global LSTM locally; the strategy
   aggregates; hospitals evaluate the new global model on their validation
   stays and send score histograms; the server pools them (validation AUROC,
   decision threshold) and scores the model on the held-out test split.
3. After every round the run directory gets the metrics and checkpoints; the
   best round by pooled validation AUROC is kept.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from logging import INFO
from typing import Protocol

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common import log
from flwr.serverapp import Grid

from server.run_dir import BEST_MODEL, CONFIG_FILE, FINAL_MODEL, RunDirectory, write_model_card
from server.strategies import make_strategy
from shared.config import RunConfig
from shared.federation import Federation, save
from shared.metrics import ScoreHistogram, binary_metrics
from shared.model import ModelConfig, MortalityLSTM
from shared.plots import plot_learning_curves
from shared.preprocessing import N_FEATURES, FeatureStats, Normalization, to_features
from shared.training import predict

QUERY_FEATURE_STATS = "query.feature_stats"


class Progress(Protocol):
    def begin(self, rounds: int, hospitals: list[str]) -> None: ...
    def round_done(self, row: dict) -> None: ...


class LogProgress:
    """Progress as log lines, for runs started with `flwr run`."""

    def begin(self, rounds: int, hospitals: list[str]) -> None:
        log(INFO, "fedicu: %d rounds with %d hospitals", rounds, len(hospitals))

    def round_done(self, row: dict) -> None:
        log(
            INFO,
            "fedicu: round %d  val AUROC %.4f  test AUROC %.4f",
            row["round"], row["val_auroc"], row["test_auroc"],
        )  # fmt: skip


@dataclass(frozen=True)
class Reply:
    hospital: str
    message: Message


def _hospital_replies(replies: Iterable[Message], stage: str) -> tuple[list[Reply], list[str]]:
    """Successful replies sorted by hospital (a fixed order keeps aggregation
    reproducible), and a description of each failure."""
    ok, failed = [], []
    for msg in replies:
        if msg.has_error():
            failed.append(f"node {msg.metadata.src_node_id}: {msg.error.reason}")
        else:
            ok.append(Reply(str(msg.content["site"]["hospital"]), msg))
    if not ok:
        raise RuntimeError(f"{stage}: no hospital replied successfully. " + "; ".join(failed))
    return sorted(ok, key=lambda r: r.hospital), failed


def _base_config(config: RunConfig, data_file: str) -> dict:
    return {"prepared-data": data_file, "seed": config.seed}


def federated_normalization(grid: Grid, node_ids: list[int], base: dict, timeout: float) -> Normalization:
    messages = [
        Message(RecordDict({"config": ConfigRecord(base)}), dst_node_id=n, message_type=QUERY_FEATURE_STATS)
        for n in node_ids
    ]
    replies, failed = _hospital_replies(grid.send_and_receive(messages, timeout=timeout), "normalization")
    if failed:
        raise RuntimeError("normalization statistics incomplete: " + "; ".join(failed))
    parts = []
    for r in replies:
        a = r.message.content["stats"]
        parts.append(FeatureStats(a["count"].numpy(), a["total"].numpy(), a["total_sq"].numpy()))
    return Normalization.from_stats(FeatureStats.sum(parts))


def wait_for_nodes(grid: Grid, expected: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while len(nodes := sorted(grid.get_node_ids())) < expected:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"only {len(nodes)} of {expected} hospitals connected within {timeout:.0f} s; "
                "the number of SuperNodes must equal the number of hospitals"
            )
        time.sleep(0.5)
    if len(nodes) > expected:
        raise RuntimeError(
            f"{len(nodes)} SuperNodes are connected but the data has {expected} hospitals; "
            "run one SuperNode per hospital (in simulation: num-supernodes = hospitals)"
        )
    return nodes


def run_federated(
    grid: Grid,
    config: RunConfig,
    federation: Federation,
    data_file: str,
    run_dir: RunDirectory,
    progress: Progress,
) -> dict:
    """Train, evaluate and checkpoint; return the final row of metrics."""
    hospitals = [h.name for h in federation.hospitals]
    run_dir.write_json(CONFIG_FILE, config.to_flower())
    run_dir.set_status("running", rounds_completed=0, started=time.time())
    save(federation, data_file)
    base = _base_config(config, data_file)
    node_ids = wait_for_nodes(grid, len(hospitals), config.round_timeout)
    norm = federated_normalization(grid, node_ids, base, config.round_timeout)

    model_config = ModelConfig(
        n_features=N_FEATURES,
        hidden_size=config.hidden_size,
        num_layers=config.layers,
        dropout=config.dropout,
        attention=config.attention,
    )
    torch.manual_seed(config.seed)
    model = MortalityLSTM(model_config)
    arrays = ArrayRecord(model.state_dict())
    shared_config = {
        **base,
        "norm-mean": norm.mean.tolist(),
        "norm-std": norm.std.tolist(),
        **{f"model-{k.replace('_', '-')}": v for k, v in model_config.to_dict().items()},
    }
    train_config = ConfigRecord(
        {**shared_config, "local-epochs": config.local_epochs, "lr": config.lr, "batch-size": config.batch_size}
    )
    strategy = make_strategy(config, len(hospitals))
    x_test = to_features(federation.test, norm)
    y_test = federation.test.labels

    rows, hospital_rows = [], []
    best = None
    progress.begin(config.rounds, hospitals)
    for rnd in range(1, config.rounds + 1):
        started = time.monotonic()
        messages = strategy.configure_train(rnd, arrays, train_config, grid)
        train_replies, train_failed = _hospital_replies(
            grid.send_and_receive(messages, timeout=config.round_timeout), f"round {rnd} training"
        )
        new_arrays, _ = strategy.aggregate_train(rnd, [r.message for r in train_replies])
        arrays = new_arrays

        messages = strategy.configure_evaluate(rnd, arrays, ConfigRecord(shared_config), grid)
        eval_replies, eval_failed = _hospital_replies(
            grid.send_and_receive(messages, timeout=config.round_timeout), f"round {rnd} evaluation"
        )
        histograms = {
            r.hospital: ScoreHistogram(
                r.message.content["histogram"]["positives"].numpy(),
                r.message.content["histogram"]["negatives"].numpy(),
            )
            for r in eval_replies
        }
        pooled = ScoreHistogram.sum(list(histograms.values()))
        threshold = pooled.best_threshold()

        model.load_state_dict(arrays.to_torch_state_dict())
        test = binary_metrics(y_test, predict(model, x_test), threshold)

        trained = {r.hospital: r.message.content["metrics"] for r in train_replies}
        evaluated = {r.hospital: r.message.content["metrics"] for r in eval_replies}
        n_val = sum(m["num-examples"] for m in evaluated.values())
        n_train = sum(m["num-examples"] for m in trained.values())

        def pooled_mean(key: str) -> float:
            return sum(m[key] * m["num-examples"] for m in evaluated.values()) / n_val

        row = {
            "round": rnd,
            "hospitals_trained": len(train_replies),
            "hospitals_failed": len(set(train_failed) | set(eval_failed)),
            "train_loss": sum(m["train-loss"] * m["num-examples"] for m in trained.values()) / n_train,
            "val_auroc": pooled.auroc(),
            "val_auroc_tie_bound": pooled.auroc_tie_bound(),
            "val_auprc": pooled.auprc(),
            "val_brier": pooled_mean("brier"),
            "val_loss": pooled_mean("loss"),
            "val_event1": pooled.event1(threshold),
            "threshold": threshold,
            **{f"test_{k}": v for k, v in test.items() if k != "n"},
            "seconds": time.monotonic() - started,
        }
        rows.append(row)
        for name in hospitals:
            t, e = trained.get(name), evaluated.get(name)
            hospital_rows.append(
                {
                    "round": rnd,
                    "hospital": name,
                    "train_stays": t["num-examples"] if t else 0,
                    "train_loss": t["train-loss"] if t else float("nan"),
                    "local_val_auroc": t["local-val-auroc"] if t else float("nan"),
                    "val_stays": e["num-examples"] if e else 0,
                    "val_auroc": e["auroc"] if e else float("nan"),
                    "val_auprc": e["auprc"] if e else float("nan"),
                    "val_brier": e["brier"] if e else float("nan"),
                    "val_loss": e["loss"] if e else float("nan"),
                    "val_event1": histograms[name].event1(threshold) if e else float("nan"),
                }
            )

        state = {"model_config": model_config.to_dict(), "state_dict": model.state_dict(), "round": rnd}
        if best is None or row["val_auroc"] > best["val_auroc"]:
            best = row
            run_dir.save_model(BEST_MODEL, {**state, "threshold": threshold})
        run_dir.write_table("metrics.csv", "metrics.json", rows)
        run_dir.write_table("hospital_metrics.csv", "hospital_metrics.json", hospital_rows)
        run_dir.set_status("running", rounds_completed=rnd, best_round=best["round"])
        progress.round_done(row)

    run_dir.save_model(FINAL_MODEL, {**state, "threshold": rows[-1]["threshold"]})
    write_model_card(
        run_dir,
        model_config=model_config,
        norm=norm,
        rows=rows,
        best=best,
        training=config.to_flower(),
        data=federation.summary(),
    )
    plot_learning_curves(rows, run_dir.path / "learning_curves.png")
    run_dir.set_status("complete", finished=time.time())
    return {**rows[-1], "best_round": best["round"], "best_test_auroc": best["test_auroc"]}

