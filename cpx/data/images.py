"""Image and mask files: the one reader and writer every command uses.

Images decode to RGB uint8 (``H x W x 3``) from every mode Pillow opens: 8-bit modes convert
as Pillow does, 16-bit greyscale keeps its top 8 bits, and modes that cannot be shown as
8-bit RGB without guessing (floating point, 32-bit integers over 16 bits) are refused. Masks
are single-channel PNGs (palette "P" or greyscale "L") whose pixel values are class ids; a
mask stored in a lossy format (JPEG bytes under a ``.png`` name) is refused, since lossy
compression changes class ids. Sizes are (height, width), the order torch uses.

EXIF orientation: cpx uses the pixels as stored and ignores the EXIF rotation tag, as the
competition's masks and scorer do (the masks align with the stored pixels); ``cpx data check``
warns about images that carry a rotation tag.

Decoding goes through PIL with ``ImageFile.LOAD_TRUNCATED_IMAGES`` left at its default
(False), so a file cut short raises instead of decoding to grey. Pillow's decompression-bomb
limit (``Image.MAX_IMAGE_PIXELS``) applies to every file and is reported in one line. A file
that cannot be used raises :class:`BadFile`, which checks turn into a
:class:`~cpx.kernel.errors.Problem` and loaders into a :class:`~cpx.kernel.errors.DataError`
naming the file.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from cpx.kernel.errors import DataError, Problem
from cpx.kernel.files import atomic_write

# Files `cpx predict` and a packaged solution/run.py treat as images, besides a competition's
# own suffixes; anything else in an input folder is reported, not guessed at.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

Size = tuple[int, int]  # (height, width)


class BadFile(Exception):
    """A file-level problem, turned into a Problem by checks and a DataError by loaders."""

    def __init__(self, path: Path, kind: str, message: str):
        super().__init__(message)
        self.path = Path(path)
        self.kind = kind
        self.message = message

    def problem(self, root: Path) -> Problem:
        """This problem as a :class:`Problem` with its path relative to ``root``."""
        return Problem(relative_path(self.path, root), self.kind, self.message)

    def error(self) -> DataError:
        """This problem as a one-line :class:`DataError` naming the file."""
        return DataError(f"{self.path}: {self.message}")


def relative_path(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` in POSIX form, or in full when it is not below ``root``."""
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


def unreadable(path: Path, what: str, exc: BaseException) -> BadFile:
    # PIL's own message repeats the full path, which the problem already names
    """A :class:`BadFile` for a file Pillow could not read, with Pillow's reason shortened and
    without the path it repeats.
    """
    if isinstance(exc, UnidentifiedImageError):
        return BadFile(path, "unreadable", f"cannot read {what} (not a recognised image format)")
    reason = str(exc).strip() or exc.__class__.__name__
    if len(reason) > 120:
        reason = reason[:117] + "..."
    return BadFile(path, "unreadable", f"cannot read {what} ({reason})")


def open_image(path: Path, what: str, decode: bool) -> Image.Image:
    """``Image.open`` (and with ``decode`` the full decode) with one-line failures.

    :raises BadFile: unreadable, truncated, not an image, or over Pillow's pixel limit.
    """
    try:
        with warnings.catch_warnings():
            # between one and two times the limit Pillow only warns; that is too big here too
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
            if decode:
                img.load()
        return img
    except MemoryError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadFile(path, "too_large", f"{what} is too large to open safely (over Pillow's limit of "
                      f"{Image.MAX_IMAGE_PIXELS:,} pixels); it may be a decompression bomb") from None
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, EOFError, ...
        raise unreadable(path, what, exc) from None


def exif_rotation(img: Image.Image) -> Optional[int]:
    """The EXIF orientation tag (2..8) when it asks for a flip or rotation, else None."""
    try:
        value = img.getexif().get(0x0112)
    except Exception:  # a broken EXIF block is no reason to refuse the pixels
        return None
    return int(value) if isinstance(value, int) and value not in (0, 1) else None


def rgb_array(img: Image.Image, path: Path) -> np.ndarray:
    """The image as RGB uint8, ``H x W x 3``, from any mode (module docstring).

    :raises BadFile: a mode that has no faithful 8-bit RGB form.
    """
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img)
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(img)
        top = int(values.max()) if values.size else 0
        if mode == "I" and (values.size and int(values.min()) < 0 or top > 65535):
            raise BadFile(path, "image_mode", "32-bit integer image with values outside 0..65535; "
                          "save it as 8-bit RGB")
        if top > 255 or mode.startswith("I;16"):
            values = values.astype(np.uint32) >> 8  # 16-bit: keep the top byte
        grey = values.astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "F":
        raise BadFile(path, "image_mode", "floating-point image (mode F); save it as 8-bit RGB")
    return np.asarray(img.convert("RGB"))


def inspect_image(path: Path) -> Size:
    """(height, width) of an image file that decodes in full to RGB.

    :raises BadFile: it does not (see :func:`read_rgb`).
    """
    arr, original = read_rgb(path, None)
    return original


def check_mask_mode(img: Image.Image, path: Path, modes: Sequence[str] = ("P", "L", "1")) -> None:
    """A mask must be a PNG (lossless) with one channel of class ids in one of ``modes``.

    :raises BadFile: another format, several channels, or another mode.
    """
    if img.format not in (None, "PNG"):
        raise BadFile(path, "mask_format", f"mask is stored as {img.format}, not PNG: a lossy format changes "
                      "class ids at every edge; save masks as PNG")
    bands = img.getbands()
    if len(bands) > 1:
        raise BadFile(path, "mask_channels",
                   f"mask has {len(bands)} channels ({img.mode}); expected one channel of class "
                   f"ids (mode P or L)")
    if img.mode not in modes:
        raise BadFile(path, "mask_mode", f"mask mode {img.mode} is not supported; expected "
                      f"{' or '.join(m for m in modes if m != '1')}")


def mask_array(img: Image.Image, path: Path, modes: Sequence[str] = ("P", "L", "1")) -> np.ndarray:
    """The class ids of an opened mask, ``H x W`` uint8 (see :func:`check_mask_mode`)."""
    check_mask_mode(img, path, modes)
    try:
        # for mode P this is the palette indices, which are the class ids
        arr = np.asarray(img)
    except MemoryError:
        raise
    except Exception as exc:
        raise unreadable(path, "mask", exc) from None
    return arr.astype(np.uint8) if arr.dtype != np.uint8 else arr


def bad_ids_message(ids: Iterable[int], num_classes: int) -> str:
    """``class ids 19, 25 outside 0..18``: the out-of-range ids, at most ten shown."""
    ids = sorted(int(i) for i in ids)
    shown = ", ".join(str(i) for i in ids[:10]) + (", ..." if len(ids) > 10 else "")
    noun = "class id" if len(ids) == 1 else "class ids"
    return f"{noun} {shown} outside 0..{num_classes - 1}"


def read_mask(path: os.PathLike, num_classes: Optional[int] = None,
              modes: Sequence[str] = ("P", "L", "1")) -> np.ndarray:
    """A mask's class ids as an ``H x W`` uint8 array.

    :raises DataError: an unreadable file, a lossy format, a multi-channel mask, a mode not in
        ``modes`` or (when ``num_classes`` is given) a class id out of range.
    """
    path = Path(path)
    try:
        with open_image(path, "mask", decode=True) as img:
            arr = mask_array(img, path, modes)
        if num_classes is not None and arr.size and int(arr.max()) >= num_classes:
            raise BadFile(path, "bad_class",
                       bad_ids_message(np.unique(arr[arr >= num_classes]), num_classes))
    except BadFile as bad:
        raise bad.error() from None
    return arr


def read_rgb(path: os.PathLike, size: Optional[int] = None) -> tuple[np.ndarray, Size]:
    """An image file as RGB uint8 ``H x W x 3`` (resized to ``size`` x ``size`` when given,
    bilinear with antialiasing) and its original (height, width).

    :raises BadFile: unreadable, truncated, too large, or a mode with no faithful RGB form.
    """
    path = Path(path)
    with open_image(path, "image", decode=True) as img:
        original = (img.height, img.width)
        try:
            arr = rgb_array(img, path)
            if size is not None and original != (size, size):
                # PIL widens the bilinear kernel when shrinking, so this is antialiased
                arr = np.asarray(Image.fromarray(arr).resize((size, size), Image.Resampling.BILINEAR))
        except (MemoryError, BadFile):
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

