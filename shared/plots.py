"""PNG figures written into run directories, each atomically (`save_figure`)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

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


def plot_learning_curves(rows: list[dict], path: Path) -> None:
    """AUROC and loss per round: pooled validation and held-out test."""
    rounds = [r["round"] for r in rows]
    fig, (ax_auc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    ax_auc.plot(rounds, [r["val_auroc"] for r in rows], marker="o", label="validation (pooled)")
    ax_auc.plot(rounds, [r["test_auroc"] for r in rows], marker="s", label="test (server)")
    ax_auc.set(xlabel="round", ylabel="AUROC", title="Discrimination")
    ax_loss.plot(rounds, [r["train_loss"] for r in rows], marker="o", label="training (hospitals)")
    ax_loss.plot(rounds, [r["val_loss"] for r in rows], marker="o", label="validation (pooled)")
    ax_loss.plot(rounds, [r["test_loss"] for r in rows], marker="s", label="test (server)")
    ax_loss.set(xlabel="round", ylabel="binary cross-entropy", title="Loss")
    for ax in (ax_auc, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    save_figure(fig, path)
