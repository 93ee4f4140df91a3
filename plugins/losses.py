"""Built-in training losses: cross-entropy, soft Dice, focal, and a weighted combination.

Every loss takes logits ``B x C x H x W`` (any float dtype, bf16 under autocast included) and
class ids ``B x H x W``, and works in float32: bf16 keeps about three significant digits, too
few for probabilities summed over every pixel of a batch (Dice) or for log(1 - p) near p = 1.

Each loss keeps the detached value of its last call; ``last_terms`` turns them into floats only
when someone reads it, so a trainer that logs every N steps pays for one device sync per log,
not one per step.
"""

from __future__ import annotations

from typing import Annotated, Optional

import torch
import torch.nn.functional as F
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from torch import nn

from cpx.kernel.errors import ConfigError
from cpx.kernel.hookspecs import hookimpl

NonNegative = Annotated[float, Field(ge=0)]

_CLASS_WEIGHTS_HELP = ("Per-class weights, one per class in class-id order; rare classes get "
                       "more weight. None weighs every class equally.")


def _check_weights(value: list[float]) -> list[float]:
    # all-zero weights make the weighted mean 0/0, which surfaces later as a NaN loss
    if not any(w > 0 for w in value):
        raise ValueError("at least one class weight must be positive")
    return value


ClassWeights = Annotated[list[NonNegative], AfterValidator(_check_weights)]


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


class CombinedOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # the CLI shortcuts (--ce, --dice, --focal) write these three names
    ce: float = Field(1.0, ge=0.0, description="Weight of the cross-entropy term; 0 skips it.")
    dice: float = Field(1.0, ge=0.0, description="Weight of the soft Dice term; 0 skips it.")
    focal: float = Field(0.0, ge=0.0, description="Weight of the focal term; 0 skips it.")
    class_weights: Optional[ClassWeights] = Field(
        None, description=_CLASS_WEIGHTS_HELP + " Used by the cross-entropy and focal terms.")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0,
                                   description="Label smoothing of the cross-entropy term, in [0, 1).")
    focal_gamma: float = Field(2.0, ge=0.0, description="Focusing exponent of the focal term.")
    dice_smooth: float = Field(1.0, ge=0.0, description="Smoothing constant of the Dice term.")

    @model_validator(mode="after")
    def _some_term(self) -> "CombinedOptions":
        if self.ce == 0 and self.dice == 0 and self.focal == 0:
            raise ValueError("ce, dice and focal are all 0; at least one term needs a positive weight")
        return self


def _weight_tensor(values: Optional[list[float]], num_classes: int) -> Optional[torch.Tensor]:
    if values is None:
        return None
    if len(values) != num_classes:
        raise ConfigError(f"class_weights: expected {num_classes} values (one per class), got {len(values)}")
    return torch.tensor(values, dtype=torch.float32)


# --- the terms, on float32 logits ---


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor] = None,
                  label_smoothing: float = 0.0) -> torch.Tensor:
    return F.cross_entropy(logits, target, weight=weight, label_smoothing=label_smoothing)


def soft_dice(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - mean over classes of the Dice score, each class pooled over the whole batch.

    The readable definition: training uses :func:`ce_dice`, which computes the same value and
    gradient faster and is tested against this.

    Pooling over the batch rather than per image keeps small parts (ears, eyes) that are absent
    from one image from yielding a meaningless 0/0 score.
    """
    num_classes = logits.shape[1]
    probs = logits.softmax(dim=1)
    flat_target = target.reshape(-1)
    # the intersection only needs each pixel's probability of its own class, which avoids
    # materialising a B x C x H x W one-hot target
    own = probs.gather(1, target.unsqueeze(1)).reshape(-1)
    intersection = probs.new_zeros(num_classes).scatter_add(0, flat_target, own)
    target_count = torch.bincount(flat_target, minlength=num_classes).to(probs.dtype)
    prob_sum = probs.sum(dim=(0, 2, 3))
    dice = (2 * intersection + smooth) / (prob_sum + target_count + smooth).clamp_min(1e-7)
    return 1 - dice.mean()


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
    """

    @staticmethod
    def forward(ctx, logits, target, ce_w: float, dice_w: float, weight, eps: float, smooth: float):
        num_classes = logits.shape[1]
        index = target.unsqueeze(1)
        log_p = F.log_softmax(logits, dim=1)
        own_log = log_p.gather(1, index).squeeze(1)
        if weight is None:
            pixel_w, w_sum, w_total = None, float(target.numel()), float(num_classes)
        else:
            weight = weight.to(logits.dtype)
            pixel_w, w_total = weight[target], weight.sum()
            w_sum = pixel_w.sum()
        nll = -(own_log if pixel_w is None else own_log * pixel_w).sum() / w_sum
        ce = nll
        if eps:
            spread = log_p.sum(1) if weight is None else (log_p * weight.view(1, -1, 1, 1)).sum(1)
            ce = (1 - eps) * nll - eps * spread.sum() / (w_sum * num_classes)
        probs = log_p.exp_()  # log_p is ours: reuse its memory
        own = own_log.exp()
        flat = target.reshape(-1)
        intersection = probs.new_zeros(num_classes).scatter_add_(0, flat, own.reshape(-1))
        target_count = torch.bincount(flat, minlength=num_classes).to(probs.dtype)
        denom = (probs.sum(dim=(0, 2, 3)) + target_count + smooth).clamp_min(1e-7)
        per_class = (2 * intersection + smooth) / denom
        dice = 1 - per_class.mean()
        ctx.save_for_backward(probs, target, own, pixel_w, weight, denom, per_class)
        ctx.args = (ce_w, dice_w, eps, w_sum, w_total)
        total = ce_w * ce + dice_w * dice
        ce, dice = ce.detach(), dice.detach()
        ctx.mark_non_differentiable(ce, dice)
        return total, ce, dice

    @staticmethod
    def backward(ctx, grad, _grad_ce, _grad_dice):
        probs, target, own, pixel_w, weight, denom, per_class = ctx.saved_tensors
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
            out.sub_((eps * ce_w * grad / (num_classes * w_sum)) * w.view(1, -1, 1, 1))
        return out, None, None, None, None, None, None


def ce_dice(logits: torch.Tensor, target: torch.Tensor, ce_weight: float, dice_weight: float,
            weight: Optional[torch.Tensor] = None, label_smoothing: float = 0.0,
            smooth: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(ce_weight * CE + dice_weight * Dice, CE, Dice)`` in one fused pass (see ``_SoftmaxCEDice``)."""
    return _SoftmaxCEDice.apply(logits, target, float(ce_weight), float(dice_weight), weight,
                                float(label_smoothing), float(smooth))


def focal(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0,
          weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Focal loss, normalised like weighted cross-entropy, so gamma=0 reproduces it exactly."""
    log_p = logits.log_softmax(dim=1).gather(1, target.unsqueeze(1)).squeeze(1)
    loss = -log_p
    if gamma:
        loss = (1 - log_p.exp()).clamp_min(0).pow(gamma) * loss
    if weight is None:
        return loss.mean()
    w = weight[target]
    return (w * loss).sum() / w.sum().clamp_min(1e-12)


class _Loss(nn.Module):
    """Shared plumbing: float32 inputs outside autocast, and lazily read term values."""

    def __init__(self, class_weights: Optional[torch.Tensor] = None):
        super().__init__()
        # a buffer follows .to(device) with the rest of the training state
        self.register_buffer("class_weights", class_weights, persistent=False)
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
    def __init__(self, options: CEOptions, num_classes: int):
        super().__init__(_weight_tensor(options.class_weights, num_classes))
        self.label_smoothing = options.label_smoothing

    def compute(self, logits, target, weight):
        value = cross_entropy(logits, target, weight, self.label_smoothing)
        return {"ce": value}, value


class DiceLoss(_Loss):
    def __init__(self, options: DiceOptions, num_classes: int):
        super().__init__()
        self.smooth = options.smooth

    def compute(self, logits, target, weight):
        value, _, dice = ce_dice(logits, target, 0.0, 1.0, smooth=self.smooth)
        return {"dice": dice}, value


class FocalLoss(_Loss):
    def __init__(self, options: FocalOptions, num_classes: int):
        super().__init__(_weight_tensor(options.class_weights, num_classes))
        self.gamma = options.gamma

    def compute(self, logits, target, weight):
        value = focal(logits, target, self.gamma, weight)
        return {"focal": value}, value


class CombinedLoss(_Loss):
    def __init__(self, options: CombinedOptions, num_classes: int):
        super().__init__(_weight_tensor(options.class_weights, num_classes))
        self.options = options

    def compute(self, logits, target, weight):
        o = self.options
        terms: dict[str, torch.Tensor] = {}
        total = 0
        if o.dice:  # CE and Dice share one softmax (see _SoftmaxCEDice)
            total, ce, terms["dice"] = ce_dice(logits, target, o.ce, o.dice, weight, o.label_smoothing,
                                               o.dice_smooth)
            if o.ce:
                terms["ce"] = ce
        elif o.ce:
            terms["ce"] = cross_entropy(logits, target, weight, o.label_smoothing)
            total = o.ce * terms["ce"]
        if o.focal:
            terms["focal"] = focal(logits, target, o.focal_gamma, weight)
            total = total + o.focal * terms["focal"]
        return {name: terms[name] for name in ("ce", "dice", "focal") if name in terms}, total


@hookimpl
def register_losses(register):
    register("ce", CrossEntropyLoss, options=CEOptions,
             description="Cross-entropy with optional class weights and label smoothing")
    register("dice", DiceLoss, options=DiceOptions,
             description="Soft multi-class Dice loss (1 - mean Dice over classes)")
    register("focal", FocalLoss, options=FocalOptions,
             description="Focal loss: cross-entropy down-weighting pixels already classified well")
    register("combined", CombinedLoss, options=CombinedOptions,
             description="Weighted sum of cross-entropy, Dice and focal terms (weights ce, dice, focal)")
