"""An empirical privacy audit of a run's global model: can an attacker tell who was in training?

`audit(RUN_DIR)` runs membership-inference attacks against the model a run
saved. Members are the stays the model was trained on (every hospital's
training split); non-members are the held-out test split, which no hospital
ever trained on. The audit uses equally many of each, with equally many
deaths in both groups (the larger group is subsampled per outcome, seeded), so
an attack that guesses has AUROC 0.5 and a TPR equal to its FPR, and the loss,
which depends strongly on the outcome, differs between the groups only
through what the model learned about the stays themselves. The data are
rebuilt exactly as the run built them (`prepare` is deterministic), and the
rebuilt split sizes are checked against the model card.

Attacks, from simplest to most elaborate:

- `loss_threshold`: a stay whose loss under the model is low is called a
  member (score = -BCE loss). This needs nothing but the model.
- `calibrated_loss`: the loss minus the stay's mean loss under reference
  ("shadow") models that did not train on it, so stays that are easy for any
  model stop looking like members (difficulty calibration).
- `lira` (likelihood-ratio attack, online): for each stay, the shadow models
  that trained on it (IN) and those that did not (OUT) give two Gaussians of
  the logit-scaled confidence in its true label, log(p / (1 - p)); the score
  is the log-likelihood ratio IN vs OUT of the target model's confidence.
  `lira_offline` uses the OUT models only (a one-sided test: how far above the
  OUT mean the target's confidence lies, in OUT standard deviations).

Shadow models: `shadow_models` copies of the run's architecture, each trained
on a random half of the audit targets (members and non-members alike) with the
centralized recipe of the run (Adam, the run's learning rate and batch size,
rounds x local-epochs epochs, the run's dropout), inputs standardized with the
run's own normalization. Every target is IN for exactly half of the shadow
models (k // 2) and OUT for the rest, so every target has both. With fewer
than `PER_EXAMPLE_VARIANCE_MIN` IN models per target, the Gaussians share one
variance across stays (per-stay means, pooled variance), which is more stable
than per-stay variances estimated from a handful of models.

Assumptions (the threat model): the adversary has the final or best global
weights and the model card (architecture, normalization), knows the training
recipe, and has a population of stays from the same distribution that
contains the stays in question. Members and non-members come from the same
distribution here because the test split is drawn stratified by hospital and
outcome, so a score difference reflects memorization rather than a shift
between groups. The shadows train centrally (not by federated averaging),
without DP-SGD even when the run used it, and on fewer stays than the target
when the test split is the smaller group. A mismatched recipe usually
weakens the attack; in any case every number is what one concrete attack
achieves, a lower bound on the leakage, never a proof that there is none. TPR at 1 % FPR is only meaningful with well over 100
non-members: with n non-members the smallest non-zero FPR is 1/n.

For a run trained with DP-SGD, `dp` in the report gives the largest epsilon
any hospital spent and what (epsilon, delta)-DP allows any attack at most
(TPR at 1 % FPR, AUROC); the measured attacks should stay below it, up to
sampling error.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.metrics import auc, roc_curve

from fedicu.shared.config import RunConfig
from fedicu.shared.federation import prepare
from fedicu.shared.metrics import bootstrap_intervals, ci_keys, ci_method
from fedicu.shared.model import ModelConfig, MortalityLSTM, model_config_of
from fedicu.shared.plots import save_figure
from fedicu.shared.preprocessing import Normalization, Sequences, to_features
from fedicu.shared.run_dir import (
    BEST_MODEL,
    CONFIG_FILE,
    FINAL_MODEL,
    MODEL_CARD,
    PRIVACY_FILE,  # per-hospital privacy ledgers of a DP run
    RUN_FILE,
    RunDirectory,
    load_trained,
)
from fedicu.shared.training import torch_threads, train_epochs

AUDIT_JSON, AUDIT_PNG = "audit.json", "audit_roc.png"
LOW_FPR = 0.01
DEFAULT_SHADOW_MODELS = 8
DEFAULT_MAX_TARGETS = 1000  # per group: members and non-members
PER_EXAMPLE_VARIANCE_MIN = 16  # IN (and OUT) models per target before per-stay variances are used
# One intra-op thread: on two cores a small LSTM trains several times faster with one thread
# than with two, and many times faster when anything else is running.
AUDIT_THREADS = 1
ATTACKS = ("loss_threshold", "calibrated_loss", "lira", "lira_offline")

Progress = Callable[[int, int], None]  # (shadow models trained, total)


# --- ROC of an attack -------------------------------------------------------


def roc(scores: np.ndarray, is_member: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FPR and TPR of "member if score >= t" for every distinct score t, from (0, 0) to (1, 1).

    scikit-learn's `roc_curve`, keeping every point: tied scores form one
    point, so the curve's area equals the AUROC with ties counted as half.
    """
    scores = np.asarray(scores, dtype=np.float64)
    is_member = np.asarray(is_member, dtype=bool)
    if scores.shape != is_member.shape or scores.ndim != 1:
        raise ValueError("scores and membership labels must be 1-D arrays of one length")
    if not np.isfinite(scores).all():
        raise ValueError("attack scores must be finite")
    positives, negatives = int(is_member.sum()), int((~is_member).sum())
    if positives == 0 or negatives == 0:
        raise ValueError("an attack needs both members and non-members")
    fpr, tpr, _ = roc_curve(is_member, scores, drop_intermediate=False)
    return fpr, tpr


def _tpr_at(fpr: np.ndarray, tpr: np.ndarray, max_fpr: float) -> float:
    return float(tpr[fpr <= max_fpr + 1e-12].max())  # (0, 0) always qualifies


def auroc(scores: np.ndarray, is_member: np.ndarray) -> float:
    """Area under the attack's ROC curve: the chance a random member outscores a random non-member."""
    return float(auc(*roc(scores, is_member)))


def tpr_at_fpr(scores: np.ndarray, is_member: np.ndarray, max_fpr: float = LOW_FPR) -> float:
    """The largest TPR among ROC points whose FPR is at most `max_fpr` (no interpolation upward)."""
    return _tpr_at(*roc(scores, is_member), max_fpr)


def attack_metrics(scores: np.ndarray, is_member: np.ndarray, seed: int) -> dict[str, float]:
    """AUROC with its bootstrap interval (members and non-members resampled separately, seeded with
    `seed`; the shadow models stay as trained), TPR at 1 % FPR, and the membership advantage max(TPR - FPR)."""
    fpr, tpr = roc(scores, is_member)
    intervals = bootstrap_intervals(np.asarray(is_member, dtype=int), scores, seed)
    return {"auroc": float(auc(fpr, tpr)), **{k: intervals[k] for k in ci_keys("auroc")},
            "tpr_at_1pct_fpr": _tpr_at(fpr, tpr, LOW_FPR), "advantage": float(np.max(tpr - fpr))}  # fmt: skip


def dp_tpr_bound(fpr: np.ndarray, epsilon: float, delta: float) -> np.ndarray:
    """The highest TPR any attack can reach at `fpr` against an (epsilon, delta)-DP training.

    DP bounds both error rates: TPR <= e^eps FPR + delta and
    1 - FPR >= e^eps (1 - TPR) - delta (that is, TPR <= 1 - e^-eps (1 - delta - FPR)).
    """
    fpr = np.asarray(fpr, dtype=np.float64)
    grow = math.exp(min(epsilon, 700.0))
    return np.clip(np.minimum(grow * fpr + delta, 1 - (1 - delta - fpr) / grow), 0.0, 1.0)


def dp_bound(epsilon: float, delta: float) -> dict[str, float]:
    """What (epsilon, delta)-DP allows an attack at most: TPR at 1 % FPR and AUROC."""
    grid = np.linspace(0.0, 1.0, 100_001)
    tpr = dp_tpr_bound(grid, epsilon, delta)
    return {
        "epsilon": float(epsilon),
        "delta": float(delta),
        "tpr_at_1pct_fpr_bound": float(dp_tpr_bound(np.array([LOW_FPR]), epsilon, delta)[0]),
        "auroc_bound": float(auc(grid, tpr)),
    }


# --- What an attacker observes -----------------------------------------------


@torch.no_grad()
def true_label_logits(model: MortalityLSTM, x: np.ndarray, y: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """log(p / (1 - p)) of each stay's true label, float64 `[n]` (eval mode, no dropout).

    For a death this is the model's logit, for a survivor its negation, so it is
    exact even where p rounds to 0 or 1.
    """
    model.eval()
    logits = [model(torch.from_numpy(x[i : i + batch_size])) for i in range(0, len(x), batch_size)]
    z = torch.cat(logits).double().numpy() if logits else np.empty(0)
    return np.where(np.asarray(y) == 1, z, -z)


def bce_loss(confidence: np.ndarray) -> np.ndarray:
    """Per-stay binary cross-entropy from the logit-scaled confidence: -log p = log(1 + e^-c)."""
    return np.logaddexp(0.0, -np.asarray(confidence, dtype=np.float64))


# --- Shadow models -------------------------------------------------------------


@dataclass(frozen=True)
class ShadowRecipe:
    """How the reference models are trained: the run's model, centrally, for the run's epochs."""

    model: ModelConfig
    epochs: int
    lr: float
    batch_size: int

    @staticmethod
    def of(config: RunConfig, epochs: int | None = None) -> ShadowRecipe:
        return ShadowRecipe(
            model=model_config_of(config),
            epochs=epochs if epochs is not None else config.rounds * config.local_epochs,
            lr=config.lr,
            batch_size=config.batch_size,
        )

    def to_dict(self) -> dict:
        return {"training": "centralized Adam", "epochs": self.epochs, "lr": self.lr,
                "batch_size": self.batch_size, "model": self.model.to_dict()}  # fmt: skip


def assign_halves(targets: int, models: int, seed: int) -> np.ndarray:
    """`[models, targets]` bool: which shadow model trains on which target.

    Each target is IN for exactly `models // 2` shadow models, chosen at random,
    and OUT for the others.
    """
    if models < 2:
        raise ValueError(f"at least 2 shadow models are needed (one IN, one OUT per stay), not {models}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    ranks = np.argsort(rng.random((targets, models)), axis=1).argsort(axis=1)
    return (ranks < models // 2).T


def train_shadows(
    recipe: ShadowRecipe,
    x: np.ndarray,
    y: np.ndarray,
    in_mask: np.ndarray,
    seed: int,
    on_progress: Progress | None = None,
) -> np.ndarray:
    """Train one model per row of `in_mask` on its IN stays; return `[models, n]` true-label confidences."""
    models = len(in_mask)
    confidence = np.empty((models, len(x)), dtype=np.float64)
    for i in range(models):
        if not in_mask[i].any():
            raise ValueError(f"shadow model {i} has no training stays; audit more stays or fewer models")
        init_seed, train_seed = np.random.SeedSequence([seed, 2, i]).generate_state(2)
        torch.manual_seed(int(init_seed))
        model = MortalityLSTM(recipe.model)
        train_epochs(
            model, x[in_mask[i]], y[in_mask[i]],
            epochs=recipe.epochs, lr=recipe.lr, batch_size=recipe.batch_size, seed=int(train_seed),
        )  # fmt: skip
        confidence[i] = true_label_logits(model, x, y)
        if on_progress:
            on_progress(i + 1, models)
    return confidence


# --- Scores ----------------------------------------------------------------------


def _gaussian_fit(confidence: np.ndarray, mask: np.ndarray, per_example: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-stay mean and standard deviation of `confidence` over the models selected by `mask`."""
    count = mask.sum(axis=0)
    mean = np.where(mask, confidence, 0.0).sum(axis=0) / count
    squares = np.where(mask, (confidence - mean) ** 2, 0.0)
    if per_example:
        var = squares.sum(axis=0) / np.maximum(count - 1, 1)
    else:  # one variance pooled over all stays, each stay around its own mean
        var = np.full(len(mean), squares.sum() / max(int(count.sum() - len(count)), 1))
    return mean, np.sqrt(np.maximum(var, 1e-8))


def _log_normal_pdf(v: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return -0.5 * ((v - mean) / std) ** 2 - np.log(std)


def lira_scores(
    target: np.ndarray, shadow: np.ndarray, in_mask: np.ndarray, per_example_variance: bool | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Online and offline LiRA scores from confidences (higher = more likely a member).

    `target`: `[n]` true-label confidences under the audited model; `shadow`:
    `[models, n]` under the shadow models; `in_mask`: which shadow trained on
    which stay. Every stay needs at least one IN and one OUT model (two of each
    for per-stay variances). `per_example_variance=None` chooses per-stay
    variances only with at least `PER_EXAMPLE_VARIANCE_MIN` IN and OUT models.
    """
    in_mask = np.asarray(in_mask, dtype=bool)
    fewest = min(int(in_mask.sum(axis=0).min()), int((~in_mask).sum(axis=0).min()))
    if fewest < 1:
        raise ValueError("every stay needs at least one IN and one OUT shadow model")
    if per_example_variance is None:
        per_example_variance = fewest >= PER_EXAMPLE_VARIANCE_MIN
    if per_example_variance and fewest < 2:
        raise ValueError("per-stay variances need at least two IN and two OUT shadow models per stay")
    mu_in, sd_in = _gaussian_fit(shadow, in_mask, per_example_variance)
    mu_out, sd_out = _gaussian_fit(shadow, ~in_mask, per_example_variance)
    online = _log_normal_pdf(target, mu_in, sd_in) - _log_normal_pdf(target, mu_out, sd_out)
    offline = (target - mu_out) / sd_out
    return online, offline


def calibrated_loss_scores(target: np.ndarray, shadow: np.ndarray, in_mask: np.ndarray) -> np.ndarray:
    """-(loss under the audited model - mean loss under the shadow models that did not train on the stay)."""
    out = ~np.asarray(in_mask, dtype=bool)
    reference = np.where(out, bce_loss(shadow), 0.0).sum(axis=0) / out.sum(axis=0)
    return -(bce_loss(target) - reference)


@dataclass(frozen=True)
class AttackResult:
    metrics: dict  # attack name -> attack_metrics, or None where not run
    scores: dict[str, np.ndarray]  # attack name -> per-target scores (for ROC plots)


def run_attacks(
    model: MortalityLSTM,
    x: np.ndarray,
    y: np.ndarray,
    is_member: np.ndarray,
    recipe: ShadowRecipe | None,
    shadow_models: int = DEFAULT_SHADOW_MODELS,
    seed: int = 0,
    on_progress: Progress | None = None,
) -> AttackResult:
    """All attacks on the audited `model` over targets `x`, `y` with known membership.

    The shadow models train on random halves of these same targets, chosen
    without looking at `is_member`. `shadow_models=0` (or no recipe) runs the
    loss-threshold attack only.
    """
    is_member = np.asarray(is_member, dtype=bool)
    with torch_threads(AUDIT_THREADS):
        target = true_label_logits(model, x, y)
        scores = {"loss_threshold": -bce_loss(target)}
        if shadow_models and recipe is not None:
            in_mask = assign_halves(len(x), shadow_models, seed)
            shadow = train_shadows(recipe, x, y, in_mask, seed, on_progress)
            scores["calibrated_loss"] = calibrated_loss_scores(target, shadow, in_mask)
            scores["lira"], scores["lira_offline"] = lira_scores(target, shadow, in_mask)
    metrics = {name: (attack_metrics(scores[name], is_member, seed) if name in scores else None) for name in ATTACKS}
    return AttackResult(metrics, scores)


# --- ROC plot ---------------------------------------------------------------------

LABELS = {
    "loss_threshold": "loss threshold",
    "calibrated_loss": "difficulty-calibrated loss",
    "lira": "LiRA (online)",
    "lira_offline": "LiRA (offline)",
}


def plot_roc(result: AttackResult, is_member: np.ndarray, path: Path, title: str, dp: dict | None = None) -> None:
    """Log-log ROC curves of every attack, and the DP bound if given (written atomically as PNG)."""
    n_out = int((~np.asarray(is_member, dtype=bool)).sum())
    floor = 1.0 / n_out
    fig, ax = plt.subplots(figsize=(5.5, 5), constrained_layout=True)
    grid = np.logspace(math.log10(floor) - 0.3, 0, 200)
    ax.plot(grid, grid, color="grey", linestyle=":", label="chance")
    if dp is not None:
        ax.plot(grid, dp_tpr_bound(grid, dp["epsilon"], dp["delta"]), color="black", linestyle="--",
                label=f"bound from DP (epsilon {dp['epsilon']:.2f}, delta {dp['delta']:g})")  # fmt: skip
    for name, scores in result.scores.items():
        fpr, tpr = roc(scores, is_member)
        keep = (fpr > 0) & (tpr > 0)  # a log axis cannot show zero
        area = result.metrics[name]["auroc"]
        tpr1 = result.metrics[name]["tpr_at_1pct_fpr"]
        ax.plot(fpr[keep], tpr[keep], label=f"{LABELS[name]}: AUROC {area:.3f}, TPR@1%FPR {tpr1:.3f}")
    ax.axvline(LOW_FPR, color="grey", linewidth=0.8, alpha=0.5)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set(xlim=(floor / 2, 1.0), ylim=(floor / 2, 1.05), xlabel="false positive rate (non-members called members)",
           ylabel="true positive rate (members found)")  # fmt: skip
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower right")
    save_figure(fig, path)


# --- The audit of a run directory -------------------------------------------------


def _load_run(path: Path, which: str) -> tuple[RunConfig, MortalityLSTM, Normalization, dict]:
    """The run's configuration, model, normalization and model card; ValueError if anything is missing."""
    if which not in ("best", "final"):
        raise ValueError(f"--model must be 'best' or 'final', not {which!r}")
    if not path.is_dir():
        raise ValueError(f"RUN_DIR {path}: no such directory")
    run_dir = RunDirectory(path)
    for name in (RUN_FILE, CONFIG_FILE):
        if not (path / name).is_file():
            raise ValueError(f"RUN_DIR {path}: not a run directory (no {name})")
    if run_dir.status != "complete":
        raise ValueError(f"RUN_DIR {path}: the run is not complete (status: {run_dir.status}); audit a completed run")
    model_file = BEST_MODEL if which == "best" else FINAL_MODEL
    for name in (MODEL_CARD, model_file):
        if not (path / name).is_file():
            raise ValueError(f"RUN_DIR {path}: {name} is missing; the run directory is incomplete")
    try:
        config = RunConfig.from_flower(run_dir.read_json(CONFIG_FILE))
        card = run_dir.read_json(MODEL_CARD)
        model, norm, _ = load_trained(path, which)
    except (OSError, KeyError, TypeError, RuntimeError, json.JSONDecodeError, ValueError) as error:
        raise ValueError(f"RUN_DIR {path}: cannot load the run: {error}") from error
    return config, model, norm, card


def matched_targets(
    member_labels: np.ndarray, non_member_labels: np.ndarray, max_targets: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of equally many members and non-members, with equally many deaths in each group.

    A stay's loss depends strongly on its outcome (deaths are rarer and harder),
    so groups with different numbers of deaths would differ in loss even under
    a model that memorized nothing. Per outcome, the larger group is subsampled
    at random; above `max_targets` per group, both are subsampled keeping the
    outcome mix.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    member_labels, non_member_labels = np.asarray(member_labels), np.asarray(non_member_labels)
    outcomes = np.union1d(member_labels, non_member_labels)
    where = [(np.flatnonzero(member_labels == o), np.flatnonzero(non_member_labels == o)) for o in outcomes]
    counts = np.array([min(len(m), len(nm)) for m, nm in where])
    if counts.sum() > max_targets:  # largest remainders keep the outcome mix
        share = counts * max_targets / counts.sum()
        scaled = np.floor(share).astype(int)
        scaled[np.argsort(scaled - share)[: max_targets - scaled.sum()]] += 1
        counts = scaled
    if counts.sum() == 0:
        raise ValueError("no outcome occurs among both members and non-members")
    picks = [
        np.sort(
            np.concatenate(
                [rng.choice(group[side], size=c, replace=False) for group, c in zip(where, counts, strict=True)]
            )
        )
        for side in (0, 1)
    ]
    return picks[0], picks[1]


def _check_same_data(path: Path, card: dict, members: list[Sequences], test: Sequences) -> None:
    """The rebuilt splits must have the sizes the run recorded in its model card."""
    data = card.get("data", {})
    recorded = [h["train"]["stays"] for h in data.get("hospitals", {}).values()]
    recorded_test = data.get("test", {}).get("stays")
    rebuilt = [len(m) for m in members]
    if recorded and (recorded != rebuilt or recorded_test != len(test)):
        raise ValueError(
            f"RUN_DIR {path}: the rebuilt data do not match the run (training stays per hospital "
            f"{rebuilt} vs {recorded}, test stays {len(test)} vs {recorded_test}); is the data folder the same?"
        )


def _dp_guarantee(path: Path, config: RunConfig) -> dict | None:
    """The run's DP guarantee per stay and what it allows an attack, or None for a run without DP.

    A stay influences only its own hospital's updates, so the largest epsilon
    any hospital spent holds for every stay.
    """
    if not getattr(config, "dp", False):
        return None
    file = path / PRIVACY_FILE
    try:
        ledgers = json.loads(file.read_text()) if file.is_file() else []
        spent = [(float(e["epsilon"]), float(e.get("delta", config.delta))) for e in ledgers]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        spent = []
    if not spent:
        return None
    return dp_bound(max(eps for eps, _ in spent), max(delta for _, delta in spent))


def audit(
    run_dir: str | Path,
    which: str = "final",
    shadow_models: int = DEFAULT_SHADOW_MODELS,
    seed: int = 0,
    max_targets: int = DEFAULT_MAX_TARGETS,
    shadow_epochs: int | None = None,
    on_progress: Progress | None = None,
) -> dict:
    """Audit a completed run's global model by membership inference; write audit.json and audit_roc.png.

    `which`: the saved model to audit, "final" or "best". `shadow_models`:
    reference models for the calibrated and LiRA attacks (0: loss threshold
    only; else at least 2). `max_targets`: at most this many members and as
    many non-members are audited. `shadow_epochs`: training epochs of each
    shadow model (default: the run's rounds x local-epochs). `on_progress(done,
    total)` is called after each shadow model. Everything is seeded by `seed`.

    Returns `{"model", "members", "non_members", "shadow_models",
    "loss_threshold", "calibrated_loss", "lira", "lira_offline", ...}`; each
    attack entry holds `auroc` (with `auroc_ci_low` and `auroc_ci_high`, as
    `confidence_intervals` states), `tpr_at_1pct_fpr` and `advantage` (null where
    the attack needs shadow models and none were trained). Raises ValueError,
    naming the run directory, when the run is incomplete or a file is missing.
    """
    started = time.monotonic()
    path = Path(run_dir)
    if shadow_models < 0 or shadow_models == 1:
        raise ValueError(f"--shadow-models must be 0 or at least 2, not {shadow_models}")
    if max_targets < 1:
        raise ValueError(f"--max-targets must be at least 1, not {max_targets}")
    if shadow_epochs is not None and shadow_epochs < 1:
        raise ValueError(f"--shadow-epochs must be at least 1, not {shadow_epochs}")
    config, model, norm, card = _load_run(path, which)
    try:
        federation = prepare(config)
    except (OSError, ValueError) as error:
        raise ValueError(f"RUN_DIR {path}: cannot rebuild the run's data: {error}") from error
    trained_on = [h.train for h in federation.hospitals]
    _check_same_data(path, card, trained_on, federation.test)
    members_all, non_members_all = Sequences.concat(trained_on), federation.test

    pick_members, pick_non_members = matched_targets(members_all.labels, non_members_all.labels, max_targets, seed)
    n = len(pick_members)
    targets = Sequences.concat([members_all.take(pick_members), non_members_all.take(pick_non_members)])
    is_member = np.r_[np.ones(n, bool), np.zeros(n, bool)]
    x, y = to_features(targets, norm, model.config.channels), targets.labels

    recipe = ShadowRecipe.of(config, shadow_epochs)
    result = run_attacks(model, x, y, is_member, recipe, shadow_models, seed, on_progress)
    dp = _dp_guarantee(path, config)
    loss = -result.scores["loss_threshold"]
    report = {
        "model": which,
        "members": n,
        "non_members": n,
        "shadow_models": shadow_models,
        **result.metrics,
        "mean_loss": {"members": float(loss[is_member].mean()), "non_members": float(loss[~is_member].mean())},
        "training_stays": len(members_all),
        "test_stays": len(non_members_all),
        "shadow_recipe": (
            {**recipe.to_dict(), "stays_per_model": 2 * n * (shadow_models // 2) / shadow_models}
            if shadow_models
            else None
        ),
        "dp": dp,
        "seed": seed,
        "confidence_intervals": ci_method(seed),
        "seconds": round(time.monotonic() - started, 1),
    }
    RunDirectory(path).write_json(AUDIT_JSON, report)
    title = f"Membership inference against the {which} model\n{n} members vs {n} non-members"
    plot_roc(result, is_member, path / AUDIT_PNG, title, dp)
    return report
