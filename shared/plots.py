"""PNG figures written into run directories, each atomically (`save_figure`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from fedicu.shared.files import atomic_file

DPI = 120


def save_figure(fig: Figure, path: str | Path) -> None:
    """Render `fig` as a PNG into `path` atomically, and close it.

    The image goes to a temporary file in the same folder that is renamed into
    place once the rendering succeeded: a figure that fails to render leaves
    `path` as it was (absent, or the previous image) and no temporary file. The
    figure is closed either way.
    """
    try:
        with atomic_file(path) as f:
            fig.savefig(f, format="png", dpi=DPI)
    finally:
        plt.close(fig)


@dataclass(frozen=True)
class Curves:
    """What a run's metric rows show: what the x axis counts and which stays each series is computed on."""

    x_label: str  # "federated round", or "epoch" for a baseline
    x_per_row: int  # x units one row covers: a baseline's row is its local-epochs epochs
    train: str  # whose training loss, e.g. "mean over hospitals"
    val: str  # the validation stays, e.g. "pooled over hospitals"
    test: str = "held-out stays"


FEDERATED_CURVES = Curves("federated round", 1, train="mean over hospitals", val="pooled over hospitals")


def centralized_curves(epochs: int) -> Curves:
    return Curves("epoch", epochs, train="pooled stays", val="pooled over hospitals")


def local_curves(epochs: int, whose: str) -> Curves:
    """A local-only model's: `whose` stays, e.g. "coronary-care's"."""
    return Curves("epoch", epochs, train=f"{whose} stays", val=f"{whose} stays")


# One look per split, the same in both panels.
SPLIT_STYLE = {
    "train": {"color": "tab:green", "marker": "^"},
    "val": {"color": "tab:blue", "marker": "o"},
    "test": {"color": "tab:orange", "marker": "s"},
}


def plot_learning_curves(rows: list[dict], path: Path, curves: Curves, best_round: int) -> None:
    """`learning_curves_figure`, written to `path`."""
    save_figure(learning_curves_figure(rows, curves, best_round), path)


def learning_curves_figure(rows: list[dict], curves: Curves, best_round: int) -> Figure:
    """AUROC and loss per row, with the best round (the row whose "round" is `best_round`) marked.

    A series without a single value (the training loss under DP-SGD, test metrics of a
    deployment without a test set) is left out rather than listed with nothing drawn.
    """
    x = [r["round"] * curves.x_per_row for r in rows]
    fig, (ax_auc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4.8), constrained_layout=True)
    for ax, key, label in (
        (ax_auc, "val_auroc", f"validation AUROC ({curves.val})"),
        (ax_auc, "test_auroc", f"test AUROC ({curves.test})"),
        (ax_loss, "train_loss", f"training loss ({curves.train})"),
        (ax_loss, "val_loss", f"validation loss ({curves.val})"),
        (ax_loss, "test_loss", f"test loss ({curves.test})"),
    ):
        values = [r[key] for r in rows]
        if any(math.isfinite(v) for v in values):
            ax.plot(x, values, label=label, **SPLIT_STYLE[key.split("_")[0]])
    best_x = best_round * curves.x_per_row
    for ax, ylabel, title in (
        (ax_auc, "AUROC", "Discrimination"),
        (ax_loss, "binary cross-entropy loss", "Loss"),
    ):
        ax.axvline(best_x, color="black", linestyle="--", linewidth=1,
                   label=f"best {curves.x_label} ({best_x}): highest validation AUROC")  # fmt: skip
        ax.set(xlabel=curves.x_label, ylabel=ylabel, title=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.15))  # below: never over a curve
        ax.xaxis.get_major_locator().set_params(integer=True)
    return fig


def plot_cross_site(rows: list[dict], path: Path) -> None:
    """A heatmap of AUROC, one row per model and one column per hospital's test split, with
    each model's worst hospital in the last column; a cell without a score stays blank."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    hospitals = list(dict.fromkeys(r["hospital"] for r in rows))
    cells = np.full((len(models), len(hospitals) + 1), np.nan)
    for r in rows:  # read back from JSON, a missing score is None
        cells[models.index(r["model"]), hospitals.index(r["hospital"])] = np.nan if r["auroc"] is None else r["auroc"]
    scored = ~np.isnan(cells[:, :-1])
    cells[:, -1] = [row[ok].min() if ok.any() else np.nan for row, ok in zip(cells[:, :-1], scored, strict=True)]
    columns = len(hospitals) + 1
    fig, ax = plt.subplots(figsize=(2.0 + 1.3 * columns, 1.6 + 0.55 * len(models)), constrained_layout=True)
    image = ax.imshow(np.ma.masked_invalid(cells), cmap="RdYlGn", vmin=0.5, vmax=1.0, aspect="auto")
    for (i, j), value in np.ndenumerate(cells):
        if not np.isnan(value):
            ax.text(
                j,
                i,
                f"{value:.3f}",
                ha="center",
                va="center",
                fontsize=9,
                fontweight="bold" if j == columns - 1 else None,
            )
    ax.axvline(columns - 1.5, color="black", linewidth=2)
    stays = {r["hospital"]: r["stays"] for r in rows if r["stays"] is not None and r["stays"] == r["stays"]}
    labels = [f"{h}\n{stays[h]:.0f} stays" if h in stays else h for h in hospitals]
    ax.set_xticks(range(columns), [*labels, "worst"], rotation=30, ha="right")
    ax.set_yticks(range(len(models)), models)
    ax.set(xlabel="test split of hospital", ylabel="model", title="AUROC of each model at each hospital")
    fig.colorbar(image, ax=ax, label="AUROC", shrink=0.8)
    save_figure(fig, path)
