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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from cpx import data as datalib
from cpx.data.competition import Competition
from cpx.data.images import BadFile, bad_ids_message, mask_array, open_image
from cpx.eval.metrics import ScoreAccumulator, Scores
from cpx.eval.postprocess import PostSpec, post_label
from cpx.eval.predict import Predictor, is_ensemble, predictor_for_run, tta_label
from cpx.kernel.errors import ConfigError, DataError, LedgerBusy, RunError
from cpx.kernel.files import check_writable
from cpx.kernel.manager import PluginHost
from cpx.kernel.workspace import Workspace
from cpx.runs.folder import VAL_LIST as VAL_LIST_FILE
from cpx.runs.folder import run_folder
from cpx.runs.ledger import Ledger

Progress = Optional[Callable[[int, int], None]]
VAL_LIST = "val_list"  # the ledger's ``data`` value for a run's own validation list


@dataclass
class Evaluation:
    """A run scored on a set of labelled images: the :class:`Scores`, per-image F by stem, the
    checkpoint, TTA and data used, warnings, and the ledger validation id when recorded.
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
    # F of each stage before the last (``raw``, ``calibrated``), when calibration or
    # post-processing changed the masks; ``scores`` are the last stage's
    stages: dict[str, float] = field(default_factory=dict)
    calibrated: bool = False
    post: str = "none"

    def per_class(self) -> dict[str, dict]:
        """Class name -> {"f": mean F over images containing it (None if none), "images": n}."""
        out = {}
        for i, name in enumerate(self.class_names or range(len(self.scores.per_class_f))):
            f = self.scores.per_class_f[i]
            out[str(name)] = {"f": None if f != f else f, "images": self.scores.class_images[i]}
        return out

    def to_dict(self) -> dict:
        """JSON-ready form."""
        s = self.scores
        return {"run_id": self.run_id, "checkpoint": self.checkpoint, "tta": tta_label(self.tta),
                "data": self.data, "images": len(self.names), "fscore": s.fscore,
                "pooled_fscore": s.pooled_fscore, "pool_size": s.pool_size, "pixel_acc": s.pixel_acc,
                "miou": s.miou, "per_class": self.per_class(), "per_image": self.per_image,
                "seconds": round(self.seconds, 3), "warnings": list(self.warnings),
                "validation_id": self.validation_id, "calibrated": self.calibrated, "post": self.post,
                "stages": dict(self.stages)}


def _pairs(root: Path, names: Sequence[str], competition: Competition) -> list[tuple[str, Path, Path]]:
    found = datalib.scan(root, competition)
    missing_img = [n for n in names if n not in found.images]
    missing_mask = [n for n in names if n in found.images and n not in found.masks]
    if missing_img or missing_mask:
        lines = [f"{competition.data_path(root, 'train_images')}: no image named {n}" for n in missing_img]
        lines += [f"{found.images[n]}: no mask {n}{competition.layout.mask_suffix}" for n in missing_mask]
        raise DataError("\n".join(lines))
    return [(n, found.images[n], found.masks[n]) for n in names]


def evaluate(predictor: Predictor, data_root: os.PathLike, names: Sequence[str], competition: Competition, *,
             batch_size: int = 8, progress: Progress = None) -> Evaluation:
    """Score ``predictor`` on the named labelled images of ``data_root``.

    Images go in at their own size and predictions come out at their mask's size, so the
    numbers are those of the scorer. Images are scored in ``names`` order (which fixes the
    groups of the pooled, old-script F). With a calibrated or post-processing predictor, the
    scores are those of its final masks and ``stages`` holds the F of the earlier stages
    (``raw``, ``calibrated``), all from one forward pass.
    """
    start = time.perf_counter()
    names = [str(n) for n in names]
    if not names:
        raise DataError(f"{data_root}: no images to score")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, not {batch_size}")
    pairs = _pairs(Path(data_root), names, competition)
    acc = ScoreAccumulator(competition.num_classes)
    earlier: dict[str, ScoreAccumulator] = {}
    per_image: dict[str, float] = {}
    for a in range(0, len(pairs), batch_size):
        chunk = pairs[a:a + batch_size]
        images, _ = datalib.load_images([p for _, p, _ in chunk])
        masks = [datalib.read_mask(m, competition) for _, _, m in chunk]
        variants = predictor.predict_variants(images, sizes=[m.shape for m in masks])
        for (name, _, _), stages, gt in zip(chunk, variants, masks):
            truth = torch.from_numpy(np.array(gt))
            per_image[name] = float(acc.update(stages["final"], truth)[0])
            for stage in ("raw", "calibrated"):
                if stage in stages and stages[stage] is not stages["final"]:
                    earlier.setdefault(stage, ScoreAccumulator(competition.num_classes)).update(stages[stage], truth)
        if progress:
            progress(min(a + batch_size, len(pairs)), len(pairs))
    return Evaluation(names=names, scores=acc.compute(), per_image=per_image,
                      seconds=time.perf_counter() - start, tta=predictor.tta, checkpoint="",
                      class_names=tuple(competition.classes),
                      stages={k: v.compute().fscore for k, v in earlier.items()},
                      calibrated=predictor.logit_offsets is not None, post=post_label(predictor.post))








def validate_run(ref: str, workspace: Workspace, host: PluginHost, *, checkpoint: str = "best",
                 data: Optional[os.PathLike] = None, tta=(), record: bool = True, batch_size: int = 8,
                 device: str = "auto", precision: str = "auto", calibration: bool = True, post: PostSpec = None,
                 progress: Progress = None) -> Evaluation:
    """Score a run (or ensemble run) on its validation list, or on every labelled image of
    ``data``, and (with ``record``) add the result to the ledger's validations. The run's stored
    calibration applies unless ``calibration`` is off; ``post`` names post-processing steps
    (the F without them is in ``stages``).

    :raises RunError: unknown run or unusable checkpoint; :raises DataError: unusable data;
        :raises NotWritable: ``record`` with a read-only ledger (checked before any work). A
        ledger locked by another program does not raise: the score is returned with a warning.
    """
    if record:
        check_writable(workspace.ledger_path)
    predictor = predictor_for_run(ref, workspace, host, checkpoint=checkpoint, tta=tta, device=device,
                                  precision=precision, calibration=calibration, post=post)
    with Ledger(workspace.ledger_path) as ledger:
        row = ledger.get_run(ref)
    competition = predictor.competition
    folder = run_folder(row, workspace.runs_dir)
    own_root = folder.data_root()
    warnings: list[str] = []
    if data is None:
        names = folder.read_val_names()
        if not names:
            raise RunError(f"run {row['id']} has no validation images ({folder.file(VAL_LIST_FILE)}); "
                           "pass --data DIR to score on a labelled folder")
        if own_root is None or not own_root.is_dir():
            raise RunError(f"run {row['id']}: its data folder {own_root} is gone; pass --data DIR")
        root, data_label = own_root, VAL_LIST
    else:
        root = Path(data).expanduser()
        if not root.is_dir():
            raise DataError(f"--data: {root} is not a folder")
        names = datalib.scan(root, competition).pairs
        if not names:
            raise DataError(f"{root}: no labelled images (image + mask pairs) in the "
                            f"{competition.layout.train_images} / {competition.layout.train_masks} layout")
        data_label = str(root.resolve())
        if own_root is not None and own_root.resolve() == root.resolve():
            held_out = set(folder.read_val_names())
            trained = sum(1 for n in names if n not in held_out)
            if trained:
                warnings.append(f"--data is the run's own data folder: {trained} of {len(names)} images were "
                                "used for training, so this score is optimistic")
    evaluation = evaluate(predictor, root, names, competition, batch_size=batch_size, progress=progress)
    evaluation.run_id = row["id"]
    evaluation.checkpoint = "members" if is_ensemble(row) else str(checkpoint)
    evaluation.data = data_label
    evaluation.warnings = warnings + predictor.notes
    if evaluation.calibrated and data is None:
        spec = folder.read_calibration() or {}
        gain = spec.get("mean_heldout_gain")
        evaluation.warnings.append(
            "the logit offsets were fitted on these validation images, so the calibrated F is in-sample "
            "(optimistic)" + (f"; cpx calibrate measured a held-out gain of {gain:+.4f}" if gain is not None else "")
            + "; the leaderboard does not use this score")
    if record:
        s = evaluation.scores
        try:
            with Ledger(workspace.ledger_path) as ledger:
                saved = ledger.add_validation(
                    row["id"], checkpoint=evaluation.checkpoint, tta=tta_label(evaluation.tta), data=data_label,
                    images=len(names), score=s.fscore, pooled_score=s.pooled_fscore, pixel_acc=s.pixel_acc,
                    miou=s.miou, per_class=evaluation.per_class(), per_image=evaluation.per_image,
                    wall_seconds=round(evaluation.seconds, 2),
                    calibrated=evaluation.calibrated, post=None if evaluation.post == "none" else evaluation.post)
        except LedgerBusy as exc:  # the score is computed: show it, and say it was not kept
            evaluation.warnings.append(f"not recorded: {exc}; validate again to record it")
        else:
            evaluation.validation_id = saved["id"]
    return evaluation


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
        """JSON-ready form."""
        out = {"pred_dir": str(self.pred_dir), "gt_dir": str(self.gt_dir), "ok": self.ok,
               "images": len(self.names), "problems": list(self.problems), "warnings": list(self.warnings),
               "seconds": round(self.seconds, 3)}
        if self.scores is not None:
            s = self.scores
            out.update(fscore=s.fscore, pooled_fscore=s.pooled_fscore, pool_size=s.pool_size,
                       pixel_acc=s.pixel_acc, miou=s.miou,
                       per_class={str(n): {"f": None if f != f else f, "images": k} for n, f, k
                                  in zip(self.class_names, s.per_class_f, s.class_images)},
                       per_image=self.per_image)
        return out


def _list_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def _read_pred(path: Path, competition: Competition, gt_shape: tuple[int, int]) -> tuple[Optional[np.ndarray], list[str]]:
    # the mask rules of every command (lossless PNG, one channel, the scorer's modes), then the sizes and ids
    try:
        with open_image(path, "mask", decode=True) as img:
            arr = mask_array(img, path, competition.submission.mask_modes)
    except BadFile as bad:
        return None, [f"{path.name}: {bad.message}"]
    problems = []
    if arr.shape != gt_shape:
        problems.append(f"{path.name}: size {arr.shape[0]}x{arr.shape[1]} but the ground truth is "
                        f"{gt_shape[0]}x{gt_shape[1]} (height x width)")
    if arr.size and int(arr.max()) >= competition.num_classes:
        problems.append(f"{path.name}: " + bad_ids_message(np.unique(arr[arr >= competition.num_classes]),
                                                            competition.num_classes))
    return (None if problems else arr), problems


def score_folders(pred_dir: os.PathLike, gt_dir: os.PathLike, competition: Competition,
                  progress: Progress = None) -> FolderScore:
    """Score predicted masks against ground-truth masks, matched by file stem.

    Problems that prevent scoring (a missing prediction, an unreadable file, a wrong mode, size
    or class id) are all collected in ``problems`` and then nothing is scored; predictions
    without ground truth are only ``warnings``.
    """
    start = time.perf_counter()
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    for what, folder in (("predictions", pred_dir), ("ground truth", gt_dir)):
        if not folder.is_dir():
            raise DataError(f"{folder}: {what} folder does not exist")
    report = FolderScore(pred_dir, gt_dir, class_names=tuple(competition.classes))
    suffix = competition.layout.mask_suffix.lower()
    gt = {p.stem: p for p in _list_files(gt_dir) if p.suffix.lower() == suffix}
    if not gt:
        raise DataError(f"{gt_dir}: no {suffix} ground-truth masks")
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
    acc = ScoreAccumulator(competition.num_classes)
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
            report.per_image[name] = float(acc.update(torch.from_numpy(np.array(pred)), torch.from_numpy(np.array(truth)))[0])
        if progress:
            progress(i + 1, len(scorable))
    report.names = names
    if not report.problems:
        report.scores = acc.compute()
    else:
        report.per_image = {}
    report.seconds = time.perf_counter() - start
    return report
