"""The two reference points every federated result is read against.

- Centralized: all hospitals' training stays pooled in one place (what
  federation tries to match without moving data).
- Local: each hospital trains alone on its own stays (what it gets without
  federation).

Both use the same model, the same splits and the same training budget as the
federated run: `rounds x local_epochs` epochs, with one "round" of a baseline
being `local_epochs` epochs, so rows line up with the federated metrics. Every
model is scored on the same held-out test split, and every model is a complete
run directory (local-only: one per hospital, in `<run dir>/<hospital>/`).
"""

from __future__ import annotations

import copy
import time
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from fedicu.shared.config import RunConfig, member_seed
from fedicu.shared.federation import Federation
from fedicu.shared.files import safe_name
from fedicu.shared.metrics import (
    CI_KEYS,
    best_threshold,
    binary_metrics,
    bootstrap_intervals,
    ci_method,
    mean_bootstrap_intervals,
)
from fedicu.shared.model import MortalityLSTM, freeze_body, model_config_of
from fedicu.shared.plots import Curves, centralized_curves, local_curves, plot_learning_curves
from fedicu.shared.preprocessing import FeatureStats, Normalization, Sequences, to_features
from fedicu.shared.run_dir import (
    BEST_MODEL,
    CONFIG_FILE,
    CURVES_PNG,
    FINAL_MODEL,
    METRICS_CSV,
    METRICS_JSON,
    STAYS_FILE,
    RunDirectory,
    write_model_card,
)
from fedicu.shared.training import predict, set_torch_threads, train_epochs
from fedicu.shared.transfer import starting_weights


def fit(
    config: RunConfig, train: Sequences, val: Sequences, test: Sequences, on_round=None
) -> tuple[list[dict], dict, MortalityLSTM, Normalization, dict]:
    """Train on `train`, select the round with the best validation AUROC.

    Returns per-round rows, the best row, the best model, its normalization and
    the final (last round's) weights.
    """
    norm = Normalization.from_stats(FeatureStats.of(train))
    x_train, x_val, x_test = (to_features(s, norm, config.model_variables) for s in (train, val, test))
    model_config = model_config_of(config)
    model = MortalityLSTM(model_config)
    model.load_state_dict(starting_weights(config, model_config)[0])
    if config.freeze_body:
        freeze_body(model)
    rows: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    best_state: dict[str, Any] | None = None
    for rnd in range(1, config.rounds + 1):
        started = time.monotonic()
        seed = member_seed(config.seed, config.member) * 100_003 + rnd
        augmented = config.augmentation.epoch_inputs(train, norm, config.model_variables, seed)
        loss = train_epochs(
            model, x_train, train.labels,
            epochs=config.local_epochs, lr=config.round_lr(rnd), batch_size=config.batch_size, seed=seed,
            epoch_inputs=augmented,
        )  # fmt: skip
        val_scores = predict(model, x_val)
        threshold = best_threshold(val.labels, val_scores)
        test_scores = predict(model, x_test)
        v = binary_metrics(val.labels, val_scores, threshold) | bootstrap_intervals(val.labels, val_scores, config.seed)
        t = binary_metrics(test.labels, test_scores, threshold) | bootstrap_intervals(
            test.labels, test_scores, config.seed
        )
        row = {
            "round": rnd,
            "train_loss": loss,
            **{f"val_{k}": v[k] for k in ("auroc", "auprc", "brier", "loss", "event1", *CI_KEYS)},
            "threshold": threshold,
            **{f"test_{k}": val for k, val in t.items() if k != "n"},
            "seconds": time.monotonic() - started,
        }
        rows.append(row)
        if best is None or row["val_auroc"] > best["val_auroc"]:
            best, best_state = row, copy.deepcopy(model.state_dict())
        if on_round:
            on_round(row)
    final_state = model.state_dict()
    assert best is not None and best_state is not None  # RunConfig asks for rounds >= 1
    model.load_state_dict(best_state)
    return rows, best, model, norm, final_state


def centralized(config: RunConfig, federation: Federation, run_dir: RunDirectory, on_round=None) -> dict:
    """Pool every hospital's stays and train one model; writes a full run directory."""
    curves = centralized_curves(config.local_epochs)
    best, _, _ = _complete_run(config, federation, run_dir, "centralized", curves, on_round)
    return {**best, "best_round": best["round"]}


def _complete_run(
    config: RunConfig, federation: Federation, run_dir: RunDirectory, setting: str, curves: Curves, on_round=None
) -> tuple[dict, MortalityLSTM, Normalization]:
    """Train one model on the pooled stays of `federation`'s hospitals and write it as a complete
    run directory. Returns the best row, the best model and its normalization."""
    set_torch_threads(torch.get_num_threads())
    run_dir.write_json(CONFIG_FILE, config.to_flower())
    run_dir.write_json(STAYS_FILE, federation.stays_used())
    run_dir.set_status("running", setting=setting, started=time.time())
    try:
        train = Sequences.concat([h.train for h in federation.hospitals])
        val = Sequences.concat([h.val for h in federation.hospitals])
        rows, best, model, norm, final_state = fit(config, train, val, federation.test, on_round)
        model_config = model_config_of(config)
        run_dir.save_model(
            BEST_MODEL, {"model_config": model_config.to_dict(), "state_dict": model.state_dict(),
                         "round": best["round"], "threshold": best["threshold"]}
        )  # fmt: skip
        run_dir.save_model(
            FINAL_MODEL, {"model_config": model_config.to_dict(), "state_dict": final_state,
                          "round": rows[-1]["round"], "threshold": rows[-1]["threshold"]}
        )  # fmt: skip
        run_dir.write_table(METRICS_CSV, METRICS_JSON, rows)
        write_model_card(
            run_dir, model_config=model_config, norm=norm, rows=rows, best=best,
            training=config.to_flower(), data=federation.summary(),
        )  # fmt: skip
        plot_learning_curves(rows, run_dir.path / CURVES_PNG, curves, best["round"])
    except BaseException as error:
        run_dir.record_ending(error)
        raise
    run_dir.set_status("complete", finished=time.time())
    return best, model, norm


def local(config: RunConfig, federation: Federation, run_dir: RunDirectory, on_hospital=None) -> dict:
    """Each hospital alone, on its own normalization; all scored on the global test split.

    Each hospital's model is a complete run directory in `run_dir` (`_folders` names it); `run_dir`
    itself holds the configuration and the hospitals' best rows (`local_metrics.csv`, `.json`)."""
    run_dir.write_json(CONFIG_FILE, config.to_flower())
    run_dir.write_json(STAYS_FILE, federation.stays_used())
    run_dir.set_status("running", setting="local", started=time.time())
    try:
        results, test_scores = [], []
        for h, folder in zip(federation.hospitals, _folders([h.name for h in federation.hospitals]), strict=True):
            alone = RunDirectory(run_dir.path / folder).create()
            curves = local_curves(config.local_epochs, f"{h.name}'s")
            best, model, norm = _complete_run(config, replace(federation, hospitals=[h]), alone, "local", curves)
            results.append({"hospital": h.name, "run_dir": folder, "train_stays": len(h.train), **best})
            test_scores.append(predict(model, to_features(federation.test, norm, config.model_variables)))
            if on_hospital:
                on_hospital(results[-1])
        run_dir.write_table("local_metrics.csv", "local_metrics.json", results)
    except BaseException as error:
        run_dir.record_ending(error)
        raise
    run_dir.set_status("complete", finished=time.time(), confidence_intervals=ci_method(config.seed))
    test_ci = [f"test_{k}" for k in CI_KEYS]
    keys = [k for k in results[0] if k.startswith("test_") and k not in test_ci]
    # The mean's interval is a paired bootstrap over the shared test stays, not a mean of the hospitals' bounds.
    intervals = mean_bootstrap_intervals(federation.test.labels, np.array(test_scores), config.seed)
    return {
        "hospitals": results,
        "mean": {k: float(np.nanmean([r[k] for r in results])) for k in keys}
        | {f"test_{k}": v for k, v in intervals.items()},
    }


def _folders(names: list[str]) -> list[str]:
    """A folder name per hospital (`safe_name`); a folder name already taken gets the position."""
    folders: list[str] = []
    for position, name in enumerate(names, 1):
        folder = safe_name(name)
        folders.append(f"{folder}-{position}" if folder in folders else folder)
    return folders
