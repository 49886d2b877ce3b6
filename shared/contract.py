"""What travels between the server and a hospital: one typed object per message and reply.

The server sends six requests (`FeatureStatsRequest`, `RestorePrivacyRequest`, `TrainRequest`,
`EvaluateRequest`, `CrossSiteRequest`, `PersonalizeRequest`) and a hospital answers each with its reply class. `to_content()` turns an
object into Flower records and `from_content()` reads one back, checking that every field is
there with its type. Record keys are the field names in kebab-case, derived here and nowhere
else, so the server and the hospital never spell a key by hand. The names that Flower's
strategies read and write (`ARRAYS`, `CONFIG`, `METRICS`, `WEIGHT`) are handed to the
strategies explicitly.

Versions: every request and reply carries `CONTRACT_VERSION` and the sender's fedicu version.
Sites upgrade at different times; a hospital refuses a request of another contract version,
and the server a reply of one, with a `ContractMismatch` naming both versions, at first
contact rather than by training the wrong thing. Bump `CONTRACT_VERSION` with every change
to a message that an older peer would misread.
"""

from __future__ import annotations

import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any, ClassVar, Self

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from fedicu.shared.calibration import Calibration
from fedicu.shared.metrics import ScoreHistogram, binary_metrics, bootstrap_intervals
from fedicu.shared.model import ModelConfig
from fedicu.shared.preprocessing import FeatureStats

# 7: PersonalizeRequest; 8: TrainRequest.freeze_body and augmentation; 9: SCAFFOLD, TrainRequest.member, Ditto;
# 10: FedRep (EvaluateRequest.personal_head, site_dir); 11: fine-tuning under DP-SGD (TrainRequest.finetune_epochs,
# PersonalizeRequest a TrainRequest, PersonalizeReply.ledger)
CONTRACT_VERSION = 11
try:
    FEDICU_VERSION = version("fedicu")
except PackageNotFoundError:  # running from a source tree that was never installed
    FEDICU_VERSION = "unknown"

# Record names; the first four are also those of Flower's strategies.
ARRAYS, CONFIG, METRICS = "arrays", "config", "metrics"
WEIGHT = "num-examples"  # the metric by which FedAvg weighs a hospital's update
SITE = "site"  # who replied, in every reply
CONTROL = "control"  # SCAFFOLD: a hospital's gradient correction (request) and control variate (reply)


class ContractError(ValueError):
    """A message that does not follow the contract: a field missing or of the wrong type."""


class ContractMismatch(ContractError):
    """The peer speaks another version of the contract."""


def _key(name: str) -> str:
    return name.replace("_", "-")


def _in(record: str, key: str = "", **options: Any) -> Any:
    """A field stored in `record` (under `key`, or its own kebab-case name)."""
    return field(metadata={"record": record, "key": key}, **options)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _plain(kind: Any) -> Any:
    """`float | None` -> float."""
    if isinstance(kind, types.UnionType):
        (inner,) = [k for k in typing.get_args(kind) if k is not type(None)]
        return inner
    return kind


def _is_arrays(kind: Any) -> bool:
    """Dataclasses of numpy arrays (FeatureStats, ScoreHistogram) travel as ArrayRecords."""
    return isinstance(kind, type) and is_dataclass(kind) and all(v is np.ndarray for v in _hints(kind).values())


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    for f in fields(value):
        out[f"{prefix}-{_key(f.name)}"] = getattr(value, f.name)


def _check(value: Any, kind: Any, where: str) -> Any:
    """`value` as `kind`, or a ContractError naming `where`."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is list or typing.get_origin(kind) is list:
        if isinstance(value, list) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
            return [float(v) for v in value]
    elif isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    name = getattr(kind, "__name__", str(kind))
    raise ContractError(f"{where} must be {name}, not {type(value).__name__} {value!r}")


@dataclass(frozen=True, kw_only=True)
class Payload:
    """Base of every request and reply. A field lives in the record its metadata names
    (`CONFIG` by default); `None` leaves an optional field out."""

    # Request and reply classes name what they are, for error messages.
    describes: ClassVar[str] = "message"

    def to_content(self) -> RecordDict:
        hints = _hints(type(self))
        scalars: dict[str, dict[str, Any]] = {}
        content = RecordDict()
        for f in fields(self):
            value, record = getattr(self, f.name), f.metadata.get("record", CONFIG)
            key = f.metadata.get("key") or _key(f.name)
            if value is None:
                continue
            if isinstance(value, ArrayRecord):
                content[record] = value
            elif _is_arrays(type(value)):
                content[record] = ArrayRecord({_key(a.name): Array(getattr(value, a.name)) for a in fields(value)})
            elif is_dataclass(value):
                _flatten(key, value, scalars.setdefault(record, {}))
            else:
                scalars.setdefault(record, {})[key] = _check(value, _plain(hints[f.name]), f"{self.describes} {key!r}")
        for record, values in scalars.items():
            content[record] = MetricRecord(values) if record == METRICS else ConfigRecord(values)
        return content

    @classmethod
    def from_content(cls, content: RecordDict) -> Self:
        hints = _hints(cls)
        _check_versions(cls, content)
        values: dict[str, Any] = {}
        for f in fields(cls):
            record, kind = f.metadata.get("record", CONFIG), hints[f.name]
            key = f.metadata.get("key") or _key(f.name)
            optional = isinstance(kind, types.UnionType)
            values[f.name] = _read(cls, content, record, key, _plain(kind), optional)
        return cls(**values)


def _read(cls: type[Payload], content: RecordDict, record: str, key: str, kind: Any, optional: bool) -> Any:
    where = f"{cls.describes}: {record}"
    if kind is ArrayRecord or _is_arrays(kind):
        if record not in content.array_records:
            if optional:
                return None
            raise ContractError(f"{where} (arrays) is missing")
        arrays = content.array_records[record]
        if kind is ArrayRecord:
            return arrays
        try:
            return kind(**{a.name: arrays[_key(a.name)].numpy() for a in fields(kind)})
        except KeyError as missing:
            raise ContractError(f"{where} lacks array {missing}") from None
    source = content.metric_records if record == METRICS else content.config_records
    values: Any = source.get(record, {})
    if isinstance(kind, type) and is_dataclass(kind):
        inner = _hints(kind)
        return kind(
            **{a.name: _scalar(values, f"{key}-{_key(a.name)}", inner[a.name], where, False) for a in fields(kind)}
        )
    return _scalar(values, key, kind, where, optional)


def _scalar(values: Any, key: str, kind: Any, where: str, optional: bool) -> Any:
    if key not in values:
        if optional:
            return None
        raise ContractError(f"{where} lacks {key!r}")
    return _check(values[key], kind, f"{where} {key!r}")


def _check_versions(cls: type[Payload], content: RecordDict) -> None:
    """Before anything else: a peer of another contract version would misread the rest."""
    record = SITE if issubclass(cls, Reply) else CONFIG
    values: Any = content.config_records.get(record, {})
    theirs, their_fedicu = values.get(_key("contract_version")), str(values.get(_key("fedicu_version"), "unknown"))
    if theirs != CONTRACT_VERSION:
        sender = "the hospital" if issubclass(cls, Reply) else "the server"
        raise ContractMismatch(
            f"{cls.describes}: {sender} speaks contract version {theirs} (fedicu {their_fedicu}), this side "
            f"{CONTRACT_VERSION} (fedicu {FEDICU_VERSION}); run the same fedicu release on the server and every site"
        )


# ---- Requests: the server's instructions ------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Request(Payload):
    """What every request tells a hospital about the run."""

    message_type: ClassVar[str]

    contract_version: int = CONTRACT_VERSION
    fedicu_version: str = FEDICU_VERSION
    seed: int
    task: str  # the label a site reads its stays for (shared.tasks)
    test_fraction: float  # each site's own test split (simulation: its share of the global test split)
    val_fraction: float
    dp: bool
    delta: float
    accountant: str
    prepared_data: str = ""  # simulation: the file holding every virtual hospital's part; "" when deployed
    # The run's identity across resumes (a new `flwr run` continues it): a deployed site keeps
    # its privacy ledger under it, so what it spent in a round the coordinator lost still counts.
    study: str = ""

    def message(self, node_id: int, model: ArrayRecord | None = None) -> Message:
        """The request to `node_id`, with a model's weights in `ARRAYS` if given."""
        content = self.to_content()
        if model is not None:
            content[ARRAYS] = model
        return Message(content, dst_node_id=node_id, message_type=self.message_type)

    def config(self) -> ConfigRecord:
        """The request as the config record a strategy sends with the global model."""
        return self.to_content()[CONFIG]  # type: ignore[return-value]


@dataclass(frozen=True, kw_only=True)
class FeatureStatsRequest(Request):
    """First contact: the hospital's name, size and (without DP) its feature statistics."""

    describes = "feature statistics request"
    action: ClassVar[str] = "feature_stats"  # the ClientApp's query handler
    message_type = f"{MessageType.QUERY}.{action}"


@dataclass(frozen=True, kw_only=True)
class RestorePrivacyRequest(Request):
    """A resumed run hands a hospital back the privacy ledger it had reached."""

    describes = "privacy restore request"
    action: ClassVar[str] = "restore_privacy"
    message_type = f"{MessageType.QUERY}.{action}"

    ledger: str  # PrivacyLedger.to_json(), as JSON text


@dataclass(frozen=True, kw_only=True)
class EvaluateRequest(Request):
    """Score the global model (sent with it in `ARRAYS`) on the hospital's validation stays."""

    describes = "evaluate request"
    message_type = MessageType.EVALUATE

    server_round: int  # Flower's strategies also write this key
    norm_mean: list[float]
    norm_std: list[float]
    model: ModelConfig
    # FedRep: the model sent is a body; the hospital trains and scores it under its own head.
    personal_head: bool = False
    site_dir: str = ""  # simulation: the folder that stands for the hospitals' own disks


@dataclass(frozen=True, kw_only=True)
class TrainRequest(EvaluateRequest):
    """Train the global model (sent with it in `ARRAYS`) on the hospital's training stays."""

    describes = "train request"
    message_type = MessageType.TRAIN

    local_epochs: int
    lr: float
    batch_size: int
    planned_rounds: int  # DP-SGD calibrates its noise for the whole run
    target_epsilon: float
    noise_multiplier: float
    max_grad_norm: float
    proximal_mu: float  # FedProx's term (0: none); Flower's FedProx writes the same key
    freeze_body: bool  # train the output head only (`shared.model.freeze_body`)
    augment_mask: float  # `shared.augmentation`: 0 and 0, none
    augment_shift: int
    member: int  # ensemble member: seeds the training draws with the run's seed (`shared.config.member_seed`)
    ditto_lambda: float  # Ditto: the hospital also trains its personal model, pulled this hard (0: none)
    # --personalization finetune: the most epochs a hospital fine-tunes for after the run (0: none);
    # under DP-SGD its noise is calibrated for them from the first round on.
    finetune_epochs: int
    # SCAFFOLD (server/scaffold.py): c - c_i, added to every local gradient; the server attaches
    # each hospital's own to its message (`with_correction`). None: another strategy.
    correction: ArrayRecord | None = _in(CONTROL, default=None)  # noqa: RUF009 (a field specifier)

    @staticmethod
    def with_correction(msg: Message, correction: ArrayRecord) -> Message:
        """A strategy's train message for one hospital, with that hospital's correction (a new
        message: Flower's strategies give every hospital's message the same content object)."""
        content = RecordDict({**msg.content, CONTROL: correction})
        meta = msg.metadata
        return Message(
            content, dst_node_id=meta.dst_node_id, message_type=meta.message_type, ttl=meta.ttl, group_id=meta.group_id
        )


@dataclass(frozen=True, kw_only=True)
class CrossSiteRequest(EvaluateRequest):
    """Score one model of the cross-site matrix (sent with it in `ARRAYS`, with its own
    normalization and architecture) on the hospital's own test stays."""

    describes = "cross-site request"
    action: ClassVar[str] = "cross_site"
    message_type = f"{MessageType.QUERY}.{action}"

    model_name: str
    threshold: float  # the model's decision threshold: Event-1 at the hospital is scored at it
    # The model the run selected: the hospital also fits its recalibration maps for it on its
    # validation stays and keeps them (in `site_dir` in a simulation, its state-dir when deployed).
    keep_recalibration: bool


@dataclass(frozen=True, kw_only=True)
class PersonalizeRequest(TrainRequest):
    """Adapt the model the run selected (sent with it in `ARRAYS`) to the hospital's own stays,
    keep the result at the hospital (in `site_dir` in a simulation, its state-dir when deployed)
    and score it on the hospital's own test stays. The personal model never leaves the hospital.
    It carries the run's training settings: fine-tuning under DP-SGD spends from the same ledger,
    with the same noise, as the rounds did."""

    describes = "personalize request"
    action: ClassVar[str] = "personalize"
    message_type = f"{MessageType.QUERY}.{action}"

    method: str  # shared.config.PERSONALIZATIONS


def global_model(msg: Message) -> ArrayRecord:
    """The global model's weights sent with a train or evaluate request."""
    if ARRAYS not in msg.content.array_records:
        raise ContractError(f"{msg.metadata.message_type} message: {ARRAYS} (the global model) is missing")
    return msg.content.array_records[ARRAYS]


# ---- Replies: what a hospital sends back ------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Reply(Payload):
    """Every reply names its hospital and the versions it speaks."""

    contract_version: int = _in(SITE, default=CONTRACT_VERSION)
    fedicu_version: str = _in(SITE, default=FEDICU_VERSION)
    hospital: str = _in(SITE)

    def reply_to(self, msg: Message) -> Message:
        return Message(self.to_content(), reply_to=msg)


@dataclass(frozen=True, kw_only=True)
class FeatureStatsReply(Reply):
    describes = "feature statistics reply"

    train_stays: int = _in(METRICS, WEIGHT)
    # None under DP-SGD: nothing computed from training stays
    stats: FeatureStats | None = _in("stats", default=None)  # noqa: RUF009 (a field specifier)
    # Rows the site's reader skipped, as JSON {variable name: count}: counts only, no file names
    # (a record's file name is its stay's identifier); None under DP-SGD, as they count the data
    rows_skipped: str | None = None


@dataclass(frozen=True, kw_only=True)
class RestorePrivacyReply(Reply):
    describes = "privacy restore reply"

    train_stays: int = _in(METRICS, WEIGHT)


@dataclass(frozen=True, kw_only=True)
class TrainReply(Reply):
    describes = "train reply"

    weights: ArrayRecord = _in(ARRAYS)  # noqa: RUF009 (a field specifier)
    train_stays: int = _in(METRICS, WEIGHT)
    # Without DP only: under DP-SGD nothing computed from training stays leaves but the weights.
    train_loss: float | None = _in(METRICS, default=None)
    local_val_auroc: float | None = _in(METRICS, default=None)
    ledger: str | None = _in("privacy", default=None)  # DP-SGD: the hospital's privacy ledger as JSON
    # SCAFFOLD: the hospital's new control variate, the mean gradient of its training loss at the
    # global model it received (option I of Karimireddy et al., 2020). None: another strategy.
    control: ArrayRecord | None = _in(CONTROL, default=None)  # noqa: RUF009 (a field specifier)

    @staticmethod
    def take_control(msg: Message) -> None:
        """Remove the control variate from a read reply: Flower's strategies aggregate replies
        that hold exactly one ArrayRecord, the weights."""
        del msg.content[CONTROL]


@dataclass(frozen=True, kw_only=True)
class SiteTest:
    """The global model scored on a hospital's own test stays, by the hospital: numbers only (no
    histogram: on a small test split, a fine one would be close to each stay's score and label)."""

    stays: int
    deaths: int
    auroc: float
    auprc: float
    brier: float
    ece: float
    calibration_slope: float
    calibration_intercept: float
    observed_expected: float
    auroc_ci_low: float  # shared.metrics.CI_KEYS: computed at the hospital, from its exact scores
    auroc_ci_high: float
    auprc_ci_low: float
    auprc_ci_high: float

    @staticmethod
    def of(labels: np.ndarray, scores: np.ndarray, seed: int) -> SiteTest:
        m = binary_metrics(labels, scores, threshold=0.5)  # its threshold-free metrics only
        return SiteTest(
            stays=len(labels), deaths=int(np.sum(labels)), auroc=m["auroc"], auprc=m["auprc"], brier=m["brier"],
            **asdict(Calibration.of(labels, scores)), **bootstrap_intervals(labels, scores, seed),
        )  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class EvaluateReply(Reply):
    describes = "evaluate reply"

    val_stays: int = _in(METRICS, WEIGHT)
    auroc: float = _in(METRICS)
    auprc: float = _in(METRICS)
    brier: float = _in(METRICS)
    loss: float = _in(METRICS)
    histogram: ScoreHistogram = _in("histogram")  # noqa: RUF009 (a field specifier)
    test: SiteTest = _in(METRICS)  # noqa: RUF009 (a field specifier)
    # The same test stays after the hospital's own recalibration map (fitted on its validation
    # stays; the map stays at the hospital): shared.calibration.RECALIBRATION_METHODS.
    test_platt: SiteTest = _in(METRICS)  # noqa: RUF009 (a field specifier)
    test_isotonic: SiteTest = _in(METRICS)  # noqa: RUF009 (a field specifier)


@dataclass(frozen=True, kw_only=True)
class CrossSiteReply(Reply):
    describes = "cross-site reply"

    model_name: str = _in(SITE)
    test: SiteTest = _in(METRICS)  # noqa: RUF009 (a field specifier)
    event1: float = _in(METRICS)  # at the model's threshold
    # With the recalibration kept: Event-1 of the mapped risks at the map's own threshold.
    event1_site_threshold: float | None = _in(METRICS, default=None)


@dataclass(frozen=True, kw_only=True)
class PersonalizeReply(Reply):
    """How the hospital's personal model scores, against the model it started from: numbers
    only, no weights."""

    describes = "personalize reply"

    method: str = _in(SITE)
    # Chosen on the hospital's validation stays: finetune, its epochs (0: it kept the global
    # model); ditto, the round whose personal model it kept.
    epochs: int = _in(METRICS)
    val_auroc_global: float = _in(METRICS)
    val_auroc: float = _in(METRICS)  # the personal model's
    test: SiteTest = _in(METRICS)  # noqa: RUF009 (a field specifier)
    event1: float = _in(METRICS)  # at the threshold the hospital chose on its validation stays
    # finetune under DP-SGD: the hospital's privacy ledger after fine-tuning, as JSON: the
    # personal model's guarantee (the shared model's is the ledger of the last round).
    ledger: str | None = _in("privacy", default=None)


# Error codes of a hospital's refusals (Flower's Error.code)
PRIVACY_REFUSAL = 1  # on privacy grounds: delta too large, budget spent
CONTRACT_REFUSAL = 2  # a request of another contract version
