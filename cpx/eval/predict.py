"""Prediction: one model or a weighted ensemble, with optional test-time augmentation.

Every member sees each image resized to its own square training size (bilinear, antialiased,
on uint8 so the pixels match PIL's resize used in training), and its logits are resized back
to the size asked for (the image's own size, or its mask's) BEFORE the softmax and the argmax,
which is how the scorer sees a prediction. A member's TTA views are averaged as logits (a
normalised geometric mean of their probabilities), then members are averaged as softmax
probabilities, so models with different architectures and input sizes mix on equal terms.
Merging views as logits skips one softmax per view; on a trained CelebAMask model it scored
the same validation F as averaging probabilities (0.7525 both, 90 images, flip TTA).

TTA views:

- ``flip``: the mirrored image is predicted too; its probabilities are mirrored back and its
  left/right class channels swapped (``Competition.flip_permutation``), because a left eye in
  a mirrored face is a right eye in the original.
- ``scale``: the image is also predicted at 0.75x and 1.25x of the member's training size.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from cpx.data.competition import Competition
from cpx.data.images import BadFile, inspect_image, read_rgb
from cpx.eval.metrics import class_ids
from cpx.kernel.device import autocast, keep_freed_memory, resolve_device, resolve_precision
from cpx.kernel.errors import ConfigError, DataError, RuleViolation, RunError
from cpx.kernel.files import check_writable, remove_stale_temps
from cpx.kernel.manager import PluginHost
from cpx.kernel.workspace import Workspace
from cpx.runs.folder import ENSEMBLE, run_folder
from cpx.runs.ledger import Ledger

TTA_CHOICES = ("flip", "scale")
DEFAULT_SCALES = (0.75, 1.0, 1.25)
# Files predict_folder treats as images; anything else in the input folder is reported.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

Progress = Optional[Callable[[int, int], None]]
Size = tuple[int, int]


def parse_tta(value: Union[None, str, Iterable[str]]) -> tuple[str, ...]:
    """``"flip,scale"``, ``["flip"]``, ``""``/``"none"``/None -> a canonical tuple of view names."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    names = [str(s).strip().lower() for s in items if str(s).strip()]
    if names == ["none"]:
        return ()
    bad = [n for n in names if n not in TTA_CHOICES]
    if bad:
        raise ConfigError(f"--tta: unknown view {bad[0]!r}; choose from {', '.join(TTA_CHOICES)} "
                          "(comma-separated, e.g. flip,scale) or none")
    # canonical order, so "scale,flip" and "flip,scale" are recorded the same way
    return tuple(n for n in TTA_CHOICES if n in names)


def tta_label(tta: Sequence[str]) -> str:
    """``("flip", "scale")`` -> ``"flip,scale"``; ``"none"`` for no TTA."""
    return ",".join(tta) if tta else "none"


def _resize(logits: torch.Tensor, size: Size) -> torch.Tensor:
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


def class_softmax(logits: torch.Tensor) -> torch.Tensor:
    """``logits.softmax(1)`` for B x C x H x W float32 logits.

    On a CPU the softmax over a strided class dimension was the slowest step of a TTA merge;
    going through the C contiguous planes (max, exp and sum, normalise) is about 1.5x faster.
    """
    if logits.device.type != "cpu" or logits.dim() != 4 or logits.dtype != torch.float32:
        return logits.softmax(1)
    planes = logits.unbind(1)
    top = planes[0].clone()
    for plane in planes[1:]:
        torch.maximum(top, plane, out=top)
    out = torch.empty_like(logits)
    total = torch.zeros_like(top)
    for c, plane in enumerate(planes):
        e = out[:, c]
        torch.sub(plane, top, out=e)
        e.exp_()
        total.add_(e)
    return out.mul_(total.reciprocal_().unsqueeze(1))


@dataclass
class Member:
    """One model of a predictor: the network (eval mode), the square size it was trained at, its
    weight in the average, and where it came from.
    """

    model: torch.nn.Module
    image_size: int
    weight: float = 1.0
    label: str = ""
    run_id: str = ""
    checkpoint: str = ""


class Predictor:
    """Softmax probabilities and class-id masks for uint8 images of any size."""

    def __init__(self, members: list[Member], competition: Competition, tta: Sequence[str] = (),
                 scales: Sequence[float] = DEFAULT_SCALES, device: Union[str, torch.device] = "cpu",
                 precision: str = "fp32"):
        if not members:
            raise ConfigError("a predictor needs at least one model")
        weights = [float(m.weight) for m in members]
        if any(not np.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
            raise ConfigError(f"member weights must be non-negative with a positive sum, got {weights}")
        self.members = list(members)
        self.competition = competition
        self.tta = parse_tta(tta)
        self.scales = tuple(float(s) for s in scales) if "scale" in self.tta else (1.0,)
        if any(s <= 0 for s in self.scales):
            raise ConfigError(f"TTA scales must be positive, got {self.scales}")
        self.device = resolve_device(device) if isinstance(device, str) else device
        if self.device.type == "cpu":
            keep_freed_memory()
        self.precision = resolve_precision(precision, self.device)
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ConfigError(f"--precision {precision!r}: choose auto, fp32, bf16 or fp16")
        self.weights = [w / sum(weights) for w in weights]
        self.flip_perm = torch.tensor(competition.flip_permutation(), device=self.device)
        for m in self.members:
            # channels-last suits the convolutions of every built-in model on CPU and GPU
            m.model = m.model.to(self.device).to(memory_format=torch.channels_last).eval()

    @property
    def num_classes(self) -> int:
        return self.competition.num_classes

    @property
    def views(self) -> list[tuple[bool, float]]:
        flips = (False, True) if "flip" in self.tta else (False,)
        return [(flip, scale) for scale in self.scales for flip in flips]

    def _check(self, images: Sequence[torch.Tensor]) -> None:
        for i, im in enumerate(images):
            if not isinstance(im, torch.Tensor) or im.dtype != torch.uint8 or im.dim() != 3 or im.shape[0] != 3:
                what = f"{im.dtype} {tuple(im.shape)}" if isinstance(im, torch.Tensor) else type(im).__name__
                raise DataError(f"image {i}: expected a uint8 3 x H x W tensor, got {what}")

    def _forward(self, x: torch.Tensor, out_hw: Size, masks_only: bool = False) -> torch.Tensor:
        """Averaged probabilities (B x C x H' x W', float32) for a uint8 batch of one size;
        with ``masks_only``, the argmax class ids (B x H' x W', uint8) instead."""
        total = None
        views = self.views
        active = [(m, w) for m, w in zip(self.members, self.weights) if w]
        for member, weight in active:
            # A model may offer forward_coarse: logits at a reduced size whose bilinear resize
            # to the input size is its forward. Resizing is linear and commutes with mirroring,
            # so views of one size are merged coarse and resized once instead of per view.
            coarse = (len(views) > 1 and all(scale == 1.0 for _, scale in views)
                      and callable(getattr(member.model, "forward_coarse", None)))
            summed = None  # this member's view logits, summed
            for flip, scale in views:
                side = max(1, int(round(member.image_size * scale)))
                logits = self._view_logits(member, x, flip, side, coarse)
                if not coarse:
                    logits = _resize(logits, out_hw)
                if summed is None and not flip:
                    summed = logits  # a fresh tensor: accumulate in place
                    continue
                if summed is None:
                    summed = torch.zeros_like(logits)
                if flip:
                    # mirrored back with left/right swapped a class plane at a time: one
                    # pass, where flipping and re-indexing the whole tensor took two more
                    for c, source in enumerate(self.flip_perm.tolist()):
                        summed[:, c].add_(logits[:, source].flip(-1))
                else:
                    summed.add_(logits)
            if coarse:  # as the model's forward would, then to the size asked for
                summed = _resize(_resize(summed, (member.image_size, member.image_size)), out_hw)
            if masks_only and len(active) == 1:
                return class_ids(summed).to(torch.uint8)  # neither the mean nor softmax moves the argmax
            p = class_softmax(summed.div_(len(views)))
            total = p.mul_(weight) if total is None else total.add_(p, alpha=weight)
        if masks_only:
            return class_ids(total).to(torch.uint8)
        return total

    def _view_logits(self, member: Member, x: torch.Tensor, flip: bool, side: int, coarse: bool) -> torch.Tensor:
        """Float32 logits of one TTA view (from ``forward_coarse`` if ``coarse``), still
        mirrored for a flipped view."""
        if tuple(x.shape[-2:]) != (side, side):
            if x.device.type == "cpu":
                # resized as uint8, these are exactly the pixels PIL gave the model in training
                x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
            else:  # GPUs have no uint8 bilinear kernel
                x = F.interpolate(x.float(), size=(side, side), mode="bilinear", align_corners=False,
                                  antialias=True).round_().clamp_(0, 255)
        if flip:
            x = x.flip(-1)
        x = x.float().div(255).contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.precision):
            logits = member.model.forward_coarse(x) if coarse else member.model(x)
        return logits.float()

    def probs(self, images: list[torch.Tensor], sizes: Optional[Sequence[Size]] = None) -> list[torch.Tensor]:
        """Per image a float C x H x W softmax (CPU): TTA views merged, then members averaged.

        The output is at each image's own size unless ``sizes`` gives (height, width) per
        image (e.g. its mask's size). Images of equal size run as one batch.
        """
        return self._run(images, sizes, masks_only=False)

    def predict(self, images: list[torch.Tensor], sizes: Optional[Sequence[Size]] = None) -> list[torch.Tensor]:
        """Per image an H x W uint8 mask of class ids: the argmax of :meth:`probs`."""
        return self._run(images, sizes, masks_only=True)

    def _run(self, images, sizes, masks_only: bool) -> list[torch.Tensor]:
        images = list(images)
        self._check(images)
        if sizes is None:
            sizes = [tuple(im.shape[-2:]) for im in images]
        elif len(sizes) != len(images):
            raise DataError(f"{len(sizes)} output sizes for {len(images)} images")
        groups: dict[tuple[Size, Size], list[int]] = {}
        for i, (im, out) in enumerate(zip(images, sizes)):
            groups.setdefault((tuple(im.shape[-2:]), tuple(int(v) for v in out)), []).append(i)
        result: list[Optional[torch.Tensor]] = [None] * len(images)
        with torch.inference_mode():
            for (_, out_hw), idx in groups.items():
                x = torch.stack([images[i] for i in idx]).to(self.device)
                p = self._forward(x, out_hw, masks_only).cpu()
                for j, i in enumerate(idx):
                    result[i] = p[j]
        return result  # type: ignore[return-value]

    def describe(self) -> str:
        """One line: members with their sizes and weights, TTA, device and precision."""
        parts = [f"{m.label or 'model'}@{m.image_size}px" + (f" x{w:.2f}" if len(self.members) > 1 else "")
                 for m, w in zip(self.members, self.weights)]
        return f"{' + '.join(parts)}  tta {tta_label(self.tta)}  {self.device.type}/{self.precision}"


# --------------------------------------------------------------------------------------------
# Runs -> predictors


def is_ensemble(row: dict) -> bool:
    """Whether a ledger row is an ensemble run."""
    return row.get("kind") == "ensemble"


def check_ensemble_allowed(run_row: dict, competition: Competition, allow_rule_break: bool = False) -> Optional[str]:
    """Refuse to make a submission from an ensemble run where the competition forbids ensembles.

    Returns None when there is nothing to say, or a warning line when the rule is broken on
    purpose (``allow_rule_break``); raises RuleViolation otherwise. Validating an ensemble is
    always allowed: only call this on the way to a submission.
    """
    if not is_ensemble(run_row) or competition.rules.ensembles_allowed:
        return None
    members = run_row.get("members") or []
    what = f"run {run_row.get('id')} is an ensemble of {len(members)} models"
    if allow_rule_break:
        return (f"{competition.name} forbids ensembles and {what}: the output breaks the rules "
                "and must not be submitted")
    raise RuleViolation(f"{competition.name} forbids ensembles and {what}; "
                        "pass --allow-rule-break to produce it anyway (never submit it)")


def read_ensemble_spec(row: dict, workspace: Workspace) -> dict:
    """An ensemble run's recorded spec: members [{run, weight, checkpoint}], tta, competition."""
    folder = run_folder(row, workspace.runs_dir)
    spec = folder.read_ensemble() or {}
    members = spec.get("members") or row.get("members")
    if not members:
        raise RunError(f"ensemble run {row['id']} records no members (looked in {folder.file(ENSEMBLE)} "
                       "and the ledger)")
    for i, m in enumerate(members):
        if not isinstance(m, dict) or not m.get("run"):
            raise RunError(f"ensemble run {row['id']}: member {i + 1} names no run")
    spec["members"] = members
    spec.setdefault("competition", row.get("competition"))
    spec.setdefault("tta", [])
    spec["run_dir"] = str(folder.path)
    return spec


def predictor_for_run(ref: str, workspace: Workspace, host: PluginHost, *, checkpoint: str = "best",
                      tta: Union[None, str, Sequence[str]] = (), device: str = "auto",
                      precision: str = "auto", scales: Sequence[float] = DEFAULT_SCALES) -> Predictor:
    """A predictor for a trained run (its ``checkpoint``: best, last or a path) or an ensemble run
    (each member's recorded checkpoint and weight). ``tta=None`` uses the TTA an ensemble was
    scored with (none for a trained run).

    :raises RunError: unknown run, missing or unreadable checkpoint, members of several competitions.
    """
    from cpx.runs.handle import open_run  # runs imports the ledger and config; keep module import light

    with Ledger(workspace.ledger_path) as ledger:
        row = ledger.get_run(ref)
        if is_ensemble(row):
            spec = read_ensemble_spec(row, workspace)
            if checkpoint not in ("best", None):
                raise ConfigError(f"run {row['id']} is an ensemble: it uses its members' recorded "
                                  "checkpoints; drop --checkpoint")
            handles = [(open_run(m["run"], workspace, host, ledger), m) for m in spec["members"]]
        else:
            spec = None
            handles = [(open_run(row["id"], workspace, host, ledger), {"run": row["id"], "weight": 1.0,
                                                                        "checkpoint": checkpoint})]
    dev = resolve_device(device)
    comps = {h.competition.name for h, _ in handles}
    if len(comps) > 1:
        raise RunError(f"ensemble {row['id']} mixes competitions ({', '.join(sorted(comps))})")
    members = []
    for handle, m in handles:
        which = m.get("checkpoint") or "best"
        model = handle.load_model(which, dev, host)
        members.append(Member(model=model, image_size=handle.image_size, weight=float(m.get("weight", 1.0)),
                              label=handle.row.get("name") or handle.id, run_id=handle.id, checkpoint=which))
    if tta is None:
        tta = spec.get("tta", ()) if spec else ()
    return Predictor(members, handles[0][0].competition, tta=parse_tta(tta), scales=scales,
                     device=dev, precision=precision)


# --------------------------------------------------------------------------------------------
# Folders of images -> folders of masks


@dataclass
class PredictReport:
    """What :func:`predict_folder` did: masks written, files skipped with the reason, seconds."""

    written: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    seconds: float = 0.0
    output_dir: Optional[Path] = None
    tta: tuple = ()
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {"written": [str(p) for p in self.written],
                "skipped": [{"path": str(p), "reason": r} for p, r in self.skipped],
                "seconds": round(self.seconds, 3), "output_dir": str(self.output_dir) if self.output_dir else None,
                "tta": tta_label(self.tta), "warnings": list(self.warnings)}


def _inspect_image(path: Path) -> tuple[Optional[Size], str]:
    """(height, width) of an image that decodes in full, or (None, why not)."""
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return None, f"not an image file (suffix {path.suffix or '(none)'}; expected {'/'.join(IMAGE_SUFFIXES)})"
    try:
        return inspect_image(path), ""
    except BadFile as bad:
        return None, bad.message


def _read_rgb(path: Path) -> torch.Tensor:
    try:
        arr, _ = read_rgb(path)
    except BadFile as bad:  # changed on disk since it was inspected
        raise bad.error() from None
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def predict_folder(predictor: Predictor, input_dir: os.PathLike, output_dir: os.PathLike, *,
                   batch_size: int = 8, skip_bad: bool = False, overwrite: bool = False,
                   progress: Progress = None) -> PredictReport:
    """One palette PNG mask per image of ``input_dir``, same stem and size, into ``output_dir``.

    Every file is checked before anything is written: an unreadable or non-image file fails
    the call (DataError naming each) unless ``skip_bad``, and existing masks of the same
    names fail it unless ``overwrite``. Each mask is written atomically.
    """
    start = time.perf_counter()
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, not {batch_size}")
    if not input_dir.is_dir():
        raise DataError(f"{input_dir}: input folder does not exist")
    if output_dir.exists() and not output_dir.is_dir():
        raise DataError(f"{output_dir}: exists and is not a folder")
    if output_dir.resolve() == input_dir.resolve():
        raise DataError(f"{output_dir}: choose an output folder other than the input folder")
    files = sorted(p for p in input_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    report = PredictReport(output_dir=output_dir, tta=predictor.tta)
    good: list[tuple[Path, Size]] = []
    bad: list[tuple[Path, str]] = []
    seen: dict[str, Path] = {}
    for path in files:
        size, why = _inspect_image(path)
        if size is None:
            bad.append((path, why))
        elif path.stem in seen:
            bad.append((path, f"same stem as {seen[path.stem].name}: both would write {path.stem}.png"))
        else:
            seen[path.stem] = path
            good.append((path, size))
    if bad and not skip_bad:
        lines = [f"{p}: {why}" for p, why in bad]
        raise DataError("\n".join(lines + [f"{len(bad)} bad file(s) in {input_dir}; nothing was written "
                                           "(--skip-bad predicts the rest)"]))
    report.skipped = bad
    if not good:
        raise DataError(f"{input_dir}: no readable images to predict")
    targets = {path: output_dir / f"{path.stem}.png" for path, _ in good}
    if not overwrite:
        clash = [t for t in targets.values() if t.exists()]
        if clash:
            shown = ", ".join(t.name for t in clash[:5]) + (f" and {len(clash) - 5} more" if len(clash) > 5 else "")
            raise DataError(f"{output_dir}: {len(clash)} mask(s) already exist ({shown}); "
                            "pass --overwrite or choose another --output")
    check_writable(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    # masks half-written by a predict that was killed; a live writer's temps are seconds old
    remove_stale_temps(output_dir, older_than=60)

    from cpx.data import write_mask

    palette = predictor.competition.palette_bytes()
    # sorted by size so each batch holds one size and runs as a single forward pass
    order = sorted(good, key=lambda item: (item[1], item[0].name))
    chunks: list[list[tuple[Path, Size]]] = []
    for path, size in order:
        if chunks and len(chunks[-1]) < batch_size and chunks[-1][-1][1] == size:
            chunks[-1].append((path, size))
        else:
            chunks.append([(path, size)])

    def write(chunk, masks) -> None:
        for (path, _), mask in zip(chunk, masks):
            write_mask(targets[path], mask.numpy(), palette)

    # Decoding the next batch and encoding the last one's PNGs run in a second thread while
    # the model works (PIL releases the GIL), so the files cost little time of their own.
    def read(chunk) -> list[torch.Tensor]:
        return [_read_rgb(path) for path, _ in chunk]

    done = 0
    with ThreadPoolExecutor(max_workers=1) as io:
        reading = io.submit(read, chunks[0])
        writing = None
        for k, chunk in enumerate(chunks):
            images = reading.result()
            if k + 1 < len(chunks):
                reading = io.submit(read, chunks[k + 1])
            masks = predictor.predict(images)
            if writing is not None:
                writing.result()  # a failed write stops the run here
            writing = io.submit(write, chunk, masks)
            report.written.extend(targets[p] for p, _ in chunk)
            done += len(chunk)
            if progress:
                progress(done, len(order))
        writing.result()
    report.written.sort()
    report.seconds = time.perf_counter() - start
    return report


def predict_run(ref: str, workspace: Workspace, host: PluginHost, input_dir: os.PathLike,
                output_dir: os.PathLike, *, checkpoint: str = "best", tta=(), batch_size: int = 8,
                skip_bad: bool = False, overwrite: bool = False, allow_rule_break: bool = False,
                device: str = "auto", precision: str = "auto", progress: Progress = None) -> PredictReport:
    """``cpx predict``: masks for a folder from a run, refusing forbidden ensembles."""
    with Ledger(workspace.ledger_path) as ledger:
        row = ledger.get_run(ref)
    if is_ensemble(row):
        comp_name = row.get("competition") or read_ensemble_spec(row, workspace).get("competition")
        warning = check_ensemble_allowed(row, host.competition(comp_name), allow_rule_break)
    else:
        warning = None
    predictor = predictor_for_run(row["id"], workspace, host, checkpoint=checkpoint, tta=tta,
                                  device=device, precision=precision)
    report = predict_folder(predictor, input_dir, output_dir, batch_size=batch_size, skip_bad=skip_bad,
                            overwrite=overwrite, progress=progress)
    if warning:
        report.warnings.append(warning)
    return report
