"""Built-in training losses: cross-entropy, soft Dice, focal, Lovasz-softmax, OHEM
cross-entropy, boundary-weighted cross-entropy, and a weighted combination of any of them.

Every loss takes logits ``B x C x H x W`` (any float dtype, bf16 under autocast included) and
class ids ``B x H x W``, and works in float32: bf16 keeps about three significant digits, too
few for probabilities summed over every pixel of a batch (Dice) or for log(1 - p) near p = 1.

Each loss keeps the detached value of its last call; ``last_terms`` turns them into floats only
when someone reads it, so a trainer that logs every N steps pays for one device sync per log,
not one per step.

Ignored pixels
--------------
Every loss takes ``ignore_index`` (the trainer passes cpx's ``IGNORE = 255``, which marks the
padding of letterboxed images and a competition's ``masks.ignore_index``): pixels holding it
add nothing to the loss or to its gradient, and every normalisation counts only the other
pixels, as ``F.cross_entropy(ignore_index=...)`` does (a weighted mean over the kept pixels).
A batch with no kept pixel scores 0. Without ``ignore_index``, a target id outside
``0..C-1`` is a ``ValueError`` rather than an out-of-range index deep inside a gather; that
check reads one boolean per term and call (on a GPU, a device sync per step, which is cheap
next to an opaque device-side assert).

Class weights from the data
---------------------------
``class_weights`` takes a list (one weight per class) or the name of a scheme computed from
the training data's class pixel frequencies, ``"sqrt-inverse-frequency"``
(``w_c = 1 / sqrt(f_c)``, scaled to mean 1 over the classes). The trainer passes those
frequencies to every loss factory that takes the ``class_frequencies`` keyword (see
``register_losses`` in :mod:`cpx.kernel.hookspecs`); a loss asking for a scheme without them
(built outside training) is a configuration error.
"""

from __future__ import annotations

import copy
import math
from typing import Annotated, Any, Literal, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model, model_validator
from pydantic.fields import FieldInfo
from torch import nn

from cpx.data.masks import class_frequencies
from cpx.kernel.errors import ConfigError
from cpx.kernel.hookspecs import hookimpl

NonNegative = Annotated[float, Field(ge=0)]

_CLASS_WEIGHTS_HELP = ("Per-class weights, one per class in class-id order (rare classes get more weight), "
                       "or 'sqrt-inverse-frequency' to compute 1/sqrt(pixel share) from the training data "
                       "(scaled to mean 1). None weighs every class equally.")


def _check_weights(value: list[float]) -> list[float]:
    # all-zero weights make the weighted mean 0/0, which surfaces later as a NaN loss
    if not any(w > 0 for w in value):
        raise ValueError("at least one class weight must be positive")
    return value


WeightList = Annotated[list[NonNegative], AfterValidator(_check_weights)]
# a list of weights, or a scheme computed from the data's class pixel frequencies
ClassWeights = Union[WeightList, Literal["sqrt-inverse-frequency"]]
WEIGHT_SCHEMES = ("sqrt-inverse-frequency",)


# --- class pixel frequencies: the hook through which a trainer hands the data's statistics ---

def class_frequencies_from_masks(masks: torch.Tensor, num_classes: int) -> list[float]:
    """Share of pixels of each class id in ``masks`` (any integer tensor; ids outside
    ``0..num_classes-1`` are ignored), as a list summing to 1."""
    shares = class_frequencies(masks, num_classes)
    if not any(shares):
        raise ValueError("the masks hold no pixel of any class")
    return shares


def _normalised(frequencies: Sequence[float]) -> list[float]:
    values = [float(f) for f in frequencies]
    if any(not math.isfinite(f) or f < 0 for f in values) or sum(values) <= 0:
        raise ConfigError("class frequencies must be finite, non-negative and not all zero")
    total = sum(values)
    return [f / total for f in values]


def weights_from_frequencies(frequencies: Sequence[float], scheme: str = "sqrt-inverse-frequency") -> list[float]:
    """Class weights of ``scheme`` from pixel frequencies, scaled to mean 1 over the classes.

    ``sqrt-inverse-frequency``: ``w_c = 1 / sqrt(f_c)``. A class with no pixels gets the largest
    weight of the others (it only matters once such a class appears).
    """
    if scheme != "sqrt-inverse-frequency":
        raise ValueError(f"unknown class weight scheme {scheme!r}; known: {', '.join(WEIGHT_SCHEMES)}")
    total = float(sum(frequencies))
    raw = [1.0 / math.sqrt(f / total) if f > 0 else 0.0 for f in frequencies]
    top = max(raw)
    if top == 0:
        raise ValueError("class frequencies are all zero")
    raw = [w if w > 0 else top for w in raw]
    mean = sum(raw) / len(raw)
    return [w / mean for w in raw]


class CEOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    class_weights: Optional[ClassWeights] = Field(None, description=_CLASS_WEIGHTS_HELP)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0,
                                   description="Share of the target mass spread evenly over all classes, in [0, 1).")


class DiceOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    smooth: float = Field(1.0, ge=0.0, description="Added to numerator and denominator so classes "
                                                   "absent from the batch do not divide by zero.")


class FocalOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    gamma: float = Field(2.0, ge=0.0, description="Focusing exponent; 0 gives plain (weighted) cross-entropy.")
    class_weights: Optional[ClassWeights] = Field(
        None, description="Per-class alpha: weights, one per class in class-id order; None weighs every class equally.")


class LovaszOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    per_image: bool = Field(False, description="Average the loss over images (each over its own classes) instead "
                                               "of computing it once over the whole batch.")
    classes: Literal["present", "all"] = Field(
        "present", description="Average over the classes present in the target ('present') or over every class "
                               "('all'; absent classes then only penalise false positives).")


class OHEMOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    threshold: Optional[float] = Field(0.7, gt=0.0, le=1.0,
                                       description="Keep pixels whose predicted probability of their true class is "
                                                   "below this; None keeps by keep_fraction and min_kept alone.")
    keep_fraction: Optional[float] = Field(None, gt=0.0, le=1.0,
                                           description="Also keep at least this share of the batch's pixels, the "
                                                       "hardest (highest cross-entropy) first; None: no share.")
    min_kept: int = Field(65536, ge=1, description="Keep at least this many pixels (the hardest), whatever the "
                                                   "threshold, so easy batches still train.")
    class_weights: Optional[ClassWeights] = Field(None, description=_CLASS_WEIGHTS_HELP)


class BoundaryOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    width: int = Field(2, ge=1, description="Half-width of the band around label edges, in pixels of the training "
                                            "resolution: a pixel is in the band when a pixel of another class lies "
                                            "within this many pixels (a (2 width + 1) square window).")
    band_weight: float = Field(5.0, ge=1.0, description="Cross-entropy weight of band pixels relative to the others "
                                                        "(1 gives plain cross-entropy).")
    class_weights: Optional[ClassWeights] = Field(None, description=_CLASS_WEIGHTS_HELP)


def _weight_tensor(values: Optional[ClassWeights], num_classes: int,
                   class_frequencies: Optional[Sequence[float]] = None) -> Optional[torch.Tensor]:
    if values is None:
        return None
    if isinstance(values, str):
        if class_frequencies is None:
            raise ConfigError(f"class_weights: {values!r} needs the training data's class pixel frequencies, which "
                              "only training provides; give a list of weights instead")
        if len(class_frequencies) != num_classes:
            raise ConfigError(f"class_weights: {len(class_frequencies)} class frequencies given, "
                              f"expected {num_classes} (one per class)")
        values = weights_from_frequencies(_normalised(class_frequencies), values)
    if len(values) != num_classes:
        raise ConfigError(f"class_weights: expected {num_classes} values (one per class), got {len(values)}")
    return torch.tensor(values, dtype=torch.float32)


# --- ignored pixels ---


def kept_pixels(target: torch.Tensor, num_classes: int, ignore_index: Optional[int] = None,
                dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``(target, keep)``: the target with ignored pixels relabelled 0, and ``keep``, ``B x H x W``
    of ``dtype``, 1 at the other pixels and 0 at ignored ones (``None`` without ``ignore_index``).

    Relabelling lets gathers, scatters and bincounts index every pixel safely; each term then
    multiplies by ``keep`` so the stand-in id adds nothing. Raises ``ValueError`` when the
    target holds an id that is neither a class id (``0..num_classes-1``) nor ``ignore_index``.
    """
    outside = (target < 0) | (target >= num_classes)
    ignored = None if ignore_index is None else target == ignore_index
    if ignored is not None:
        outside &= ~ignored
    # one reduction per call (a device sync on a GPU) buys an error that names the bad id;
    # an out-of-range gather would fail, on a GPU, as an opaque device-side assert
    if bool(outside.any()):
        bad = int(target[outside][0])
        hint = (f" nor the ignore index {ignore_index}" if ignore_index is not None else
                "; pass ignore_index (cpx marks ignored pixels 255) if that id marks pixels to ignore")
        raise ValueError(f"target holds id {bad}, which is not a class id of {num_classes}-class logits "
                         f"(0..{num_classes - 1}){hint}")
    if ignored is None:
        return target, None
    return target.masked_fill(ignored, 0), (~ignored).to(dtype)


def _masked_mean(values: torch.Tensor, weights: Optional[torch.Tensor]) -> torch.Tensor:
    """``sum(weights * values) / sum(weights)``; 0, not 0/0, when every weight is 0."""
    if weights is None:
        return values.mean()
    return (weights * values).sum() / weights.sum().clamp_min(1e-12)


def _pixel_weights(target: torch.Tensor, keep: Optional[torch.Tensor],
                   weight: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """Each pixel's share of a weighted mean: its class weight, times 0 when ignored."""
    if weight is None:
        return keep
    w = weight[target]
    return w if keep is None else w * keep


# --- the terms, on float32 logits ---


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor] = None,
                  label_smoothing: float = 0.0, ignore_index: Optional[int] = None) -> torch.Tensor:
    """``F.cross_entropy``; with ``ignore_index``, 0 rather than NaN when every pixel is ignored."""
    if ignore_index is None:
        kept_pixels(target, logits.shape[1])
        return F.cross_entropy(logits, target, weight=weight, label_smoothing=label_smoothing)
    safe, keep = kept_pixels(target, logits.shape[1], ignore_index, logits.dtype)
    # a sum over the kept pixels divided by their summed weights is F.cross_entropy's mean,
    # without its 0/0 when nothing is kept
    total = F.cross_entropy(logits, target, weight=weight, label_smoothing=label_smoothing,
                            ignore_index=ignore_index, reduction="sum")
    return total / _pixel_weights(safe, keep, weight).sum().clamp_min(1e-12)


def soft_dice(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0,
              ignore_index: Optional[int] = None) -> torch.Tensor:
    """1 - mean over classes of the Dice score, each class pooled over the whole batch.

    The readable definition: training uses :func:`ce_dice`, which computes the same value and
    gradient faster and is tested against this.

    Pooling over the batch rather than per image keeps small parts (ears, eyes) that are absent
    from one image from yielding a meaningless 0/0 score. Ignored pixels count in no class's
    sums, neither as target nor as prediction.
    """
    num_classes = logits.shape[1]
    target, keep = kept_pixels(target, num_classes, ignore_index, logits.dtype)
    probs = logits.softmax(dim=1)
    flat_target = target.reshape(-1)
    # the intersection only needs each pixel's probability of its own class, which avoids
    # materialising a B x C x H x W one-hot target
    own = probs.gather(1, target.unsqueeze(1)).reshape(-1)
    if keep is None:
        target_count = torch.bincount(flat_target, minlength=num_classes).to(probs.dtype)
        prob_sum = probs.sum(dim=(0, 2, 3))
    else:
        own = own * keep.reshape(-1)
        target_count = probs.new_zeros(num_classes).scatter_add(0, flat_target, keep.reshape(-1))
        prob_sum = (probs * keep.unsqueeze(1)).sum(dim=(0, 2, 3))
    intersection = probs.new_zeros(num_classes).scatter_add(0, flat_target, own)
    dice = (2 * intersection + smooth) / (prob_sum + target_count + smooth).clamp_min(1e-7)
    loss = 1 - dice.mean()
    # with smooth = 0 an empty batch would score 1; nothing kept is nothing to learn: 0
    return loss if keep is None else loss * keep.amax()


class _SoftmaxCEDice(torch.autograd.Function):
    """``ce_w * cross-entropy + dice_w * soft Dice`` from one softmax, with a derived gradient.

    Autograd runs softmax and log-softmax separately and writes and zero-fills several more
    B x C x H x W buffers for the gathers and scatters; at 512px and batch 8 on a CPU that was a
    quarter of a training step. Here one log-softmax pass (exponentiated in place) serves
    both terms and the backward is two passes over the probabilities. Values and gradients
    equal :func:`cross_entropy` and :func:`soft_dice` (tests compare both, and gradcheck).

    Returns the weighted total and the two unweighted terms (these are not differentiable).
    Cross-entropy follows ``F.cross_entropy``: class weights normalise by the summed weights
    of the target pixels, and label smoothing mixes in the weighted mean of -log p over classes.

    ``keep`` (``B x H x W``, 1 for kept and 0 for ignored pixels, or None for all kept) comes
    with a ``target`` whose ignored pixels hold any class id (see :func:`kept_pixels`): it
    scales every pixel's share of the sums, and the gradient at ignored pixels is exactly 0.
    Ignored pixels leave the backward through the saved ``probs`` and ``own``, zeroed there.
    """

    @staticmethod
    def forward(ctx, logits, target, ce_w: float, dice_w: float, weight, eps: float, smooth: float, keep):
        num_classes = logits.shape[1]
        index = target.unsqueeze(1)
        log_p = F.log_softmax(logits, dim=1)
        own_log = log_p.gather(1, index).squeeze(1)
        if keep is not None:
            keep = keep.to(logits.dtype)
        if weight is None:
            w_total = float(num_classes)
        else:
            weight = weight.to(logits.dtype)
            w_total = weight.sum()
        pixel_w = _pixel_weights(target, keep, weight)
        # clamped: with every pixel ignored (or of zero weight) the sums below are all 0
        w_sum = float(target.numel()) if pixel_w is None else pixel_w.sum().clamp_min(1e-12)
        nll = -(own_log if pixel_w is None else own_log * pixel_w).sum() / w_sum
        ce = nll
        if eps:
            spread = log_p.sum(1) if weight is None else (log_p * weight.view(1, -1, 1, 1)).sum(1)
            if keep is not None:
                spread = spread * keep
            ce = (1 - eps) * nll - eps * spread.sum() / (w_sum * num_classes)
        probs = log_p.exp_()  # log_p is ours: reuse its memory
        own = own_log.exp()
        flat = target.reshape(-1)
        if keep is None:
            target_count = torch.bincount(flat, minlength=num_classes).to(probs.dtype)
        else:
            # Zeroing an ignored pixel's probabilities (in place, like exp_ above) takes it out
            # of the sums here and, as every gradient term but label smoothing's is a multiple
            # of them or of own, out of the backward too. Summing the masked map was 8x faster
            # than a masked einsum on CPU.
            probs.mul_(keep.unsqueeze(1))
            own = own * keep
            target_count = probs.new_zeros(num_classes).scatter_add_(0, flat, keep.reshape(-1))
        intersection = probs.new_zeros(num_classes).scatter_add_(0, flat, own.reshape(-1))
        denom = (probs.sum(dim=(0, 2, 3)) + target_count + smooth).clamp_min(1e-7)
        per_class = (2 * intersection + smooth) / denom
        dice = 1 - per_class.mean()
        if keep is not None:
            # nothing kept, nothing to learn: 0 even when smooth = 0 would make it 1 (the
            # gradient is 0 either way, so backward needs no term for this factor)
            dice = dice * keep.amax()
        ctx.save_for_backward(probs, target, own, pixel_w, weight, denom, per_class, keep)
        ctx.args = (ce_w, dice_w, eps, w_sum, w_total)
        total = ce_w * ce + dice_w * dice
        ce, dice = ce.detach(), dice.detach()
        ctx.mark_non_differentiable(ce, dice)
        return total, ce, dice

    @staticmethod
    def backward(ctx, grad, _grad_ce, _grad_dice):
        probs, target, own, pixel_w, weight, denom, per_class, keep = ctx.saved_tensors
        ce_w, dice_w, eps, w_sum, w_total = ctx.args
        num_classes = probs.shape[1]
        # d dice / d p_ic = a_c [y_i = c] + b_c; through the softmax this becomes
        # p_ic (a_c [y_i = c] + b_c - s_i) with s_i = a_{y_i} p_{i y_i} + sum_c p_ic b_c
        a = (-2.0 / num_classes) / denom * (dice_w * grad)
        b = (per_class / num_classes) / denom * (dice_w * grad)
        a_own = a[target] * own
        k = (1.0 / w_sum if pixel_w is None else pixel_w / w_sum) * (ce_w * grad)
        s = a_own.clone()
        for c in range(num_classes):  # a class at a time: einsum would first copy probs to B x HW x C
            s.add_(probs[:, c] * b[c])
        alpha = (1 - eps) * k + (eps * ce_w * grad) * w_total / (num_classes * w_sum) - s
        beta = a_own - (1 - eps) * k
        if not isinstance(alpha, torch.Tensor):
            alpha = torch.full_like(own, alpha)
        if not isinstance(beta, torch.Tensor):
            beta = torch.full_like(own, beta)
        out = probs * alpha.unsqueeze(1)
        out.addcmul_(probs, b.view(1, -1, 1, 1))
        out.scatter_add_(1, target.unsqueeze(1), beta.unsqueeze(1))
        if eps:
            w = torch.ones_like(b) if weight is None else weight
            step = (-eps * ce_w * grad / (num_classes * w_sum)) * w.view(1, -1, 1, 1)
            if keep is None:
                out.add_(step)
            else:
                # the one term that is no multiple of probs or own: masked here
                out.addcmul_(keep.unsqueeze(1), step)
        return out, None, None, None, None, None, None, None


def ce_dice(logits: torch.Tensor, target: torch.Tensor, ce_weight: float, dice_weight: float,
            weight: Optional[torch.Tensor] = None, label_smoothing: float = 0.0,
            smooth: float = 1.0, ignore_index: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(ce_weight * CE + dice_weight * Dice, CE, Dice)`` in one fused pass (see ``_SoftmaxCEDice``),
    the pixels holding ``ignore_index`` left out."""
    target, keep = kept_pixels(target, logits.shape[1], ignore_index, logits.dtype)
    return _SoftmaxCEDice.apply(logits, target, float(ce_weight), float(dice_weight), weight,
                                float(label_smoothing), float(smooth), keep)


def focal(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0,
          weight: Optional[torch.Tensor] = None, ignore_index: Optional[int] = None) -> torch.Tensor:
    """Focal loss, normalised like weighted cross-entropy, so gamma=0 reproduces it exactly."""
    target, keep = kept_pixels(target, logits.shape[1], ignore_index, logits.dtype)
    log_p = logits.log_softmax(dim=1).gather(1, target.unsqueeze(1)).squeeze(1)
    loss = -log_p
    if gamma:
        loss = (1 - log_p.exp()).clamp_min(0).pow(gamma) * loss
    return _masked_mean(loss, _pixel_weights(target, keep, weight))


def _lovasz_grad(fg_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovasz extension of the Jaccard loss (Berman et al. 2018, eq. 8-9).

    ``fg_sorted``: ``K x N`` 0/1 foreground indicators, each row sorted by decreasing error.
    Returns the ``K x N`` weights whose dot product with the sorted errors is the loss.
    """
    gts = fg_sorted.sum(1, keepdim=True)
    intersection = gts - fg_sorted.cumsum(1)
    union = gts + (1 - fg_sorted).cumsum(1)
    jaccard = 1 - intersection / union.clamp_min(1e-12)
    return torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], 1)


def _lovasz_flat(probs: torch.Tensor, labels: torch.Tensor, classes: str,
                 keep: Optional[torch.Tensor] = None) -> torch.Tensor:
    # probs: C x N, labels: N, keep: N (1 kept, 0 ignored) or None
    num_classes = probs.shape[0]
    fg = (labels.unsqueeze(0) == torch.arange(num_classes, device=labels.device).unsqueeze(1)).to(probs.dtype)
    errors = (fg - probs).abs()
    if keep is not None:
        # An ignored pixel becomes background of every class with error 0: it sorts after
        # every pixel with an error, so the Jaccard steps of those (the only products that
        # are not 0) see the same counts as without it, and its constant 0 has no gradient.
        fg = fg * keep
        errors = errors * keep
    errors_sorted, order = errors.sort(dim=1, descending=True)
    per_class = (errors_sorted * _lovasz_grad(fg.gather(1, order))).sum(1)
    if classes == "present":
        present = fg.sum(1) > 0
        if not bool(present.any()):
            return probs.sum() * 0.0
        return per_class[present].mean()
    return per_class.mean()


def lovasz_softmax(logits: torch.Tensor, target: torch.Tensor, per_image: bool = False,
                   classes: str = "present", ignore_index: Optional[int] = None) -> torch.Tensor:
    """Lovasz-softmax loss (Berman, Rannen Triki, Blaschko, CVPR 2018): for each class, the
    Lovasz extension of the Jaccard loss applied to the errors ``|[y = c] - p_c|``, averaged
    over the classes present (or all). All classes are sorted at once (one ``C x N`` sort).
    ``per_image`` averages over the images with at least one pixel not ignored."""
    c = logits.shape[1]
    target, keep = kept_pixels(target, c, ignore_index, logits.dtype)
    probs = logits.softmax(1)
    if per_image:
        masks = [None] * len(probs) if keep is None else [k.reshape(-1) for k in keep]
        values = torch.stack([_lovasz_flat(p.reshape(c, -1), t.reshape(-1), classes, k)
                              for p, t, k in zip(probs, target, masks)])
        if keep is None:
            return values.mean()
        # a wholly ignored image has nothing to score; counting its 0 would dilute the others
        return _masked_mean(values, keep.flatten(1).amax(1))
    flat_keep = None if keep is None else keep.reshape(-1)
    return _lovasz_flat(probs.transpose(0, 1).reshape(c, -1), target.reshape(-1), classes, flat_keep)


def ohem_cross_entropy(logits: torch.Tensor, target: torch.Tensor, threshold: Optional[float] = 0.7,
                       keep_fraction: Optional[float] = None, min_kept: int = 1,
                       weight: Optional[torch.Tensor] = None, ignore_index: Optional[int] = None) -> torch.Tensor:
    """Cross-entropy over the hardest pixels only (online hard example mining).

    Keeps the ``k`` pixels of highest cross-entropy, ``k = max(min_kept, pixels whose
    true-class probability is below threshold, ceil(keep_fraction * pixels))``, at most every
    pixel. Since cross-entropy falls as that probability rises, the pixels under the threshold
    are exactly the hardest ones, so every rule selects from the same ranking. The kept pixels
    are averaged like weighted cross-entropy (normalised by their summed class weights).
    Ignored pixels are never selected, and "pixels" above counts only the others.
    """
    target, keep = kept_pixels(target, logits.shape[1], ignore_index, logits.dtype)
    nll = F.cross_entropy(logits, target, reduction="none").reshape(-1)
    flat_target = target.reshape(-1)
    rank = nll.detach()
    if keep is None:
        n = nll.numel()
    else:
        flat_keep = keep.reshape(-1) > 0
        n = int(flat_keep.sum())
        if n == 0:
            return (nll * 0).sum()  # nothing kept: 0, still part of the graph
        # ignored pixels rank below every kept one, so a top-k with k <= n never picks them
        rank = rank.masked_fill(~flat_keep, -math.inf)
    k = min_kept
    if threshold is not None:
        hard = rank > -math.log(threshold)
        k = max(k, int(hard.sum()))
    if keep_fraction is not None:
        k = max(k, math.ceil(keep_fraction * n))
    k = min(k, n)
    if k < nll.numel():
        index = rank.topk(k, sorted=False).indices
        nll, flat_target = nll[index], flat_target[index]
    return _masked_mean(nll, None if weight is None else weight[flat_target])


def boundary_band(target: torch.Tensor, width: int, keep: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``B x H x W`` bool: pixels with a pixel of another class within ``width`` pixels
    (a ``2 width + 1`` square window), from a max-pool dilation and erosion of the labels.

    With ``keep`` (1 kept, 0 ignored), only kept pixels count, as centres and as neighbours:
    the edge of an ignored area (letterbox padding, an unlabelled region) is no class edge.
    """
    labels = target.unsqueeze(1).float()
    k = 2 * width + 1
    if keep is None:
        dilated = F.max_pool2d(labels, k, 1, width)
        eroded = -F.max_pool2d(-labels, k, 1, width)
        return (dilated != eroded).squeeze(1)
    kept = keep.unsqueeze(1) > 0
    # an ignored pixel takes -inf for the maximum and +inf for the minimum, so it decides
    # neither; a kept centre always has its own id in its window, so both stay finite there
    dilated = F.max_pool2d(labels.masked_fill(~kept, -math.inf), k, 1, width)
    eroded = -F.max_pool2d(-labels.masked_fill(~kept, math.inf), k, 1, width)
    return ((dilated != eroded) & kept).squeeze(1)


def boundary_cross_entropy(logits: torch.Tensor, target: torch.Tensor, width: int = 2, band_weight: float = 5.0,
                           weight: Optional[torch.Tensor] = None, ignore_index: Optional[int] = None) -> torch.Tensor:
    """Cross-entropy with pixels in the band around label edges weighted ``band_weight`` times
    (times their class weight), normalised by the summed pixel weights (see :func:`boundary_band`
    for ignored pixels)."""
    target, keep = kept_pixels(target, logits.shape[1], ignore_index, logits.dtype)
    nll = F.cross_entropy(logits, target, reduction="none")
    w = 1.0 + (band_weight - 1.0) * boundary_band(target, width, keep).to(nll.dtype)
    if weight is not None:
        w = w * weight[target]
    if keep is not None:
        w = w * keep
    return (w * nll).sum() / w.sum().clamp_min(1e-12)


class _Loss(nn.Module):
    """Shared plumbing: float32 inputs outside autocast, lazily read term values, and the
    ignore index every term leaves out (None: every pixel counts)."""

    def __init__(self, class_weights: Optional[torch.Tensor] = None, ignore_index: Optional[int] = None):
        super().__init__()
        # a buffer follows .to(device) with the rest of the training state
        self.register_buffer("class_weights", class_weights, persistent=False)
        self.ignore_index = ignore_index
        self._last: dict[str, torch.Tensor] = {}

    @property
    def last_terms(self) -> dict[str, float]:
        """Unweighted value of each term from the last call (reading it syncs the device)."""
        return {name: float(value) for name, value in self._last.items()}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=logits.device.type, enabled=False):
            weight = None if self.class_weights is None else self.class_weights.to(logits.device)
            terms, total = self.compute(logits.float(), target.long(), weight)
        self._last = {name: value.detach() for name, value in terms.items()}
        return total

    def compute(self, logits, target, weight):  # pragma: no cover - abstract
        raise NotImplementedError


class CrossEntropyLoss(_Loss):
    def __init__(self, options: CEOptions, num_classes: int, class_frequencies: Optional[Sequence[float]] = None,
                 ignore_index: Optional[int] = None):
        super().__init__(_weight_tensor(options.class_weights, num_classes, class_frequencies), ignore_index)
        self.label_smoothing = options.label_smoothing

    def compute(self, logits, target, weight):
        value = cross_entropy(logits, target, weight, self.label_smoothing, self.ignore_index)
        return {"ce": value}, value


class DiceLoss(_Loss):
    def __init__(self, options: DiceOptions, num_classes: int, class_frequencies: Optional[Sequence[float]] = None,
                 ignore_index: Optional[int] = None):
        super().__init__(ignore_index=ignore_index)
        self.smooth = options.smooth

    def compute(self, logits, target, weight):
        value, _, dice = ce_dice(logits, target, 0.0, 1.0, smooth=self.smooth, ignore_index=self.ignore_index)
        return {"dice": dice}, value


class FocalLoss(_Loss):
    def __init__(self, options: FocalOptions, num_classes: int, class_frequencies: Optional[Sequence[float]] = None,
                 ignore_index: Optional[int] = None):
        super().__init__(_weight_tensor(options.class_weights, num_classes, class_frequencies), ignore_index)
        self.gamma = options.gamma

    def compute(self, logits, target, weight):
        value = focal(logits, target, self.gamma, weight, self.ignore_index)
        return {"focal": value}, value


class LovaszLoss(_Loss):
    def __init__(self, options: LovaszOptions, num_classes: int, class_frequencies: Optional[Sequence[float]] = None,
                 ignore_index: Optional[int] = None):
        super().__init__(ignore_index=ignore_index)
        self.options = options

    def compute(self, logits, target, weight):
        value = lovasz_softmax(logits, target, self.options.per_image, self.options.classes, self.ignore_index)
        return {"lovasz": value}, value


class OHEMLoss(_Loss):
    def __init__(self, options: OHEMOptions, num_classes: int, class_frequencies: Optional[Sequence[float]] = None,
                 ignore_index: Optional[int] = None):
        super().__init__(_weight_tensor(options.class_weights, num_classes, class_frequencies), ignore_index)
        self.options = options

    def compute(self, logits, target, weight):
        o = self.options
        value = ohem_cross_entropy(logits, target, o.threshold, o.keep_fraction, o.min_kept, weight,
                                   self.ignore_index)
        return {"ohem": value}, value


class BoundaryLoss(_Loss):
    def __init__(self, options: BoundaryOptions, num_classes: int, class_frequencies: Optional[Sequence[float]] = None,
                 ignore_index: Optional[int] = None):
        super().__init__(_weight_tensor(options.class_weights, num_classes, class_frequencies), ignore_index)
        self.options = options

    def compute(self, logits, target, weight):
        value = boundary_cross_entropy(logits, target, self.options.width, self.options.band_weight, weight,
                                       self.ignore_index)
        return {"boundary": value}, value


# The terms of the combined loss, in the order their values are reported: name -> (loss, its
# options, what it is, its weight in the combined loss unless set, the description it registers
# with). Each term's options are declared once, in its options model; CombinedOptions is built
# from these models.
TERMS: dict[str, tuple[type[_Loss], type[BaseModel], str, float, str]] = {
    "ce": (CrossEntropyLoss, CEOptions, "cross-entropy", 1.0,
           "Cross-entropy with optional class weights and label smoothing"),
    "dice": (DiceLoss, DiceOptions, "soft Dice", 1.0, "Soft multi-class Dice loss (1 - mean Dice over classes)"),
    "focal": (FocalLoss, FocalOptions, "focal", 0.0,
              "Focal loss: cross-entropy down-weighting pixels already classified well"),
    "lovasz": (LovaszLoss, LovaszOptions, "Lovasz-softmax", 0.0,
               "Lovasz-softmax: a convex surrogate of the per-class Jaccard loss (Berman et al. 2018)"),
    "ohem": (OHEMLoss, OHEMOptions, "OHEM cross-entropy", 0.0,
             "OHEM cross-entropy: only the hardest pixels (under a probability threshold, a kept share, at least "
             "a minimum count)"),
    "boundary": (BoundaryLoss, BoundaryOptions, "boundary-weighted cross-entropy", 0.0,
                 "Cross-entropy up-weighted in a band around label edges"),
}
# Options the combined loss holds once for every term that takes them; every other option of a
# term is the combined loss's ``<term>_<option>`` (``focal_gamma``, ``lovasz_classes``).
SHARED_OPTIONS = ("class_weights", "label_smoothing")


def combined_field(term: str, option: str) -> str:
    """The combined loss's name for option ``option`` of term ``term``."""
    return option if option in SHARED_OPTIONS else f"{term}_{option}"


def _joined(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _combined_fields() -> dict[str, tuple[Any, FieldInfo]]:
    """CombinedOptions' fields: a weight per term, then every term's options (each a copy of the
    term's own field, its description naming the term)."""
    fields: dict[str, tuple[Any, FieldInfo]] = {
        term: (float, Field(weight, ge=0.0, description=f"Weight of the {what} term; 0 skips it."))
        for term, (_, _, what, weight, _) in TERMS.items()}
    for term, (_, options, what, _, _) in TERMS.items():
        for option, info in options.model_fields.items():
            name = combined_field(term, option)
            if name in fields:  # a shared option, already added by an earlier term
                continue
            field = copy.copy(info)
            if option not in SHARED_OPTIONS:
                text = info.description
                text = text[0].lower() + text[1:] if text[1:2].islower() else text
                field.description = f"{what[0].upper()}{what[1:]} term: {text}"
            fields[name] = (info.annotation, field)
    users = [what for _, options, what, _, _ in TERMS.values() if "class_weights" in options.model_fields]
    fields["class_weights"][1].description = f"{_CLASS_WEIGHTS_HELP} Used by the {_joined(users)} terms."
    return fields


class _CombinedBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _some_term(self):
        if not any(getattr(self, term) for term in TERMS):
            raise ValueError(f"{_joined(list(TERMS))} are all 0; at least one term needs a positive weight")
        return self

    def term_options(self, term: str) -> BaseModel:
        """Term ``term``'s own options, read from these; its class weights are left out, as the
        combined loss applies its own to every term."""
        options = TERMS[term][1]
        return options(**{option: getattr(self, combined_field(term, option))
                          for option in options.model_fields if option != "class_weights"})


CombinedOptions = create_model(
    "CombinedOptions", __base__=_CombinedBase, __module__=__name__,
    __doc__="A weight per term, and each term's own options as ``<term>_<option>`` (class weights and label "
            "smoothing once for every term that takes them).",
    **_combined_fields())


class CombinedLoss(_Loss):
    """A weighted sum of the :data:`TERMS`, each computed by its own loss with its own options;
    cross-entropy and Dice share one fused pass whenever Dice is weighted."""

    def __init__(self, options: CombinedOptions, num_classes: int, class_frequencies: Optional[Sequence[float]] = None,
                 ignore_index: Optional[int] = None):
        super().__init__(_weight_tensor(options.class_weights, num_classes, class_frequencies), ignore_index)
        self.options = options
        self.weights = {term: getattr(options, term) for term in TERMS if getattr(options, term)}
        # the terms get the class weights at each call, from this loss
        self.terms = nn.ModuleDict({term: TERMS[term][0](options.term_options(term), num_classes,
                                                         ignore_index=ignore_index) for term in self.weights})

    def compute(self, logits, target, weight):
        values: dict[str, torch.Tensor] = {}
        total = 0
        rest = dict(self.weights)
        if "dice" in rest:  # CE and Dice share one softmax (see _SoftmaxCEDice): the fast path
            ce_weight, dice_weight = rest.pop("ce", 0.0), rest.pop("dice")
            total, ce, values["dice"] = ce_dice(logits, target, ce_weight, dice_weight, weight,
                                                self.options.label_smoothing, self.options.dice_smooth,
                                                self.ignore_index)
            if ce_weight:
                values["ce"] = ce
        for term, term_weight in rest.items():
            _, values[term] = self.terms[term].compute(logits, target, weight)
            total = total + term_weight * values[term]
        return {term: values[term] for term in TERMS if term in values}, total


@hookimpl
def register_losses(register):
    for term, (loss, options, _, _, description) in TERMS.items():
        register(term, loss, options=options, description=description)
    register("combined", CombinedLoss, options=CombinedOptions,
             description=f"Weighted sum of {_joined([what for _, _, what, _, _ in TERMS.values()])} terms "
                         "(CE and Dice fused into one pass)")
