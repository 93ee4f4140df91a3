"""PNG figures with matplotlib (headless).

Two layers: pure drawing functions that take arrays and numbers and a path (``plot_*``,
``colorize``, ``error_overlay``), so they can be tested without a model, and three run-level
functions (``show_run``, ``compare_runs``, ``curves_for_runs``) that evaluate or read runs and
hand the numbers to the drawing layer. Every PNG is written atomically.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import numpy as np

from cpx.kernel.errors import DataError, RunError
from cpx.kernel.files import atomic_write_bytes

if TYPE_CHECKING:  # the run-level functions import these lazily: drawing needs no torch model
    from cpx.data.competition import Competition
    from cpx.kernel.manager import PluginHost
    from cpx.eval.validate import Evaluation
    from cpx.kernel.workspace import Workspace

ERROR_RGB = (255, 32, 32)
# Run colours for curves and comparisons; chosen to stay apart from each other in greyscale too.
RUN_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")
MAX_GRID_ROWS = 32


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # never needs a display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, dpi: int = 100) -> Path:
    plt = _pyplot()
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


# --------------------------------------------------------------------------------------------
# Colours


def class_colors(num_classes: int, palette: Sequence[Sequence[int]] = ()) -> np.ndarray:
    """``num_classes x 3`` uint8 colours: the competition palette, then a qualitative colormap
    for any class the palette does not cover (so no two classes share grey by accident)."""
    colors = np.zeros((max(num_classes, 1), 3), dtype=np.uint8)
    plt = _pyplot()
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

    plt = _pyplot()
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
        axes[r][0].set_ylabel(_wrap(row.name) + f"\nF = {row.score:.4f}", fontsize=10)
        axes[r][3].set_xlabel(f"{100 * wrong:.1f}% of pixels wrong", fontsize=9)
    handles = [Patch(facecolor=colors[c] / 255.0, edgecolor="0.3",
                     label=class_names[c] if c < len(class_names) else str(c)) for c in sorted(seen)]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 7), fontsize=10,
               frameon=False, handlelength=1.6)
    if title:
        fig.suptitle(title, fontsize=13)
    return _save(fig, path)


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


def plot_per_class(class_names: Sequence[str], per_class_f: Sequence[Optional[float]],
                   class_images: Sequence[int], path: Path, *, colors: Optional[np.ndarray] = None,
                   score: Optional[float] = None, title: str = "", sort: bool = False) -> Path:
    """Horizontal bars of per-class F, class names on the y axis, each bar annotated with its F
    and the number of images whose ground truth holds the class. ``score`` draws the overall
    (per-image) F as a dashed line."""
    if not (len(class_names) == len(per_class_f) == len(class_images)):
        raise DataError(f"{len(class_names)} class names, {len(per_class_f)} F values and "
                        f"{len(class_images)} image counts: they must match")
    plt = _pyplot()
    values = [_nan(v) for v in per_class_f]
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
        ax.text((0 if math.isnan(v) else v) + 0.01, yi, f"{text}  ({class_images[i]} img)",
                va="center", fontsize=9, color="0.15")
    if score is not None:
        ax.axvline(score, color="0.3", linestyle="--", linewidth=1)
        ax.text(score, -0.85, f" score {score:.4f}", fontsize=9, color="0.3", va="center")
    ax.set_yticks(y, [class_names[i] for i in order], fontsize=10)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.22)
    ax.set_xticks(np.linspace(0, 1, 6))
    ax.set_xlabel("F (mean over the images whose ground truth holds the class)")
    ax.grid(axis="x", alpha=0.3)
    ax.set_ylim(n - 0.5, -1.4)
    if title:
        ax.set_title(title, fontsize=12)
    return _save(fig, path)


def plot_per_class_comparison(class_names: Sequence[str], f_a: Sequence[Optional[float]],
                              f_b: Sequence[Optional[float]], path: Path, *, labels: tuple[str, str] = ("A", "B"),
                              scores: Optional[tuple[float, float]] = None, title: str = "",
                              sort: bool = False) -> Path:
    """Grouped horizontal bars of per-class F for two runs, with B - A written at the right."""
    if not (len(class_names) == len(f_a) == len(f_b)):
        raise DataError(f"{len(class_names)} class names but {len(f_a)} and {len(f_b)} F values")
    plt = _pyplot()
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
        names = [f"{labels[0]}  (score {scores[0]:.4f})", f"{labels[1]}  (score {scores[1]:.4f})"]
    for k, (vals, offset) in enumerate(((a, -h / 2), (b, h / 2))):
        ax.barh(y + offset, [0.0 if math.isnan(vals[i]) else vals[i] for i in order], height=h,
                color=RUN_COLORS[k], label=names[k])
    for yi, i in zip(y, order):
        d = diff[i]
        if math.isnan(d):
            text, color = "n/a", "0.4"
        else:
            text = f"{d:+.3f}"
            color = "#1a7f37" if d > 0.0005 else "#c62828" if d < -0.0005 else "0.3"
        ax.text(1.03, yi, text, va="center", fontsize=9, color=color, family="monospace")
    ax.text(1.03, -0.85, "B − A", fontsize=9, fontweight="bold", va="center")
    ax.set_yticks(y, [class_names[i] for i in order], fontsize=10)
    ax.set_xlim(0, 1.16)
    ax.set_ylim(n - 0.4, -1.3)
    ax.set_xticks(np.linspace(0, 1, 6))
    ax.set_xlabel("per-class F")
    ax.grid(axis="x", alpha=0.3)
    fig.legend(loc="outside lower center", ncol=2, frameon=False, fontsize=10)
    if title:
        ax.set_title(title, fontsize=12)
    return _save(fig, path)


def plot_history(runs: Sequence[tuple[str, list[dict]]], path: Path) -> Path:
    """Training curves (train/val loss, val F, learning rate) for one or several runs.

    One colour per run in every panel; solid lines are training, dashed validation, and a star
    marks each run's best validation F.
    """
    from matplotlib.lines import Line2D

    plt = _pyplot()
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
        f = [(h["epoch"], h["val_f"]) for h in history if h.get("val_f") is not None]
        best = ""
        if f:
            axes[1].plot(*zip(*f), color=color, marker=marker, markersize=3)
            be, bf = max(f, key=lambda p: p[1])
            axes[1].plot([be], [bf], "*", color=color, markersize=13, markeredgecolor="black", markeredgewidth=0.6)
            best = f"  (best F {bf:.4f} @ {be})"
        lr = [(h["epoch"], h["lr"]) for h in history if h.get("lr") is not None]
        if lr:
            axes[2].plot(*zip(*lr), color=color, marker=marker, markersize=3)
        handles.append(Line2D([], [], color=color, linewidth=2.5, label=f"{label}{best}"))
        if epochs and len(set(epochs)) == 1:
            for ax in axes:  # a single point would get a zero-width axis
                ax.set_xlim(epochs[0] - 1, epochs[0] + 1)
    styles = [Line2D([], [], color="0.3", label="train"), Line2D([], [], color="0.3", linestyle="--", label="val")]
    axes[0].legend(handles=styles, fontsize=9, loc="upper right")
    for ax, title in zip(axes, ("loss", "validation F (per image)", "learning rate")):
        ax.set_title(title, fontsize=12)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[1].margins(y=0.1)  # room for the best-epoch stars at the top
    axes[2].ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 3), fontsize=10,
                   frameon=False)
    return _save(fig, path)


# --------------------------------------------------------------------------------------------
# Run-level figures

Progress = Optional[Callable[[int, int], None]]


@dataclass
class RunRef:
    """What the figures need from a recorded run (trained or ensemble), from its ledger row."""

    row: dict
    run_dir: Path
    competition: "Competition"

    @property
    def id(self) -> str:
        return self.row["id"]

    @property
    def label(self) -> str:
        return self.row.get("name") or self.id


def _open_runs(refs: Sequence[str], workspace: "Workspace", host: "PluginHost") -> list[RunRef]:
    # Ensemble runs have no config.yaml, so this works from the ledger row rather than open_run.
    from cpx.eval.predict import is_ensemble, read_ensemble_spec
    from cpx.runs.ledger import Ledger
    from cpx.runs.handle import open_run
    from cpx.eval.validate import run_folder

    out = []
    with Ledger(workspace.ledger_path) as ledger:
        for ref in refs:
            row = ledger.get_run(ref)
            name = row.get("competition")
            if not name:
                name = (read_ensemble_spec(row, workspace).get("competition") if is_ensemble(row)
                        else open_run(row["id"], workspace, host, ledger).competition.name)
            out.append(RunRef(row, run_folder(row, workspace), host.competition(name)))
    return out


def _unique_labels(runs: Sequence[RunRef]) -> list[str]:
    labels = [r.label for r in runs]
    return labels if len(set(labels)) == len(labels) else [r.id for r in runs]


@dataclass
class ShowResult:
    run_id: str
    label: str
    evaluation: "Evaluation"
    worst: list[tuple[str, float]]
    grid_path: Optional[Path]
    per_class_path: Path

    def to_dict(self) -> dict:
        s = self.evaluation.scores
        return {
            "run": self.run_id,
            "checkpoint": self.evaluation.checkpoint,
            "tta": list(self.evaluation.tta),
            "fscore": s.fscore,
            "images": len(self.evaluation.names),
            "worst": [{"name": n, "f": f} for n, f in self.worst],
            "grid": str(self.grid_path) if self.grid_path else None,
            "per_class_figure": str(self.per_class_path),
            "per_class": self.evaluation.per_class(),
        }


def _default_outputs(output: Optional[Path], run_dir: Path, grid: bool) -> tuple[Optional[Path], Path]:
    if output is None:
        return (run_dir / "show.png" if grid else None), run_dir / "per_class.png"
    output = Path(output)
    if not grid:
        return None, output
    return output, output.with_name(f"{output.stem}_per_class.png")


def _describe(evaluation: "Evaluation") -> str:
    tta = f", TTA {'+'.join(evaluation.tta)}" if evaluation.tta else ""
    return f"{evaluation.checkpoint} checkpoint{tta}"


def show_run(ref: str, workspace: "Workspace", host: "PluginHost", *, images: int = 8, checkpoint: str = "best",
             tta: Sequence[str] = (), output: Optional[Path] = None, device: str = "auto",
             progress: Progress = None) -> ShowResult:
    """Validate a run on its own validation list, then draw its ``images`` worst validation images
    (by per-image F) and its per-class F chart.

    Default outputs are ``show.png`` and ``per_class.png`` in the run folder. With ``output`` the
    grid goes there and the chart beside it as ``<stem>_per_class.png``; with ``images=0`` only
    the chart is drawn (at ``output`` when given). The validation is not recorded in the ledger:
    looking at a run should not add rows to its history.
    """
    from cpx.data import dataset as datalib
    from cpx.eval.predict import predictor_for_run
    from cpx.eval.validate import run_data_root, validate_run

    if images < 0:
        raise DataError(f"--images must be 0 or more, not {images}")
    if images > MAX_GRID_ROWS:
        raise DataError(f"--images: at most {MAX_GRID_ROWS} rows fit in one legible picture, not {images}")
    (run,) = _open_runs([ref], workspace, host)
    grid_path, chart_path = _default_outputs(output, run.run_dir, images > 0)
    evaluation = validate_run(run.id, workspace, host, checkpoint=checkpoint, tta=tuple(tta), record=False,
                              device=device, progress=progress)
    scores = evaluation.scores
    worst = sorted(evaluation.per_image.items(), key=lambda kv: (kv[1], kv[0]))[:images]
    comp = run.competition
    colors = class_colors(comp.num_classes, comp.palette)
    how = _describe(evaluation)
    if worst:
        root = run_data_root(run.run_dir)
        found = datalib.scan(root, comp)
        pics, _ = datalib.load_images([found.images[n] for n, _ in worst])
        masks = [datalib.read_mask(found.masks[n], comp.num_classes) for n, _ in worst]
        # same checkpoint and TTA as the validation, so the picture shows what was scored
        predictor = predictor_for_run(run.id, workspace, host, checkpoint=checkpoint, tta=tuple(tta), device=device)
        preds = predictor.predict(list(pics), sizes=[m.shape for m in masks])
        rows = [ImageRow(name=n, image=np.asarray(pic), gt=gt, pred=np.asarray(pred), score=f)
                for (n, f), pic, gt, pred in zip(worst, pics, masks, preds)]
        plot_image_grid(rows, comp.classes, colors, grid_path,
                        title=f"{run.label}: the {len(rows)} worst of {len(evaluation.names)} validation images "
                              f"(score {scores.fscore:.4f}, {how})")
    plot_per_class(comp.classes, scores.per_class_f, scores.class_images, chart_path, colors=colors,
                   score=scores.fscore,
                   title=f"{run.label}: per-class F on {len(evaluation.names)} validation images ({how})")
    return ShowResult(run.id, run.label, evaluation, worst, grid_path if worst else None, chart_path)


@dataclass
class ClassDelta:
    class_id: int
    name: str
    f_a: Optional[float]
    f_b: Optional[float]
    images_a: int
    images_b: int

    @property
    def diff(self) -> Optional[float]:
        if self.f_a is None or self.f_b is None:
            return None
        return self.f_b - self.f_a


@dataclass
class Comparison:
    run_a: str
    run_b: str
    label_a: str
    label_b: str
    fscore_a: float
    fscore_b: float
    images_a: int
    images_b: int
    shared_images: int
    classes: list[ClassDelta]
    path: Path

    @property
    def same_val_list(self) -> bool:
        return self.images_a == self.images_b == self.shared_images

    @property
    def warning(self) -> Optional[str]:
        if self.same_val_list:
            return None
        return (f"the runs were validated on different lists ({self.images_a} and {self.images_b} images, "
                f"{self.shared_images} shared): the scores are not directly comparable")

    def by_difference(self) -> list[ClassDelta]:
        """Biggest gain of B over A first; classes without a difference last."""
        return sorted(self.classes, key=lambda c: (c.diff is None, -(c.diff or 0.0), c.class_id))

    def to_dict(self) -> dict:
        return {
            "a": {"run": self.run_a, "label": self.label_a, "fscore": self.fscore_a, "images": self.images_a},
            "b": {"run": self.run_b, "label": self.label_b, "fscore": self.fscore_b, "images": self.images_b},
            "diff": self.fscore_b - self.fscore_a,
            "same_val_list": self.same_val_list,
            "shared_images": self.shared_images,
            "warning": self.warning,
            "classes": [{"id": c.class_id, "name": c.name, "f_a": c.f_a, "f_b": c.f_b, "diff": c.diff,
                         "images_a": c.images_a, "images_b": c.images_b} for c in self.by_difference()],
            "figure": str(self.path),
        }


def _finite(x: Optional[float]) -> Optional[float]:
    return None if x is None or math.isnan(x) else float(x)


def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


def compare_runs(ref_a: str, ref_b: str, workspace: "Workspace", host: "PluginHost", *, checkpoint: str = "best",
                 tta: Sequence[str] = (), output: Optional[Path] = None, device: str = "auto",
                 progress: Optional[Callable[[str, int, int], None]] = None) -> Comparison:
    """Validate two runs, each on its OWN validation list, and draw their per-class F side by side.

    The default figure is ``experiments/compare/<A>__vs__<B>.png``. Nothing is recorded in the
    ledger. ``progress(run_id, done, total)`` follows both validations.
    """
    from cpx.eval.validate import validate_run

    a, b = _open_runs([ref_a, ref_b], workspace, host)
    if a.competition.name != b.competition.name:
        raise RunError(f"runs {a.id} ({a.competition.name}) and {b.id} ({b.competition.name}) "
                       "are for different competitions")
    if a.id == b.id:
        raise RunError(f"{ref_a} and {ref_b} are the same run ({a.id})")
    evs = []
    for run in (a, b):
        cb = (lambda done, total, rid=run.id: progress(rid, done, total)) if progress else None
        evs.append(validate_run(run.id, workspace, host, checkpoint=checkpoint, tta=tuple(tta), record=False,
                                device=device, progress=cb))
    ev_a, ev_b = evs
    la, lb = _unique_labels([a, b])
    comp = a.competition
    sa, sb = ev_a.scores, ev_b.scores
    classes = [ClassDelta(c, comp.classes[c], _finite(sa.per_class_f[c]), _finite(sb.per_class_f[c]),
                          int(sa.class_images[c]), int(sb.class_images[c])) for c in range(comp.num_classes)]
    shared = len(set(ev_a.names) & set(ev_b.names))
    path = Path(output) if output else workspace.experiments_dir / "compare" / f"{_safe(a.id)}__vs__{_safe(b.id)}.png"
    result = Comparison(a.id, b.id, la, lb, sa.fscore, sb.fscore, len(ev_a.names), len(ev_b.names), shared,
                        classes, path)
    note = "" if result.same_val_list else (f"\n(different validation lists: {result.images_a} vs "
                                            f"{result.images_b} images, {shared} shared)")
    plot_per_class_comparison(comp.classes, [c.f_a for c in classes], [c.f_b for c in classes], path,
                              labels=(f"A: {la}", f"B: {lb}"), scores=(sa.fscore, sb.fscore),
                              title=f"per-class F on each run's validation list ({_describe(ev_a)}){note}")
    return result


def read_history(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "history.json"
    if not path.is_file():
        raise RunError(f"{path}: no training history (an ensemble, or a run that has not finished an epoch)")
    try:
        history = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RunError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from None
    if not isinstance(history, list) or not all(isinstance(h, dict) and "epoch" in h for h in history):
        raise RunError(f"{path}: expected a list of epoch records")
    return history


def curves_for_runs(refs: Sequence[str], workspace: "Workspace", host: "PluginHost",
                    output: Optional[Path] = None) -> Path:
    """Training curves of one or several runs in one PNG, one colour per run, from history.json.

    Default: the run's own ``curves.png`` for one run, ``experiments/compare/curves-...png`` for several.
    """
    from cpx.runs.ledger import Ledger
    from cpx.eval.validate import run_folder

    if not refs:
        raise RunError("name at least one run")
    with Ledger(workspace.ledger_path) as ledger:
        rows = [ledger.get_run(ref) for ref in refs]
    ids = [r["id"] for r in rows]
    if len(set(ids)) < len(ids):
        raise RunError(f"the same run is named twice ({', '.join(ids)})")
    dirs = [run_folder(r, workspace) for r in rows]
    labels = [r.get("name") or r["id"] for r in rows]
    if len(set(labels)) < len(labels):
        labels = ids
    runs = [(label, read_history(d)) for label, d in zip(labels, dirs)]
    if output:
        path = Path(output)
    elif len(rows) == 1:
        path = dirs[0] / "curves.png"
    else:
        path = workspace.experiments_dir / "compare" / ("curves-" + "__".join(_safe(i) for i in ids)[:180] + ".png")
    return plot_history(runs, path)
