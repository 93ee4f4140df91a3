"""Label checks: masks whose left/right classes sit on the wrong side of the face.

A face seen from the front shows its left eye on the image's right, so in correctly labelled
masks the first class of every flip pair of the competition (``l_eye`` of ``(l_eye, r_eye)``)
sits on one side of the image (``Competition.pair_side``): to that side of its partner and of
the face's midline (the first of ``Competition.midline_classes`` present, e.g. the nose). A
mask whose annotator swapped the two labels breaks both relations at once.

Evidence, per mask and pair, from class centroids (the mean column of a class's pixels), with
``s = +1`` when the pair's first class belongs on the image right and ``-1`` on the left:

* ``pair``: ``s * (x_first - x_second)``, when both classes are present;
* ``first``: ``s * (x_first - x_mid)`` and ``second``: ``s * (x_mid - x_second)``, for each
  class present, when a midline class is present.

Each is divided by the median of its absolute value over the masks checked, so 1 means "as
far as in a typical face of this data set" whatever the resolution. A pair is **reversed**
when every evidence available for it is negative: its classes are swapped against each other
*and* against the midline. A turned head moves both eyes to one side of the nose, but keeps
their order, so it is not reversed. The pair's **confidence** is ``min(1, smallest |evidence|)``:
1 when even the weakest relation is as clear as in a typical face, near 0 when a class sits
almost on the midline. A mask's confidence is that of its most confident reversed pair.

Which side is "right" comes from the competition profile when it declares one; otherwise the
majority of the masks decides. Either way the check reports how many masks agree.

May import: ``cpx.kernel`` and ``cpx.data``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Iterable, Optional, Sequence, Union

import numpy as np
import torch

from cpx.data.competition import Competition
from cpx.kernel.errors import DataError

MaskLike = Union[np.ndarray, torch.Tensor]

# a class covering fewer than this share of a mask's pixels is too small to place (and at
# least MIN_PIXELS pixels): stray specks would otherwise decide a centroid
MIN_SHARE = 1e-4
MIN_PIXELS = 2
SIDES = ("right", "left")


@dataclass(frozen=True)
class LabelSuspect:
    """A mask with reversed left/right pairs: its name, its confidence (0..1), the reversed
    pairs (class ids, as in ``Competition.flip_pairs``) with the confidence of each."""

    name: str
    confidence: float
    pairs: tuple[tuple[int, int], ...]
    pair_confidence: tuple[float, ...]

    def describe(self, classes: Sequence[str]) -> str:
        """``l_eye/r_eye 0.98, l_brow/r_brow 0.95`` with the competition's class names."""
        return ", ".join(f"{classes[a]}/{classes[b]} {c:.2f}" for (a, b), c in zip(self.pairs, self.pair_confidence))


@dataclass
class LabelCheck:
    """The result of a label check over ``checked`` masks: the side the first class of each pair
    was expected on (``side``; ``declared`` is the profile's, None when it declares none), how
    many pairs with both classes present sat that way (``agree``) or the other way
    (``disagree``), the suspects (most confident first) and warnings."""

    checked: int
    side: Optional[str]
    declared: Optional[str]
    agree: int = 0
    disagree: int = 0
    suspects: list[LabelSuspect] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def selected(self, min_confidence: float = 0.0) -> list[LabelSuspect]:
        """The suspects whose confidence is at least ``min_confidence``."""
        return [s for s in self.suspects if s.confidence >= min_confidence]

    def to_dict(self) -> dict:
        """JSON-ready form."""
        out = asdict(self)
        out["suspects"] = [{**asdict(s), "pairs": [list(p) for p in s.pairs]} for s in self.suspects]
        return out


def class_centroids(mask: MaskLike, num_classes: int) -> np.ndarray:
    """The mean column (x, in pixels from the left edge) of each class in an H x W mask of class
    ids: ``float64[num_classes]``, NaN for a class absent or smaller than ``MIN_SHARE`` of the
    pixels (and ``MIN_PIXELS``).

    :raises DataError: a mask that is not H x W.
    """
    arr = mask.numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if arr.ndim != 2:
        raise DataError(f"a mask must be H x W, got shape {arr.shape}")
    height, width = arr.shape
    ids = arr.ravel().astype(np.intp, copy=False)
    cols = np.tile(np.arange(width, dtype=np.float64), height)
    counts = np.bincount(ids, minlength=num_classes)[:num_classes]
    sums = np.bincount(ids, weights=cols, minlength=num_classes)[:num_classes]
    out = np.full(num_classes, np.nan)
    big = counts >= max(MIN_PIXELS, MIN_SHARE * arr.size)
    out[big] = sums[big] / counts[big]
    return out


def _midline(x: np.ndarray, midline_classes: Sequence[int]) -> np.ndarray:
    """Per mask, the centroid of the first midline class present (NaN when none is)."""
    mid = np.full(x.shape[0], np.nan)
    for c in reversed(tuple(midline_classes)):  # the first listed wins, so it is written last
        mid = np.where(np.isnan(x[:, c]), mid, x[:, c])
    return mid


def judge_centroids(centroids: np.ndarray, names: Sequence[str], competition: Competition) -> LabelCheck:
    """The label check (module docstring) from a table of class centroids, one row per mask
    (``N x num_classes``, NaN for absent classes, e.g. from :func:`class_centroids`).

    :raises DataError: a table whose shape does not fit ``names`` and the competition's classes.
    """
    x = np.asarray(centroids, dtype=np.float64).reshape(-1, competition.num_classes)
    if len(x) != len(names):
        raise DataError(f"{len(x)} centroid rows for {len(names)} mask names")
    check = LabelCheck(checked=len(names), side=competition.pair_side, declared=competition.pair_side)
    pairs = tuple(competition.flip_pairs)
    if not pairs or not len(x):
        if not pairs:
            check.warnings.append(f"{competition.name} declares no left/right pairs: nothing to check")
        return check
    order = np.stack([x[:, a] - x[:, b] for a, b in pairs])  # pairs x masks, + = first on the right
    right, left = int(np.sum(order > 0)), int(np.sum(order < 0))
    majority = "right" if right >= left else "left"
    if check.side is None:
        check.side = majority
    elif check.side != majority and right + left:
        check.warnings.append(f"the profile puts the first class of each pair on the image {check.side}, but "
                              f"most masks here put it on the {majority} ({max(right, left)} of {right + left} pairs)")
    sign = 1.0 if check.side == "right" else -1.0
    check.agree, check.disagree = (right, left) if sign > 0 else (left, right)

    mid = _midline(x, competition.midline_classes)
    evidence = []  # per pair: (pair, first, second), each a per-mask array
    for k, (a, b) in enumerate(pairs):
        evidence.append((sign * order[k], sign * (x[:, a] - mid), sign * (mid - x[:, b])))
    # typical magnitudes on this data set, so evidence is in units of "a usual face"
    scales = [[_typical(e) for e in kinds] for kinds in evidence]

    for i, name in enumerate(names):
        reversed_pairs, confidences = [], []
        for (a, b), kinds, kind_scales in zip(pairs, evidence, scales):
            values = [e[i] / s for e, s in zip(kinds, kind_scales) if s and not np.isnan(e[i])]
            if values and all(v < 0 for v in values):
                reversed_pairs.append((a, b))
                confidences.append(round(float(min(1.0, min(-v for v in values))), 3))
        if reversed_pairs:
            check.suspects.append(LabelSuspect(str(name), max(confidences), tuple(reversed_pairs),
                                               tuple(confidences)))
    check.suspects.sort(key=lambda s: (-s.confidence, s.name))
    return check


def _typical(values: np.ndarray) -> float:
    finite = np.abs(values[~np.isnan(values)])
    finite = finite[finite > 0]
    return float(np.median(finite)) if finite.size else 0.0


def check_labels(masks: Iterable[MaskLike], names: Sequence[str], competition: Competition) -> LabelCheck:
    """The label check (module docstring) of H x W masks of class ids (numpy arrays or tensors,
    any resolution), named by ``names``.

    Example: ``check_labels(train_masks, train_names, competition).selected(0.5)``.
    """
    rows = [class_centroids(m, competition.num_classes) for m in masks]
    table = np.stack(rows) if rows else np.zeros((0, competition.num_classes))
    return judge_centroids(table, names, competition)


def swap_pairs(mask: MaskLike, pairs: Iterable[tuple[int, int]]) -> MaskLike:
    """A copy of ``mask`` (any shape, numpy or torch) with the ids of each pair ``(a, b)``
    exchanged: the fix for a suspect's reversed pairs."""
    out = mask.clone() if isinstance(mask, torch.Tensor) else np.array(mask, copy=True)
    for a, b in pairs:
        is_a, is_b = mask == a, mask == b
        out[is_a] = b
        out[is_b] = a
    return out


def apply_label_policy(names: Sequence[str], masks: torch.Tensor, competition: Competition, *,
                       exclude: bool, fix: bool, min_confidence: float
                       ) -> tuple[list[int], torch.Tensor, LabelCheck, list[LabelSuspect]]:
    """Training masks (``N x H x W`` uint8) without (``exclude``) or with corrected (``fix``: the
    reversed pairs of at least ``min_confidence`` swapped back) suspects of at least
    ``min_confidence``: the indices of the masks kept, the masks (fixed
    where asked; a new tensor only when something changed), the check and the suspects acted on.

    :raises DataError: both ``exclude`` and ``fix``.
    """
    if exclude and fix:
        raise DataError("data.exclude_suspect and data.fix_suspect: choose one")
    check = check_labels(masks, names, competition)
    chosen = check.selected(min_confidence)
    keep = list(range(len(names)))
    if exclude and chosen:
        dropped = {s.name for s in chosen}
        keep = [i for i, n in enumerate(names) if n not in dropped]
    elif fix and chosen:
        index = {n: i for i, n in enumerate(names)}
        masks = masks.clone()
        for s in chosen:
            # only the pairs that are themselves clear: a weak one beside a strong one stays
            sure = [p for p, c in zip(s.pairs, s.pair_confidence) if c >= min_confidence]
            masks[index[s.name]] = swap_pairs(masks[index[s.name]], sure)
    return keep, masks, check, chosen
