"""Segmentation scores, computed the way the competition scorer computes them.

The competition metric (``fscore``) is a per-image score: for every class id present in an
image's ground truth, F = 2PR/(P+R+eps) from that image's pixel counts, averaged over those
classes, then averaged over images. Classes that are predicted but absent from the ground truth
are never averaged in; their pixels only show up as false negatives of the true class.

Everything is derived from one per-image confusion matrix built with a single ``bincount``,
so a 32 x 512 x 512 batch costs one pass over the pixels on whichever device it lives on.
Scores are then finished in float64 on the CPU so they match a plain numpy scorer to ~1e-12.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Union

import numpy as np
import torch

from cpx.kernel.errors import DataError, UnknownComponent

# The organisers' constant: it sits in every denominator of the published formula, so the
# scores are reproducible only if we use the same value in the same places.
EPS = 1e-7

MaskLike = Union[torch.Tensor, np.ndarray]


def class_ids(scores: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """``scores.argmax(dim)`` (first maximum on ties), as uint8 when the classes fit in it.

    On a CPU, argmax over the class dimension of a B x C x H x W tensor reads it with a stride
    of H x W elements and took 320 ms for 8 x 19 x 512 x 512, more than the model's forward
    pass; a running maximum over the C contiguous planes takes about 55 ms.
    """
    classes = scores.shape[dim]
    if scores.device.type != "cpu" or classes > 256 or not scores.is_floating_point() or classes < 2:
        return scores.argmax(dim)
    planes = scores.unbind(dim)
    best = planes[0].clone()
    ids = torch.zeros(best.shape, dtype=torch.uint8, device=scores.device)
    better = torch.empty(best.shape, dtype=torch.bool, device=scores.device)
    for c in range(1, classes):
        torch.gt(planes[c], best, out=better)
        ids.masked_fill_(better, c)
        torch.maximum(best, planes[c], out=best)
    return ids


def _as_batch(x: MaskLike, what: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise DataError(f"{what} must hold integer class ids, got dtype {t.dtype} "
                        "(take the argmax over the class dimension first)")
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if t.dim() != 3:
        raise DataError(f"{what} must be H x W or B x H x W, got shape {tuple(t.shape)}")
    return t


def _check_range(t: torch.Tensor, num_classes: int, what: str) -> None:
    # An out-of-range id would not just be wrong: with the flat per-image index it would
    # land in another image's (or another class's) bins, so it has to be refused.
    if t.numel() == 0:
        return
    lo, hi = torch.aminmax(t)
    lo, hi = int(lo), int(hi)
    if lo < 0 or hi >= num_classes:
        raise DataError(f"{what} holds class id {lo if lo < 0 else hi}, outside "
                        f"0..{num_classes - 1} for {num_classes} classes")


def confusion_per_image(pred: MaskLike, gt: MaskLike, num_classes: int) -> torch.Tensor:
    """Pixel confusion matrices, one per image: ``out[b, g, p]`` counts pixels of ground-truth
    class ``g`` predicted as ``p`` in image ``b``.

    ``pred`` and ``gt`` are H x W or B x H x W tensors (or numpy arrays) of class ids, any
    integer dtype (uint8 included), same shape, same device. Returns a ``LongTensor[B, C, C]``
    on that device.
    """
    if num_classes < 1:
        raise DataError(f"num_classes must be at least 1, got {num_classes}")
    p = _as_batch(pred, "pred")
    g = _as_batch(gt, "gt")
    if p.shape != g.shape:
        raise DataError(f"pred and gt differ in shape: {tuple(p.shape)} vs {tuple(g.shape)}")
    if p.device != g.device:
        raise DataError(f"pred and gt are on different devices: {p.device} vs {g.device}")
    _check_range(p, num_classes, "pred")
    _check_range(g, num_classes, "gt")
    b = g.shape[0]
    c = num_classes
    # In-place on one int64 buffer: the batch can be ~8M pixels, so every temporary counts.
    idx = g.to(torch.long, copy=True)
    idx.mul_(c).add_(p)
    idx.add_((torch.arange(b, device=idx.device) * (c * c)).view(b, 1, 1))
    counts = torch.bincount(idx.view(-1), minlength=b * c * c)
    return counts.view(b, c, c)


def _counts(conf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """tp, fp, fn per class along the last dim, from ``[..., C, C]`` confusion."""
    tp = conf.diagonal(dim1=-2, dim2=-1)
    fp = conf.sum(dim=-2) - tp
    fn = conf.sum(dim=-1) - tp
    return tp, fp, fn


def class_fscore(conf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class F (float64, CPU) and a mask of the classes present in the ground truth, from
    ``[..., C, C]`` confusion. F of an absent class is computed but meaningless: use the mask.
    """
    # Float64 on the CPU: matches a numpy scorer, and MPS has no float64 at all. The
    # confusion is tiny next to the masks, so the copy costs nothing.
    conf = conf.detach().to("cpu", torch.float64)
    tp, fp, fn = _counts(conf)
    precision = tp / (tp + fp + EPS)
    recall = tp / (tp + fn + EPS)
    f = 2 * precision * recall / (precision + recall + EPS)
    present = (tp + fn) > 0
    return f, present


def _mean_over_present(f: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    # An image with no pixels has no classes present: 0/0 gives NaN, which is the honest
    # answer and is refused earlier by the accumulator anyway.
    return (f * present).sum(dim=-1) / present.sum(dim=-1)


def fscore_from_confusion(conf: torch.Tensor) -> torch.Tensor:
    """The competition F-score of each ``[C, C]`` confusion in ``conf[..., C, C]``."""
    f, present = class_fscore(conf)
    return _mean_over_present(f, present)


def fscore_per_image(pred: MaskLike, gt: MaskLike, num_classes: int) -> torch.Tensor:
    """The competition score of each image: ``Tensor[B]``, float64, on the CPU.

    For every class present in that image's ground truth, F = 2PR/(P+R+1e-7) with
    P = tp/(tp+fp+1e-7) and R = tp/(tp+fn+1e-7); the image's score is the mean of those F.
    A class that is predicted but absent from the ground truth is not averaged in.
    """
    return fscore_from_confusion(confusion_per_image(pred, gt, num_classes))


def fscore_reference(pred: np.ndarray, gt: np.ndarray) -> float:
    """The README formula for one image, written out literally, for cross-checking.

    Deliberately slow and obvious; use ``fscore_per_image`` for real work.
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    scores = []
    for c in np.unique(gt):
        tp = np.sum((pred == c) & (gt == c))
        fp = np.sum((pred == c) & (gt != c))
        fn = np.sum((pred != c) & (gt == c))
        precision = tp / (tp + fp + 1e-7)
        recall = tp / (tp + fn + 1e-7)
        scores.append(2 * precision * recall / (precision + recall + 1e-7))
    return float(np.mean(scores))


# A competition's ``metric`` name picks its per-image scorer here:
# (pred, gt, num_classes) -> Tensor[B] of per-image scores, higher is better.
METRICS: dict[str, Callable[[MaskLike, MaskLike, int], torch.Tensor]] = {
    "fscore": fscore_per_image,
}


def get_metric(name: str) -> Callable[[MaskLike, MaskLike, int], torch.Tensor]:
    """The per-image scorer registered as ``name``."""
    try:
        return METRICS[name]
    except KeyError:
        known = ", ".join(sorted(METRICS))
        raise UnknownComponent(f"unknown metric {name!r}; cpx knows: {known}") from None


def _nan_to_none(x: Any) -> Any:
    # JSON has no NaN; ``null`` reads as "not defined" which is what NaN means here.
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, list):
        return [_nan_to_none(v) for v in x]
    return x


@dataclass
class Scores:
    """What a validation pass measured.

    - ``fscore``: THE competition metric: mean over images of the per-image F-score.
    - ``per_image``: each image's F-score, in the order the images were given to ``update``.
    - ``per_class_f``: for class c, the mean of c's F over the images whose ground truth
      contains c (images without c do not count); NaN when no image contains c. Its mean is
      not ``fscore``: here a class seen in two images weighs as much as one seen in all.
    - ``class_images``: how many images' ground truth contains each class.
    - ``pixel_acc``: correctly labelled pixels / all pixels, over the whole set.
    - ``miou``: mean IoU = tp/(tp+fp+fn) over the classes present in the pooled ground truth,
      counts pooled over the whole set.
    - ``pooled_fscore``: NOT the scorer's metric. What the old scripts reported: the same F
      formula on groups of ``pool_size`` consecutive images pooled into one mask (classes
      present in the pooled ground truth), averaged over the groups; a trailing short group
      counts as one group. It rewards large classes and is kept only to compare with old logs.
    """

    fscore: float
    per_image: list[float]
    per_class_f: list[float]
    class_images: list[int]
    pixel_acc: float
    miou: float
    pooled_fscore: float
    pool_size: int
    num_images: int = field(init=False)

    def __post_init__(self) -> None:
        self.num_images = len(self.per_image)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values; NaN becomes None."""
        return {k: _nan_to_none(v) for k, v in asdict(self).items()}


class ScoreAccumulator:
    """Collects scores over batches; ``compute()`` gives the totals as ``Scores``.

    ``update(pred, gt)`` takes B x H x W (or H x W) integer masks of class ids. Only small
    per-class counts are kept, on the CPU, so memory does not grow with image size.
    """

    def __init__(self, num_classes: int, pool_size: int = 32):
        if num_classes < 1:
            raise DataError(f"num_classes must be at least 1, got {num_classes}")
        if pool_size < 1:
            raise DataError(f"pool_size must be at least 1, got {pool_size}")
        self.num_classes = num_classes
        self.pool_size = pool_size
        self.reset()

    def reset(self) -> None:
        """Forget every image seen so far."""
        c = self.num_classes
        self._per_image: list[float] = []
        self._class_f_sum = torch.zeros(c, dtype=torch.float64)
        self._class_images = torch.zeros(c, dtype=torch.long)
        self._total = torch.zeros(c, c, dtype=torch.long)
        self._pool = torch.zeros(c, c, dtype=torch.long)
        self._pool_count = 0
        self._pool_scores: list[float] = []

    def update(self, pred: MaskLike, gt: MaskLike) -> torch.Tensor:
        """Adds a batch; returns its per-image scores (``Tensor[B]``, float64, CPU)."""
        g = _as_batch(gt, "gt")
        if g.shape[-1] == 0 or g.shape[-2] == 0:
            raise DataError(f"cannot score empty masks of shape {tuple(g.shape)}")
        conf = confusion_per_image(pred, g, self.num_classes).cpu()
        f, present = class_fscore(conf)
        scores = _mean_over_present(f, present)
        self._per_image.extend(scores.tolist())
        self._class_f_sum += (f * present).sum(dim=0)
        self._class_images += present.sum(dim=0)
        self._total += conf.sum(dim=0)
        # Pools follow update order across batch boundaries, so the result does not depend
        # on how the caller batched the images.
        for one in conf:
            self._pool += one
            self._pool_count += 1
            if self._pool_count == self.pool_size:
                self._close_pool()
        return scores

    def _close_pool(self) -> None:
        self._pool_scores.append(float(fscore_from_confusion(self._pool)))
        self._pool.zero_()
        self._pool_count = 0

    def compute(self) -> Scores:
        """The :class:`Scores` of every image seen: mean per-image F (the competition score), pooled
        F, per-class F with the number of images each class is present in, pixel accuracy and mIoU.

        :raises DataError: no image was added.
        """
        if not self._per_image:
            raise DataError("no images were scored")
        pooled = list(self._pool_scores)
        if self._pool_count:
            pooled.append(float(fscore_from_confusion(self._pool)))

        n = self._class_images
        per_class = torch.where(n > 0, self._class_f_sum / n.clamp(min=1),
                                torch.full_like(self._class_f_sum, math.nan))

        total = self._total.to(torch.float64)
        tp, fp, fn = _counts(total)
        present = (tp + fn) > 0
        iou = tp / (tp + fp + fn).clamp(min=1)

        return Scores(
            fscore=float(np.mean(self._per_image)),
            per_image=list(self._per_image),
            per_class_f=per_class.tolist(),
            class_images=n.tolist(),
            pixel_acc=float(tp.sum() / total.sum()),
            miou=float(iou[present].mean()),
            pooled_fscore=float(np.mean(pooled)),
            pool_size=self.pool_size,
        )
