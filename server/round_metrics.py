"""A round's rows: pooled validation and server-side test metrics, and one row per hospital."""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any

import numpy as np
from flwr.app import ArrayRecord

from fedicu.server.replies import Replies
from fedicu.shared.calibration import CALIBRATION_FIELDS, RECALIBRATION_METHODS, Calibration
from fedicu.shared.contract import EvaluateReply, SiteTest, TrainReply
from fedicu.shared.metrics import BINARY_METRICS, CI_KEYS, ScoreHistogram, binary_metrics, bootstrap_intervals
from fedicu.shared.model import MortalityLSTM
from fedicu.shared.training import predict

NAN = float("nan")


def round_metrics(
    rnd: int,
    hospitals: list[str],
    trained: Replies[TrainReply],
    evaluated: Replies[EvaluateReply],
    model: MortalityLSTM,
    arrays: ArrayRecord,
    test: tuple[np.ndarray, np.ndarray] | None,
    seed: int,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The round's pooled row and its hospital rows. The decision threshold is chosen on the
    pooled validation histograms; `test` is None in a deployment without a server test folder.
    AUROC and AUPRC carry bootstrap intervals seeded with `seed`: the validation ones from the
    histograms, the test ones from the exact scores."""
    train, val = trained.replies, evaluated.replies
    pooled = ScoreHistogram.sum([r.histogram for r in val.values()])
    threshold = pooled.best_threshold()
    if test is None:
        test_metrics = dict.fromkeys(BINARY_METRICS + CI_KEYS + CALIBRATION_FIELDS, NAN)
    else:
        model.load_state_dict(arrays.to_torch_state_dict())
        scores = predict(model, test[0])
        test_metrics = (
            binary_metrics(test[1], scores, threshold)
            | bootstrap_intervals(test[1], scores, seed)
            | asdict(Calibration.of(test[1], scores))
        )
    n_train = sum(r.train_stays for r in train.values())
    n_val = sum(r.val_stays for r in val.values())

    def pooled_mean(metric: str) -> float:
        return sum(getattr(r, metric) * r.val_stays for r in val.values()) / n_val

    row = {
        "round": rnd,
        "hospitals_trained": len(train),
        "hospitals_failed": len(hospitals) - len(set(train) & set(val)),
        # Absent under DP-SGD: hospitals send nothing computed from training stays but the weights.
        "train_loss": sum(_or_nan(r.train_loss) * r.train_stays for r in train.values()) / n_train,
        "val_auroc": pooled.auroc(),
        "val_auroc_tie_bound": pooled.auroc_tie_bound(),
        "val_auprc": pooled.auprc(),
        **_prefixed("val_", pooled.bootstrap_intervals(seed)),
        "val_brier": pooled_mean("brier"),
        "val_loss": pooled_mean("loss"),
        "val_event1": pooled.event1(threshold),
        "threshold": threshold,
        "test_stays": len(test[1]) if test is not None else 0,
        "test_deaths": int(np.sum(test[1])) if test is not None else 0,
        **{f"test_{k}": test_metrics[k] for k in BINARY_METRICS + CI_KEYS + CALIBRATION_FIELDS},
    }
    hospital_rows = [_hospital_row(rnd, name, trained, evaluated, threshold, seed) for name in hospitals]
    scored = [r["test_auroc"] for r in hospital_rows if not np.isnan(r["test_auroc"])]
    row["test_auroc_worst_hospital"] = min(scored) if scored else NAN
    return row, hospital_rows


def _prefixed(prefix: str, metrics: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}{k}": v for k, v in metrics.items()}


def _hospital_row(
    rnd: int, name: str, trained: Replies[TrainReply], evaluated: Replies[EvaluateReply], threshold: float, seed: int
) -> dict[str, Any]:
    t, e = trained.replies.get(name), evaluated.replies.get(name)
    return {
        "round": rnd,
        "hospital": name,
        "status": "ok" if t and e else f"failed: {trained.failures.get(name) or evaluated.failures.get(name)}",
        "train_stays": t.train_stays if t else 0,
        "train_loss": _or_nan(t.train_loss) if t else NAN,
        "local_val_auroc": _or_nan(t.local_val_auroc) if t else NAN,
        "val_stays": e.val_stays if e else 0,
        **{f"val_{k}": getattr(e, k) if e else NAN for k in ("auroc", "auprc", "brier", "loss")},
        # The hospital's exact scores stay there; its histogram gives the intervals.
        **_prefixed("val_", e.histogram.bootstrap_intervals(seed) if e else dict.fromkeys(CI_KEYS, NAN)),
        "val_event1": e.histogram.event1(threshold) if e else NAN,
        **_site_test(e),
    }


SITE_TEST = tuple(f.name for f in fields(SiteTest))
RECALIBRATED = ("auroc", "brier", *CALIBRATION_FIELDS, *CI_KEYS)  # after the hospital's own map; counts are the same


def _site_test(e: EvaluateReply | None) -> dict[str, Any]:
    """The hospital's own test split, as it scored it, before and after its recalibration."""
    parts = {"test": e.test if e else None} | {
        f"test_{method}": getattr(e, f"test_{method}") if e else None for method in RECALIBRATION_METHODS
    }
    return {
        f"{prefix}_{k}": getattr(site, k) if site else NAN
        for prefix, site in parts.items()
        for k in (SITE_TEST if prefix == "test" else RECALIBRATED)
    }


def _or_nan(value: float | None) -> float:
    return NAN if value is None else value
