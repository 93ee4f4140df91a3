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

A single-model predictor may carry per-class logit offsets (``cpx calibrate``): added to the
merged view logits (their mean, so ``n_views x offsets`` to their sum) before the argmax. And
any predictor may carry post-processing steps (``--post``), applied to each class-id mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from cpx.data.competition import Competition
from cpx.data.images import fit_size
from cpx.eval.metrics import class_ids
from cpx.eval.postprocess import PostSpec, PostStep, apply_post, create_post, post_label
from cpx.kernel.device import autocast, keep_freed_memory, resolve_device, resolve_precision
from cpx.kernel.errors import ConfigError, DataError, RuleViolation, RunError
from cpx.kernel.files import sha256_file
from cpx.kernel.manager import PluginHost
from cpx.kernel.workspace import Workspace
from cpx.runs.folder import ENSEMBLE, run_folder
from cpx.runs.ledger import Ledger

TTA_CHOICES = ("flip", "scale")
DEFAULT_SCALES = (0.75, 1.0, 1.25)

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


def resize_uint8(x: torch.Tensor, hw: Size) -> torch.Tensor:
    """A B x C x H x W uint8 batch resized to ``hw``, bilinear with antialiasing: on a CPU
    resized as uint8, which gives exactly the pixels Pillow gives the training cache."""
    if tuple(x.shape[-2:]) == tuple(hw):
        return x
    if x.device.type == "cpu":
        return F.interpolate(x, size=tuple(hw), mode="bilinear", align_corners=False, antialias=True)
    # GPUs have no uint8 bilinear kernel
    return F.interpolate(x.float(), size=tuple(hw), mode="bilinear", align_corners=False,
                         antialias=True).round_().clamp_(0, 255).to(torch.uint8)


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Window starts along one side: every ``stride`` from 0, the last window flush with the end
    (mmsegmentation's slide inference)."""
    if length <= tile:
        return [0]
    count = (length - tile + stride - 1) // stride + 1
    return sorted({min(i * stride, length - tile) for i in range(count)})


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
    """One model of a predictor: the network (eval mode), the square canvas side it was trained
    at, its weight in the average, where it came from, and optionally the side of the windows
    of sliding-window inference (``tile``)."""

    model: torch.nn.Module
    image_size: int
    weight: float = 1.0
    label: str = ""
    run_id: str = ""
    checkpoint: str = ""
    tile: Optional[int] = None


# the share of a window that overlaps the next in sliding-window inference
TILE_OVERLAP = 1 / 3


class Predictor:
    """Softmax probabilities and class-id masks for uint8 images of any size and the
    competition's channels.

    Each member sees an image at its training scale (:func:`fit_size`: a square image resized
    to its canvas, another letterboxed into it), in sliding windows of ``tile`` pixels when the
    member has one, and its logits are cropped to the image and resized back to the size asked
    for BEFORE the softmax and the argmax, which is how the scorer sees a prediction.
    ``logit_offsets`` (one per class; one member only) shift the classes' mean logits before
    the argmax (and the softmax); ``post`` steps clean each mask of :meth:`predict`. ``notes``
    says what was left out (e.g. a calibration of other weights). ``prepare=False`` leaves the
    models on their device and memory format (a trainer validating its live model).
    """

    def __init__(self, members: list[Member], competition: Competition, tta: Sequence[str] = (),
                 scales: Sequence[float] = DEFAULT_SCALES, device: Union[str, torch.device] = "cpu",
                 precision: str = "fp32", logit_offsets: Optional[Sequence[float]] = None,
                 post: Sequence[PostStep] = (), prepare: bool = True):
        if not members:
            raise ConfigError("a predictor needs at least one model")
        weights = [float(m.weight) for m in members]
        if any(not np.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
            raise ConfigError(f"member weights must be non-negative with a positive sum, got {weights}")
        for m in members:
            if m.tile is not None and m.tile < 8:
                raise ConfigError(f"--tile {m.tile}: windows of at least 8 pixels")
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
            if prepare:  # a model being trained stays as its trainer keeps it
                # channels-last suits the convolutions of every built-in model on CPU and GPU
                m.model = m.model.to(self.device).to(memory_format=torch.channels_last)
            m.model.eval()
        self.post = list(post)
        self.notes: list[str] = []
        self.logit_offsets: Optional[torch.Tensor] = None
        if logit_offsets is not None:
            if len(self.members) != 1:
                raise ConfigError("logit offsets (calibration) apply to one model, not an ensemble")
            offsets = torch.tensor([float(v) for v in logit_offsets], dtype=torch.float32)
            if offsets.shape != (self.num_classes,) or not torch.isfinite(offsets).all():
                raise ConfigError(f"logit offsets: expected {self.num_classes} finite numbers, got {list(logit_offsets)}")
            self.logit_offsets = offsets.to(self.device)

    def _offset_term(self) -> torch.Tensor:
        """What the offsets add to the SUM of the view logits: ``n_views x offsets``, 1 x C x 1 x 1."""
        return (self.logit_offsets * len(self.views)).view(1, -1, 1, 1)

    @property
    def num_classes(self) -> int:
        return self.competition.num_classes

    @property
    def views(self) -> list[tuple[bool, float]]:
        flips = (False, True) if "flip" in self.tta else (False,)
        return [(flip, scale) for scale in self.scales for flip in flips]

    def _check(self, images: Sequence[torch.Tensor]) -> None:
        c = self.competition.channels
        for i, im in enumerate(images):
            if not isinstance(im, torch.Tensor) or im.dtype != torch.uint8 or im.dim() != 3 or im.shape[0] != c:
                what = f"{im.dtype} {tuple(im.shape)}" if isinstance(im, torch.Tensor) else type(im).__name__
                raise DataError(f"image {i}: expected a uint8 {c} x H x W tensor, got {what}")

    def _forward(self, x: torch.Tensor, out_hw: Size, mode: str = "probs") -> torch.Tensor:
        """For a uint8 batch of one size, B x C x H' x W' float32: averaged probabilities
        (``probs``, calibrated when there are offsets), the tensor whose argmax is the mask
        before calibration (``decision``: one member's summed view logits, else the
        probabilities) or one member's mean view logits (``logits``)."""
        total = None
        views = self.views
        active = [(m, w) for m, w in zip(self.members, self.weights) if w]
        hw = tuple(x.shape[-2:])
        for member, weight in active:
            # A model may offer forward_coarse: logits at a reduced size whose bilinear resize
            # to the input size is its forward. Resizing is linear and commutes with mirroring,
            # so views of one size are merged coarse and resized once instead of per view
            # (not through padding or windows, which the coarse map does not line up with).
            coarse = (len(views) > 1 and all(scale == 1.0 for _, scale in views) and hw[0] == hw[1]
                      and member.tile is None and callable(getattr(member.model, "forward_coarse", None)))
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
            if mode == "decision" and len(active) == 1:
                return summed  # neither the mean nor softmax moves the argmax
            if mode == "logits":
                if len(active) != 1:
                    raise ConfigError("logits are one model's; an ensemble averages probabilities")
                return summed.div_(len(views))
            summed.div_(len(views))
            if self.logit_offsets is not None:
                summed.add_(self.logit_offsets.view(1, -1, 1, 1))
            p = class_softmax(summed)
            total = p.mul_(weight) if total is None else total.add_(p, alpha=weight)
        return total

    def _view_logits(self, member: Member, x: torch.Tensor, flip: bool, side: int, coarse: bool) -> torch.Tensor:
        """Float32 logits of one TTA view at the image's fitted size (:func:`fit_size`), the
        canvas padding cropped away (from ``forward_coarse`` if ``coarse``: at its size), still
        mirrored for a mirrored view."""
        fh, fw = fit_size(tuple(x.shape[-2:]), side)
        x = resize_uint8(x, (fh, fw))
        if flip:
            x = x.flip(-1)
        x = x.float().div(255)
        if (fh, fw) != (side, side):  # letterbox: zero padding right and below, as in training
            x = F.pad(x, (0, side - fw, 0, side - fh))
        x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.precision):
            if member.tile is not None and member.tile < side:
                logits = self._tiled(member.model, x, member.tile)
            else:
                logits = member.model.forward_coarse(x) if coarse else member.model(x)
        logits = logits.float()
        return logits[..., :fh, :fw] if (fh, fw) != (side, side) else logits

    def _tiled(self, model: torch.nn.Module, x: torch.Tensor, tile: int) -> torch.Tensor:
        """Logits of ``x`` (B x C x S x S) from ``tile`` x ``tile`` windows overlapping by
        :data:`TILE_OVERLAP`, averaged where they overlap (mmsegmentation's slide mode)."""
        b, _, h, w = x.shape
        stride = max(1, int(round(tile * (1 - TILE_OVERLAP))))
        total = torch.zeros(b, self.num_classes, h, w, dtype=torch.float32, device=x.device)
        count = torch.zeros(1, 1, h, w, dtype=torch.float32, device=x.device)
        for top in tile_starts(h, tile, stride):
            for left in tile_starts(w, tile, stride):
                window = x[..., top:top + tile, left:left + tile]
                total[..., top:top + tile, left:left + tile] += model(window).float()
                count[..., top:top + tile, left:left + tile] += 1
        return total.div_(count)

    def probs(self, images: list[torch.Tensor], sizes: Optional[Sequence[Size]] = None) -> list[torch.Tensor]:
        """Per image a float C x H x W softmax (CPU): TTA views merged (and shifted by the logit
        offsets), then members averaged.

        The output is at each image's own size unless ``sizes`` gives (height, width) per
        image (e.g. its mask's size). Images of equal size run as one batch.
        """
        return self._run(images, sizes, mode="probs")

    def predict(self, images: list[torch.Tensor], sizes: Optional[Sequence[Size]] = None) -> list[torch.Tensor]:
        """Per image an H x W uint8 mask of class ids: the argmax of :meth:`probs` (logit offsets
        applied), then the post-processing steps."""
        return [v["final"] for v in self._run(images, sizes, mode="variants", variants=False)]

    def predict_variants(self, images: list[torch.Tensor], sizes: Optional[Sequence[Size]] = None,
                         on_decision: Optional[Callable[[torch.Tensor, list[int]], None]] = None
                         ) -> list[dict[str, torch.Tensor]]:
        """Per image the masks of each stage from one forward pass: ``raw`` (plain argmax),
        ``calibrated`` (with the logit offsets, when there are any), ``post`` (after the
        post-processing steps, when there are any) and ``final`` (the last of these, which is
        what :meth:`predict` gives). ``on_decision(decision, index)`` sees each group's decision
        tensor (one model: its summed view logits, B x C x H x W at the output size) with the
        positions of its images in ``images``, before the argmax (training measures its loss
        there)."""
        return self._run(images, sizes, mode="variants", variants=True, on_decision=on_decision)

    def logits(self, images: list[torch.Tensor], sizes: Optional[Sequence[Size]] = None) -> list[torch.Tensor]:
        """Per image the model's mean view logits, C x H x W float32, before any offsets (one
        model only): what :func:`cpx.eval.calibrate.fit_offsets` tunes on."""
        return self._run(images, sizes, mode="logits")

    def _masks(self, decision: torch.Tensor, variants: bool) -> list[dict[str, torch.Tensor]]:
        """The stages of :meth:`predict_variants` for a batch's decision tensor (CPU masks)."""
        stages: dict[str, torch.Tensor] = {}
        if self.logit_offsets is not None:
            if variants:
                stages["raw"] = class_ids(decision).to(torch.uint8).cpu()
            # in place, as run.py adds them: the same float sums, so the same argmax
            stages["calibrated"] = class_ids(decision.add_(self._offset_term())).to(torch.uint8).cpu()
        else:
            stages["raw"] = class_ids(decision).to(torch.uint8).cpu()
        last = "calibrated" if "calibrated" in stages else "raw"
        out = []
        for j in range(decision.shape[0]):
            one = {k: v[j] for k, v in stages.items()}
            final = one[last]  # the same object: a stage that is the final one is scored once
            if self.post:
                final = one["post"] = apply_post(self.post, final)
            one["final"] = final
            out.append(one)
        return out

    def _run(self, images, sizes, mode: str, variants: bool = False, on_decision=None) -> list:
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
                if mode == "variants":
                    decision = self._forward(x, out_hw, "decision")
                    if on_decision is not None:
                        on_decision(decision, idx)
                    per_image = self._masks(decision, variants)
                else:
                    p = self._forward(x, out_hw, mode).cpu()
                    per_image = [p[j] for j in range(len(idx))]
                for j, i in enumerate(idx):
                    result[i] = per_image[j]
        return result  # type: ignore[return-value]

    def describe(self) -> str:
        """One line: members with their sizes and weights, TTA, device and precision."""
        parts = [f"{m.label or 'model'}@{m.image_size}px" + (f" x{w:.2f}" if len(self.members) > 1 else "")
                 for m, w in zip(self.members, self.weights)]
        extra = ("  calibrated" if self.logit_offsets is not None else "") + \
            (f"  tiles {self.members[0].tile}px" if self.members[0].tile else "") + \
            (f"  post {post_label(self.post)}" if self.post else "")
        return f"{' + '.join(parts)}  tta {tta_label(self.tta)}{extra}  {self.device.type}/{self.precision}"


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


def stored_calibration(handle, checkpoint: str = "best") -> tuple[Optional[list[float]], Optional[str]]:
    """The logit offsets ``cpx calibrate`` stored with a run, when they were fitted on exactly
    the weights of ``checkpoint`` (sha256 compared): ``(offsets, None)``; ``(None, why not)``
    when they were fitted on other weights; ``(None, None)`` when the run has none.

    :raises RunError: an unreadable ``calibration.json``.
    """
    spec = handle.folder.read_calibration()
    if spec is None:
        return None, None
    path = handle.checkpoint_path(checkpoint)
    if spec.get("checkpoint_sha256") != sha256_file(path):
        return None, (f"{handle.folder.calibration_path.name} of run {handle.id} was fitted on other weights than "
                      f"{path.name}; not applied (run `cpx calibrate {handle.id}` again)")
    return [float(v) for v in spec["offsets"]], None


def predictor_for_run(ref: str, workspace: Workspace, host: PluginHost, *, checkpoint: str = "best",
                      tta: Union[None, str, Sequence[str]] = (), device: str = "auto",
                      precision: str = "auto", scales: Sequence[float] = DEFAULT_SCALES,
                      calibration: bool = True, post: PostSpec = None, tile: Optional[int] = None) -> Predictor:
    """A predictor for a trained run (its ``checkpoint``: best, last or a path) or an ensemble run
    (each member's recorded checkpoint and weight). ``tta=None`` uses the TTA an ensemble was
    scored with (none for a trained run). With ``calibration`` a trained run's stored logit
    offsets apply (:func:`stored_calibration`; ``predictor.notes`` says when they do not fit
    the weights); ``post`` names post-processing steps (:func:`cpx.eval.postprocess.parse_post`).

    :raises RunError: unknown run, missing or unreadable checkpoint, members of several competitions.
    :raises ConfigError: unknown post-processors or bad options.
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
                              label=handle.row.get("name") or handle.id, run_id=handle.id, checkpoint=which,
                              tile=tile))
    if tta is None:
        tta = spec.get("tta", ()) if spec else ()
    competition = handles[0][0].competition
    offsets, note = (None, None)
    if calibration and spec is None:
        offsets, note = stored_calibration(handles[0][0], checkpoint)
    predictor = Predictor(members, competition, tta=parse_tta(tta), scales=scales, device=dev, precision=precision,
                          logit_offsets=offsets, post=create_post(post, host, competition))
    if note:
        predictor.notes.append(note)
    return predictor
