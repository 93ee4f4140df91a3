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
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model, model_validator
from pydantic.fields import FieldInfo
from torch import nn

from cpx.data.masks import class_frequencies
from cpx.kernel.errors import ConfigError
from cpx.kernel.hookspecs import hookimpl
from cpx_plugins.loss_functions import (
    boundary_cross_entropy,
    ce_dice,
    cross_entropy,
    focal,
    lovasz_softmax,
    ohem_cross_entropy,
)

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
        if "dice" in rest:  # CE and Dice share one softmax (see loss_functions._SoftmaxCEDice): the fast path
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
