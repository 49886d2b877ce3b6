"""PNG figures written into run directories."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402


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
    fig.savefig(path, dpi=120)
    plt.close(fig)
