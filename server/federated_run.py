"""One federated training run, as the ServerApp drives it.

1. Federated normalization: every hospital sends per-channel counts, sums and
   sums of squares of its training data; the server adds them up.
2. Each round: hospitals train the global LSTM locally; the strategy
   aggregates; hospitals evaluate the new global model on their validation
   stays and send score histograms; the server pools them (validation AUROC,
   decision threshold) and scores the model on the held-out test split. The
   next round's training is sent first, so hospitals train while the server
   scores and writes (except under secure aggregation, whose rounds run apart).
3. After every round the run directory gets the metrics and a checkpoint (the
   global weights, the strategy's state, the metrics so far), so a killed run
   resumes from its last completed round and ends exactly as an uninterrupted
   run would: training randomness is derived from (seed, round, hospital), not
   from state that a restart would lose.

A hospital that fails or misses the round timeout is recorded in the round's
metrics and the round completes with the others, as long as at least
`min_hospitals` replied; otherwise the run stops with a clear message.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any, Protocol

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from server.messaging import Sent, collect, send
from server.run_dir import (
    BEST_MODEL,
    CHECKPOINT,
    CONFIG_FILE,
    FINAL_MODEL,
    HOSPITAL_PRIVACY_FILE,
    PRIVACY_FILE,
    RunDirectory,
    write_model_card,
)
from server.secure_aggregation import secure_train, unmask_threshold
from server.strategies import EQUAL_WEIGHT, make_strategy
from shared.config import RunConfig
from shared.metrics import BINARY_METRICS, ScoreHistogram, binary_metrics
from shared.model import MortalityLSTM, model_config_of
from shared.plots import plot_learning_curves
from shared.preprocessing import FeatureStats, Normalization, Sequences, to_features
from shared.training import predict

QUERY_FEATURE_STATS = "query.feature_stats"
QUERY_RESTORE_PRIVACY = "query.restore_privacy"
# First contact: hospitals start up and load their data, which can take far longer than a round.
JOIN_TIMEOUT = 600.0


class Progress(Protocol):
    def begin(self, rounds: int, done: int) -> None: ...
    def round_done(self, row: dict) -> None: ...


class LogProgress:
    """Progress as log lines, for runs started with `flwr run`."""

    def begin(self, rounds: int, done: int) -> None:
        log(INFO, "fedicu: rounds %d..%d", done + 1, rounds)

    def round_done(self, row: dict) -> None:
        log(
            INFO,
            "fedicu: round %d  hospitals %d (failed %d)  val AUROC %.4f  test AUROC %.4f",
            row["round"], row["hospitals_trained"], row["hospitals_failed"], row["val_auroc"], row["test_auroc"],
        )  # fmt: skip


@dataclass(frozen=True)
class ServerData:
    """What the server holds for a run.

    In simulation the server prepared every hospital's data and saved it to
    `prepared_data`, from which each virtual hospital reads its own part. In a
    deployment it holds none: `hospitals` SuperNodes each read their own folder, and
    `test` is the optional held-out folder of the server's site (None: no test metrics)."""

    hospitals: int
    test: Sequences | None
    summary: dict  # for the model card
    prepared_data: str = ""


@dataclass
class RunState:
    """Everything a run needs to continue after its last completed round."""

    completed: int
    arrays: dict[str, torch.Tensor]
    norm: Normalization
    rows: list[dict] = field(default_factory=list)
    hospital_rows: list[dict] = field(default_factory=list)
    best: dict | None = None
    strategy: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    privacy: dict[str, dict] = field(default_factory=dict)  # hospital -> ledger (DP runs)
    hospital_privacy: dict | None = None  # the server's hospital-level ledger (hospital-level DP)

    def to_checkpoint(self) -> dict:
        return {
            "completed": self.completed,
            "arrays": self.arrays,
            "norm": {"mean": torch.from_numpy(self.norm.mean), "std": torch.from_numpy(self.norm.std)},
            "rows": self.rows,
            "hospital_rows": self.hospital_rows,
            "best": self.best,
            "strategy": self.strategy,
            "privacy": json.dumps(self.privacy),
            "hospital_privacy": json.dumps(self.hospital_privacy),
        }

    @staticmethod
    def from_checkpoint(c: dict) -> RunState:
        norm = Normalization(c["norm"]["mean"].numpy(), c["norm"]["std"].numpy())
        return RunState(
            c["completed"], c["arrays"], norm, c["rows"], c["hospital_rows"], c["best"], c["strategy"],
            json.loads(c["privacy"]), json.loads(c["hospital_privacy"]),
        )  # fmt: skip


# Strategy attributes that carry state from round to round (FedAdam's moments).
_STRATEGY_STATE = ("m_t", "v_t")


def _strategy_state(strategy: Strategy) -> dict[str, dict[str, torch.Tensor]]:
    return {
        name: {k: torch.from_numpy(np.asarray(v)) for k, v in value.items()}
        for name in _STRATEGY_STATE
        if (value := getattr(strategy, name, None))
    }


def _restore_strategy(strategy: Strategy, state: dict[str, dict[str, torch.Tensor]]) -> None:
    for name, value in state.items():
        setattr(strategy, name, {k: v.numpy() for k, v in value.items()})


@dataclass(frozen=True)
class Replies:
    ok: dict[str, Message]  # hospital name -> reply, sorted by name
    failures: dict[str, str]  # hospital (or node) -> what went wrong


def _receive(grid: Grid, sent: Sent, stage: str, minimum: int, names: dict[int, str]) -> Replies:
    """Wait until every hospital replied or the timeout passed, and sort the replies by hospital."""
    missing = "no reply" if sent.timeout is None else f"no reply within {sent.timeout:g} s"
    return _sort_replies(collect(grid, sent), sent.messages, missing, stage, minimum, names)


def _exchange(
    grid: Grid, messages: Iterable[Message], timeout: float, stage: str, minimum: int, names: dict[int, str]
) -> Replies:
    """Send, wait up to `timeout`, and sort the replies by hospital."""
    return _receive(grid, send(grid, messages, timeout), stage, minimum, names)


def _sort_replies(
    replies: Iterable[Message], sent: list[Message], missing: str, stage: str, minimum: int, names: dict[int, str]
) -> Replies:
    """The replies by hospital (a fixed order keeps aggregation reproducible); errors and
    missing replies become failures, and fewer than `minimum` replies stop the run."""
    ok, failures, answered = {}, {}, set()
    for msg in replies:
        node = msg.metadata.src_node_id
        answered.add(node)
        if msg.has_error():
            failures[names.get(node, f"node {node}")] = msg.error.reason
            continue
        name = str(msg.content["site"]["hospital"])
        if name in ok:
            raise RuntimeError(
                f"{stage}: two SuperNodes both hold hospital {name!r}; give each its own node config hospital"
            )
        ok[name] = msg
    for msg in sent:
        node = msg.metadata.dst_node_id
        if node not in answered:
            failures[names.get(node, f"node {node}")] = missing
    for who, reason in failures.items():
        log(WARNING, "fedicu: %s: %s failed: %s", stage, who, reason)
    if len(ok) < minimum:
        details = "; ".join(f"{who}: {reason}" for who, reason in failures.items())
        raise RuntimeError(f"{stage}: only {len(ok)} hospital(s) replied, fewer than the minimum {minimum}. {details}")
    return Replies(dict(sorted(ok.items())), failures)


def _secure_round(
    grid: Grid, strategy: Strategy, rnd: int, instructions: list[Message], config: RunConfig,
    names: dict[int, str], train_stays: dict[str, int],
) -> tuple[Replies, ArrayRecord]:  # fmt: skip
    """One round's training through SecAgg+: the strategy aggregates the secure average."""
    stage = f"round {rnd} training (secure aggregation)"
    average, replies = secure_train(grid, instructions, rnd, float(max(train_stays.values())), config.round_timeout)
    # A hospital's masked weights are in the sum from the moment they arrive; it failed only if they did not.
    masked = [m for m in replies if not m.has_error() and "site" in m.content]
    delivered = {m.metadata.src_node_id for m in masked}
    masked += [m for m in replies if m.has_error() and m.metadata.src_node_id not in delivered]
    trained = _sort_replies(masked, instructions, "dropped out during secure aggregation", stage, config.min_hospitals, names)
    if average is None:
        needed = unmask_threshold(len(instructions))
        raise RuntimeError(
            f"{stage}: stopped, fewer than {needed} of {len(instructions)} hospitals stayed to the end of the round "
            f"({len(trained.ok)} sent masked weights); SecAgg+ needs more than half of them to unmask the sum"
        )
    arrays, _ = strategy.aggregate_train(rnd, [average])
    return trained, arrays


def federated_normalization(
    grid: Grid, node_ids: list[int], base: dict, timeout: float
) -> tuple[Normalization, dict[int, str], dict[str, int]]:
    """Pooled normalization statistics, which node holds which hospital, and each
    hospital's number of training stays.

    With DP-SGD hospitals send no statistics (they would reveal training stays outside the
    guarantee) and inputs are standardized with `Normalization.reference()`."""
    messages = [
        Message(RecordDict({"config": ConfigRecord(base)}), dst_node_id=n, message_type=QUERY_FEATURE_STATS)
        for n in node_ids
    ]
    # Statistics from only some hospitals would give every hospital the wrong scale.
    replies = _exchange(grid, messages, timeout, "normalization statistics", len(node_ids), {})
    names = {m.metadata.src_node_id: name for name, m in replies.ok.items()}
    train_stays = {name: int(m.content["metrics"]["num-examples"]) for name, m in replies.ok.items()}
    if base["dp"]:
        return Normalization.reference(), names, train_stays
    parts = [
        FeatureStats(*(m.content["stats"][k].numpy() for k in ("count", "total", "total_sq")))
        for m in replies.ok.values()
    ]
    return Normalization.from_stats(FeatureStats.sum(parts)), names, train_stays


def restore_privacy(grid: Grid, names: dict[int, str], ledgers: dict[str, dict], base: dict, timeout: float) -> None:
    """Give each hospital of a resumed run its privacy ledger back, so accounting goes on
    from where it stopped instead of starting again at zero."""
    messages = [
        Message(
            RecordDict({"config": ConfigRecord({**base, "ledger": json.dumps(ledgers[name])})}),
            dst_node_id=node,
            message_type=QUERY_RESTORE_PRIVACY,
        )
        for node, name in names.items()
        if name in ledgers
    ]
    if messages:
        _exchange(grid, messages, timeout, "restoring privacy ledgers", len(messages), names)


class _AllHospitals:
    """The grid as the strategy sees it: every hospital of the run, online or not.

    Flower's strategies sample among online nodes and wait, without end, until enough are
    online. A site that went down must instead be asked, miss the round timeout and be
    recorded as failed, and the run go on or stop with a message."""

    def __init__(self, grid: Grid, node_ids: Iterable[int]):
        self.grid, self.node_ids = grid, list(node_ids)

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)

    def __getattr__(self, name: str):
        return getattr(self.grid, name)


def wait_for_nodes(grid: Grid, expected: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while len(nodes := sorted(grid.get_node_ids())) < expected:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"only {len(nodes)} of {expected} hospitals connected within {timeout:.0f} s; "
                "one SuperNode per hospital must connect"
            )
        time.sleep(0.5)
    if len(nodes) > expected:
        raise RuntimeError(
            f"{len(nodes)} SuperNodes are connected but the run expects {expected} hospitals; "
            "run one SuperNode per hospital (deployment: run-config sites; simulation: num-supernodes = hospitals)"
        )
    return nodes


def _account_hospital_dp(state: RunState, config: RunConfig, replied: int, hospitals: int) -> float:
    """Add this round's release to the hospital-level ledger; return epsilon so far.

    The noise is calibrated to average `hospitals` updates; when fewer replied, each
    weighs more and the round's effective noise multiplier is z * replied / hospitals.
    """
    from shared.privacy.accounting import PrivacyLedger  # Opacus is slow to import: only these runs pay

    ledger = (
        PrivacyLedger.from_json(state.hospital_privacy)
        if state.hospital_privacy
        else PrivacyLedger(config.accountant, config.delta)
    )
    ledger.record(config.hospital_dp_noise * replied / hospitals, 1.0, 1)
    state.hospital_privacy = {"unit": "hospital", "clip": config.hospital_dp_clip, **ledger.to_json()}
    return state.hospital_privacy["epsilon"]


def _histogram(reply: Message) -> ScoreHistogram:
    h = reply.content["histogram"]
    return ScoreHistogram(h["positives"].numpy(), h["negatives"].numpy())


def run_federated(
    grid: Grid,
    config: RunConfig,
    data: ServerData,
    run_dir: RunDirectory,
    progress: Progress,
    resume: RunState | None = None,
) -> dict:
    """Train, evaluate and checkpoint every round; return the final row of metrics."""
    if not 1 <= config.min_hospitals <= data.hospitals:
        raise ValueError(f"--min-hospitals must lie in 1..{data.hospitals} (the number of hospitals)")
    if config.secagg and data.hospitals < 2:
        raise ValueError("--secagg needs at least 2 hospitals: the sum of one hospital's update is that update")
    if resume is None:
        run_dir.write_json(CONFIG_FILE, config.to_flower())
    run_dir.set_status("running", rounds_completed=resume.completed if resume else 0, started=time.time())
    base = {
        "seed": config.seed,
        "val-fraction": config.val_fraction,
        "dp": config.dp,
        "delta": config.delta,
        "accountant": config.accountant,
    }
    if data.prepared_data:
        base["prepared-data"] = data.prepared_data
    node_ids = wait_for_nodes(grid, data.hospitals, max(config.round_timeout, JOIN_TIMEOUT))

    model_config = model_config_of(config)
    model = MortalityLSTM(model_config)
    strategy = make_strategy(config, data.hospitals)
    norm, names, train_stays = federated_normalization(grid, node_ids, base, max(config.round_timeout, JOIN_TIMEOUT))
    hospitals = sorted(train_stays)
    summary = {"hospitals": {name: {"train": {"stays": n}} for name, n in train_stays.items()}, **data.summary}
    if resume is None:
        torch.manual_seed(config.seed)
        state = RunState(0, MortalityLSTM(model_config).state_dict(), norm)
    else:  # the statistics are the same; the query only tells which node is which hospital
        state = resume
        _restore_strategy(strategy, state.strategy)
        restore_privacy(grid, names, state.privacy, base, config.round_timeout)
    norm = state.norm
    arrays = ArrayRecord(state.arrays)
    shared_config = {
        **base,
        "norm-mean": norm.mean.tolist(),
        "norm-std": norm.std.tolist(),
        **{f"model-{k.replace('_', '-')}": v for k, v in model_config.to_dict().items()},
    }
    train_config = ConfigRecord(
        {
            **shared_config,
            "local-epochs": config.local_epochs,
            "lr": config.lr,
            "batch-size": config.batch_size,
            "planned-rounds": config.rounds,
            "target-epsilon": config.target_epsilon,
            "noise-multiplier": config.noise_multiplier,
            "max-grad-norm": config.max_grad_norm,
        }
    )
    test = (to_features(data.test, norm), data.test.labels) if data.test is not None else None

    def training(rnd: int, arrays: ArrayRecord) -> list[Message]:
        return list(strategy.configure_train(rnd, arrays, train_config, _AllHospitals(grid, names)))

    progress.begin(config.rounds, state.completed)
    started = time.monotonic()
    next_training: Sent | None = None
    for rnd in range(state.completed + 1, config.rounds + 1):
        if config.secagg:
            trained, arrays = _secure_round(grid, strategy, rnd, training(rnd, arrays), config, names, train_stays)
        else:
            sent, next_training = next_training or send(grid, training(rnd, arrays), config.round_timeout), None
            trained = _receive(grid, sent, f"round {rnd} training", config.min_hospitals, names)
            if config.hospital_dp_noise:
                for reply in trained.ok.values():
                    reply.content["metrics"][EQUAL_WEIGHT] = 1.0
            arrays, _ = strategy.aggregate_train(rnd, list(trained.ok.values()))
        evaluated = _exchange(
            grid, strategy.configure_evaluate(rnd, arrays, ConfigRecord(shared_config), _AllHospitals(grid, names)),
            config.round_timeout, f"round {rnd} evaluation", config.min_hospitals, names,
        )  # fmt: skip
        if rnd < config.rounds and not config.secagg:
            # Hospitals start the next round now: the server's own work for this one (test
            # scoring, files, checkpoint) overlaps their training instead of delaying it. (Should
            # that work fail, the run stops with this training still under way: sent messages
            # cannot be called back.)
            next_training = send(grid, training(rnd + 1, arrays), config.round_timeout)
        row, hospital_rows = _round_metrics(rnd, hospitals, trained, evaluated, model, arrays, test)
        now = time.monotonic()
        row["seconds"], started = now - started, now

        state.completed = rnd
        state.arrays = arrays.to_torch_state_dict()
        state.rows.append(row)
        state.hospital_rows += hospital_rows
        state.strategy = _strategy_state(strategy)
        for name, reply in trained.ok.items():
            if "privacy" in reply.content:
                state.privacy[name] = json.loads(str(reply.content["privacy"]["ledger"]))
        if config.hospital_dp_noise:
            row["hospital_epsilon"] = _account_hospital_dp(state, config, len(trained.ok), len(hospitals))
            run_dir.write_json(HOSPITAL_PRIVACY_FILE, state.hospital_privacy)
        for hospital_row in hospital_rows:
            hospital_row["epsilon"] = state.privacy.get(hospital_row["hospital"], {}).get("epsilon", 0.0)
        if config.dp:
            run_dir.write_json(PRIVACY_FILE, [{"hospital": h, **state.privacy[h]} for h in sorted(state.privacy)])
        model_state = {"model_config": model_config.to_dict(), "state_dict": state.arrays, "round": rnd, "threshold": row["threshold"]}
        if state.best is None or row["val_auroc"] > state.best["val_auroc"]:
            state.best = row
            run_dir.save_model(BEST_MODEL, model_state)
        run_dir.write_table("metrics.csv", "metrics.json", state.rows)
        run_dir.write_table("hospital_metrics.csv", "hospital_metrics.json", state.hospital_rows)
        # The checkpoint goes last: whatever it records is already on disk.
        run_dir.save_model(CHECKPOINT, state.to_checkpoint())
        run_dir.set_status("running", rounds_completed=rnd, best_round=state.best["round"])
        progress.round_done(row)

    run_dir.save_model(FINAL_MODEL, model_state)
    write_model_card(
        run_dir,
        model_config=model_config,
        norm=norm,
        rows=state.rows,
        best=state.best,
        training=config.to_flower(),
        data=summary,
    )
    plot_learning_curves(state.rows, run_dir.path / "learning_curves.png")
    run_dir.set_status("complete", finished=time.time())
    return {**state.rows[-1], "best_round": state.best["round"], "best_test_auroc": state.best["test_auroc"]}


def _round_metrics(
    rnd: int,
    hospitals: list[str],
    trained: Replies,
    evaluated: Replies,
    model: MortalityLSTM,
    arrays: ArrayRecord,
    test: tuple[np.ndarray, np.ndarray] | None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    histograms = {name: _histogram(m) for name, m in evaluated.ok.items()}
    pooled = ScoreHistogram.sum(list(histograms.values()))
    threshold = pooled.best_threshold()
    nan = float("nan")
    if test is None:  # a deployment without a server test folder
        test_metrics = dict.fromkeys(BINARY_METRICS, nan)
    else:
        model.load_state_dict(arrays.to_torch_state_dict())
        test_metrics = binary_metrics(test[1], predict(model, test[0]), threshold)

    train_metrics = {name: m.content["metrics"] for name, m in trained.ok.items()}
    eval_metrics = {name: m.content["metrics"] for name, m in evaluated.ok.items()}
    n_train = sum(m["num-examples"] for m in train_metrics.values())
    n_val = sum(m["num-examples"] for m in eval_metrics.values())

    def pooled_mean(key: str) -> float:
        return sum(m[key] * m["num-examples"] for m in eval_metrics.values()) / n_val

    row = {
        "round": rnd,
        "hospitals_trained": len(trained.ok),
        "hospitals_failed": len(hospitals) - len(set(trained.ok) & set(evaluated.ok)),
        # Absent under DP-SGD: hospitals send nothing computed from training stays but the weights.
        "train_loss": sum(m.get("train-loss", nan) * m["num-examples"] for m in train_metrics.values()) / n_train,
        "val_auroc": pooled.auroc(),
        "val_auroc_tie_bound": pooled.auroc_tie_bound(),
        "val_auprc": pooled.auprc(),
        "val_brier": pooled_mean("brier"),
        "val_loss": pooled_mean("loss"),
        "val_event1": pooled.event1(threshold),
        "threshold": threshold,
        **{f"test_{k}": test_metrics[k] for k in BINARY_METRICS},
    }
    hospital_rows = []
    for name in hospitals:
        t, e = train_metrics.get(name), eval_metrics.get(name)
        hospital_rows.append(
            {
                "round": rnd,
                "hospital": name,
                "status": "ok" if t and e else f"failed: {trained.failures.get(name) or evaluated.failures.get(name)}",
                "train_stays": t["num-examples"] if t else 0,
                "train_loss": t.get("train-loss", nan) if t else nan,
                "local_val_auroc": t.get("local-val-auroc", nan) if t else nan,
                "val_stays": e["num-examples"] if e else 0,
                **{f"val_{k}": e[k] if e else nan for k in ("auroc", "auprc", "brier", "loss")},
                "val_event1": histograms[name].event1(threshold) if e else nan,
            }
        )
    return row, hospital_rows
