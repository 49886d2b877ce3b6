"""Figures of a run's report (`fedicu report`), rendered as PNG bytes to embed in one HTML page.

Each `plot_*` function returns a matplotlib figure; `png_bytes` renders and closes it. A group
is a name and the (labels, risks) of its stays: the pooled test split first, then each hospital.
"""

from __future__ import annotations

import io
import math

import numpy as np
from matplotlib.figure import Figure
from matplotlib.layout_engine import ConstrainedLayoutEngine
from sklearn.calibration import calibration_curve
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from fedicu.shared.plots import DPI, Curves, learning_curves_figure, plt

Groups = dict[str, tuple[np.ndarray, np.ndarray]]  # name -> (labels 0/1, predicted risks)
POOLED_STYLE = {"color": "black", "linewidth": 2.2}
MAX_BINS = 10  # reliability bins of the largest groups
STAYS_PER_BIN = 40  # fewer bins for smaller groups: each bin's observed rate needs stays


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes; the figure is closed either way."""
    try:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=DPI)
        return buffer.getvalue()
    finally:
        plt.close(fig)


def learning_curves_png(rows: list[dict], curves: Curves, best_round: int) -> bytes:
    """`shared.plots.learning_curves_figure` of rows read back from JSON (null: not a number)."""
    numeric = [{k: math.nan if v is None else v for k, v in row.items()} for row in rows]
    return png_bytes(learning_curves_figure(numeric, curves, best_round))


def both_classes(labels: np.ndarray) -> bool:
    """Whether ROC and precision-recall curves exist: at least one death and one survivor."""
    return 0 < int(np.sum(labels)) < len(labels)


def _styles(names: list[str]) -> dict[str, dict]:
    """Black for the pooled group (the first), a colour of its own for each other."""
    colours = plt.get_cmap("tab10")
    return {name: POOLED_STYLE if i == 0 else {"color": colours((i - 1) % 10), "linewidth": 1.3}
            for i, name in enumerate(names)}  # fmt: skip


def plot_discrimination(groups: Groups) -> Figure:
    """ROC and precision-recall curves of each group with both outcomes, area in the legend."""
    drawn = {name: g for name, g in groups.items() if both_classes(g[0])}
    styles = _styles(list(drawn))
    fig, (ax_roc, ax_pr) = plt.subplots(1, 2, figsize=(11, 5.4), constrained_layout=True)
    for name, (labels, risks) in drawn.items():
        fpr, tpr, _ = roc_curve(labels, risks)
        ax_roc.plot(fpr, tpr, label=f"{name}: AUROC {roc_auc_score(labels, risks):.3f}", **styles[name])
        precision, recall, _ = precision_recall_curve(labels, risks)
        ap = average_precision_score(labels, risks)
        ax_pr.step(recall, precision, where="post", label=f"{name}: AUPRC {ap:.3f}", **styles[name])
    ax_roc.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance")
    if drawn:
        labels = next(iter(drawn.values()))[0]
        ax_pr.axhline(float(np.mean(labels)), color="grey", linestyle=":", linewidth=1,
                      label=f"chance: mortality {np.mean(labels):.1%}")  # fmt: skip
    ax_roc.set(xlabel="1 - specificity (false-positive rate)", ylabel="sensitivity (true-positive rate)",
               title="ROC curve")  # fmt: skip
    ax_pr.set(xlabel="sensitivity (recall)", ylabel="positive predictive value (precision)",
              title="Precision-recall curve")  # fmt: skip
    for ax in (ax_roc, ax_pr):
        ax.set(xlim=(0, 1), ylim=(0, 1.02))
        ax.set_box_aspect(1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    return fig


def calibration_bins(stays: int) -> int:
    """Equal-count bins of predicted risk: about `STAYS_PER_BIN` stays each, 2 to `MAX_BINS`."""
    return max(2, min(MAX_BINS, stays // STAYS_PER_BIN))


def calibration_range(risks: np.ndarray, observed: np.ndarray) -> float:
    """The axes' upper end: just above nearly every risk and every bin's mortality (0.1 to 1)."""
    highest = max(float(np.quantile(risks, 0.99)) if len(risks) else 0.0, float(np.max(observed, initial=0.0)))
    return min(1.0, max(0.1, 1.1 * highest))


def plot_calibration(groups: Groups) -> Figure:
    """A reliability diagram per group: observed mortality against mean predicted risk in
    equal-count bins, the diagonal for perfect calibration, the spread of risks beneath."""
    columns = min(3, len(groups))
    rows = math.ceil(len(groups) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.1 * columns, 4.3 * rows), squeeze=False,
                             layout=ConstrainedLayoutEngine(h_pad=0.2))  # fmt: skip  # titles clear the row above
    styles = _styles(list(groups))
    for ax, (name, (labels, risks)) in zip(axes.flat, groups.items(), strict=False):
        observed, predicted = np.empty(0), np.empty(0)
        if both_classes(labels):
            observed, predicted = calibration_curve(labels, risks, n_bins=calibration_bins(len(labels)),
                                                    strategy="quantile")  # fmt: skip
        top = calibration_range(risks, observed)
        ax.plot([0, top], [0, top], color="grey", linestyle=":", linewidth=1, label="perfect calibration")
        if len(observed):
            ax.plot(predicted, observed, marker="o", label="observed in equal-count bins", **styles[name])
        spread = ax.twinx()
        spread.hist(risks, bins=30, range=(0, top), color="lightgrey")
        spread.set_yticks([])
        spread.set_ylim(0, 4 * spread.get_ylim()[1])  # the histogram in the lowest quarter
        ax.set_zorder(spread.get_zorder() + 1)
        ax.patch.set_visible(False)
        ax.set(xlim=(0, top), ylim=(0, top), xlabel="mean predicted risk", ylabel="observed mortality",
               title=f"{name}\n{len(labels):,} stays, {int(np.sum(labels)):,} died")  # fmt: skip
        ax.set_box_aspect(1)
        spread.set_box_aspect(1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    for ax in list(axes.flat)[len(groups) :]:
        ax.set_visible(False)
    return fig


def plot_importance(importance: dict[str, float], top: int = 15) -> Figure:
    """The `top` variables by mean absolute share of the risk, largest at the top."""
    names = list(importance)[:top][::-1]
    values = [100 * importance[n] for n in names]
    fig, ax = plt.subplots(figsize=(8, 1.0 + 0.27 * len(names)), constrained_layout=True)
    ax.barh(names, values, color="tab:blue")
    ax.set(xlabel="mean |share of the risk| per stay (percentage points)",
           title="Variable importance (integrated gradients)")  # fmt: skip
    ax.grid(axis="x", alpha=0.3)
    return fig
