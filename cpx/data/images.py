"""Image and mask files: the one reader and writer every command uses.

Images decode to RGB uint8 (``H x W x 3``); masks are single-channel PNGs (palette "P" or
greyscale "L") whose pixel values are class ids. Sizes are (height, width), the order torch
uses. Decoding goes through PIL with ``ImageFile.LOAD_TRUNCATED_IMAGES`` left at its default
(False), so a file cut short raises instead of decoding to grey. A file that cannot be used
raises :class:`BadFile`, which checks turn into a :class:`~cpx.kernel.errors.Problem` and
loaders into a :class:`~cpx.kernel.errors.DataError` naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from cpx.kernel.errors import DataError, Problem
from cpx.kernel.files import atomic_write

Size = tuple[int, int]  # (height, width)


class BadFile(Exception):
    """A file-level problem, turned into a Problem by checks and a DataError by loaders."""

    def __init__(self, path: Path, kind: str, message: str):
        super().__init__(message)
        self.path = Path(path)
        self.kind = kind
        self.message = message

    def problem(self, root: Path) -> Problem:
        return Problem(relative_path(self.path, root), self.kind, self.message)

    def error(self) -> DataError:
        return DataError(f"{self.path}: {self.message}")


def relative_path(path: Path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


def unreadable(path: Path, what: str, exc: BaseException) -> BadFile:
    # PIL's own message repeats the full path, which the problem already names
    if isinstance(exc, UnidentifiedImageError):
        return BadFile(path, "unreadable", f"cannot read {what} (not a recognised image format)")
    reason = str(exc).strip() or exc.__class__.__name__
    if len(reason) > 120:
        reason = reason[:117] + "..."
    return BadFile(path, "unreadable", f"cannot read {what} ({reason})")


def open_image(path: Path, what: str, decode: bool) -> Image.Image:
    try:
        img = Image.open(path)
        if decode:
            img.load()
        return img
    except MemoryError:
        raise
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, EOFError, ...
        raise unreadable(path, what, exc) from None


def check_mask_mode(img: Image.Image, path: Path) -> None:
    bands = img.getbands()
    if len(bands) > 1:
        raise BadFile(path, "mask_channels",
                   f"mask has {len(bands)} channels ({img.mode}); expected one channel of class "
                   f"ids (mode P or L)")
    if img.mode not in ("P", "L", "1"):
        raise BadFile(path, "mask_mode", f"mask mode {img.mode} is not supported; expected P or L")


def mask_array(img: Image.Image, path: Path) -> np.ndarray:
    check_mask_mode(img, path)
    try:
        # for mode P this is the palette indices, which are the class ids
        arr = np.asarray(img)
    except MemoryError:
        raise
    except Exception as exc:
        raise unreadable(path, "mask", exc) from None
    return arr.astype(np.uint8) if arr.dtype != np.uint8 else arr


def bad_ids_message(ids: Iterable[int], num_classes: int) -> str:
    ids = sorted(int(i) for i in ids)
    shown = ", ".join(str(i) for i in ids[:10]) + (", ..." if len(ids) > 10 else "")
    noun = "class id" if len(ids) == 1 else "class ids"
    return f"{noun} {shown} outside 0..{num_classes - 1}"


def read_mask(path: os.PathLike, num_classes: Optional[int] = None) -> np.ndarray:
    """A mask's class ids as an H x W uint8 array.

    Raises DataError for an unreadable file, a multi-channel mask or (when ``num_classes`` is
    given) a class id out of range.
    """
    path = Path(path)
    try:
        with open_image(path, "mask", decode=True) as img:
            arr = mask_array(img, path)
        if num_classes is not None and arr.size and int(arr.max()) >= num_classes:
            raise BadFile(path, "bad_class",
                       bad_ids_message(np.unique(arr[arr >= num_classes]), num_classes))
    except BadFile as bad:
        raise bad.error() from None
    return arr


def read_rgb(path: Path, size: Optional[int]) -> tuple[np.ndarray, Size]:
    with open_image(path, "image", decode=True) as img:
        original = (img.height, img.width)
        try:
            rgb = img if img.mode == "RGB" else img.convert("RGB")
            if size is not None and original != (size, size):
                # PIL widens the bilinear kernel when shrinking, so this is antialiased
                rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
            arr = np.asarray(rgb)
        except MemoryError:
            raise
        except Exception as exc:
            raise unreadable(path, "image", exc) from None
    return arr, original


def write_mask(path: os.PathLike, mask: np.ndarray, palette: Sequence[int]) -> None:
    """Write class ids as a single-channel palette PNG."""
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise DataError(f"{path}: a mask must be H x W, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise DataError(f"{path}: mask values must fit in 0..255")
        arr = arr.astype(np.uint8)
    pal = [int(v) for v in palette]
    if len(pal) > 768 or len(pal) % 3:
        raise DataError(f"{path}: a palette is up to 256 RGB triples, got {len(pal)} values")
    # a P image built from raw bytes keeps every value as its own palette index
    img = Image.frombytes("P", (arr.shape[1], arr.shape[0]), np.ascontiguousarray(arr).tobytes())
    img.putpalette(pal + [0] * (768 - len(pal)))
    atomic_write(Path(path), lambda f: img.save(f, format="PNG"))


def write_image(path: os.PathLike, rgb: np.ndarray) -> None:
    """Write an H x W x 3 uint8 image: JPEG (quality 95) for .jpg/.jpeg, PNG otherwise."""
    path = Path(path)
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise DataError(f"{path}: an image must be H x W x 3 uint8, got {arr.dtype} {arr.shape}")
    img = Image.fromarray(np.ascontiguousarray(arr))
    if path.suffix.lower() in (".jpg", ".jpeg"):
        atomic_write(path, lambda f: img.save(f, format="JPEG", quality=95))
    else:
        atomic_write(path, lambda f: img.save(f, format="PNG"))

