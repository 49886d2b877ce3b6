"""The configuration of a run: one dataclass, the single source of defaults.

Flower passes run configuration as a flat mapping with kebab-case keys
(`[tool.flwr.app.config]` in pyproject.toml, `flwr run . --run-config`); the
command line uses the same names as options. `RunConfig.from_flower` converts
and validates, so a typo or a bad value fails before any training starts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np

from fedicu.shared.augmentation import Augmentation
from fedicu.shared.datasets import DATASETS, DataSource
from fedicu.shared.preprocessing import HOURS
from fedicu.shared.tasks import DEFAULT_TASK, check_name
from fedicu.shared.variables import TIME_SERIES

LR_SCHEDULES = ("constant", "cosine")  # cosine: lr * (1 + cos(pi * (round - 1) / rounds)) / 2
STRATEGIES = ("fedavg", "fedprox", "scaffold", "fedadam", "fedmedian", "trimmed-mean", "krum")
# finetune: after training, each hospital adapts the selected model to its own stays; ditto: every
# round, each hospital also trains a personal model pulled towards the global one; fedrep: the body is
# federated, each hospital keeps its own output head (client/personalization.py)
FEDREP = "fedrep"
PERSONALIZATIONS = ("finetune", "ditto", FEDREP)


@dataclass(frozen=True)
class RunConfig:
    # Data
    dataset: str = "synthetic"  # the data format: a key of shared.datasets.DATASETS
    data_dir: str = ""
    sets: str = "a,b"
    labels: str = ""  # meds: the label file or folder
    mapping: str = ""  # tables, meds: TOML mapping of the site's columns and codes
    task: str = DEFAULT_TASK
    variables: str = ""  # comma-separated time series the model reads; empty: all of them
    strict: bool = False  # rows with an empty or unknown variable are errors, not skipped
    partition: str = ""  # empty: the dataset's natural partition
    hospitals: int = 4
    alpha: float = 0.5
    synthetic_stays: int = 2400
    test_fraction: float = 0.2
    val_fraction: float = 0.2
    seed: int = 0
    member: int = 0  # ensemble member k: other starting weights and training draws, the same data split
    ensemble: int = 1  # fedicu simulate: train this many members and average their risks (shared/ensemble.py)
    # Model
    hidden_size: int = 64
    layers: int = 1
    dropout: float = 0.2
    attention: bool = False
    input_decay: bool = False  # shared/model.py InputDecay: stale values decay towards the mean, as in GRU-D
    # Federated training
    strategy: str = "fedavg"
    rounds: int = 10
    local_epochs: int = 1
    lr: float = 0.003
    lr_schedule: str = "constant"  # one of LR_SCHEDULES: the local learning rate of each round
    batch_size: int = 64
    proximal_mu: float = 0.01
    server_lr: float = 0.01
    round_timeout: float = 600.0
    min_hospitals: int = 1
    max_update_ratio: float = 10.0  # reject an update this many times the others' median norm; 0: no bound
    init_from: str = ""  # a completed run directory whose best model the run starts from (shared/transfer.py)
    freeze_body: bool = False  # with init_from: train the output head only
    augment_mask: float = 0.0  # shared/augmentation.py: drop each hourly observation with this probability
    augment_shift: int = 0  # shared/augmentation.py: move each stay by up to this many hours
    personalization: str = ""  # one of PERSONALIZATIONS; empty: none
    finetune_epochs: int = 5  # the most local epochs a hospital fine-tunes for (it keeps the best on validation)
    ditto_lambda: float = 0.1  # Ditto: the weight of the pull of each personal model towards the global model
    # Differential privacy (DP-SGD at every hospital; privacy unit: one ICU stay)
    dp: bool = False
    target_epsilon: float = 0.0  # per hospital, for the whole run; 0: none (give a noise multiplier)
    noise_multiplier: float = 0.0  # 0: calibrated from target_epsilon
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    accountant: str = "rdp"
    # Hospital-level (central) DP: the server clips each hospital's update and noises their average
    hospital_dp_noise: float = 0.0  # noise multiplier per round; 0: off
    hospital_dp_clip: float = 1.0  # L2 bound on one hospital's model update
    # Secure aggregation (SecAgg+): the server learns only the sum of the hospitals' updates
    secagg: bool = False
    # Deployment: 0 simulates the hospitals; N > 0 waits for N SuperNodes, each holding its own data
    sites: int = 0
    test_dir: str = ""  # deployment: a PhysioNet-format folder on the server for held-out testing
    # Output
    out: str = ""  # empty: runs/<timestamp>

    def __post_init__(self) -> None:
        chosen = self._chosen_variables()
        unknown = [v for v in chosen if v not in TIME_SERIES]
        checks = [
            (
                self.dataset in DATASETS,
                f"unknown data format {self.dataset!r} (--dataset/--data-format); choose one of {', '.join(DATASETS)}",
            ),
            (not unknown, f"--variables: {', '.join(unknown)} not among the time series ({', '.join(TIME_SERIES)})"),
            (len(set(chosen)) == len(chosen), "--variables names a variable twice"),
            (self.strategy in STRATEGIES, f"--strategy must be one of {', '.join(STRATEGIES)}"),
            (self.rounds >= 1, "--rounds must be at least 1"),
            (self.member >= 0, "--member must not be negative"),
            (self.ensemble >= 1, "--ensemble must be at least 1"),
            (not (self.ensemble > 1 and self.member), "--member names one member; --ensemble trains them all"),
            (self.local_epochs >= 1, "--local-epochs must be at least 1"),
            (self.lr > 0, "--lr must be positive"),
            (self.lr_schedule in LR_SCHEDULES, f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (self.proximal_mu >= 0, "--proximal-mu must not be negative"),
            (self.server_lr > 0, "--server-lr must be positive"),
            (self.round_timeout > 0, "--round-timeout must be positive"),
            (self.min_hospitals >= 1, "--min-hospitals must be at least 1"),
            (
                self.max_update_ratio == 0 or self.max_update_ratio >= 1,
                "--max-update-ratio must be 0 or at least 1",
            ),
            (
                self.personalization in ("", *PERSONALIZATIONS),
                f"--personalization must be one of {', '.join(PERSONALIZATIONS)} (or empty: none)",
            ),
            (self.finetune_epochs >= 1, "--finetune-epochs must be at least 1"),
            (self.ditto_lambda > 0, "--ditto-lambda must be positive"),
            (
                not (self.input_decay and self.dp),
                "--input-decay cannot be combined with --dp yet: its layer records no per-stay gradients",
            ),
            (
                not (self.freeze_body and self.dp),
                "--freeze-body cannot be combined with --dp yet: DP-SGD trains its own per-stay copy of the LSTM, "
                "which would not stay frozen",
            ),
            (
                not (self.personalization == FEDREP and self.strategy == "scaffold"),
                "--personalization fedrep cannot be combined with --strategy scaffold: a hospital's control "
                "variate would be a gradient under the global head, which FedRep never trains",
            ),
            (
                not (self.personalization == FEDREP and self.ensemble > 1),
                "--ensemble averages global models, and FedRep's has no output head of its own (each hospital "
                "keeps its own); ensemble the hospitals' personal models with fedicu evaluate instead",
            ),
            (
                not (self.freeze_body and self.personalization),
                "--freeze-body cannot be combined with --personalization yet: personal models train the LSTM body too",
            ),
            (0 <= self.augment_mask < 1, f"--augment-mask must lie in [0, 1), not {self.augment_mask}"),
            (
                0 <= self.augment_shift < HOURS,
                f"--augment-shift must lie in 0..{HOURS - 1} hours, not {self.augment_shift}",
            ),
            (self.target_epsilon >= 0, "--target-epsilon must be positive"),
            (self.noise_multiplier >= 0, "--noise-multiplier must not be negative"),
            (0 < self.delta < 1, "--delta must lie in (0, 1)"),
            (self.max_grad_norm > 0, "--max-grad-norm must be positive"),
            (self.accountant in ("rdp", "prv"), "--accountant must be rdp or prv"),
            (
                not self.dp or self.target_epsilon > 0 or self.noise_multiplier > 0,
                "--dp needs --target-epsilon > 0 or --noise-multiplier > 0",
            ),
            (self.hospital_dp_noise >= 0, "--hospital-dp-noise must not be negative"),
            (self.hospital_dp_clip > 0, "--hospital-dp-clip must be positive"),
            (
                not self.hospital_dp_noise or self.strategy in ("fedavg", "fedprox"),
                "--hospital-dp-noise works with --strategy fedavg or fedprox: the noise goes on the average of "
                "the clipped updates, which FedAdam's server step does not release as such",
            ),
            (
                not self.secagg or self.strategy in ("fedavg", "fedprox", "fedadam"),
                f"--strategy {self.strategy} needs each hospital's weights, which --secagg hides from the server",
            ),
            (
                not (self.strategy == "scaffold" and self.dp),
                "--strategy scaffold cannot be combined with --dp yet: each hospital's control variate is a "
                "gradient of its training stays, which DP-SGD's guarantee does not cover",
            ),
            (
                not (self.secagg and self.hospital_dp_noise),
                "--secagg cannot be combined with --hospital-dp-noise: the server would have to clip each "
                "hospital's update, which secure aggregation hides from it",
            ),
            (self.sites >= 0, "run-config sites must not be negative"),
            (self.sites or not self.test_dir, "run-config test-dir is for deployments (sites > 0)"),
            (self.hospitals >= 1, "--hospitals must be at least 1"),
            (
                self.dataset != "synthetic" or self.synthetic_stays >= 20 * self.hospitals,
                "--synthetic-stays must be at least 20 per hospital (20 x --hospitals)",
            ),
            (
                not DATASETS.get(self.dataset, DATASETS["synthetic"]).needs_data_dir or bool(self.data_dir),
                f"--data-dir is required for --data-format {self.dataset}",
            ),
            (self.dataset == "meds" or not self.labels, "--labels is for --data-format meds"),
            (self.dataset in ("tables", "meds") or not self.mapping, "--mapping is for --data-format tables or meds"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        check_name(self.task)
        self._no_silent_option()

    def _no_silent_option(self) -> None:
        """An option given a value it has no effect with, under the other options, is an error."""
        for name, applies, context in EFFECTIVE_ONLY:
            if getattr(self, name) != getattr(RunConfig, name) and not applies(self):
                raise ValueError(f"--{name.replace('_', '-')} has no effect {context(self)}")

    def without_dp(self) -> RunConfig:
        """This configuration without DP-SGD: its options back at their defaults."""
        reset = {name: getattr(RunConfig, name) for name in DP_SGD_ONLY}
        if not self.hospital_dp_noise:
            reset.update({name: getattr(RunConfig, name) for name in ("delta", "accountant")})
        return replace(self, dp=False, **reset)

    def _chosen_variables(self) -> list[str]:
        return [v.strip() for v in self.variables.split(",") if v.strip()]

    @property
    def model_variables(self) -> tuple[str, ...]:
        """The time series the model reads, in the federation's channel order (all when none is chosen)."""
        chosen = self._chosen_variables()
        return tuple(v for v in TIME_SERIES if v in chosen) or TIME_SERIES

    def round_lr(self, rnd: int) -> float:
        """The local learning rate of round `rnd` (from 1): decayed along a half cosine over the
        planned rounds under `lr_schedule` cosine, so that late rounds refine instead of jump."""
        if self.lr_schedule == "constant":
            return self.lr
        return self.lr * (1 + math.cos(math.pi * (rnd - 1) / self.rounds)) / 2

    @property
    def augmentation(self) -> Augmentation:
        return Augmentation(mask=self.augment_mask, shift=self.augment_shift)

    def data_source(self) -> DataSource:
        return DataSource(
            format=self.dataset, data_dir=self.data_dir, sets=self.sets, labels=self.labels, mapping=self.mapping,
            task=self.task, strict=self.strict, hospitals=self.hospitals, stays=self.synthetic_stays, seed=self.seed,
        )  # fmt: skip

    def to_flower(self) -> dict[str, Any]:
        return {k.replace("_", "-"): v for k, v in asdict(self).items()}

    @staticmethod
    def from_flower(config: dict[str, Any]) -> RunConfig:
        known = {f.name: f for f in fields(RunConfig)}
        values = {}
        for key, value in config.items():
            name = key.replace("-", "_")
            if name not in known:
                raise ValueError(f"unknown run-config key {key!r}")
            kind = type(getattr(RunConfig, name))
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, kind):
                raise ValueError(f"run-config {key!r} must be {kind.__name__}, not {value!r}")
            values[name] = value
        try:
            return RunConfig(**values)
        except ValueError as error:  # say it in the run-config spelling the user wrote
            raise ValueError(re.sub(r"--([a-z][a-z-]*)", r"run-config \1", str(error))) from None


# Named configurations (`fedicu simulate --recipe NAME`), chosen on the validation AUROC of
# PhysioNet 2012 A+B by ICU type (README: The best federated model).
RECIPES: dict[str, dict[str, Any]] = {
    "best": {"strategy": "scaffold", "rounds": 20, "ensemble": 5},
}


def with_recipe(config: RunConfig, name: str, given: set[str]) -> tuple[RunConfig, dict[str, Any]]:
    """`config` with recipe `name`'s value for every option not `given` explicitly (those keep
    theirs), and the values taken."""
    if name not in RECIPES:
        raise ValueError(f"--recipe must be one of {', '.join(RECIPES)}, not {name!r}")
    taken = {k: v for k, v in RECIPES[name].items() if k not in given}
    return replace(config, **taken), taken


ENSEMBLE_TAG = 0x656E73  # keeps the members' seeds apart from other seeds derived from the run's


def member_seed(seed: int, member: int) -> int:
    """The seed of ensemble member k's starting weights and training draws: the run's own for
    member 0 (which trains exactly as a run outside an ensemble), one derived from it otherwise."""
    if member == 0:
        return seed
    return int(np.random.SeedSequence([seed, ENSEMBLE_TAG, member]).generate_state(1)[0])


def _dp_accounting(config: RunConfig) -> bool:
    return config.dp or config.hospital_dp_noise > 0


DP_SGD_ONLY = ("target_epsilon", "noise_multiplier", "max_grad_norm")
# Options that act only under others: (field, whether it acts in a configuration, why not).
# tests/test_config.py checks that every field is here or in ALWAYS_EFFECTIVE.
EFFECTIVE_ONLY: tuple[tuple[str, Callable[[RunConfig], bool], Callable[[RunConfig], str]], ...] = (
    ("data_dir", lambda c: c.dataset != "synthetic", lambda c: "with --data-format synthetic (the built-in cohort)"),
    ("sets", lambda c: c.dataset == "physionet2012", lambda c: f"with --data-format {c.dataset}: it picks PhysioNet 2012 sets"),
    ("labels", lambda c: c.dataset == "meds", lambda c: f"with --data-format {c.dataset}: it is for --data-format meds"),
    ("mapping", lambda c: c.dataset in ("tables", "meds"), lambda c: f"with --data-format {c.dataset}: it is for tables or meds"),
    ("synthetic_stays", lambda c: c.dataset == "synthetic", lambda c: f"with --data-format {c.dataset}: it sizes the synthetic cohort"),
    ("hospitals", lambda c: c.dataset == "synthetic" or c.partition in ("iid", "dirichlet"),
     lambda c: f"with --data-format {c.dataset} and --partition {c.partition or 'its natural one'}: the partition decides"),
    ("alpha", lambda c: c.partition == "dirichlet", lambda c: f"with --partition {c.partition or 'its natural one'}: it is for --partition dirichlet"),
    ("proximal_mu", lambda c: c.strategy == "fedprox", lambda c: f"with --strategy {c.strategy}: it is FedProx's"),
    ("server_lr", lambda c: c.strategy == "fedadam", lambda c: f"with --strategy {c.strategy}: it is FedAdam's"),
    *((name, lambda c: c.dp, lambda c: "without --dp") for name in DP_SGD_ONLY),
    ("delta", _dp_accounting, lambda c: "without --dp or --hospital-dp-noise"),
    ("accountant", _dp_accounting, lambda c: "without --dp or --hospital-dp-noise"),
    ("hospital_dp_clip", lambda c: c.hospital_dp_noise > 0, lambda c: "without --hospital-dp-noise"),
    ("finetune_epochs", lambda c: c.personalization == "finetune", lambda c: "without --personalization finetune"),
    ("ditto_lambda", lambda c: c.personalization == "ditto", lambda c: "without --personalization ditto"),
    ("freeze_body", lambda c: bool(c.init_from), lambda c: "without --init-from: a new model's body is random"),
    ("max_update_ratio", lambda c: not c.secagg, lambda c: "with --secagg: the server never sees one hospital's update"),
)  # fmt: skip
# Options that act in every configuration.
ALWAYS_EFFECTIVE = frozenset({
    "dataset", "partition", "task", "variables", "strict", "test_fraction", "val_fraction", "seed", "member",
    "ensemble", "hidden_size", "input_decay",
    "layers", "dropout", "attention", "strategy", "rounds", "local_epochs", "lr", "lr_schedule", "batch_size",
    "round_timeout",
    "min_hospitals", "init_from", "augment_mask", "augment_shift", "personalization", "dp", "hospital_dp_noise",
    "secagg", "sites", "test_dir", "out",
})  # fmt: skip
