"""Training curves: train/val loss, the validation score (the competition's metric) and the
learning rate per epoch, for one run (``curves.png`` in its folder) or several side by side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from cpx.draw.pyplot import RUN_COLORS, pyplot, save_figure
from cpx.kernel.text import format_f


def plot_history(runs: Sequence[tuple[str, list[dict]]], path: Path, metric: str = "score",
                 greater_is_better: bool = True) -> Path:
    """Training curves (train/val loss, validation score, learning rate) for one or several runs.

    One colour per run in every panel; solid lines are training, dashed validation, and a star
    marks each run's best validation score (the highest, or the lowest where ``greater_is_better``
    is off). ``metric`` names the score (``fscore``, ``class-iou x100``).
    """
    from matplotlib.lines import Line2D

    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8), layout="constrained")
    handles = []
    for k, (label, history) in enumerate(runs):
        color = RUN_COLORS[k % len(RUN_COLORS)]
        history = [h for h in history if "epoch" in h]
        marker = "o" if len(history) <= 30 else None
        epochs = [h["epoch"] for h in history]
        train = [(h["epoch"], h["train_loss"]) for h in history if h.get("train_loss") is not None]
        if train:
            axes[0].plot(*zip(*train), color=color, marker=marker, markersize=3)
        val = [(h["epoch"], h["val_loss"]) for h in history if h.get("val_loss") is not None]
        if val:
            axes[0].plot(*zip(*val), "--", color=color, marker=marker, markersize=3)
        f = [(h["epoch"], h["val_score"]) for h in history if h.get("val_score") is not None]
        f_ema = [(h["epoch"], h["val_score_ema"]) for h in history if h.get("val_score_ema") is not None]
        best = ""
        if f_ema:  # the EMA weights, dotted beside the raw ones
            axes[1].plot(*zip(*f_ema), ":", color=color, marker=marker, markersize=3)
        if f:
            axes[1].plot(*zip(*f), color=color, marker=marker, markersize=3)
            sign = 1 if greater_is_better else -1
            be, bf = max(f + f_ema, key=lambda p: sign * p[1])
            axes[1].plot([be], [bf], "*", color=color, markersize=13, markeredgecolor="black", markeredgewidth=0.6)
            best = f"  (best {metric} {format_f(bf)} @ {be})"
        lr = [(h["epoch"], h["lr"]) for h in history if h.get("lr") is not None]
        if lr:
            axes[2].plot(*zip(*lr), color=color, marker=marker, markersize=3)
        handles.append(Line2D([], [], color=color, linewidth=2.5, label=f"{label}{best}"))
        if epochs and len(set(epochs)) == 1:
            for ax in axes:  # a single point would get a zero-width axis
                ax.set_xlim(epochs[0] - 1, epochs[0] + 1)
    styles = [Line2D([], [], color="0.3", label="train"), Line2D([], [], color="0.3", linestyle="--", label="val")]
    axes[0].legend(handles=styles, fontsize=9, loc="upper right")
    if any(h.get("val_score_ema") is not None for _, history in runs for h in history):
        axes[1].legend(handles=[Line2D([], [], color="0.3", label="raw weights"),
                                Line2D([], [], color="0.3", linestyle=":", label="EMA weights")],
                       fontsize=9, loc="lower right")
    for ax, title in zip(axes, ("loss", f"validation {metric}", "learning rate")):
        ax.set_title(title, fontsize=12)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[1].margins(y=0.1)  # room for the best-epoch stars at the top
    axes[2].ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 3), fontsize=10,
                   frameon=False)
    return save_figure(fig, path)

