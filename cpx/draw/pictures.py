"""Pictures of recorded runs: ``show`` (the worst validation images and the metric's per-class
values), ``compare`` (per-class values of two runs) and ``curves`` (training curves of several
runs). Every number is the competition's metric, on its scale.
Each evaluates or reads runs and hands the numbers to the pure drawing in
:mod:`cpx.draw.figures`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from cpx.data.competition import Competition
from cpx.draw.curves import plot_history
from cpx.draw.figures import (
    MAX_GRID_ROWS,
    ImageRow,
    class_colors,
    plot_image_grid,
    plot_per_class,
    plot_per_class_comparison,
)
from cpx.eval.predict import is_ensemble, predictor_for_run, read_ensemble_spec
from cpx.eval.validate import Evaluation, validate_run
from cpx.kernel.errors import CpxError, DataError, RunError
from cpx.kernel.manager import PluginHost
from cpx.kernel.text import format_f, safe_filename
from cpx.kernel.workspace import Workspace
from cpx.runs.folder import RunFolder, run_folder
from cpx.runs.handle import open_run
from cpx.runs.ledger import Ledger

Progress = Optional[Callable[[int, int], None]]


@dataclass
class RunRef:
    """What the figures need from a recorded run (trained or ensemble), from its ledger row."""

    row: dict
    folder: RunFolder
    competition: "Competition"

    @property
    def run_dir(self) -> Path:
        return self.folder.path

    @property
    def id(self) -> str:
        return self.row["id"]

    @property
    def label(self) -> str:
        return self.row.get("name") or self.id


def _open_runs(refs: Sequence[str], workspace: "Workspace", host: "PluginHost") -> list[RunRef]:
    # Ensemble runs have no config.yaml, so this works from the ledger row rather than open_run.

    out = []
    with Ledger(workspace.ledger_path) as ledger:
        for ref in refs:
            row = ledger.get_run(ref)
            name = row.get("competition")
            if not name:
                name = (read_ensemble_spec(row, workspace).get("competition") if is_ensemble(row)
                        else open_run(row["id"], workspace, host, ledger).competition.name)
            out.append(RunRef(row, run_folder(row, workspace.runs_dir), host.competition(name)))
    return out


def _unique_labels(runs: Sequence[RunRef]) -> list[str]:
    labels = [r.label for r in runs]
    return labels if len(set(labels)) == len(labels) else [r.id for r in runs]


@dataclass
class ShowResult:
    """What ``cpx show`` drew: the grid of worst validation images, the per-class chart, and the
    evaluation behind them.
    """
    run_id: str
    label: str
    evaluation: "Evaluation"
    worst: list[tuple[str, float]]
    grid_path: Optional[Path]
    per_class_path: Path

    def to_dict(self) -> dict:
        """JSON-ready form."""
        s = self.evaluation.scores
        return {
            "run": self.run_id,
            "checkpoint": self.evaluation.checkpoint,
            "tta": list(self.evaluation.tta),
            "metric": s.metric,
            "score": s.score,
            "images": len(self.evaluation.names),
            "worst": [{"name": n, "score": v} for n, v in self.worst],
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
             progress: Progress = None, allow_changed_data: bool = False) -> ShowResult:
    """Validate a run on its own validation list, then draw its ``images`` worst validation images
    (by their own value of the competition's metric; the lowest, or for a lower-is-better metric
    the highest) and the metric's per-class chart.

    Default outputs are ``show.png`` and ``per_class.png`` in the run folder. With ``output`` the
    grid goes there and the chart beside it as ``<stem>_per_class.png``; with ``images=0`` only
    the chart is drawn (at ``output`` when given). The validation is not recorded in the ledger:
    looking at a run should not add rows to its history.
    """
    if images < 0:
        raise DataError(f"--images must be 0 or more, not {images}")
    if images > MAX_GRID_ROWS:
        raise DataError(f"--images: at most {MAX_GRID_ROWS} rows fit in one legible picture, not {images}")
    (run,) = _open_runs([ref], workspace, host)
    grid_path, chart_path = _default_outputs(output, run.run_dir, images > 0)
    evaluation = validate_run(run.id, workspace, host, checkpoint=checkpoint, tta=tuple(tta), record=False,
                              device=device, progress=progress, allow_changed_data=allow_changed_data)
    scores = evaluation.scores
    sign = 1 if scores.greater_is_better else -1
    worst = sorted(evaluation.per_image.items(), key=lambda kv: (kv[1] != kv[1], sign * kv[1], kv[0]))[:images]
    comp = run.competition
    colors = class_colors(comp.num_classes, comp.palette)
    how = _describe(evaluation)
    if worst:
        from cpx.eval.validate import labelled_files, read_labelled

        part = (run.folder.read_data_info() or {}).get("val_part", "train")
        files = labelled_files(run.folder.data_root(workspace.root), [n for n, _ in worst], comp, part)
        items = [item for batch in read_labelled(files, comp, 8) for item in batch]
        pics = [item.image for item in items]
        masks = [item.mask.numpy() for item in items]
        # same checkpoint and TTA as the validation, so the picture shows what was scored
        predictor = predictor_for_run(run.id, workspace, host, checkpoint=checkpoint, tta=tuple(tta), device=device)
        preds = predictor.predict(list(pics), sizes=[m.shape for m in masks])
        # the picture shows the first three bands (as RGB; one band as grey)
        rows = [ImageRow(name=n, image=np.ascontiguousarray(pic.numpy()[:3].transpose(1, 2, 0)), gt=gt,
                         pred=np.asarray(pred), score=f)
                for (n, f), pic, gt, pred in zip(worst, pics, masks, preds)]
        plot_image_grid(rows, comp.classes, colors, grid_path,
                        title=f"{run.label}: the {len(rows)} worst of {len(evaluation.names)} validation images "
                              f"({scores.metric} {format_f(scores.score)}, {how})")
    plot_per_class(comp.classes, scores.per_class, scores.class_images, chart_path, colors=colors,
                   score=scores.score, metric=scores.metric, scale=scores.scale,
                   title=f"{run.label}: per-class {scores.metric} on {len(evaluation.names)} validation images ({how})")
    return ShowResult(run.id, run.label, evaluation, worst, grid_path if worst else None, chart_path)


@dataclass
class ClassDelta:
    """One class of a comparison: the metric's value for the class in run A and in run B (None:
    not defined), their difference, and the number of validation images holding the class in each.
    """
    class_id: int
    name: str
    score_a: Optional[float]
    score_b: Optional[float]
    images_a: int
    images_b: int

    @property
    def diff(self) -> Optional[float]:
        if self.score_a is None or self.score_b is None:
            return None
        return self.score_b - self.score_a


@dataclass
class Comparison:
    """``cpx compare``: two runs scored on their validation lists, class by class."""
    run_a: str
    run_b: str
    label_a: str
    label_b: str
    score_a: float
    score_b: float
    images_a: int
    images_b: int
    shared_images: int
    classes: list[ClassDelta]
    path: Path
    metric: str = ""

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
        """JSON-ready form."""
        return {
            "metric": self.metric,
            "a": {"run": self.run_a, "label": self.label_a, "score": self.score_a, "images": self.images_a},
            "b": {"run": self.run_b, "label": self.label_b, "score": self.score_b, "images": self.images_b},
            "diff": self.score_b - self.score_a,
            "same_val_list": self.same_val_list,
            "shared_images": self.shared_images,
            "warning": self.warning,
            "classes": [{"id": c.class_id, "name": c.name, "score_a": c.score_a, "score_b": c.score_b,
                         "diff": c.diff, "images_a": c.images_a, "images_b": c.images_b}
                        for c in self.by_difference()],
            "figure": str(self.path),
        }


def _finite(x: Optional[float]) -> Optional[float]:
    return None if x is None or math.isnan(x) else float(x)


def compare_runs(ref_a: str, ref_b: str, workspace: "Workspace", host: "PluginHost", *, checkpoint: str = "best",
                 tta: Sequence[str] = (), output: Optional[Path] = None, device: str = "auto",
                 progress: Optional[Callable[[str, int, int], None]] = None,
                 allow_changed_data: bool = False) -> Comparison:
    """Validate two runs, each on its OWN validation list, and draw the metric's per-class values
    side by side.

    The default figure is ``experiments/compare/<A>__vs__<B>.png``. Nothing is recorded in the
    ledger. ``progress(run_id, done, total)`` follows both validations.
    """

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
                                device=device, progress=cb, allow_changed_data=allow_changed_data))
    ev_a, ev_b = evs
    la, lb = _unique_labels([a, b])
    comp = a.competition
    sa, sb = ev_a.scores, ev_b.scores
    classes = [ClassDelta(c, comp.classes[c], _finite(sa.per_class[c]), _finite(sb.per_class[c]),
                          int(sa.class_images[c]), int(sb.class_images[c])) for c in range(comp.num_classes)]
    shared = len(set(ev_a.names) & set(ev_b.names))
    name = f"{safe_filename(a.id)}__vs__{safe_filename(b.id)}.png"
    path = Path(output) if output else workspace.experiments_dir / "compare" / name
    result = Comparison(a.id, b.id, la, lb, sa.score, sb.score, len(ev_a.names), len(ev_b.names), shared,
                        classes, path, sa.metric)
    note = "" if result.same_val_list else (f"\n(different validation lists: {result.images_a} vs "
                                            f"{result.images_b} images, {shared} shared)")
    plot_per_class_comparison(comp.classes, [c.score_a for c in classes], [c.score_b for c in classes], path,
                              labels=(f"A: {la}", f"B: {lb}"), scores=(sa.score, sb.score), metric=sa.metric,
                              scale=sa.scale,
                              title=f"per-class {sa.metric} on each run's validation list ({_describe(ev_a)}){note}")
    return result


def read_history(folder: RunFolder) -> list[dict]:
    """The epoch records of a run, for drawing; :raises RunError: none, or not readable."""
    history = [h for h in folder.read_history() if "epoch" in h]
    if not history:
        raise RunError(f"{folder.history_path}: no training history (an ensemble, or a run that has not "
                       "finished an epoch)")
    return history


def curves_for_runs(refs: Sequence[str], workspace: "Workspace", host: "PluginHost",
                    output: Optional[Path] = None) -> Path:
    """Training curves of one or several runs in one PNG, one colour per run, from history.json,
    the validation panel named after the runs' metric when they share one.

    Default: the run's own ``curves.png`` for one run, ``experiments/compare/curves-...png`` for several.
    """
    if not refs:
        raise RunError("name at least one run")
    with Ledger(workspace.ledger_path) as ledger:
        rows = [ledger.get_run(ref) for ref in refs]
    ids = [r["id"] for r in rows]
    if len(set(ids)) < len(ids):
        raise RunError(f"the same run is named twice ({', '.join(ids)})")
    folders = [run_folder(r, workspace.runs_dir) for r in rows]
    labels = [r.get("name") or r["id"] for r in rows]
    if len(set(labels)) < len(labels):
        labels = ids
    runs = [(label, read_history(f)) for label, f in zip(labels, folders)]
    metrics = {r.get("metric") for r in rows}
    metric = metrics.pop() if len(metrics) == 1 and None not in metrics else "score"
    greater_is_better = True
    competitions = {r.get("competition") for r in rows}
    if len(competitions) == 1 and None not in competitions:
        from cpx.eval.metrics import create_metric

        try:
            greater_is_better = create_metric(host.competition(competitions.pop()), host).greater_is_better
        except CpxError:  # a profile or metric no longer registered: the curves still draw
            pass
    if output:
        path = Path(output)
    elif len(rows) == 1:
        path = folders[0].curves_path
    else:
        name = "curves-" + "__".join(safe_filename(i) for i in ids)[:180] + ".png"
        path = workspace.experiments_dir / "compare" / name
    return plot_history(runs, path, metric=metric, greater_is_better=greater_is_better)

