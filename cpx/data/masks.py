"""Stored mask values and class ids: the one place that maps between them.

A profile's ``masks`` section says how masks store classes (:class:`cpx.data.competition.MaskEncoding`):
with a ``values`` map every stored value must be one of its keys; without one, stored values are
class ids, and a two-class competition also reads 0/255 masks as 0/1. The profile's
``ignore_index`` (a stored value) becomes :data:`IGNORE` inside cpx: never trained on, never
scored. Writing goes the other way, each class id to the first stored value that maps to it.
:func:`class_frequencies` counts the class ids of masks already read (the losses' class weights).
"""

from __future__ import annotations

from typing import Iterable, Optional

import numpy as np

from cpx.data.competition import IGNORE, Competition


def bad_ids_message(ids: Iterable[int], num_classes: int) -> str:
    """``class ids 19, 25 outside 0..18``: the out-of-range ids, at most ten shown."""
    ids = sorted(int(i) for i in ids)
    shown = ", ".join(str(i) for i in ids[:10]) + (", ..." if len(ids) > 10 else "")
    noun = "class id" if len(ids) == 1 else "class ids"
    return f"{noun} {shown} outside 0..{num_classes - 1}"


class UnknownValues(ValueError):
    """A mask holds stored values the competition's encoding has no class for."""


class MaskCodec:
    """Stored values <-> class ids for one competition (see the module docstring)."""

    def __init__(self, competition: Competition):
        self.competition = competition
        self.num_classes = competition.num_classes
        enc = competition.masks
        self.ignore = enc.ignore_index
        self.values = dict(enc.values) if enc.values is not None else None
        top = max([*(self.values or {}), self.ignore or 0, 255])
        # stored value -> class id (IGNORE for the ignore index), -1 where the value is unknown
        table = np.full(top + 1, -1, dtype=np.int16)
        if self.values is None:
            table[:self.num_classes] = np.arange(self.num_classes)
        else:
            for stored, cid in self.values.items():
                table[stored] = cid
        if self.ignore is not None:
            table[self.ignore] = IGNORE
        self._decode = table
        # class id -> stored value: the smallest stored value mapping to it
        out = np.arange(256, dtype=np.int64)
        for stored, cid in sorted((self.values or {}).items(), reverse=True):
            out[cid] = stored
        if self.ignore is not None:
            out[IGNORE] = self.ignore
        self._encode = out
        self.binary_255 = (self.values is None and self.num_classes == 2 and self.ignore != 255)

    def decode(self, stored: np.ndarray) -> np.ndarray:
        """Class ids (``H x W`` uint8, :data:`IGNORE` at the ignore index) of stored values.

        :raises UnknownValues: values the encoding has no class for, with a one-line message
            (``class id 255 outside 0..1`` without a value map, ``values 7, 9 are not in
            masks.values`` with one).
        """
        arr = np.asarray(stored)
        if arr.size == 0:
            return arr.astype(np.uint8)
        present = np.unique(arr)
        if int(present[0]) < 0:
            raise UnknownValues(f"negative mask value {int(present[0])}")
        if self.binary_255 and present[-1] == 255 and set(present.tolist()) <= {0, 255}:
            return (arr == 255).astype(np.uint8)  # the common 0/255 binary convention
        table = self._decode
        beyond = present[present >= len(table)]
        known = present[present < len(table)]
        unknown = np.concatenate([known[table[known] < 0], beyond])
        if unknown.size:
            if self.values is None:
                ignore = f"; masks.ignore_index is {self.ignore}" if self.ignore is not None else ""
                raise UnknownValues(bad_ids_message(unknown, self.num_classes) + ignore)
            shown = ", ".join(str(int(v)) for v in unknown[:10]) + (", ..." if unknown.size > 10 else "")
            raise UnknownValues(f"mask value{'s' if unknown.size > 1 else ''} {shown} "
                                f"not in the competition's masks.values ({', '.join(map(str, sorted(self.values)))})")
        if arr.dtype == np.uint8 and self.values is None and (self.ignore is None or self.ignore == IGNORE):
            return arr  # already class ids
        return table[arr].astype(np.uint8)

    def encode(self, ids: np.ndarray) -> np.ndarray:
        """Stored values of class ids (``H x W``): uint8, or uint16 when a stored value is over
        255."""
        arr = np.asarray(ids)
        out = self._encode[arr.astype(np.int64)]
        if self.values is None and (self.ignore is None or self.ignore == IGNORE):
            return arr.astype(np.uint8, copy=False)
        return out.astype(np.uint16 if out.size and out.max() > 255 else np.uint8)

    def stored_values(self) -> Optional[list[int]]:
        """Every stored value a mask may hold (with the ignore index), or None when any class
        id may be stored as it is."""
        if self.values is None:
            return None
        return sorted(set(self.values) | ({self.ignore} if self.ignore is not None else set()))


def class_frequencies(masks, num_classes: int) -> list[float]:
    """Share of all pixels of each class id in ``masks`` (a torch tensor of integer ids, any
    shape, e.g. ``N x H x W``), in class-id order; ids outside ``0..num_classes-1`` (the ignore
    index) are not counted. All zeros when no pixel is counted."""
    import torch

    flat = masks.reshape(-1).long()
    counts = torch.bincount(flat[(flat >= 0) & (flat < num_classes)], minlength=num_classes).double()
    total = float(counts.sum())
    return (counts / total).tolist() if total else [0.0] * num_classes
