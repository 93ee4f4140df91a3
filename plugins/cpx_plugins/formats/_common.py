"""What the built-in submission formats share: the checks on a mask before it is written, its
class ids turned into stored values (through :class:`cpx.data.masks.MaskCodec`, the one owner
of that mapping), one key per image in a writer, the file and folder names options may give,
and one file of a submission read within its size limit.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Optional

import numpy as np

from cpx.data.masks import MaskCodec, UnknownValues, bad_ids_message
from cpx.kernel.errors import DataError
from cpx.submit.checkreport import CheckReport
from cpx.submit.zipentries import READ_LIMIT, FileSource, Skipped, mib


def checked_mask(image_name: str, mask: np.ndarray) -> np.ndarray:
    """``mask`` when it is a non-empty ``H x W`` uint8 array (the writers' contract).

    :raises DataError: another shape or dtype, naming the image.
    """
    arr = np.asarray(mask)
    if arr.ndim != 2 or arr.dtype != np.uint8 or 0 in arr.shape:
        raise DataError(f"{image_name}: a prediction must be a non-empty H x W uint8 array of class ids, "
                        f"got {arr.dtype} {tuple(arr.shape)}")
    return arr


def stored_values(codec: MaskCodec, image_name: str, mask: np.ndarray) -> np.ndarray:
    """The stored values of a mask of class ids (uint8, or uint16 when a value is over 255).

    Decoding them again must give the ids back: an id with no stored value (outside the
    classes, or missing from ``masks.values``) is refused rather than written as a value the
    scorer would read as something else.

    :raises DataError: such ids, naming the image.
    """
    stored = codec.encode(mask)
    try:
        back = codec.decode(stored)
    except UnknownValues:
        back = None
    if back is None or not np.array_equal(back, mask):
        lost = np.unique(mask if back is None else mask[back != mask])
        raise DataError(f"{image_name}: the competition's mask encoding has no stored value for "
                        f"{bad_ids_message(lost, codec.num_classes)}")
    return stored


class Keys:
    """The keys a writer has used, so that two images never write one file or field; with
    ``fold``, keys differing only in case clash too (two files that collide on Windows and
    macOS file systems)."""

    def __init__(self, fold: bool = False):
        self.fold = fold
        self.seen: dict[str, str] = {}

    def claim(self, key: str, image_name: str, where: str) -> None:
        """Record ``key`` for ``image_name``.

        :raises DataError: another image already has it (``where`` names the file or field).
        """
        folded = key.casefold() if self.fold else key
        if folded in self.seen:
            raise DataError(f"{image_name}: its prediction would go to {where}, as that of {self.seen[folded]} "
                            "does; rename one of the images")
        self.seen[folded] = image_name


def read_limited(files: FileSource, name: str, kind: str, report: CheckReport, what: str) -> Optional[bytes]:
    """The bytes of ``name`` within :data:`READ_LIMIT` [``kind``], or None (a problem says why,
    unless the zip checks already reported the entry)."""
    try:
        return files.read(name, kind)
    except Skipped:
        if not files.skipped(name):
            report.add(files.label(name), "too_large",
                       f"{mib(files.size(name))}; {what} is at most {mib(READ_LIMIT[kind])} (not read)")
        return None


def reason(exc: BaseException) -> str:
    """The first line of an exception's message (at most 120 characters), or its type."""
    text = str(exc).strip()
    return text.splitlines()[0][:120] if text else exc.__class__.__name__


def file_name(value: str) -> str:
    """An option naming a file at the top of the zip: a plain name, no folder."""
    value = str(value).strip()
    if not value or value in (".", "..") or "/" in value or "\\" in value:
        raise ValueError(f"{value!r}: a file name at the top of the zip (no folder), e.g. results.json")
    return value


def folder_path(value: str) -> str:
    """An option naming a folder of the zip: a relative posix path (``masks``,
    ``predictions/masks``), without ``..``; a trailing slash is dropped."""
    value = str(value).strip().rstrip("/")
    parts = value.split("/")
    if not value or "\\" in value or value.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"{value!r}: a folder inside the zip (relative, with / and without ..), e.g. masks")
    return str(PurePosixPath(value))
