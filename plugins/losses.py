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

from cpx.errors import ConfigError
from cpx.hookspecs import hookimpl

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
        value = soft_dice(logits, target, self.smooth)
        return {"dice": value}, value


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
        if o.ce:
            terms["ce"] = cross_entropy(logits, target, weight, o.label_smoothing)
        if o.dice:
            terms["dice"] = soft_dice(logits, target, o.dice_smooth)
        if o.focal:
            terms["focal"] = focal(logits, target, o.focal_gamma, weight)
        total = sum(getattr(o, name) * value for name, value in terms.items())
        return terms, total


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
