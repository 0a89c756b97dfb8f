"""Figures of a single training run (the seed's training-curve plot)."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display needed
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def plot_training_curves(history: list[dict], path: str | os.PathLike, title: str) -> Path:
    """Loss (total, CE, KD) and accuracy (train-free: validation and test) per epoch."""
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], marker="o", label="total")
    ax_loss.plot(epochs, [h["train_ce"] for h in history], marker=".", label="cross-entropy")
    if any(h["train_kd"] for h in history):
        ax_loss.plot(epochs, [h["train_kd"] for h in history], marker=".", label="KD (T² · KL)")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="Loss")
    for key, marker, label in (("val_acc", "o", "validation"), ("test_acc", "s", "test")):
        measured = [h for h in history if key in h]  # evaluated epochs only (a teacher: the last)
        ax_acc.plot([h["epoch"] for h in measured], [100 * h[key] for h in measured], marker=marker, label=label)
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
