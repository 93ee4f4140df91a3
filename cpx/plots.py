"""PNG figures with matplotlib (headless)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

from .utils import atomic_write_bytes


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # never needs a display
    import matplotlib.pyplot as plt

    return plt


def plot_history(runs: Sequence[tuple[str, list[dict]]], path: Path) -> Path:
    """Training curves (train/val loss, val F, learning rate) for one or several runs."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for label, history in runs:
        epochs = [h["epoch"] for h in history]
        axes[0].plot(epochs, [h["train_loss"] for h in history], label=f"{label} train")
        val = [(h["epoch"], h["val_loss"]) for h in history if h.get("val_loss") is not None]
        if val:
            axes[0].plot(*zip(*val), "--", label=f"{label} val")
        f = [(h["epoch"], h["val_f"]) for h in history if h.get("val_f") is not None]
        if f:
            axes[1].plot(*zip(*f), marker=".", label=label)
        axes[2].plot(epochs, [h["lr"] for h in history], label=label)
    for ax, title in zip(axes, ("loss", "validation F (per image)", "learning rate")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)
