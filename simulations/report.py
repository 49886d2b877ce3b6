"""The report of a finished run directory: one self-contained HTML page (`fedicu report`).

Everything is inside the page: the styles inline, the figures as base64 PNG data URIs, no
script, no font, no request anywhere (its Content-Security-Policy refuses any). Each section
shows what the run directory holds for it, or says in a line what is missing.
"""

from __future__ import annotations

import base64
import datetime
import html
import importlib.metadata
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedicu.shared import cross_site
from fedicu.shared.calibration import ECE_BINNING, RECALIBRATION_METHODS
from fedicu.shared.datasets import DATASETS
from fedicu.shared.metrics import CI_CAPTION
from fedicu.shared.model import MortalityLSTM
from fedicu.shared.plots import FEDERATED_CURVES, Curves, centralized_curves, local_curves
from fedicu.shared.preprocessing import Normalization, Sequences
from fedicu.shared.privacy.audit import AUDIT_JSON, AUDIT_PNG
from fedicu.shared.report_plots import (
    Groups,
    both_classes,
    learning_curves_png,
    plot_calibration,
    plot_discrimination,
    plot_importance,
    png_bytes,
)
from fedicu.shared.run_dir import (
    CONFIG_FILE,
    CROSS_SITE_JSON,
    CROSS_SITE_PNG,
    HOSPITAL_JSON,
    HOSPITAL_PRIVACY_FILE,
    METRICS_JSON,
    MODEL_CARD,
    PRIVACY_FILE,
    RUN_FILE,
    TEST_PREDICTIONS,
    load_trained,
)
from fedicu.simulations.cli.common import by_hospital, fmt, fmt_ci

POOLED = "all test stays"
TOP_VARIABLES = 15  # rows of the importance table and bars of its figure


@dataclass(frozen=True)
class ExplainedStays:
    """The stays whose risks the importance section explains, and what they are."""

    seqs: Sequences
    described: str


class RunFiles:
    """The run directory's files, each read once; a missing one is None."""

    def __init__(self, path: Path):
        self.path = path
        self._read: dict[str, Any] = {}

    def json(self, name: str) -> Any:
        if name not in self._read:
            self._read[name] = self._load(name, lambda file: json.loads(file.read_text()))
        return self._read[name]

    def table(self, name: str) -> pd.DataFrame | None:
        return self._load(name, pd.read_csv)

    def png(self, name: str) -> bytes | None:
        return self._load(name, Path.read_bytes)

    def _load(self, name: str, read: Any) -> Any:
        file = self.path / name
        if not file.is_file():
            return None
        try:
            return read(file)
        except (OSError, ValueError) as error:
            raise ValueError(f"{file}: cannot read it: {error}") from error


# --- HTML pieces: every text goes through html.escape --------------------------------------


def esc(value: object) -> str:
    return html.escape(str(value))


def paragraph(text: str, css: str = "") -> str:
    return f'<p class="{css}">{esc(text)}</p>' if css else f"<p>{esc(text)}</p>"


def absent(text: str) -> str:
    return paragraph(text, "absent")


def table(headers: list[str], rows: list[list[str]], caption: str = "") -> str:
    """A table of texts; the style right-aligns every column after the first (numbers)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    note = f"<caption>{esc(caption)}</caption>" if caption else ""
    return f"<table>{note}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def facts(pairs: list[tuple[str, str]]) -> str:
    return "<dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in pairs) + "</dl>"


def figure(figure_id: str, png: bytes, alt: str, caption: str = "") -> str:
    """A PNG inside the page, as a data URI; its id names it for readers and tests."""
    data = base64.b64encode(png).decode("ascii")
    note = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return (f'<figure><img id="{esc(figure_id)}" class="figure" alt="{esc(alt)}" '
            f'src="data:image/png;base64,{data}">{note}</figure>')  # fmt: skip


def section(section_id: str, title: str, *parts: str) -> str:
    return f'<section id="{esc(section_id)}"><h2>{esc(title)}</h2>{"".join(parts)}</section>'


# --- numbers as a reader reads them ---------------------------------------------------------


def percent(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.1%}"


def count(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:,.0f}"


def stays_died(row: dict, prefix: str = "test_") -> str:
    return f"{count(row.get(f'{prefix}stays'))} ({count(row.get(f'{prefix}deaths'))})"


def when(timestamp: float | None) -> str:
    if timestamp is None:
        return "–"
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


# --- the header: what was trained, on what, how ---------------------------------------------


def summary_section(files: RunFiles) -> str:
    card, run, config = files.json(MODEL_CARD), files.json(RUN_FILE), files.json(CONFIG_FILE) or {}
    best = card["metrics"]["best"]
    pairs = [
        ("Predicts", f"{card['predicts']} (task {card['task']})"),
        ("Status", f"{run.get('status')}, finished {when(run.get('finished'))}"),
        ("Training", training_text(run, config)),
        ("Dataset", dataset_text(config)),
        ("Hospitals", hospitals_text(card)),
        ("Rounds", rounds_text(run, config)),
        ("Best round", f"{card['best_round']} (highest pooled validation AUROC)"),
        ("Model", model_text(card)),
        ("Decision threshold", f"{fmt(card['threshold']['best'])} ({card.get('threshold_rule', '')})"),
        ("Privacy", privacy_text(config)),
        ("Held-out test, best round", headline_text(best)),
    ]
    return section("summary", "Summary", facts(pairs), cohort_table(card))


def training_text(run: dict, config: dict) -> str:
    setting = run.get("setting", "federated")
    if setting != "federated":
        return f"{setting} baseline (no federation)"
    where = f"{config['sites']} deployed sites" if config.get("sites") else "simulated hospitals"
    return f"federated, {config.get('strategy', 'fedavg')}, {where}"


def dataset_text(config: dict) -> str:
    dataset = config.get("dataset", "?")
    text = {"synthetic": f"synthetic ({config.get('synthetic-stays')} stays, seed {config.get('seed')})",
            "physionet2012": f"PhysioNet 2012, sets {config.get('sets')}"}.get(dataset, dataset)  # fmt: skip
    folder = f", {config['data-dir']}" if config.get("data-dir") else ""
    natural = DATASETS[dataset].natural_partition if dataset in DATASETS else "?"
    partition = config.get("partition") or f"{natural} (the data's own)"
    return f"{text}{folder}; hospitals by {partition}; test share {config.get('test-fraction')}"


def hospitals_text(card: dict) -> str:
    names = list(card.get("data", {}).get("hospitals", {}))
    return f"{len(names)}: {', '.join(names)}" if names else "–"


def rounds_text(run: dict, config: dict) -> str:
    done = run.get("rounds_completed", config.get("rounds"))
    return f"{done} of {config.get('rounds', '?')}, {config.get('local-epochs', 1)} local epoch(s) each"


def model_text(card: dict) -> str:
    model = card["model"]
    pooling = "attention pooling" if model.get("attention") else "last hidden state"
    return (f"LSTM, {model['num_layers']} layer(s) of {model['hidden_size']} units, {pooling}, "
            f"dropout {model['dropout']}; {len(card['variables'])} time series and the descriptors")  # fmt: skip


def privacy_text(config: dict) -> str:
    parts = []
    if config.get("dp"):
        noise = (f"noise multiplier {config['noise-multiplier']}" if config.get("noise-multiplier")
                 else "noise calibrated")  # fmt: skip
        target = f", target ε {config['target-epsilon']}" if config.get("target-epsilon") else ""
        parts.append(f"DP-SGD at every hospital (unit: one ICU stay): {noise}{target}, δ {config.get('delta')}, "
                     f"clip {config.get('max-grad-norm')}, {config.get('accountant')} accountant")  # fmt: skip
    else:
        parts.append("no DP-SGD")
    if config.get("hospital-dp-noise"):
        parts.append(f"hospital-level DP: noise {config['hospital-dp-noise']}, clip {config.get('hospital-dp-clip')}")
    parts.append("secure aggregation (SecAgg+)" if config.get("secagg") else "no secure aggregation")
    return "; ".join(parts)


def headline_text(best: dict) -> str:
    worst = best.get("test_auroc_worst_hospital")
    return (f"AUROC {fmt_ci(best, 'test_auroc')}, AUPRC {fmt_ci(best, 'test_auprc')}, Brier {fmt(best.get('test_brier'))}"
            f", Event-1 {fmt(best.get('test_event1'))}; worst hospital AUROC {fmt(worst)}; {CI_CAPTION}")  # fmt: skip


def cohort_table(card: dict) -> str:
    hospitals = card.get("data", {}).get("hospitals", {})
    if not hospitals:
        return ""
    rows = []
    for name, splits in hospitals.items():
        parts = [splits.get(s, {}) for s in ("train", "val", "test")]
        rows.append([name, *(stays_died(p, "") for p in parts), percent(parts[0].get("mortality"))])
    headers = ["hospital", "train stays (died)", "validation", "test", "train mortality"]
    return table(headers, rows, "Stays of each hospital, by split")


# --- learning curves -------------------------------------------------------------------------


def curves_of(run: dict, config: dict) -> Curves:
    """What the metric rows count: federated rounds, or a baseline's epochs."""
    epochs = int(config.get("local-epochs", 1))
    if run.get("setting") == "centralized":
        return centralized_curves(epochs)
    if run.get("setting") == "local":
        return local_curves(epochs, "the hospital's")
    return FEDERATED_CURVES


def learning_section(files: RunFiles) -> str:
    rows = files.json(METRICS_JSON)
    if not rows:
        return section("learning-curves", "Learning curves", absent(f"No {METRICS_JSON} in the run directory."))
    best = files.json(MODEL_CARD)["best_round"]
    png = learning_curves_png(rows, curves_of(files.json(RUN_FILE), files.json(CONFIG_FILE) or {}), best)
    alt = "AUROC and loss per round"
    return section("learning-curves", "Learning curves", figure("figure-learning-curves", png, alt), rounds_table(rows))


def rounds_table(rows: list[dict]) -> str:
    columns = [("val_auroc", "validation AUROC"), ("test_auroc", "test AUROC"), ("test_auprc", "test AUPRC"),
               ("test_brier", "test Brier"), ("test_event1", "test Event-1"), ("train_loss", "training loss")]  # fmt: skip
    with_ci = ("val_auroc", "test_auroc", "test_auprc")
    body = [[str(r["round"]), *((fmt_ci(r, k) if k in with_ci else fmt(r.get(k))) for k, _ in columns)] for r in rows]
    return table(["round", *(name for _, name in columns)], body, f"Each round; {CI_CAPTION}")


# --- the best model on the test split: discrimination and calibration ----------------------


PREDICTION_COLUMNS = ("label", "risk")


def read_predictions(files: RunFiles) -> pd.DataFrame | None:
    predictions = files.table(TEST_PREDICTIONS)
    if predictions is not None and not set(PREDICTION_COLUMNS) <= set(predictions):
        raise ValueError(f"{files.path / TEST_PREDICTIONS}: no {' and '.join(PREDICTION_COLUMNS)} columns")
    return predictions


def split_groups(predictions: pd.DataFrame) -> Groups:
    """All test stays, then each hospital's (when the file names them)."""
    groups: Groups = {POOLED: (predictions["label"].to_numpy(int), predictions["risk"].to_numpy(float))}
    if "hospital" in predictions:
        for name, part in predictions.groupby("hospital", sort=True):
            groups[str(name)] = (part["label"].to_numpy(int), part["risk"].to_numpy(float))
    return groups


def no_predictions(section_id: str, title: str) -> str:
    text = f"No {TEST_PREDICTIONS} in the run directory (simulated federated runs write it; baselines and deployments do not)."
    return section(section_id, title, absent(text))


def discrimination_section(predictions: pd.DataFrame | None, threshold: float) -> str:
    title = "Discrimination on the test split"
    if predictions is None:
        return no_predictions("discrimination", title)
    groups = split_groups(predictions)
    png = png_bytes(plot_discrimination(groups))
    one_outcome = [name for name, (labels, _) in groups.items() if not both_classes(labels)]
    parts = [figure("figure-discrimination", png, "ROC and precision-recall curves", discrimination_caption(groups)),
             threshold_table(groups, threshold)]  # fmt: skip
    if one_outcome:
        parts.append(absent(f"Without curves (one outcome only among their test stays): {', '.join(one_outcome)}."))
    return section("discrimination", title, *parts)


def discrimination_caption(groups: Groups) -> str:
    labels = groups[POOLED][0]
    return (f"The best model's risk for each of the {len(labels):,} held-out test stays ({int(labels.sum()):,} died), "
            "which no hospital trained on; black: all of them, colours: each hospital's own.")  # fmt: skip


def threshold_table(groups: Groups, threshold: float) -> str:
    """What the decision at the model's threshold does in each group."""
    rows = []
    for name, (labels, risks) in groups.items():
        flagged = risks >= threshold
        true_pos = int((flagged & (labels == 1)).sum())
        sensitivity = true_pos / labels.sum() if labels.sum() else math.nan
        ppv = true_pos / flagged.sum() if flagged.sum() else math.nan
        specificity = ((~flagged) & (labels == 0)).sum() / (labels == 0).sum() if (labels == 0).any() else math.nan
        rows.append([name, f"{len(labels):,} ({int(labels.sum()):,})", percent(flagged.mean()),
                     percent(sensitivity), percent(specificity), percent(ppv)])  # fmt: skip
    headers = ["test split", "stays (died)", "flagged", "sensitivity", "specificity", "PPV"]
    return table(
        headers, rows, f"At the decision threshold {threshold:.3f}: a stay is flagged when its risk reaches it"
    )


def calibration_section(predictions: pd.DataFrame | None) -> str:
    title = "Calibration on the test split"
    if predictions is None:
        return no_predictions("calibration", title)
    png = png_bytes(plot_calibration(split_groups(predictions)))
    caption = ("Observed mortality against the mean predicted risk, in bins holding equally many stays (fewer bins "
               "for fewer stays); on the dotted diagonal the risk is right on average. Grey: how the risks spread.")  # fmt: skip
    return section("calibration", title, figure("figure-calibration", png, "Reliability curves", caption))


# --- each hospital, and every model at every hospital ----------------------------------------


def hospitals_section(files: RunFiles) -> str:
    rows, metrics = files.json(HOSPITAL_JSON), files.json(METRICS_JSON)
    title = "Each hospital at the best round"
    if not rows or not metrics:
        return section("hospitals", title, absent(f"No {HOSPITAL_JSON} in the run directory (a baseline has none)."))
    best = files.json(MODEL_CARD)["best_round"]
    at_best = [r for r in rows if r["round"] == best]
    pooled = next((r for r in metrics if r["round"] == best), metrics[-1])
    return section("hospitals", title, hospital_table(pooled, at_best), recalibration_table(at_best))


def hospital_table(pooled: dict, rows: list[dict]) -> str:
    """Pooled, then the worst hospital, then the others from worse to better (as the CLI lists them)."""
    headers = ["test split", "stays (died)", "AUROC", "AUPRC", "Brier", "ECE", "slope", "intercept", "obs/exp"]
    with_epsilon = any(r.get("epsilon") for r in rows)
    body = []
    for name, r in by_hospital(pooled, rows):
        cells = [fmt_ci(r, "test_auroc"), fmt_ci(r, "test_auprc"), *(fmt(r.get(f"test_{k}")) for k in (
            "brier", "ece", "calibration_slope", "calibration_intercept", "observed_expected"))]  # fmt: skip
        epsilon = [fmt(r.get("epsilon")) if name != "pooled" else ""] if with_epsilon else []
        body.append([name, stays_died(r), *cells, *epsilon])
    caption = f"The best model on each hospital's own test stays; {CI_CAPTION}; ECE: {ECE_BINNING}"
    return table(headers + (["ε spent"] if with_epsilon else []), body, caption)


def recalibration_table(rows: list[dict]) -> str:
    stages = ("", *(f"_{m}" for m in RECALIBRATION_METHODS))
    headers = ["hospital", *(f"{metric} {stage.strip('_') or 'global'}" for metric in ("ECE", "obs/exp")
                             for stage in stages)]  # fmt: skip
    body = [[r["hospital"], *(fmt(r.get(f"test{stage}_{key}")) for key in ("ece", "observed_expected")
                              for stage in stages)] for r in rows]  # fmt: skip
    caption = "Calibration after each hospital's own recalibration map, fitted on its validation stays and kept there"
    return table(headers, body, caption)


def cross_site_section(files: RunFiles) -> str:
    rows, png = files.json(CROSS_SITE_JSON), files.png(CROSS_SITE_PNG)
    title = "Cross-site matrix"
    if not rows:
        return section("cross-site", title, absent(f"No {CROSS_SITE_JSON} in the run directory."))
    hospitals = cross_site.hospitals(rows)
    auroc = {(r["model"], r["hospital"]): r["auroc"] for r in rows}
    body = [[model, *(fmt(auroc.get((model, h))) for h in hospitals), fmt(cross_site.worst_auroc(rows, model))]
            for model in cross_site.models(rows)]  # fmt: skip
    parts = [table(["model", *hospitals, "worst"], body, "AUROC of each model on each hospital's own test split")]
    if png is not None:
        parts.append(figure("figure-cross-site", png, "Cross-site AUROC heatmap"))
    return section("cross-site", title, *parts)


# --- privacy -------------------------------------------------------------------------------


def privacy_section(files: RunFiles) -> str:
    config = files.json(CONFIG_FILE) or {}
    ledgers, central = files.json(PRIVACY_FILE), files.json(HOSPITAL_PRIVACY_FILE)
    parts = [paragraph(privacy_text(config))]
    if ledgers:
        parts.append(ledger_table(ledgers))
    else:
        parts.append(absent(f"No {PRIVACY_FILE}" + ("." if config.get("dp") else ": trained without DP-SGD.")))
    if central:
        parts.append(central_table(central))
    else:
        parts.append(absent(f"No {HOSPITAL_PRIVACY_FILE}" + ("." if config.get("hospital-dp-noise") else
                                                             ": trained without hospital-level DP.")))  # fmt: skip
    return section("privacy", "Privacy ledger", *parts)


def _distinct(values: list[Any]) -> str:
    return ", ".join(f"{v:g}" for v in dict.fromkeys(values)) or "–"


def ledger_table(ledgers: list[dict]) -> str:
    headers = ["hospital", "ε spent", "δ", "accountant", "rounds", "noise multiplier", "sample rate", "steps"]
    body = []
    for ledger in ledgers:
        history = ledger.get("history", [])
        body.append([ledger["hospital"], fmt(ledger.get("epsilon")), f"{ledger.get('delta', math.nan):g}",
                     ledger.get("accountant", "–"), str(len(history)),
                     _distinct([h["noise_multiplier"] for h in history]), _distinct([h["sample_rate"] for h in history]),
                     f"{sum(h['steps'] for h in history):,}"])  # fmt: skip
    return table(headers, body, "DP-SGD at each hospital (unit: one ICU stay): what each hospital's accountant spent")


def central_table(ledger: dict) -> str:
    history = ledger.get("history", [])
    row = [ledger.get("unit", "hospital"), fmt(ledger.get("epsilon")), f"{ledger.get('delta', math.nan):g}",
           ledger.get("accountant", "–"), str(len(history)), _distinct([h["noise_multiplier"] for h in history]),
           fmt(ledger.get("clip"))]  # fmt: skip
    headers = ["unit", "ε spent", "δ", "accountant", "rounds", "noise multiplier", "clip"]
    return table(
        headers, [row], "Hospital-level DP: the server clipped each hospital's update and noised their average"
    )


def audit_section(files: RunFiles) -> str:
    report, png = files.json(AUDIT_JSON), files.png(AUDIT_PNG)
    title = "Membership-inference audit"
    if not report:
        return section("audit", title, absent(f"No {AUDIT_JSON}: run `fedicu audit RUN_DIR` to include the audit."))
    names = {"loss_threshold": "loss threshold", "calibrated_loss": "calibrated loss", "lira": "LiRA (online)",
             "lira_offline": "LiRA (offline)"}  # fmt: skip
    body = [[name, fmt_ci(report[key], "auroc"), fmt(report[key].get("tpr_at_1pct_fpr")), fmt(report[key].get("advantage"))]
            for key, name in names.items() if report.get(key)]  # fmt: skip
    parts = [paragraph(audit_text(report)),
             table(["attack", "AUROC", "TPR at 1% FPR", "advantage"], body, "0.5 AUROC: the attacker guesses")]  # fmt: skip
    if png is not None:
        parts.append(figure("figure-audit", png, "ROC curves of the membership-inference attacks"))
    return section("audit", title, *parts)


def audit_text(report: dict) -> str:
    text = (f"The {report.get('model')} model, attacked on {report.get('members')} training stays (members) against "
            f"{report.get('non_members')} held-out test stays, matched by outcome; {report.get('shadow_models')} "
            "shadow models. Each number is what one attack achieves: a lower bound on the leakage.")  # fmt: skip
    dp = report.get("dp")
    if dp:
        text += (f" The DP guarantee (ε {dp['epsilon']:.2f}, δ {dp['delta']:g}) allows any attack at most AUROC "
                 f"{dp['auroc_bound']:.3f} and TPR at 1% FPR {dp['tpr_at_1pct_fpr_bound']:.3f}.")  # fmt: skip
    return text


# --- variable importance ---------------------------------------------------------------------


def importance_section(model: MortalityLSTM, norm: Normalization, stays: ExplainedStays | None) -> str:
    title = "Variable importance"
    if stays is None:
        return section("importance", title, absent("Run with --data-dir to include variable importance."))
    if not len(stays.seqs):
        return section("importance", title, absent(f"No stays to explain in {stays.described}."))
    from fedicu.client.bedside.explain import explain

    explained = explain(model, norm, stays.seqs)
    importance = explained.importance()
    signed = dict(zip(explained.variables, explained.per_variable.mean(axis=0), strict=True))
    body = [[name, f"{100 * value:.2f}", f"{100 * signed[name]:+.2f}"]
            for name, value in list(importance.items())[:TOP_VARIABLES]]  # fmt: skip
    caption = (f"Integrated gradients of the best model's risk over {len(stays.seqs):,} stays: {stays.described}. "
               f"A variable's share is the part of a stay's risk it accounts for, relative to a stay with no "
               f"measurement (risk {explained.empty_risk:.3f}); median integration error "
               f"{float(np.median(np.abs(explained.delta))):.1e}.")  # fmt: skip
    headers = ["variable", "mean |share| (points of risk)", "mean share (+ raises risk)"]
    png = png_bytes(plot_importance(importance, TOP_VARIABLES))
    return section("importance", title, figure("figure-importance", png, "Variable importance", caption),
                   table(headers, body, f"The {TOP_VARIABLES} most important variables, in percentage points"))  # fmt: skip


# --- the page ------------------------------------------------------------------------------

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Arial, sans-serif;
       color: #1d2330; background: #fff; margin: 0; line-height: 1.45; }
main { max-width: 1120px; margin: 0 auto; padding: 1.5rem 2rem 3rem; }
h1 { font-size: 1.7rem; margin: 0 0 .2rem; }
h2 { font-size: 1.25rem; border-bottom: 2px solid #d8dde6; padding-bottom: .25rem; margin-top: 2.2rem; }
.subtitle { color: #5a6372; margin-top: 0; overflow-wrap: anywhere; }
nav { font-size: .9rem; margin: 1rem 0; }
nav a { margin-right: 1rem; color: #1f5fa8; text-decoration: none; white-space: nowrap; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: .3rem 1.2rem; margin: 1rem 0; }
dt { font-weight: 600; color: #3b4454; }
dd { margin: 0; overflow-wrap: anywhere; }
table { border-collapse: collapse; margin: 1rem 0 1.4rem; font-size: .88rem; }
caption { caption-side: top; text-align: left; color: #5a6372; font-size: .85rem; padding-bottom: .35rem; }
th, td { padding: .3rem .65rem; border-bottom: 1px solid #e3e7ee; }
th { background: #f1f4f8; text-align: right; vertical-align: bottom; }
td { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
th:first-child, td:first-child { text-align: left; }
tbody tr:nth-child(even) { background: #fafbfc; }
figure { margin: 1rem 0; }
img.figure { display: block; max-width: 100%; height: auto; border: 1px solid #e3e7ee; }
figcaption { color: #5a6372; font-size: .85rem; margin-top: .35rem; max-width: 900px; }
.absent { color: #7a5a00; background: #fff8e1; border-left: 4px solid #e0b400; padding: .45rem .8rem; }
footer { margin-top: 3rem; color: #7a8190; font-size: .8rem; }
"""
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"  # nothing leaves the page
SECTIONS = [("summary", "Summary"), ("learning-curves", "Learning curves"), ("discrimination", "Discrimination"),
            ("calibration", "Calibration"), ("hospitals", "Hospitals"), ("cross-site", "Cross-site"),
            ("privacy", "Privacy"), ("audit", "Audit"), ("importance", "Variable importance")]  # fmt: skip


def page(run_dir: Path, sections: list[str]) -> str:
    version = importlib.metadata.version("fedicu")
    generated = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    links = "".join(f'<a href="#{sid}">{esc(name)}</a>' for sid, name in SECTIONS)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>fedicu report: {esc(run_dir.name)}</title><style>{STYLE}</style></head>
<body><main><h1>Run report: {esc(run_dir.name)}</h1>
<p class="subtitle">{esc(run_dir.resolve())}</p><nav>{links}</nav>
{"".join(sections)}
<footer>Written by fedicu {esc(version)} on {generated}. The figures and tables come from the run directory's files;
nothing in this page was fetched from elsewhere.</footer></main></body></html>
"""


def build_report(run_dir: Path, stays: ExplainedStays | None = None) -> str:
    """The HTML page of a completed run directory; `stays`: the stays to explain (variable importance).
    Raises FileNotFoundError or ValueError, naming the directory or file, for a run it cannot report."""
    model, norm, threshold = load_trained(run_dir, "best")
    files = RunFiles(run_dir)
    predictions = read_predictions(files)
    sections = [
        summary_section(files),
        learning_section(files),
        discrimination_section(predictions, threshold),
        calibration_section(predictions),
        hospitals_section(files),
        cross_site_section(files),
        privacy_section(files),
        audit_section(files),
        importance_section(model, norm, stays),
    ]
    return page(run_dir, sections)
