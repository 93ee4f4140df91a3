"""PNG figures with matplotlib (headless).

Pure drawing: functions that take arrays, numbers and a path (``plot_*``, ``colorize``,
``error_overlay``) and know nothing of runs or models, so they are tested without either.
:mod:`cpx.draw.pictures` feeds them from recorded runs. Every PNG is written atomically.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from cpx.draw.pyplot import RUN_COLORS, pyplot, save_figure
from cpx.kernel.errors import DataError
from cpx.kernel.text import format_f

ERROR_RGB = (255, 32, 32)
MAX_GRID_ROWS = 32


# --------------------------------------------------------------------------------------------
# Colours


def class_colors(num_classes: int, palette: Sequence[Sequence[int]] = ()) -> np.ndarray:
    """``num_classes x 3`` uint8 colours: the competition palette, then a qualitative colormap
    for any class the palette does not cover (so no two classes share grey by accident)."""
    colors = np.zeros((max(num_classes, 1), 3), dtype=np.uint8)
    plt = pyplot()
    cmap = plt.get_cmap("tab20")
    for c in range(num_classes):
        if c < len(palette):
            colors[c] = palette[c][:3]
        else:
            colors[c] = np.round(np.array(cmap(c % 20)[:3]) * 255)
    return colors


def colorize(mask: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """An ``H x W`` mask of class ids as an ``H x W x 3`` uint8 picture."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise DataError(f"a mask must be H x W, got shape {mask.shape}")
    if mask.size and int(mask.max()) >= len(colors):
        raise DataError(f"mask holds class id {int(mask.max())} but only {len(colors)} colours are known")
    return np.asarray(colors, dtype=np.uint8)[mask.astype(np.intp)]


def _as_hwc(image: Any) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = arr.transpose(1, 2, 0)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3):
        raise DataError(f"an image must be H x W x 3 or 3 x H x W, got shape {arr.shape}")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return arr.astype(np.uint8)


def error_overlay(image: np.ndarray, pred: np.ndarray, gt: np.ndarray, dim: float = 0.4) -> np.ndarray:
    """The image in dimmed grey with every pixel where ``pred != gt`` painted red.

    Grey keeps the face readable while no image colour can be mistaken for an error.
    """
    rgb = _as_hwc(image)
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape or rgb.shape[:2] != gt.shape:
        raise DataError(f"image {rgb.shape[:2]}, prediction {pred.shape} and ground truth {gt.shape} "
                        "must have the same height and width")
    grey = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    out = np.repeat((grey * dim)[..., None], 3, axis=2).astype(np.uint8)
    out[pred != gt] = ERROR_RGB
    return out


# --------------------------------------------------------------------------------------------
# Pure figures


@dataclass
class ImageRow:
    """One row of the image grid: an image, its masks and its score."""

    name: str
    image: np.ndarray  # H x W x 3 (or 3 x H x W) uint8
    gt: np.ndarray  # H x W class ids
    pred: np.ndarray  # H x W class ids
    score: float


def plot_image_grid(rows: Sequence[ImageRow], class_names: Sequence[str], colors: np.ndarray, path: Path,
                    title: str = "") -> Path:
    """Image | ground truth | prediction | errors, one row per image, with a legend of the
    classes that appear in any shown mask."""
    if not rows:
        raise DataError("no images to draw")
    from matplotlib.patches import Patch

    plt = pyplot()
    n = len(rows)
    panel = 3.0
    fig, axes = plt.subplots(n, 4, figsize=(4 * panel, n * panel + 1.4), layout="constrained", squeeze=False)
    headers = ("image", "ground truth", "prediction", "errors (red: prediction ≠ truth)")
    seen: set[int] = set()
    for r, row in enumerate(rows):
        image = _as_hwc(row.image)
        gt, pred = np.asarray(row.gt), np.asarray(row.pred)
        seen.update(np.unique(gt).tolist())
        seen.update(np.unique(pred).tolist())
        wrong = float(np.mean(pred != gt)) if gt.size else 0.0
        panels = (image, colorize(gt, colors), colorize(pred, colors), error_overlay(image, pred, gt))
        for c, (ax, pic) in enumerate(zip(axes[r], panels)):
            # masks must stay crisp palette colours; the photo and error map may be smoothed
            ax.imshow(pic, interpolation="nearest" if c in (1, 2) else "antialiased")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(headers[c], fontsize=11)
        axes[r][0].set_ylabel(_wrap(row.name) + f"\nF = {format_f(row.score)}", fontsize=10)
        axes[r][3].set_xlabel(f"{100 * wrong:.1f}% of pixels wrong", fontsize=9)
    handles = [Patch(facecolor=colors[c] / 255.0, edgecolor="0.3",
                     label=class_names[c] if c < len(class_names) else str(c)) for c in sorted(seen)]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 7), fontsize=10,
               frameon=False, handlelength=1.6)
    if title:
        fig.suptitle(title, fontsize=13)
    return save_figure(fig, path)


def _wrap(text: str, width: int = 22) -> str:
    # hash-like stems are long and have no spaces; a rotated label must fit one panel height
    lines = max(1, math.ceil(len(text) / width))
    step = max(1, math.ceil(len(text) / lines))
    return "\n".join(text[i:i + step] for i in range(0, len(text), step)) or "?"


def _label_order(values: Sequence[float], sort: bool) -> list[int]:
    idx = list(range(len(values)))
    if sort:
        # absent classes (NaN) go last
        idx.sort(key=lambda i: (math.isnan(values[i]), -values[i] if not math.isnan(values[i]) else 0))
    return idx


def _nan(x: Optional[float]) -> float:
    return math.nan if x is None else float(x)


def plot_per_class(class_names: Sequence[str], per_class: Sequence[Optional[float]],
                   class_images: Sequence[int], path: Path, *, colors: Optional[np.ndarray] = None,
                   score: Optional[float] = None, title: str = "", sort: bool = False, metric: str = "score",
                   scale: float = 1.0) -> Path:
    """Horizontal bars of a metric's per-class values (0..``scale``), class names on the y axis,
    each bar annotated with its value and the number of images whose ground truth holds the
    class. ``score`` draws the overall score as a dashed line."""
    if not (len(class_names) == len(per_class) == len(class_images)):
        raise DataError(f"{len(class_names)} class names, {len(per_class)} values and "
                        f"{len(class_images)} image counts: they must match")
    plt = pyplot()
    values = [_nan(v) for v in per_class]
    order = _label_order(values, sort)
    n = len(order)
    fig, ax = plt.subplots(figsize=(9, 1.3 + 0.36 * n), layout="constrained")
    y = np.arange(n)
    bar_colors = ([colors[i] / 255.0 for i in order] if colors is not None else ["#4c72b0"] * n)
    widths = [0.0 if math.isnan(values[i]) else values[i] for i in order]
    ax.barh(y, widths, color=bar_colors, edgecolor="0.25", linewidth=0.6, height=0.72)
    for yi, i in zip(y, order):
        v = values[i]
        text = "absent" if math.isnan(v) else f"{v:.3f}"
        ax.text((0 if math.isnan(v) else v) + 0.01 * scale, yi, f"{text}  ({class_images[i]} img)",
                va="center", fontsize=9, color="0.15")
    if score is not None:
        ax.axvline(score, color="0.3", linestyle="--", linewidth=1)
        ax.text(score, -0.85, f" score {format_f(score)}", fontsize=9, color="0.3", va="center")
    ax.set_yticks(y, [class_names[i] for i in order], fontsize=10)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.22 * scale)
    ax.set_xticks(np.linspace(0, scale, 6))
    ax.set_xlabel(f"{metric} of each class")
    ax.grid(axis="x", alpha=0.3)
    ax.set_ylim(n - 0.5, -1.4)
    if title:
        ax.set_title(title, fontsize=12)
    return save_figure(fig, path)


def plot_per_class_comparison(class_names: Sequence[str], f_a: Sequence[Optional[float]],
                              f_b: Sequence[Optional[float]], path: Path, *, labels: tuple[str, str] = ("A", "B"),
                              scores: Optional[tuple[float, float]] = None, title: str = "",
                              sort: bool = False, metric: str = "score", scale: float = 1.0) -> Path:
    """Grouped horizontal bars of a metric's per-class values (0..``scale``) for two runs, with
    B - A written at the right."""
    if not (len(class_names) == len(f_a) == len(f_b)):
        raise DataError(f"{len(class_names)} class names but {len(f_a)} and {len(f_b)} values")
    plt = pyplot()
    a = [_nan(v) for v in f_a]
    b = [_nan(v) for v in f_b]
    diff = [(y - x) if not (math.isnan(x) or math.isnan(y)) else math.nan for x, y in zip(a, b)]
    order = _label_order(diff, sort)
    n = len(order)
    fig, ax = plt.subplots(figsize=(10, 1.6 + 0.42 * n), layout="constrained")
    y = np.arange(n)
    h = 0.38
    names = list(labels)
    if scores is not None:
        names = [f"{labels[0]}  (score {format_f(scores[0])})", f"{labels[1]}  (score {format_f(scores[1])})"]
    for k, (vals, offset) in enumerate(((a, -h / 2), (b, h / 2))):
        ax.barh(y + offset, [0.0 if math.isnan(vals[i]) else vals[i] for i in order], height=h,
                color=RUN_COLORS[k], label=names[k])
    for yi, i in zip(y, order):
        d = diff[i]
        if math.isnan(d):
            text, color = "n/a", "0.4"
        else:
            text = f"{d:+.3f}"
            color = "#1a7f37" if d > 0.0005 * scale else "#c62828" if d < -0.0005 * scale else "0.3"
        ax.text(1.03 * scale, yi, text, va="center", fontsize=9, color=color, family="monospace")
    ax.text(1.03 * scale, -0.85, "B − A", fontsize=9, fontweight="bold", va="center")
    ax.set_yticks(y, [class_names[i] for i in order], fontsize=10)
    ax.set_xlim(0, 1.16 * scale)
    ax.set_ylim(n - 0.4, -1.3)
    ax.set_xticks(np.linspace(0, scale, 6))
    ax.set_xlabel(f"per-class {metric}")
    ax.grid(axis="x", alpha=0.3)
    fig.legend(loc="outside lower center", ncol=2, frameon=False, fontsize=10)
    if title:
        ax.set_title(title, fontsize=12)
    return save_figure(fig, path)


# --------------------------------------------------------------------------------------------
# Run-level figures




# --------------------------------------------------------------------------------------------
# Sweeps


@dataclass
class FactorPanel:
    """One factor of a sweep: each run as (level, score, seed), and per level (level, mean, runs,
    interval half-width or None)."""

    factor: str
    points: list[tuple[Any, float, Optional[int]]]
    means: list[tuple[Any, float, int, Optional[float]]]
    categorical: bool = True
    log: bool = False
    title: str = ""
    reference: Any = None
    notes: dict = None


def _level_text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def plot_factor_panels(panels: Sequence[FactorPanel], path: Path, *, title: str = "", subtitle: str = "",
                       ylabel: str = "best validation score") -> Path:
    """Score against each factor, one panel per factor: every run a dot (colour = seed), every
    level's mean a black bar with its interval. Categorical factors sit at evenly spaced
    positions; ranged ones on a (log) axis."""
    if not panels:
        raise DataError("no factors to draw")
    plt = pyplot()
    n = len(panels)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(max(7.5, 5.6 * cols), 4.4 * rows + 0.8), layout="constrained",
                             squeeze=False, sharey=True)
    seeds = sorted({p[2] for panel in panels for p in panel.points if p[2] is not None})
    handles = {}
    for ax, panel in zip(axes.flat, panels):
        if panel.categorical:
            levels = [m[0] for m in panel.means] or sorted({p[0] for p in panel.points}, key=str)
            pos = {lv: i for i, lv in enumerate(levels)}
            for x, y, seed in panel.points:
                k = seeds.index(seed) if seed in seeds else 0
                offset = (k - (len(seeds) - 1) / 2) * 0.06 if len(seeds) > 1 else 0.0
                h = ax.plot(pos.get(x, 0) + offset, y, "o", color=RUN_COLORS[k % len(RUN_COLORS)], alpha=0.75,
                            markersize=7, markeredgecolor="white", markeredgewidth=0.6)[0]
                handles.setdefault(f"seed {seed}" if seed is not None else "run", h)
            for lv, mean, count, hw in panel.means:
                x = pos[lv]
                ax.plot([x - 0.22, x + 0.22], [mean, mean], color="black", linewidth=2.4, zorder=4)
                if hw is not None:
                    ax.errorbar([x], [mean], yerr=[[hw], [hw]], color="black", capsize=8, linewidth=1.3, zorder=4)
                ax.annotate(f"{format_f(mean)}\n(n={count})", (x + 0.25, mean), fontsize=9, va="center", color="0.15")
            labels = [_level_text(lv) + ("\n(recipe)" if panel.reference is not None and lv == panel.reference else "")
                      for lv in levels]
            many = len(levels) > 4 or max((len(t) for t in labels), default=0) > 12
            ax.set_xticks(range(len(levels)), labels, fontsize=9 if many else 10,
                          rotation=30 if many else 0, ha="right" if many else "center")
            ax.set_xlim(-0.6, len(levels) - 0.1)
        else:
            xs = [p[0] for p in panel.points]
            ax.scatter(xs, [p[1] for p in panel.points], color=RUN_COLORS[0], alpha=0.8, edgecolor="white", s=45)
            if panel.log:
                ax.set_xscale("log")
        ax.set_xlabel(panel.factor, fontsize=11)
        ax.set_title(panel.title or panel.factor, fontsize=10.5)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel, fontsize=11)
    from matplotlib.lines import Line2D

    legend = list(handles.values()) + [Line2D([], [], color="black", linewidth=2.4, label="mean ± interval")]
    labels = list(handles.keys()) + ["mean ± interval"]
    fig.legend(legend, labels, loc="outside lower center", ncol=min(len(legend), 6), frameon=False, fontsize=10)
    if title or subtitle:
        fig.suptitle(title + (f"\n{subtitle}" if subtitle else ""), fontsize=12)
    return save_figure(fig, path)


def plot_per_class_runs(class_names: Sequence[str], runs: Sequence[tuple[str, Sequence[Optional[float]], Optional[float]]],
                        path: Path, *, title: str = "", metric: str = "score", scale: float = 1.0) -> Path:
    """A metric's per-class values (0..``scale``) of several runs as a table of colours (class x
    run) with each value written in its cell; ``runs`` holds (label, per-class values, None
    where not defined, overall score)."""
    if not runs:
        raise DataError("no runs to draw")
    plt = pyplot()
    n, k = len(class_names), len(runs)
    grid = np.array([[math.nan if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
                      for v in values] for _, values, _ in runs]).T
    fig, ax = plt.subplots(figsize=(3.2 + 2.3 * k, 1.6 + 0.36 * n), layout="constrained")
    cmap = plt.get_cmap("viridis").with_extremes(bad="#e6e6e6")
    im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0, vmax=scale, aspect="auto")
    for i in range(n):
        for j in range(k):
            v = grid[i, j]
            text = "absent" if math.isnan(v) else f"{v:.3f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=9,
                    color="0.35" if math.isnan(v) else ("black" if v > 0.6 * scale else "white"))
    ax.set_yticks(range(n), list(class_names), fontsize=10)
    ax.set_xticks(range(k), [_wrap(label, 24) + (f"\nscore {format_f(score)}" if score is not None else "")
                             for label, _, score in runs], fontsize=9.5)
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    fig.colorbar(im, ax=ax, shrink=0.6, label=f"per-class {metric}")
    ax.set_title(title or f"per-class {metric} of the top runs", fontsize=11)
    return save_figure(fig, path)
