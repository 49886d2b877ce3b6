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
4. At the end, the cross-site matrix: every hospital scores the best and the final global
   model on its own test stays and sends the numbers (`cross_site.csv`, `cross_site.png`);
   for the best model it also fits and keeps its recalibration maps. With `--personalization`,
   every hospital then adapts the best model to its own stays and keeps it; its numbers join
   the matrix (`personal/<method>`) and `personalization.json`.

A hospital that fails or misses the round timeout is recorded in the round's
metrics and the round completes with the others, as long as at least
`min_hospitals` replied; otherwise the run stops with a clear message.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, replace
from logging import INFO
from typing import Any, Protocol, cast

import torch
from flwr.app import ArrayRecord, Message
from flwr.common import log
from flwr.serverapp import Grid

from fedicu.server.checkpoint import RunState
from fedicu.server.messaging import Sent, send, sender
from fedicu.server.replies import Replies, exchange, receive, sort_replies
from fedicu.server.round_metrics import round_metrics
from fedicu.server.scaffold import ControlVariates
from fedicu.server.secure_aggregation import secure_train, unmask_threshold
from fedicu.server.strategies import EQUAL_WEIGHT, fit_to_replies, make_strategy
from fedicu.server.update_checks import control_problems, update_problems
from fedicu.shared import compat, cross_site
from fedicu.shared.config import FEDREP, RunConfig
from fedicu.shared.contract import (
    METRICS,
    SITE,
    CrossSiteReply,
    CrossSiteRequest,
    EvaluateReply,
    EvaluateRequest,
    FeatureStatsReply,
    FeatureStatsRequest,
    PersonalizeReply,
    PersonalizeRequest,
    RestorePrivacyReply,
    RestorePrivacyRequest,
    TrainReply,
    TrainRequest,
)
from fedicu.shared.model import HEAD, MortalityLSTM, model_config_of
from fedicu.shared.plots import FEDERATED_CURVES, plot_learning_curves
from fedicu.shared.preprocessing import FeatureStats, Normalization, Sequences, to_features
from fedicu.shared.run_dir import (
    BEST_MODEL,
    CHECKPOINT,
    CONFIG_FILE,
    CURVES_PNG,
    FINAL_MODEL,
    HOSPITAL_CSV,
    HOSPITAL_JSON,
    HOSPITAL_PRIVACY_FILE,
    METRICS_CSV,
    METRICS_JSON,
    PERSONALIZATION_JSON,
    PRIVACY_FILE,
    RUN_FILE,
    SITES_DIR,
    TEST_PREDICTIONS,
    RunDirectory,
    write_model_card,
)
from fedicu.shared.training import predict
from fedicu.shared.transfer import starting_weights

__all__ = ["LogProgress", "Progress", "RunState", "ServerData", "run_federated"]

# First contact: hospitals start up and load their data, which can take far longer than a round.
JOIN_TIMEOUT = 600.0
# A simulation's virtual SuperNodes all exist once its engine is up: a missing one never comes.
SIMULATED_JOIN_TIMEOUT = 10.0


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
            row["round"],
            row["hospitals_trained"],
            row["hospitals_failed"],
            row["val_auroc"],
            row["test_auroc"],
        )


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
    test_hospitals: tuple[str, ...] = ()  # simulation: the hospital of each test stay


class _AllHospitals:
    """The grid as the strategy sees it: every hospital of the run, online or not.

    Flower's strategies sample among online nodes and wait, without end, until enough are
    online. A site that went down must instead be asked, miss the round timeout and be
    recorded as failed, and the run go on or stop with a message."""

    def __init__(self, grid: Grid, node_ids: Iterable[int]):
        self.grid, self.node_ids = grid, list(node_ids)

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.grid, name)


ONE_NODE_PER_HOSPITAL = {
    True: "the simulation needs one virtual SuperNode per hospital: set the federation's num-supernodes "
    "(flwr run . --federation-config 'num-supernodes={hospitals}')",
    False: "one SuperNode per hospital must connect (run-config sites = {hospitals})",
}


def wait_for_nodes(grid: Grid, expected: int, simulated: bool, timeout: float) -> list[int]:
    deadline = time.monotonic() + (SIMULATED_JOIN_TIMEOUT if simulated else timeout)
    remedy = ONE_NODE_PER_HOSPITAL[simulated].format(hospitals=expected)
    while len(nodes := sorted(grid.get_node_ids())) < expected:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(nodes)} SuperNodes for {expected} hospitals; {remedy}")
        time.sleep(0.5)
    if len(nodes) > expected:
        raise RuntimeError(f"{len(nodes)} SuperNodes for {expected} hospitals; {remedy}")
    return nodes


def run_federated(
    grid: Grid,
    config: RunConfig,
    data: ServerData,
    run_dir: RunDirectory,
    progress: Progress,
    resume: RunState | None = None,
) -> dict:
    """Train, evaluate and checkpoint every round; return the final row of metrics."""
    run = FederatedRun(grid, config, data, run_dir, resume)
    run.start()
    progress.begin(config.rounds, run.state.completed)
    for rnd in range(run.state.completed + 1, config.rounds + 1):
        trained, arrays = run.train(rnd)
        evaluated = run.evaluate(rnd, arrays)
        if rnd < config.rounds:
            run.start_next_training(rnd + 1, arrays)
        progress.round_done(run.record(rnd, trained, evaluated, arrays))
    return run.finish()


def _study(run_dir: RunDirectory) -> str:
    """The run's identity: new with its directory, kept in run.json through every resume."""
    current = run_dir.read_json(RUN_FILE) if (run_dir.path / RUN_FILE).is_file() else {}
    if not (study := current.get("study", "")):
        study = uuid.uuid4().hex
        run_dir.write_json(RUN_FILE, {**current, "study": study})
    return study


class FederatedRun:
    """The steps of one run: `start` (hospitals join, normalization, a resumed run's state),
    then per round `train`, `evaluate`, `record`, and at the end `finish`."""

    def __init__(self, grid: Grid, config: RunConfig, data: ServerData, run_dir: RunDirectory, resume: RunState | None):
        if not 1 <= config.min_hospitals <= data.hospitals:
            raise ValueError(f"--min-hospitals must lie in 1..{data.hospitals} (the number of hospitals)")
        if config.secagg and data.hospitals < 2:
            raise ValueError("--secagg needs at least 2 hospitals: the sum of one hospital's update is that update")
        self.grid, self.config, self.data, self.run_dir, self.resume = grid, config, data, run_dir, resume
        self.model_config = model_config_of(config)
        self.personal_head = config.personalization == FEDREP
        self.model = MortalityLSTM(self.model_config)
        self.start_weights = {} if resume is not None else self._start_weights()
        self.strategy = make_strategy(config, data.hospitals)
        self.settings: dict[str, Any] = dict(
            seed=config.seed,
            task=config.task,
            test_fraction=config.test_fraction,
            val_fraction=config.val_fraction,
            dp=config.dp,
            delta=config.delta,
            accountant=config.accountant,
            prepared_data=data.prepared_data,
            study=_study(run_dir),
        )
        self.next_training: Sent | None = None
        self.started = time.monotonic()

    # ---- start ----------------------------------------------------------------------------

    def start(self) -> None:
        """Wait for the hospitals, learn who is who, and set the run's state."""
        if self.resume is None:
            self.run_dir.write_json(CONFIG_FILE, self.config.to_flower())
        completed = self.resume.completed if self.resume else 0
        self.run_dir.set_status("running", rounds_completed=completed, started=time.time())
        join_timeout = max(self.config.round_timeout, JOIN_TIMEOUT)
        node_ids = wait_for_nodes(self.grid, self.data.hospitals, bool(self.data.prepared_data), join_timeout)
        norm, self.names, first_replies = self._first_contact(node_ids, join_timeout)
        self.train_stays = {name: reply.train_stays for name, reply in first_replies.items()}
        self.rows_skipped = {name: json.loads(r.rows_skipped or "{}") for name, r in first_replies.items()}
        self.hospitals = sorted(self.train_stays)
        if self.resume is None:
            self.state = RunState(0, self.start_weights, norm)
        else:  # the statistics are the same; first contact only told which node is which hospital
            self.state = self.resume
            compat.restore_strategy_state(self.strategy, self.state.strategy)
            self._restore_privacy()
        self.arrays = ArrayRecord(self.state.arrays)
        self.controls = (
            ControlVariates(dict(self.model.named_parameters()), self.train_stays, self.state.controls)
            if self.config.strategy == "scaffold"
            else None
        )
        norm = self.state.norm
        self.test = (
            (to_features(self.data.test, norm, self.model_config.channels), self.data.test.labels)
            if self.data.test is not None and not self.personal_head
            else None  # FedRep's global body has no head to score it with here
        )
        self.evaluate_request = EvaluateRequest(
            **self.settings,
            server_round=0,
            norm_mean=norm.mean.tolist(),
            norm_std=norm.std.tolist(),
            model=self.model_config,
            personal_head=self.personal_head,
            site_dir=self._site_dir(),
        )

    def _start_weights(self) -> dict[str, torch.Tensor]:
        """A new model, or what fits of --init-from's: found wrong before any hospital is waited for."""
        weights, not_taken = starting_weights(self.config, self.model_config)
        if self.config.init_from:
            log(INFO, "fedicu: starting from %s; not taken: %s", self.config.init_from, ", ".join(not_taken) or "none")
        return weights

    def _first_contact(
        self, node_ids: list[int], timeout: float
    ) -> tuple[Normalization, dict[int, str], dict[str, FeatureStatsReply]]:
        """Pooled normalization statistics, which node holds which hospital, and each
        hospital's reply (its number of training stays, the rows its reader skipped).

        With DP-SGD hospitals send no statistics (they would reveal training stays outside the
        guarantee) and inputs are standardized with `Normalization.reference()`."""
        request = FeatureStatsRequest(**self.settings)
        # Statistics from only some hospitals would give every hospital the wrong scale.
        replies = exchange(
            self.grid,
            [request.message(n) for n in node_ids],
            FeatureStatsReply,
            timeout,
            "normalization statistics",
            len(node_ids),
            {},
        )
        names = {m.metadata.src_node_id: name for name, m in replies.messages.items()}
        if self.config.dp:
            return Normalization.reference(), names, replies.replies
        parts: list[FeatureStats] = []
        for name, reply in replies.replies.items():
            if reply.stats is None:
                raise RuntimeError(f"normalization statistics: {name} sent no feature statistics")
            parts.append(reply.stats)
        return Normalization.from_stats(FeatureStats.sum(parts)), names, replies.replies

    def _restore_privacy(self) -> None:
        """Give each hospital of a resumed run its privacy ledger back, so accounting goes on
        from where it stopped instead of starting again at zero."""
        ledgers = self.state.privacy
        messages = [
            RestorePrivacyRequest(**self.settings, ledger=json.dumps(ledgers[name])).message(node)
            for node, name in self.names.items()
            if name in ledgers
        ]
        if messages:
            exchange(
                self.grid,
                messages,
                RestorePrivacyReply,
                self.config.round_timeout,
                "restoring privacy ledgers",
                len(messages),
                self.names,
            )

    # ---- a round --------------------------------------------------------------------------

    def _train_request(self, rnd: int) -> TrainRequest:
        c = self.config
        return TrainRequest(
            **{**vars(self.evaluate_request), "server_round": rnd},
            local_epochs=c.local_epochs,
            lr=c.round_lr(rnd),
            batch_size=c.batch_size,
            planned_rounds=c.rounds,
            target_epsilon=c.target_epsilon,
            noise_multiplier=c.noise_multiplier,
            max_grad_norm=c.max_grad_norm,
            proximal_mu=c.proximal_mu if c.strategy == "fedprox" else 0.0,
            freeze_body=c.freeze_body,
            augment_mask=c.augment_mask,
            augment_shift=c.augment_shift,
            member=c.member,
            ditto_lambda=c.ditto_lambda if c.personalization == "ditto" else 0.0,
            finetune_epochs=c.finetune_epochs if c.personalization == "finetune" else 0,
        )

    def _instructions(self, rnd: int, arrays: ArrayRecord) -> list[Message]:
        config = self._train_request(rnd).config()
        messages = list(self.strategy.configure_train(rnd, arrays, config, self._all_hospitals()))
        if self.controls is None:
            return messages
        federation = self.controls.federation()
        return [
            TrainRequest.with_correction(m, self.controls.correction(self.names[m.metadata.dst_node_id], federation))
            for m in messages
        ]

    def _all_hospitals(self) -> Grid:
        return cast(Grid, _AllHospitals(self.grid, self.names))

    def _aggregate(self, rnd: int, replies: list[Message]) -> ArrayRecord:
        fit_to_replies(self.strategy, len(replies))
        arrays, _ = self.strategy.aggregate_train(rnd, replies)
        if arrays is None:  # only without replies, which `min_hospitals` >= 1 rules out
            raise RuntimeError(f"round {rnd}: the strategy aggregated no model")
        if self.config.freeze_body or self.personal_head:  # an average of equal parts equals them only up to rounding
            # The part no hospital trains stays as sent: the body under --freeze-body, FedRep's head.
            arrays = ArrayRecord({name: self.arrays[name] if name.startswith(HEAD) == self.personal_head else array
                                  for name, array in arrays.items()})  # fmt: skip
        self.arrays = arrays
        return arrays

    def start_next_training(self, rnd: int, arrays: ArrayRecord) -> None:
        """Hospitals start round `rnd` now: the server's own work for the round before (test
        scoring, files, checkpoint) overlaps their training instead of delaying it. (Should that
        work fail, the run stops with this training still under way: sent messages cannot be
        called back.) Secure aggregation rounds run apart."""
        if not self.config.secagg:
            self.next_training = send(self.grid, self._instructions(rnd, arrays), self.config.round_timeout)

    def train(self, rnd: int) -> tuple[Replies[TrainReply], ArrayRecord]:
        """The hospitals' training replies and the strategy's new global model."""
        if self.config.secagg:
            return self._secure_train(rnd)
        sent = self.next_training or send(self.grid, self._instructions(rnd, self.arrays), self.config.round_timeout)
        self.next_training = None
        stage = f"round {rnd} training"
        trained = receive(self.grid, sent, TrainReply, stage, self.config.min_hospitals, self.names)
        updates = {hospital: reply.weights for hospital, reply in trained.replies.items()}
        steps = {h: self.config.local_epochs * math.ceil(self.train_stays[h] / self.config.batch_size) for h in updates}
        rejected = update_problems(updates, self.arrays, self.config.max_update_ratio, steps)
        if self.controls is not None:
            controls = {h: reply.control for h, reply in trained.replies.items() if h not in rejected}
            rejected |= control_problems(controls, self.arrays)
        if rejected:
            trained = trained.without(rejected, stage, self.config.min_hospitals)
        if self.controls is not None:
            self.controls.update({h: cast(ArrayRecord, reply.control) for h, reply in trained.replies.items()})
            for msg in trained.messages.values():
                TrainReply.take_control(msg)
        if self.config.hospital_dp_noise:
            for msg in trained.messages.values():
                msg.content.metric_records[METRICS][EQUAL_WEIGHT] = 1.0
        return trained, self._aggregate(rnd, list(trained.messages.values()))

    def _secure_train(self, rnd: int) -> tuple[Replies[TrainReply], ArrayRecord]:
        """One round's training through SecAgg+: the strategy aggregates the secure average."""
        stage = f"round {rnd} training (secure aggregation)"
        instructions = self._instructions(rnd, self.arrays)
        max_weight = float(max(self.train_stays.values()))
        secure = secure_train(self.grid, instructions, rnd, max_weight, self.config.round_timeout)
        # A hospital's masked weights are in the sum from the moment they arrive; it failed only if they did not.
        masked = [m for m in secure.replies if not m.has_error() and SITE in m.content.config_records]
        delivered = {sender(m, secure.senders) for m in masked}
        masked += [m for m in secure.replies if m.has_error() and sender(m, secure.senders) not in delivered]
        missing = "dropped out during secure aggregation"
        trained = sort_replies(masked, instructions, TrainReply, missing, stage, self.config.min_hospitals, self.names,
                               secure.senders)  # fmt: skip
        if secure.average is None:
            raise RuntimeError(
                f"{stage}: stopped, fewer than {unmask_threshold(len(instructions))} of {len(instructions)} hospitals "
                f"stayed to the end of the round ({len(trained.replies)} sent masked weights); SecAgg+ needs more "
                "than half of them to unmask the sum"
            )
        return trained, self._aggregate(rnd, [secure.average])

    def evaluate(self, rnd: int, arrays: ArrayRecord) -> Replies[EvaluateReply]:
        request = replace(self.evaluate_request, server_round=rnd)
        messages = self.strategy.configure_evaluate(rnd, arrays, request.config(), self._all_hospitals())
        return exchange(
            self.grid,
            messages,
            EvaluateReply,
            self.config.round_timeout,
            f"round {rnd} evaluation",
            self.config.min_hospitals,
            self.names,
        )

    # ---- record ---------------------------------------------------------------------------

    def record(
        self, rnd: int, trained: Replies[TrainReply], evaluated: Replies[EvaluateReply], arrays: ArrayRecord
    ) -> dict:
        """The round's metrics, privacy ledgers, models and checkpoint, into the run directory."""
        row, hospital_rows = round_metrics(
            rnd, self.hospitals, trained, evaluated, self.model, arrays, self.test, self.config.seed
        )
        now = time.monotonic()
        row["seconds"], self.started = now - self.started, now
        state = self.state
        state.completed, state.arrays = rnd, arrays.to_torch_state_dict()
        state.rows.append(row)
        state.hospital_rows += hospital_rows
        state.strategy = compat.strategy_state(self.strategy)
        state.controls = self.controls.state() if self.controls is not None else {}
        self._record_privacy(row, hospital_rows, trained)
        if state.best is None or row["val_auroc"] > state.best["val_auroc"]:
            state.best = row
            self.run_dir.save_model(BEST_MODEL, self._model_state())
        self.run_dir.write_table(METRICS_CSV, METRICS_JSON, state.rows)
        self.run_dir.write_table(HOSPITAL_CSV, HOSPITAL_JSON, state.hospital_rows)
        # The checkpoint goes last: whatever it records is already on disk.
        self.run_dir.save_model(CHECKPOINT, state.to_checkpoint())
        self.run_dir.set_status("running", rounds_completed=rnd, best_round=state.best["round"])
        return row

    def _record_privacy(self, row: dict, hospital_rows: list[dict], trained: Replies[TrainReply]) -> None:
        state = self.state
        for name, reply in {**trained.rejected, **trained.replies}.items():  # a refused update spent privacy too
            if reply.ledger is not None:
                state.privacy[name] = json.loads(reply.ledger)
        if self.config.hospital_dp_noise:
            row["hospital_epsilon"] = self._account_hospital_dp(len(trained.replies))
            self.run_dir.write_json(HOSPITAL_PRIVACY_FILE, state.hospital_privacy)
        for hospital_row in hospital_rows:
            hospital_row["epsilon"] = state.privacy.get(hospital_row["hospital"], {}).get("epsilon", 0.0)
        if self.config.dp:
            self._write_ledgers()

    def _write_ledgers(self) -> None:
        privacy = self.state.privacy
        self.run_dir.write_json(PRIVACY_FILE, [{"hospital": h, **privacy[h]} for h in sorted(privacy)])

    def _account_hospital_dp(self, replied: int) -> float:
        """Add this round's release to the hospital-level ledger; return epsilon so far.

        The noise is calibrated to average every hospital's update; when fewer replied, each
        weighs more and the round's effective noise multiplier is z * replied / hospitals.
        """
        from fedicu.shared.privacy.accounting import PrivacyLedger  # Opacus is slow to import: only these runs pay

        config, state = self.config, self.state
        ledger = (
            PrivacyLedger.from_json(state.hospital_privacy)
            if state.hospital_privacy
            else PrivacyLedger(config.accountant, config.delta)
        )
        ledger.record(config.hospital_dp_noise * replied / len(self.hospitals), 1.0, 1)
        state.hospital_privacy = {"unit": "hospital", "clip": config.hospital_dp_clip, **ledger.to_json()}
        return state.hospital_privacy["epsilon"]

    # ---- finish ---------------------------------------------------------------------------

    def finish(self) -> dict:
        """The final model, the model card and the learning curves; the run is complete."""
        state = self.state
        assert state.best is not None, "a run records at least one round"
        self.run_dir.save_model(FINAL_MODEL, self._model_state())
        write_model_card(
            self.run_dir,
            model_config=self.model_config,
            norm=state.norm,
            rows=state.rows,
            best=state.best,
            training=self.config.to_flower(),
            data=self._summary(),
        )
        plot_learning_curves(state.rows, self.run_dir.path / CURVES_PNG, FEDERATED_CURVES, state.best["round"])
        cross_site.write(self.run_dir, self._cross_site())
        if self.test is not None and self.data.test_hospitals:
            self._write_test_predictions()
        self.run_dir.set_status("complete", finished=time.time())
        return {**state.rows[-1], "best_round": state.best["round"], "best_test_auroc": state.best["test_auroc"]}

    def _site_dir(self) -> str:
        """Simulation: the folder that stands for the hospitals' own disks; deployed: none."""
        return str(self.run_dir.path.resolve() / SITES_DIR) if self.data.prepared_data else ""

    def _cross_site(self) -> list[dict]:
        """The best and the final global model scored by every hospital on its own test stays
        (only the numbers come back); for the best one each hospital also keeps its
        recalibration maps. A hospital that fails here is recorded, the run still completes.
        (FedRep's global model is a body, which no hospital but under its own head can score.)"""
        rows = []
        for which, saved in () if self.personal_head else (("best", BEST_MODEL), ("final", FINAL_MODEL)):
            name = f"federated/{which}"
            model = self.run_dir.load_model(saved)
            request = CrossSiteRequest(
                **{**vars(self.evaluate_request), "server_round": self.state.completed},
                model_name=name,
                threshold=float(model["threshold"]),
                keep_recalibration=which == "best",
            )
            messages = [request.message(node, ArrayRecord(model["state_dict"])) for node in self.names]
            scored = exchange(self.grid, messages, CrossSiteReply, self.config.round_timeout,
                              f"cross-site scoring of {name}", 0, self.names)  # fmt: skip
            for h in self.hospitals:
                reply = scored.replies.get(h)
                rows.append(
                    cross_site.row(name, h, reply.test, reply.event1, reply.event1_site_threshold)
                    if reply
                    else cross_site.row(name, h, None, failure=scored.failures.get(h, "no reply"))
                )
        return rows + (self._personalize() if self.config.personalization else [])

    def _personalize(self) -> list[dict]:
        """Every hospital adapts the best model to its own stays and keeps it; its cross-site
        rows, with what each chose written to `personalization.json`."""
        c, name = self.config, f"personal/{self.config.personalization}"
        trained_as = self._train_request(self.state.completed)  # under DP-SGD, fine-tuning spends as the rounds did
        request = PersonalizeRequest(**{**vars(trained_as), "lr": c.lr}, method=c.personalization)
        best = ArrayRecord(self.run_dir.load_model(BEST_MODEL)["state_dict"])
        messages = [request.message(node, best) for node in self.names]
        # Up to finetune-epochs of training, where the round timeout allows for local-epochs.
        timeout = c.round_timeout * math.ceil(c.finetune_epochs / c.local_epochs)
        tuned = exchange(self.grid, messages, PersonalizeReply, timeout, f"{name} at the hospitals", 0, self.names)
        spent = {h: json.loads(r.ledger) for h, r in tuned.replies.items() if r.ledger is not None}
        if spent:  # finetune under DP-SGD: the ledgers now include the fine-tuning
            self.state.privacy.update(spent)
            self._write_ledgers()
        # Under DP-SGD a personal model has the epsilon of its hospital's whole ledger (the shared
        # model's is in the rounds' rows).
        epsilon = {h: {"epsilon": ledger["epsilon"]} for h, ledger in self.state.privacy.items()} if c.dp else {}
        chosen = [
            {"hospital": h, "method": r.method, "epochs": r.epochs, "val_auroc_global": r.val_auroc_global,
             "val_auroc": r.val_auroc, **epsilon.get(h, {})} if (r := tuned.replies.get(h))
            else {"hospital": h, "method": c.personalization, "status": f"failed: {tuned.failures.get(h, 'no reply')}"}
            for h in self.hospitals
        ]  # fmt: skip
        self.run_dir.write_json(PERSONALIZATION_JSON, chosen)
        return [
            cross_site.row(name, h, r.test, r.event1) if (r := tuned.replies.get(h))
            else cross_site.row(name, h, None, failure=tuned.failures.get(h, "no reply"))
            for h in self.hospitals
        ]  # fmt: skip

    def _write_test_predictions(self) -> None:
        """The best model's risk for every test stay, with its hospital: what the per-hospital
        test metrics can be recomputed from (simulation only: a deployed site keeps its own)."""
        assert self.test is not None and self.data.test is not None
        self.model.load_state_dict(self.run_dir.load_model(BEST_MODEL)["state_dict"])
        self.run_dir.write_csv(
            TEST_PREDICTIONS,
            {
                "stay_id": self.data.test.stay_ids,
                "hospital": self.data.test_hospitals,
                "label": self.test[1],
                "risk": predict(self.model, self.test[0]),
            },
        )

    def _model_state(self) -> dict:
        """The global model after the last completed round, with its decision threshold."""
        state = self.state
        return {
            "model_config": self.model_config.to_dict(),
            "state_dict": state.arrays,
            "round": state.completed,
            "threshold": state.rows[-1]["threshold"],
        }

    def _summary(self) -> dict:
        return {
            "hospitals": {name: {"train": {"stays": n}} for name, n in self.train_stays.items()},
            "rows_skipped_at_hospitals": {name: counts for name, counts in self.rows_skipped.items() if counts},
            **self.data.summary,
        }
