"""Scoring predictions the way the competition scorer does.

``evaluate`` runs a predictor over labelled images and scores each prediction at its mask's own
size (probabilities are resized to the mask before the argmax), with the competition metric
from ``cpx.eval.metrics``. ``validate_run`` does that for a recorded run on its own validation list
(or every labelled image of another folder) and records the result in the ledger.
``score_folders`` scores a folder of mask files against ground-truth masks.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch

from cpx import data as datalib
from cpx.data.competition import Competition
from cpx.data.images import BadFile, read_image
from cpx.data.layout import LABELLED_PARTS
from cpx.eval.metrics import Metric, ScoreAccumulator, Scores, create_metric, metric_tag
from cpx.eval.postprocess import PostSpec, post_label
from cpx.eval.predict import Predictor, is_ensemble, predictor_for_run, tta_label
from cpx.kernel.errors import ConfigError, DataError, LedgerBusy, RunError
from cpx.kernel.files import check_writable
from cpx.kernel.manager import PluginHost
from cpx.kernel.workspace import Workspace
from cpx.runs.folder import VAL_LIST as VAL_LIST_FILE
from cpx.runs.folder import RunFolder, run_folder
from cpx.runs.handle import checked_data_root
from cpx.runs.ledger import Ledger

Progress = Optional[Callable[[int, int], None]]
VAL_LIST = "val_list"  # the ledger's ``data`` value for a run's own validation list


@dataclass
class Labelled:
    """One labelled image: its name (stem), pixels ``C x H x W`` uint8 at its own size, and its
    mask ``H x W`` uint8 class ids (:data:`cpx.data.masks.IGNORE` where nothing is scored);
    ``file`` is the image's file name (``IMG_1.JPG``) when it was read from one."""

    name: str
    image: torch.Tensor
    mask: torch.Tensor
    file: str = ""


@dataclass
class Evaluation:
    """A model scored on a set of labelled images: the :class:`Scores` (the competition's
    metric on its scale), each image's value by name, the checkpoint, TTA and data used,
    warnings, the ledger validation id when recorded, and the validation loss when asked for.
    """

    names: list[str]
    scores: Scores
    per_image: dict[str, float]
    seconds: float
    tta: tuple
    checkpoint: str
    run_id: str = ""
    data: str = ""
    class_names: tuple = ()
    warnings: list[str] = field(default_factory=list)
    validation_id: Optional[int] = None
    # the score of each stage before the last (``raw``, ``calibrated``), when calibration or
    # post-processing changed the masks; ``scores`` are the last stage's
    stages: dict[str, float] = field(default_factory=dict)
    calibrated: bool = False
    post: str = "none"
    loss: Optional[float] = None  # the mean training loss of the images, when a loss was given
    # the per-image counts behind ``scores`` (to combine several processes' shares)
    accumulator: Optional[ScoreAccumulator] = field(default=None, repr=False)

    @property
    def score(self) -> float:
        """The competition metric, on its scale."""
        return self.scores.score

    def per_class(self) -> dict[str, dict]:
        """Class name -> {"score": the metric's per-class value (None if not defined), "images": n}."""
        out = {}
        for i, name in enumerate(self.class_names or range(len(self.scores.per_class))):
            v = self.scores.per_class[i]
            out[str(name)] = {"score": None if v != v else v, "images": self.scores.class_images[i]}
        return out

    def to_dict(self) -> dict:
        """JSON-ready form: ``score`` is the competition metric named by ``metric``."""
        s = self.scores
        return {"run_id": self.run_id, "checkpoint": self.checkpoint, "tta": tta_label(self.tta),
                "data": self.data, "images": len(self.names), "metric": s.metric, "metric_label": s.label,
                "scale": s.scale, "score": s.score, "pixel_acc": s.pixel_acc, "miou": s.miou,
                "per_class": self.per_class(), "per_image": self.per_image,
                "seconds": round(self.seconds, 3), "warnings": list(self.warnings),
                "validation_id": self.validation_id, "calibrated": self.calibrated, "post": self.post,
                "stages": dict(self.stages), "loss": self.loss}


def labelled_files(root: Path, names: Sequence[str], competition: Competition,
                   part: str = "train") -> list[tuple[str, Path, Path]]:
    """(name, image file, mask file) of each named labelled image of ``root`` in the training
    folders (``part="train"``) or the organisers' validation folders (``"val"``).

    :raises DataError: a name without its image or mask, every one named.
    """
    found = datalib.scan(root, competition)
    images, masks = (found.images, found.masks) if part == "train" else (found.val_images, found.val_masks)
    missing_img = [n for n in names if n not in images]
    missing_mask = [n for n in names if n in images and n not in masks]
    if missing_img or missing_mask:
        folder = competition.data_path(root, f"{part}_images")
        lines = [f"{folder}: no image named {n}" for n in missing_img]
        lines += [f"{images[n]}: no mask {competition.layout.mask_name(images[n].name)}" for n in missing_mask]
        raise DataError("\n".join(lines))
    return [(n, images[n], masks[n]) for n in names]


def read_labelled(files: Sequence[tuple[str, Path, Path]], competition: Competition,
                  batch_size: int) -> Iterator[list[Labelled]]:
    """Batches of :class:`Labelled` read through the one reader, the next batch decoded in a
    second thread while the caller works on this one.

    :raises DataError: an unreadable image or mask, or a mask whose size differs from its image's.
    """
    def load(chunk) -> list[Labelled]:
        out = []
        for name, image_path, mask_path in chunk:
            try:
                arr, hw = read_image(image_path, competition.channels, competition.pixel_max)
            except BadFile as bad:
                raise bad.error() from None
            mask = datalib.read_mask(mask_path, competition)
            if mask.shape != hw:
                raise DataError(f"{mask_path}: mask is {mask.shape[0]}x{mask.shape[1]} but {image_path.name} is "
                                f"{hw[0]}x{hw[1]} (height x width)")
            out.append(Labelled(name, torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))),
                                torch.from_numpy(np.array(mask, copy=True)), file=Path(image_path).name))
        return out

    chunks = [files[a:a + batch_size] for a in range(0, len(files), batch_size)]
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(load, chunks[0]) if chunks else None
        for i in range(len(chunks)):
            batch = pending.result()
            pending = pool.submit(load, chunks[i + 1]) if i + 1 < len(chunks) else None
            yield batch


def in_batches(items: Sequence[Labelled], batch_size: int) -> Iterator[list[Labelled]]:
    """Labelled images already in memory, in batches."""
    for a in range(0, len(items), batch_size):
        yield list(items[a:a + batch_size])


def evaluate(predictor: Predictor, batches: Iterable[list[Labelled]], metric: Metric, *,
             total: Optional[int] = None, loss_fn: Optional[Callable] = None,
             observe: Optional[Callable[[list[Labelled], torch.Tensor, list[int]], None]] = None,
             on_mask: Optional[Callable[[Labelled, torch.Tensor], None]] = None,
             progress: Progress = None) -> Evaluation:
    """THE prediction-and-scoring loop: every command that scores a model on labelled images
    (training's validation, ``validate``, ``calibrate``'s baseline, ``ensemble``) goes through it.

    Per batch: the predictor's logits (TTA views merged, members averaged), calibration offsets,
    the argmax, post-processing, all at each image's own size (the mask's), then the per-image
    confusion counts of ``metric``. With a calibrated or post-processing predictor the scores
    are those of its final masks and ``stages`` holds the score of the earlier stages (``raw``,
    ``calibrated``), all from one forward pass. With ``loss_fn`` (one model, no TTA) the mean
    loss of the images' logits is measured too (training curves); ``observe(batch, decision,
    index)`` sees each group's decision tensor (an ensemble search keeps probabilities);
    ``on_mask(item, mask)`` sees each image's final mask of class ids (the organisers' scoring
    program is run on them).
    """
    start = time.perf_counter()
    k = predictor.num_classes
    acc = ScoreAccumulator(metric, k)
    earlier: dict[str, ScoreAccumulator] = {}
    per_image: dict[str, float] = {}
    names: list[str] = []
    loss_sum = 0.0
    for batch in batches:
        masks = [item.mask for item in batch]

        def on_decision(decision: torch.Tensor, index: list[int], batch=batch) -> None:
            nonlocal loss_sum
            if observe is not None:
                observe(batch, decision, index)
            if loss_fn is not None:
                for j, i in enumerate(index):  # the training loss of each image at its mask's size
                    loss_sum += float(loss_fn(decision[j:j + 1].float(), masks[i][None].to(decision.device).long()))

        variants = predictor.predict_variants([item.image for item in batch], sizes=[m.shape for m in masks],
                                              on_decision=on_decision if loss_fn is not None or observe else None)
        for item, stages in zip(batch, variants):
            truth = item.mask
            per_image[item.name] = float(acc.update(stages["final"], truth)[0])
            names.append(item.name)
            if on_mask is not None:
                on_mask(item, stages["final"])
            for stage in ("raw", "calibrated"):
                if stage in stages and stages[stage] is not stages["final"]:
                    earlier.setdefault(stage, ScoreAccumulator(metric, k)).update(stages[stage], truth)
        if progress:
            progress(len(names), total or len(names))
    if not names:
        raise DataError("no images to score")
    return Evaluation(names=names, scores=acc.compute(), per_image=per_image,
                      seconds=time.perf_counter() - start, tta=predictor.tta, checkpoint="",
                      class_names=tuple(predictor.competition.classes),
                      stages={key: a.compute().score for key, a in earlier.items()},
                      calibrated=predictor.logit_offsets is not None, post=post_label(predictor.post),
                      loss=loss_sum / len(names) if loss_fn is not None else None, accumulator=acc)


def evaluate_files(predictor: Predictor, root: os.PathLike, names: Sequence[str], competition: Competition,
                   metric: Metric, *, part: str = "train", batch_size: int = 8,
                   progress: Progress = None) -> Evaluation:
    """:func:`evaluate` on the named labelled images of the data folder ``root`` (``part``: the
    training or the organisers' validation folders), read through the one reader."""
    names = [str(n) for n in names]
    if not names:
        raise DataError(f"{root}: no images to score")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, not {batch_size}")
    files = labelled_files(Path(root), names, competition, part)
    return evaluate(predictor, read_labelled(files, competition, batch_size), metric, total=len(files),
                    progress=progress)


def validate_run(ref: str, workspace: Workspace, host: PluginHost, *, checkpoint: str = "best",
                 data: Optional[os.PathLike] = None, tta=(), record: bool = True, batch_size: int = 8,
                 device: str = "auto", precision: str = "auto", calibration: bool = True, post: PostSpec = None,
                 tile: Optional[int] = None, on_mask: Optional[Callable[[Labelled, torch.Tensor], None]] = None,
                 progress: Progress = None, allow_changed_data: bool = False) -> Evaluation:
    """Score a run (or ensemble run) with its competition's metric on its validation list, or on
    every labelled image of ``data``, and (with ``record``) add the result to the ledger's
    validations; ``on_mask(item, mask)`` sees each image's final prediction. The run's stored calibration applies unless ``calibration`` is off; ``post``
    names post-processing steps (the score without them is in ``stages``); ``tile`` predicts in
    sliding windows of that many pixels.

    :raises RunError: unknown run or unusable checkpoint; :raises DataError: unusable data, or
        a run's own data folder that no longer holds what it trained on (unless
        ``allow_changed_data``, see :func:`cpx.runs.handle.checked_data_root`);
        :raises NotWritable: ``record`` with a read-only ledger (checked before any work). A
        ledger locked by another program does not raise: the score is returned with a warning.
    """
    if record:
        check_writable(workspace.ledger_path)
    predictor = predictor_for_run(ref, workspace, host, checkpoint=checkpoint, tta=tta, device=device,
                                  precision=precision, calibration=calibration, post=post, tile=tile)
    with Ledger(workspace.ledger_path) as ledger:
        row = ledger.get_run(ref)
    competition = predictor.competition
    metric = create_metric(competition, host)
    folder = run_folder(row, workspace.runs_dir)
    own_root = folder.data_root(workspace.root)
    warnings: list[str] = []
    if data is None:
        files = _val_list_files(row, folder, competition, workspace, allow_changed_data)
        data_label = VAL_LIST
    else:
        root = Path(data).expanduser()
        files = _data_files(root, competition, folder, own_root, warnings)
        data_label = str(root.resolve())
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, not {batch_size}")
    evaluation = evaluate(predictor, read_labelled(files, competition, batch_size), metric, total=len(files),
                          on_mask=on_mask, progress=progress)
    evaluation.run_id = row["id"]
    evaluation.checkpoint = "members" if is_ensemble(row) else str(checkpoint)
    evaluation.data = data_label
    evaluation.warnings = warnings + predictor.notes
    if evaluation.calibrated and data is None:
        spec = folder.read_calibration() or {}
        gain = spec.get("mean_heldout_gain")
        evaluation.warnings.append(
            "the logit offsets were fitted on these validation images, so the calibrated score is in-sample "
            "(optimistic)" + (f"; cpx calibrate measured a held-out gain of {gain:+.4f}" if gain is not None else "")
            + "; the leaderboard does not use this score")
    if record:
        _record_or_warn(workspace, row["id"], evaluation)
    return evaluation


def _val_list_files(row: dict, folder: RunFolder, competition: Competition, workspace: Workspace,
                    allow_changed: bool) -> list[tuple[str, Path, Path]]:
    """The labelled files of the run's validation list, in its own data folder.

    :raises RunError: the run has no validation list.
    :raises DataError: its data folder is unusable or no longer what it trained on.
    """
    names = folder.read_val_names()
    if not names:
        raise RunError(f"run {row['id']} has no validation images ({folder.file(VAL_LIST_FILE)}); "
                       "pass --data DIR to score on a labelled folder")
    own_root = checked_data_root(row, folder, competition, workspace.root, allow_changed=allow_changed,
                                 hint="pass --data DIR")
    part = (folder.read_data_info() or {}).get("val_part", "train")
    datalib.scan(own_root, competition).require(LABELLED_PARTS)
    return labelled_files(own_root, names, competition, part)


def _data_files(root: Path, competition: Competition, folder: RunFolder, own_root: Optional[Path],
                warnings: list[str]) -> list[tuple[str, Path, Path]]:
    """Every labelled file of the data folder ``root``; adds a warning to ``warnings`` when
    ``root`` is the run's own data folder (``own_root``) and holds images it trained on.

    :raises DataError: ``root`` is not a folder, has problems, or holds no labelled images.
    """
    if not root.is_dir():
        raise DataError(f"--data: {root} is not a folder")
    found = datalib.scan(root, competition)
    found.require(LABELLED_PARTS)  # what `cpx data check` calls a problem stops validation too
    files = labelled_files(root, found.pairs, competition, "train")
    if competition.layout.has_val:
        files += labelled_files(root, found.val_pairs, competition, "val")
    if not files:
        where = " / ".join(p for p in (competition.layout.train_images, competition.layout.val_images) if p)
        raise DataError(f"{root}: no labelled images (image + mask pairs) in {where} (competition "
                        f"{competition.name})")
    if own_root is not None and own_root.resolve() == root.resolve():
        held_out = set(folder.read_val_names())
        trained = sum(1 for n, _, _ in files if n not in held_out)
        if trained:
            warnings.append(f"--data is the run's own data folder: {trained} of {len(files)} images were "
                            "used for training, so this score is optimistic")
    return files


def _record_or_warn(workspace: Workspace, run_id: str, evaluation: Evaluation) -> None:
    """Record ``evaluation`` as a validation of ``run_id``, setting its ``validation_id``; a
    ledger locked by another program adds a warning instead.
    """
    try:
        with Ledger(workspace.ledger_path) as ledger:
            saved = record_validation(ledger, run_id, evaluation, checkpoint=evaluation.checkpoint,
                                      data=evaluation.data)
    except LedgerBusy as exc:  # the score is computed: show it, and say it was not kept
        evaluation.warnings.append(f"not recorded: {exc}; validate again to record it")
    else:
        evaluation.validation_id = saved["id"]


def metric_label(scores: Scores) -> str:
    """``class-iou x100`` / ``fscore``: the metric's name with its scale, as the ledger records it."""
    return metric_tag(scores.metric, scores.scale)


def record_validation(ledger: Ledger, run_id: str, evaluation: Evaluation, *, checkpoint: str,
                      data: str, wall: bool = True, **extra) -> dict:
    """An :class:`Evaluation` as a ledger validation row (score, metric, per-class and
    per-image values, what was applied): the one place that writes one. ``extra`` are further
    columns of the row (the organisers' program's ``official_score``, ...)."""
    s = evaluation.scores
    return ledger.add_validation(
        run_id, checkpoint=checkpoint, tta=tta_label(evaluation.tta), data=data, images=len(evaluation.names),
        score=s.score, metric=metric_label(s), pixel_acc=s.pixel_acc, miou=s.miou, per_class=evaluation.per_class(),
        per_image=evaluation.per_image, wall_seconds=round(evaluation.seconds, 2) if wall else None,
        calibrated=evaluation.calibrated, post=None if evaluation.post == "none" else evaluation.post, **extra)


# --------------------------------------------------------------------------------------------
# Folders of mask files


@dataclass
class FolderScore:
    """``cpx score``: predicted masks scored against ground truth by stem; ``problems`` stop the
    scoring, ``warnings`` do not.
    """

    pred_dir: Path
    gt_dir: Path
    names: list[str] = field(default_factory=list)
    scores: Optional[Scores] = None
    per_image: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # each prevents scoring
    warnings: list[str] = field(default_factory=list)
    class_names: tuple = ()
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems and self.scores is not None

    def to_dict(self) -> dict:
        """JSON-ready form: ``score`` is the competition metric named by ``metric``."""
        out = {"pred_dir": str(self.pred_dir), "gt_dir": str(self.gt_dir), "ok": self.ok,
               "images": len(self.names), "problems": list(self.problems), "warnings": list(self.warnings),
               "seconds": round(self.seconds, 3)}
        if self.scores is not None:
            s = self.scores
            out.update(metric=s.metric, metric_label=s.label, scale=s.scale, score=s.score,
                       pixel_acc=s.pixel_acc, miou=s.miou,
                       per_class={str(n): {"score": None if v != v else v, "images": k} for n, v, k
                                  in zip(self.class_names, s.per_class, s.class_images)},
                       per_image=self.per_image)
        return out


def _list_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def _read_pred(path: Path, competition: Competition, gt_shape: tuple[int, int]) -> tuple[Optional[np.ndarray], list[str]]:
    # the mask rules of every command (lossless, one band, the competition's stored values), then the size
    try:
        arr = datalib.read_mask(path, competition)
    except DataError as exc:
        return None, [f"{path.name}: {str(exc).split(': ', 1)[-1]}"]
    problems = []
    if arr.shape != gt_shape:
        problems.append(f"{path.name}: size {arr.shape[0]}x{arr.shape[1]} but the ground truth is "
                        f"{gt_shape[0]}x{gt_shape[1]} (height x width)")
    return (None if problems else arr), problems


def score_folders(pred_dir: os.PathLike, gt_dir: os.PathLike, competition: Competition,
                  metric: Optional[Metric] = None, progress: Progress = None) -> FolderScore:
    """Score predicted masks against ground-truth masks (files with the competition's mask
    suffix, matched by stem) with ``metric`` (default: the competition's, from the current
    plugin host).

    Problems that prevent scoring (a missing prediction, an unreadable file, a stored value the
    competition's mask encoding lacks, a wrong size) are all collected in ``problems`` and then
    nothing is scored; predictions without ground truth are only ``warnings``.
    """
    if metric is None:
        from cpx.kernel.manager import get_host

        metric = create_metric(competition, get_host())
    start = time.perf_counter()
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    for what, folder in (("predictions", pred_dir), ("ground truth", gt_dir)):
        if not folder.is_dir():
            raise DataError(f"{folder}: {what} folder does not exist")
    report = FolderScore(pred_dir, gt_dir, class_names=tuple(competition.classes))
    suffix = competition.layout.mask_suffix.lower()
    gt = {p.stem: p for p in _list_files(gt_dir) if p.suffix.lower() == suffix}
    if not gt:
        raise DataError(f"{gt_dir}: no {suffix} ground-truth masks (competition {competition.name})")
    preds: dict[str, Path] = {}
    for p in _list_files(pred_dir):
        if p.suffix.lower() != suffix:
            if p.stem in gt:
                report.problems.append(f"{p.name}: predictions must be {suffix} files")
            else:
                report.warnings.append(f"{p.name}: not a {suffix} mask; ignored")
            continue
        if p.stem not in gt:
            report.warnings.append(f"{p.name}: no ground truth of that name; ignored")
            continue
        preds[p.stem] = p
    names = sorted(gt)
    missing = [n for n in names if n not in preds]
    report.problems.extend(f"{n}{suffix}: no prediction for this ground-truth mask" for n in missing
                           if not any(line.startswith(f"{n}.") for line in report.problems))
    acc = ScoreAccumulator(metric, competition.num_classes)
    scorable = [n for n in names if n in preds]
    for i, name in enumerate(scorable):
        try:
            truth = datalib.read_mask(gt[name], competition)
        except DataError as exc:
            report.problems.append(f"ground truth {exc}")
            continue
        pred, problems = _read_pred(preds[name], competition, truth.shape)
        report.problems.extend(problems)
        if pred is not None and not report.problems:
            report.per_image[name] = float(acc.update(torch.from_numpy(np.array(pred)),
                                                      torch.from_numpy(np.array(truth)))[0])
        if progress:
            progress(i + 1, len(scorable))
    report.names = names
    if not report.problems:
        report.scores = acc.compute()
    else:
        report.per_image = {}
    report.seconds = time.perf_counter() - start
    return report
