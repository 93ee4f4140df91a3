"""Metrics: what a competition ranks by, computed from per-image confusion counts.

A metric is a plugin (``register_metrics``; built-ins in ``cpx_plugins.metrics``) that turns
per-image counts into scores: for each image and class, ``tp`` (pixels of the class predicted
as it), ``fp`` (other pixels predicted as it) and ``fn`` (pixels of the class predicted as
something else), ground-truth pixels at the competition's ignore index left out. From those
counts a metric gives each image's own value and the value over a set of images — the mean of
the images' values for a per-image metric (the CelebAMask F-score, mean Dice), or the formula
applied once to the counts summed over every image for a pooled one (mmsegmentation's mIoU,
the IoU of one class over a test set). As torchmetrics and mmsegmentation do, the counts are
collected first and the formula applied at the end, so per-image means and dataset-pooled
values share one contract and are never confused.

Values are fractions (0..1) inside a metric; :class:`ScoreAccumulator` gives them on the
metric's scale (``metric: {scale: 100}`` for organisers who print percent), which is what
cpx shows, records and compares with leaderboard scores.

Counting is one ``bincount`` per batch on whichever device the masks live on; formulas are
finished in float64 on the CPU, so they match a plain numpy scorer to ~1e-12.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Union

from cpx.data.competition import IGNORE
from cpx.kernel.errors import DataError

if TYPE_CHECKING:
    import numpy as np
    import torch

# torch is imported by the functions that make tensors: choosing a metric (its name, scale and
# direction, for `cpx leaderboard`) does not wait for it
MaskLike = Union["torch.Tensor", "np.ndarray"]


def class_ids(scores: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """``scores.argmax(dim)`` (first maximum on ties), as uint8 when the classes fit in it.

    On a CPU, argmax over the class dimension of a B x C x H x W tensor reads it with a stride
    of H x W elements and took 320 ms for 8 x 19 x 512 x 512, more than the model's forward
    pass; a running maximum over the C contiguous planes takes about 55 ms.
    """
    import torch

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
    import torch

    t = torch.as_tensor(x)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise DataError(f"{what} must hold integer class ids, got dtype {t.dtype} "
                        "(take the argmax over the class dimension first)")
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if t.dim() != 3:
        raise DataError(f"{what} must be H x W or B x H x W, got shape {tuple(t.shape)}")
    return t


def _check_range(t: torch.Tensor, num_classes: int, what: str, ignore: bool = False) -> None:
    import torch

    # An out-of-range id would not just be wrong: with the flat per-image index it would
    # land in another image's (or another class's) bins, so it has to be refused.
    if t.numel() == 0:
        return
    values = t[t != IGNORE] if ignore else t
    if values.numel() == 0:
        return
    lo, hi = torch.aminmax(values)
    lo, hi = int(lo), int(hi)
    if lo < 0 or hi >= num_classes:
        raise DataError(f"{what} holds class id {lo if lo < 0 else hi}, outside "
                        f"0..{num_classes - 1} for {num_classes} classes")


def confusion_per_image(pred: MaskLike, gt: MaskLike, num_classes: int) -> torch.Tensor:
    """Pixel confusion matrices, one per image: ``out[b, g, p]`` counts pixels of ground-truth
    class ``g`` predicted as ``p`` in image ``b``; ground-truth pixels holding
    :data:`cpx.data.masks.IGNORE` (the competition's ignore index) are not counted.

    ``pred`` and ``gt`` are H x W or B x H x W tensors (or numpy arrays) of class ids, any
    integer dtype (uint8 included), same shape, same device. Returns a ``LongTensor[B, C, C]``
    on that device.

    :raises DataError: shapes or devices that differ, float masks, ids out of range.
    """
    import torch

    if num_classes < 1:
        raise DataError(f"num_classes must be at least 1, got {num_classes}")
    p = _as_batch(pred, "pred")
    g = _as_batch(gt, "gt")
    if p.shape != g.shape:
        raise DataError(f"pred and gt differ in shape: {tuple(p.shape)} vs {tuple(g.shape)}")
    if p.device != g.device:
        raise DataError(f"pred and gt are on different devices: {p.device} vs {g.device}")
    _check_range(p, num_classes, "pred")
    _check_range(g, num_classes, "gt", ignore=num_classes <= IGNORE)
    b = g.shape[0]
    c = num_classes
    # In-place on one int64 buffer: the batch can be ~8M pixels, so every temporary counts.
    idx = g.to(torch.long, copy=True)
    keep = None
    if num_classes <= IGNORE and bool((g == IGNORE).any()):
        keep = (g != IGNORE).view(-1)
    idx.mul_(c).add_(p)
    idx.add_((torch.arange(b, device=idx.device) * (c * c)).view(b, 1, 1))
    flat = idx.view(-1) if keep is None else idx.view(-1)[keep]
    counts = torch.bincount(flat, minlength=b * c * c)
    return counts.view(b, c, c)


def counts_of(conf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(tp, fp, fn)`` per class along the last dim, from ``[..., C, C]`` confusion
    (``conf[..., g, p]``)."""
    tp = conf.diagonal(dim1=-2, dim2=-1)
    fp = conf.sum(dim=-2) - tp
    fn = conf.sum(dim=-1) - tp
    return tp, fp, fn


def safe_ratio(num: torch.Tensor, den: torch.Tensor, empty: float = math.nan) -> torch.Tensor:
    """``num / den`` in float64, ``empty`` where ``den`` is 0."""
    import torch

    num, den = num.to(torch.float64), den.to(torch.float64)
    return torch.where(den > 0, num / den.clamp(min=1e-300), torch.full_like(num, empty))


def nanmean(values: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """The mean over ``dim`` of the values that are not NaN (NaN where all are)."""
    import torch

    ok = ~torch.isnan(values)
    total = torch.where(ok, values, torch.zeros_like(values)).sum(dim)
    n = ok.sum(dim)
    return torch.where(n > 0, total / n.clamp(min=1), torch.full_like(total, math.nan))


class Metric(ABC):
    """A metric over per-image confusion counts (see the module docstring).

    Subclasses set :attr:`label` (what the number is, for people), :attr:`pooled` and, for a
    metric where lower is better, :attr:`greater_is_better`; they implement
    :meth:`image_values` and, when pooled, :meth:`pooled_value`. The registry's factory
    ``factory(options, classes)`` builds one for a competition's class names; the core sets
    :attr:`name` and :attr:`scale` from the profile.

    Every method takes ``tp``, ``fp``, ``fn`` as ``LongTensor[N, C]`` (N images, C classes) or
    ``[C]`` (counts summed over a set) and returns float64 fractions on the CPU.
    """

    name: str = ""
    label: str = ""
    scale: float = 1.0
    greater_is_better: bool = True
    pooled: bool = False  # one value from the summed counts, not the mean of the images' values

    @abstractmethod
    def image_values(self, tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
        """Each image's own value, ``Tensor[N]`` in 0..1 (NaN where the formula is undefined):
        for a per-image metric the value averaged over images; for a pooled one the same
        formula on one image's counts, used for paired per-image comparisons of runs."""

    def pooled_value(self, tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> float:
        """The value of counts summed over a set (``[C]`` each); pooled metrics implement it."""
        raise NotImplementedError(f"metric {self.name} is not pooled")

    def value(self, tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> float:
        """The metric over N images (``[N, C]`` counts), in 0..1: the pooled formula on the
        summed counts, or the mean of the images' values (NaN images left out)."""
        if self.pooled:
            return float(self.pooled_value(tp.sum(0), fp.sum(0), fn.sum(0)))
        return float(nanmean(self.image_values(tp, fp, fn), dim=0))

    def class_values(self, tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
        """Each class's value for the per-class table, ``Tensor[C]`` (NaN: not defined). The
        default is the class's IoU pooled over the set, tp / (tp + fp + fn)."""
        return safe_ratio(tp.sum(0), (tp + fp + fn).sum(0))

    def better(self, a: float, b: float) -> bool:
        """Whether score ``a`` beats score ``b`` (NaN and None never beat anything)."""
        if a is None or a != a:
            return False
        if b is None or b != b:
            return True
        return a > b if self.greater_is_better else a < b

    def worst(self) -> float:
        """A score every real score beats."""
        return -math.inf if self.greater_is_better else math.inf


def metric_tag(name: str, scale: float = 1.0) -> str:
    """``class-iou x100`` / ``fscore``: a metric's name with its scale when it is not 1, as the
    ledger records which metric a score is."""
    return name + (f" x{scale:g}" if scale != 1 else "")


def create_metric(competition: Any, host: Any) -> Metric:
    """The ranked metric of ``competition`` (its ``metric`` spec) from ``host``'s registry, on
    the profile's scale.

    :raises UnknownComponent: an unregistered metric; :raises ConfigError: options that do not
        validate (named ``metric.<field>``).
    """
    spec = competition.metric
    metric = host.metrics.get(spec.name).create(spec.options, tuple(competition.classes), where="metric")
    if not isinstance(metric, Metric):
        raise DataError(f"metric {spec.name}: its factory returned {type(metric).__name__}, not a cpx Metric")
    metric.name = spec.name
    metric.scale = float(spec.scale)
    return metric


def _nan_to_none(x: Any) -> Any:
    # JSON has no NaN; ``null`` reads as "not defined" which is what NaN means here.
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, list):
        return [_nan_to_none(v) for v in x]
    return x


@dataclass
class Scores:
    """What a validation pass measured, every score on the metric's scale.

    - ``score``: THE competition metric over the images (``metric``, ``label``, ``scale``).
    - ``per_image``: each image's own value, in the order the images were given to ``update``
      (for pooled metrics the same formula on that image alone; for paired comparisons).
    - ``per_class``: the metric's per-class table (NaN: not defined); ``class_images``: how many
      images' ground truth contains each class.
    - ``pixel_acc`` and ``miou``: pixel accuracy and mmsegmentation's mIoU over the set, as
      fractions, for reference whatever the ranked metric is.
    """

    metric: str
    label: str
    scale: float
    greater_is_better: bool
    score: float
    per_image: list[float]
    per_class: list[float]
    class_images: list[int]
    pixel_acc: float
    miou: float
    num_images: int = field(init=False)

    def __post_init__(self) -> None:
        self.num_images = len(self.per_image)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values; NaN becomes None."""
        return {k: _nan_to_none(v) for k, v in asdict(self).items()}


class ScoreAccumulator:
    """Collects per-image counts over batches; ``compute()`` gives :class:`Scores`.

    ``update(pred, gt)`` takes B x H x W (or H x W) integer masks of class ids. Only the
    per-image counts (3 x C numbers an image) and the pooled confusion are kept, so memory does
    not grow with image size.
    """

    def __init__(self, metric: Metric, num_classes: int):
        if num_classes < 1:
            raise DataError(f"num_classes must be at least 1, got {num_classes}")
        self.metric = metric
        self.num_classes = num_classes
        self.reset()

    def reset(self) -> None:
        """Forget every image seen so far."""
        import torch

        c = self.num_classes
        self._counts: list[torch.Tensor] = []  # [B, 3, C] per batch: tp, fp, fn
        self.confusion = torch.zeros(c, c, dtype=torch.long)  # pooled, ``[g, p]``

    def update(self, pred: MaskLike, gt: MaskLike) -> torch.Tensor:
        """Adds a batch; returns its images' values on the metric's scale (``Tensor[B]``,
        float64, CPU)."""
        import torch

        g = _as_batch(gt, "gt")
        if g.shape[-1] == 0 or g.shape[-2] == 0:
            raise DataError(f"cannot score empty masks of shape {tuple(g.shape)}")
        conf = confusion_per_image(pred, g, self.num_classes).cpu()
        tp, fp, fn = counts_of(conf)
        self._counts.append(torch.stack([tp, fp, fn], dim=1))
        self.confusion += conf.sum(dim=0)
        return self.metric.image_values(tp, fp, fn) * self.metric.scale

    def add_counts(self, tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> None:
        """Add images by their counts (``LongTensor[N, C]`` each), e.g. another process's."""
        import torch

        if len(tp):
            self._counts.append(torch.stack([tp, fp, fn], dim=1).cpu())

    @property
    def images(self) -> int:
        """How many images were added."""
        return sum(len(c) for c in self._counts)

    def counts(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(tp, fp, fn)`` of every image added, ``LongTensor[N, C]`` each."""
        import torch

        if not self._counts:
            empty = torch.zeros(0, self.num_classes, dtype=torch.long)
            return empty, empty, empty
        stacked = torch.cat(self._counts)
        return stacked[:, 0], stacked[:, 1], stacked[:, 2]

    def compute(self) -> Scores:
        """The :class:`Scores` of every image added.

        :raises DataError: no image was added.
        """
        if not self._counts:
            raise DataError("no images were scored")
        m = self.metric
        tp, fp, fn = self.counts()
        scale = m.scale
        per_image = (m.image_values(tp, fp, fn) * scale).tolist()
        per_class = (m.class_values(tp, fp, fn) * scale).tolist()
        total_tp, total_fp, total_fn = tp.sum(0), fp.sum(0), fn.sum(0)
        union = total_tp + total_fp + total_fn
        return Scores(
            metric=m.name, label=m.label, scale=scale, greater_is_better=m.greater_is_better,
            score=m.value(tp, fp, fn) * scale, per_image=per_image, per_class=per_class,
            class_images=((tp + fn) > 0).sum(0).tolist(),
            pixel_acc=float(total_tp.sum() / (total_tp + total_fn).sum().clamp(min=1)),
            miou=float(nanmean(safe_ratio(total_tp, union))) if bool((union > 0).any()) else math.nan,
        )
