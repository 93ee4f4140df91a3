"""Built-in metrics, each from per-image confusion counts (``tp``, ``fp``, ``fn`` per class,
``LongTensor[N, C]``; see :mod:`cpx.eval.metrics`), each with its formula and its source.

============================ ======== ===============================================================
name                         pooled   value
============================ ======== ===============================================================
``fscore``                   no       per image: mean over the classes present in its ground truth
                                      of F = 2PR/(P+R+eps), P = tp/(tp+fp+eps), R = tp/(tp+fn+eps);
                                      mean over images (the CelebAMask mini challenge)
``miou``                     yes      mean over classes of IoU = tp/(tp+fp+fn) on counts summed over
                                      the set, classes with no union left out (mmsegmentation)
``class-iou``                yes      IoU of one named class on counts summed over the set
``dice``                     no       per image: mean over the scored classes of Dice =
                                      2tp/(2tp+fp+fn), 1 when the class is absent from both masks;
                                      mean over images (the medical challenges' convention)
``pooled-dice``              yes      mean over the scored classes of Dice on summed counts
``pixel-accuracy``           yes      correct pixels / scored pixels
``mean-class-accuracy``      yes      mean over classes present of tp/(tp+fn) (mmsegmentation mAcc)
============================ ======== ===============================================================

Pixels at the competition's ignore index are never counted, so every metric honours it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from cpx.eval.metrics import Metric, nanmean, safe_ratio
from cpx.kernel.hookspecs import hookimpl

if TYPE_CHECKING:  # torch is imported where tensors are made: `cpx leaderboard` reads metrics without it
    import torch

# The CelebAMask organisers' constant: it sits in every denominator of their formula, so scores
# are reproducible only with the same value in the same places.
FSCORE_EPS = 1e-7


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def _class_index(value: Union[str, int], classes: tuple[str, ...], field: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{field}: {value!r} is not a class")
    if isinstance(value, int) and 0 <= value < len(classes):
        return value
    if isinstance(value, str) and value in classes:
        return classes.index(value)
    raise ValueError(f"{field}: {value!r} is not one of the classes ({', '.join(classes)})")


class FScore(Metric):
    """Mean per-image F-score over the classes present in each image's ground truth.

    Source: the CelebAMask face parsing mini challenge's published scorer: for one image, for
    every class id c present in the ground truth, P = tp/(tp+fp+1e-7), R = tp/(tp+fn+1e-7),
    F = 2PR/(P+R+1e-7); the image's score is the mean of F over those classes; the reported
    score is the mean over images. A class predicted but absent from the ground truth is not
    averaged in; its pixels count only as the true class's false negatives.
    """

    label = "F-score (per image, mean over its classes, then over images)"

    def _f(self, tp, fp, fn) -> torch.Tensor:
        tp, fp, fn = tp.double(), fp.double(), fn.double()
        precision = tp / (tp + fp + FSCORE_EPS)
        recall = tp / (tp + fn + FSCORE_EPS)
        return 2 * precision * recall / (precision + recall + FSCORE_EPS)

    def image_values(self, tp, fp, fn):
        present = (tp + fn) > 0
        f = self._f(tp, fp, fn)
        # an image with no scored pixels has no class present: 0/0 is the honest NaN
        return (f * present).sum(-1) / present.sum(-1)

    def class_values(self, tp, fp, fn):
        # class c: the mean of c's F over the images whose ground truth holds c
        present = (tp + fn) > 0
        f = self._f(tp, fp, fn)
        return safe_ratio((f * present).sum(0), present.sum(0))


class MeanIoU(Metric):
    """Mean intersection over union on counts summed over the set.

    Source: mmsegmentation's ``IoUMetric`` (``mmseg/evaluation/metrics/iou_metric.py``):
    ``total_area_intersect / total_area_union`` per class, then ``nanmean``: a class with an
    empty union (absent from every ground truth and never predicted) is left out; a class
    predicted but absent from the ground truth counts as IoU 0.
    """

    label = "mIoU (counts pooled over the set)"
    pooled = True

    def image_values(self, tp, fp, fn):
        return nanmean(safe_ratio(tp, tp + fp + fn), dim=-1)

    def pooled_value(self, tp, fp, fn):
        return float(nanmean(safe_ratio(tp, tp + fp + fn), dim=-1))


class ClassIoUOptions(_Options):
    class_: Union[str, int] = Field(alias="class", description="the class scored, by name or id")


class ClassIoU(Metric):
    """The IoU of one class, tp / (tp + fp + fn), on counts summed over the set; 1 when the
    class is neither in the ground truth nor predicted (nothing to get wrong).

    Source: the usual binary-segmentation leaderboard score (the foreground IoU over a whole
    test set, as the drone-vegetation challenge ranks).
    """

    pooled = True

    def __init__(self, index: int, name: str):
        self.index = index
        self.label = f"IoU of {name} (counts pooled over the set)"

    def image_values(self, tp, fp, fn):
        k = self.index
        return safe_ratio(tp[..., k], (tp + fp + fn)[..., k], empty=1.0)

    def pooled_value(self, tp, fp, fn):
        k = self.index
        return float(safe_ratio(tp[k], tp[k] + fp[k] + fn[k], empty=1.0))


class DiceOptions(_Options):
    classes: Optional[list[Union[str, int]]] = Field(
        None, description="the classes scored, by name or id; default every class but the first (background)")
    include_background: bool = Field(False, description="with no classes listed, score class 0 too")


def _dice_classes(options: DiceOptions, classes: tuple[str, ...]) -> list[int]:
    if options.classes is not None:
        if not options.classes:
            raise ValueError("classes: list at least one class")
        return [_class_index(c, classes, "classes") for c in options.classes]
    first = 0 if options.include_background or len(classes) == 1 else 1
    return list(range(first, len(classes)))


class Dice(Metric):
    """Mean per-image Dice over the scored classes: Dice = 2tp / (2tp + fp + fn) per image and
    class, 1 when the class is absent from both the ground truth and the prediction; the
    image's value is the mean over the scored classes, the score the mean over images.

    Source: the convention of the medical segmentation challenges (e.g. the Medical
    Segmentation Decathlon's and nnU-Net's evaluation), where an empty prediction of an empty
    structure is perfect.
    """

    def __init__(self, scored: list[int], classes: tuple[str, ...]):
        self.scored = scored
        self.label = "Dice (per image, " + ("mean over " + ", ".join(classes[i] for i in scored)
                                            if len(scored) < 4 else f"mean over {len(scored)} classes") + ")"

    def _dice(self, tp, fp, fn) -> torch.Tensor:
        import torch

        idx = torch.tensor(self.scored)
        tp, fp, fn = tp[..., idx], fp[..., idx], fn[..., idx]
        return safe_ratio(2 * tp, 2 * tp + fp + fn, empty=1.0)

    def image_values(self, tp, fp, fn):
        return self._dice(tp, fp, fn).mean(-1)

    def class_values(self, tp, fp, fn):
        import torch

        out = torch.full((tp.shape[-1],), float("nan"), dtype=torch.float64)
        out[torch.tensor(self.scored)] = self._dice(tp, fp, fn).mean(0)
        return out


class PooledDice(Dice):
    """Mean over the scored classes of Dice = 2tp / (2tp + fp + fn) on counts summed over the set
    (1 for a class absent from both). Source: the dataset-level Dice of mmsegmentation's
    ``mDice`` (there averaged over all classes), restricted to the scored classes."""

    pooled = True

    def __init__(self, scored: list[int], classes: tuple[str, ...]):
        super().__init__(scored, classes)
        self.label = self.label.replace("per image", "counts pooled over the set")

    def pooled_value(self, tp, fp, fn):
        return float(self._dice(tp, fp, fn).mean())

    def class_values(self, tp, fp, fn):
        import torch

        out = torch.full((tp.shape[-1],), float("nan"), dtype=torch.float64)
        out[torch.tensor(self.scored)] = self._dice(tp.sum(0), fp.sum(0), fn.sum(0))
        return out


class PixelAccuracy(Metric):
    """Correctly labelled pixels / scored pixels over the set (mmsegmentation's ``aAcc``)."""

    label = "pixel accuracy"
    pooled = True

    def image_values(self, tp, fp, fn):
        return safe_ratio(tp.sum(-1), (tp + fn).sum(-1))

    def pooled_value(self, tp, fp, fn):
        return float(safe_ratio(tp.sum(), (tp + fn).sum()))

    def class_values(self, tp, fp, fn):
        return safe_ratio(tp.sum(0), (tp + fn).sum(0))


class MeanClassAccuracy(Metric):
    """Mean over the classes present in the ground truth of tp / (tp + fn) (each class's recall)
    on counts summed over the set. Source: mmsegmentation's ``mAcc``."""

    label = "mean class accuracy"
    pooled = True

    def image_values(self, tp, fp, fn):
        return nanmean(safe_ratio(tp, tp + fn), dim=-1)

    def pooled_value(self, tp, fp, fn):
        return float(nanmean(safe_ratio(tp, tp + fn), dim=-1))

    def class_values(self, tp, fp, fn):
        return safe_ratio(tp.sum(0), (tp + fn).sum(0))


def _class_iou(options: ClassIoUOptions, classes: tuple[str, ...]) -> ClassIoU:
    index = _class_index(options.class_, classes, "class")
    return ClassIoU(index, classes[index])


@hookimpl
def register_metrics(register):
    register("fscore", lambda options, classes: FScore(),
             description="mean per-image F-score over the classes present (CelebAMask mini)")
    register("miou", lambda options, classes: MeanIoU(), description="mIoU on counts pooled over the set (mmseg)")
    register("class-iou", _class_iou, options=ClassIoUOptions,
             description="IoU of one class on counts pooled over the set")
    register("dice", lambda options, classes: Dice(_dice_classes(options, classes), classes), options=DiceOptions,
             description="mean per-image Dice, 1 when a class is absent from both (medical convention)")
    register("pooled-dice", lambda options, classes: PooledDice(_dice_classes(options, classes), classes),
             options=DiceOptions, description="mean class Dice on counts pooled over the set")
    register("pixel-accuracy", lambda options, classes: PixelAccuracy(), description="correct pixels / scored pixels")
    register("mean-class-accuracy", lambda options, classes: MeanClassAccuracy(),
             description="mean over classes of tp / (tp + fn), pooled (mmseg mAcc)")
