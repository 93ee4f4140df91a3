"""Image and mask files: the one reader and writer every command uses.

Images decode to ``H x W x C`` uint8, C being the competition's channels (bands). Through
Pillow (JPEG, PNG, ...) 8-bit modes convert as Pillow does (greyscale repeated into RGB, RGBA
to RGB without its alpha, RGBA kept whole for 4 channels); through tifffile (``.tif``/``.tiff``)
one-band, band-interleaved and planar tiles of any band count read as stored. 16-bit images map
``0..pixel_max`` linearly onto ``0..255`` (the profile's ``pixel_max``; without one, Pillow's
16-bit greyscale keeps its top byte and 16-bit TIFF is refused, naming the field to set);
floating-point images, and a band count other than the competition's channels, are refused
in one line. Masks are one band of integers (PNG in mode P, L, 1 or I;16, or a TIFF); a mask
stored in a lossy format (JPEG bytes under a ``.png`` name) is refused, since lossy compression
changes class ids. Stored values become class ids through the profile's mask encoding
(:class:`cpx.data.masks.MaskCodec`). Sizes are (height, width), the order torch uses.

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

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from cpx.data.masks import IGNORE, MaskCodec, UnknownValues, bad_ids_message
from cpx.kernel.errors import DataError, Problem
from cpx.kernel.files import atomic_write

if TYPE_CHECKING:
    from cpx.data.competition import Competition

# Files `cpx predict` and a packaged solution/run.py treat as images, besides a competition's
# own suffixes; anything else in an input folder is reported, not guessed at.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# Read and written with tifffile (any band count, 16-bit, planar), not Pillow.
TIFF_SUFFIXES = (".tif", ".tiff")

__all__ = ["IGNORE", "bad_ids_message"]  # re-exported from cpx.data.masks

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


def open_image(path, what: str, decode: bool, name: Optional[Path] = None) -> Image.Image:
    """``Image.open`` of a path or a binary file object (``name`` then labels it), and with
    ``decode`` the full decode, with one-line failures.

    :raises BadFile: unreadable, truncated, not an image, or over Pillow's pixel limit.
    """
    label = Path(name) if name is not None else Path(path) if isinstance(path, (str, os.PathLike)) else Path("<file>")
    path = path if not isinstance(path, str) else Path(path)
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
        raise BadFile(label, "too_large", f"{what} is too large to open safely (over Pillow's limit of "
                      f"{Image.MAX_IMAGE_PIXELS:,} pixels); it may be a decompression bomb") from None
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, EOFError, ...
        raise unreadable(label, what, exc) from None


def exif_rotation(img: Image.Image) -> Optional[int]:
    """The EXIF orientation tag (2..8) when it asks for a flip or rotation, else None."""
    try:
        value = img.getexif().get(0x0112)
    except Exception:  # a broken EXIF block is no reason to refuse the pixels
        return None
    return int(value) if isinstance(value, int) and value not in (0, 1) else None


Source = Union[os.PathLike, str, bytes]  # a file, or a file's bytes (a zip entry)


def _is_tiff(path: Path, data: Optional[bytes] = None) -> bool:
    if data is not None:
        return data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
    return path.suffix.lower() in TIFF_SUFFIXES


def _scale16(values: np.ndarray, pixel_max: Optional[int], path: Path, what: str) -> np.ndarray:
    """16-bit values as 8-bit: ``0..pixel_max`` linearly onto ``0..255`` (rounded, clipped)."""
    if pixel_max is None:
        raise BadFile(path, "image_depth", f"16-bit {what}; set pixel_max in the competition profile (the "
                      "largest value its images use, e.g. 4095 or 65535) to read it")
    scaled = np.rint(values.astype(np.float32) * (255.0 / pixel_max))
    return np.clip(scaled, 0, 255).astype(np.uint8)


def _bands(arr: np.ndarray, channels: int, path: Path, origin: str) -> np.ndarray:
    """``H x W x B`` as ``H x W x channels``: one band repeats into three (greyscale to RGB);
    any other count than ``channels`` is refused."""
    bands = arr.shape[2]
    if bands == channels:
        return arr
    if bands == 1 and channels == 3:
        return np.repeat(arr, 3, axis=2)
    raise BadFile(path, "image_bands", f"{origin} has {bands} band{'s' if bands != 1 else ''}, but the competition "
                  f"takes {channels} channel{'s' if channels != 1 else ''} (its profile's channels)")


def pixel_array(img: Image.Image, path: Path, channels: int = 3, pixel_max: Optional[int] = None) -> np.ndarray:
    """An opened Pillow image as ``H x W x channels`` uint8 (module docstring).

    :raises BadFile: a mode with no faithful 8-bit form, or a band count the competition does
        not take.
    """
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(img)
        top = int(values.max()) if values.size else 0
        if mode == "I" and (values.size and int(values.min()) < 0 or top > 65535):
            raise BadFile(path, "image_mode", "32-bit integer image with values outside 0..65535; "
                          "save it as 8-bit")
        if pixel_max is not None:
            grey = _scale16(values, pixel_max, path, "image")
        elif top > 255 or mode.startswith("I;16"):
            grey = (values.astype(np.uint32) >> 8).astype(np.uint8)  # 16-bit: keep the top byte
        else:
            grey = values.astype(np.uint8)
        return _bands(grey[:, :, None], channels, path, "the image")
    if mode == "F":
        raise BadFile(path, "image_mode", "floating-point image (mode F); save it as 8- or 16-bit integers")
    if channels == 1:
        return np.asarray(img.convert("L"))[:, :, None]
    if channels == 4 and mode in ("RGBA", "CMYK"):
        return np.asarray(img if mode == "RGBA" else img.convert("RGBA"))
    if channels == 3:
        return np.asarray(img if mode == "RGB" else img.convert("RGB"))
    raise BadFile(path, "image_bands", f"the image is {mode} ({len(img.getbands())} bands), but the competition "
                  f"takes {channels} channels; save {channels}-band images as TIFF")


def rgb_array(img: Image.Image, path: Path) -> np.ndarray:
    """The image as RGB uint8, ``H x W x 3`` (:func:`pixel_array` with 3 channels)."""
    return pixel_array(img, path, 3)


def _tiff_array(source: Source, path: Path, what: str, max_pixels: Optional[int]) -> np.ndarray:
    """The first image of a TIFF as ``H x W x B`` (bands last), its size checked against
    Pillow's pixel limit before anything is decoded.

    :raises BadFile: unreadable, too large, or an axis layout that is not one image.
    """
    import tifffile

    try:
        handle = io.BytesIO(source) if isinstance(source, bytes) else str(path)
        with tifffile.TiffFile(handle) as tif:
            series = tif.series[0]
            axes, shape = series.axes, series.shape
            keep = [i for i, a in enumerate(axes) if a in "YXSC" and not (a in "SC" and shape[i] == 1)]
            if any(shape[i] != 1 for i, a in enumerate(axes) if i not in keep):
                raise BadFile(path, "tiff_layout", f"{what} is a TIFF of several images (axes {axes}, shape "
                              f"{tuple(shape)}); cpx reads one image per file")
            if "Y" not in axes or "X" not in axes:
                raise BadFile(path, "tiff_layout", f"{what} is a TIFF without rows and columns (axes {axes})")
            h, w = shape[axes.index("Y")], shape[axes.index("X")]
            if max_pixels and h * w > max_pixels:
                raise BadFile(path, "too_large", f"{what} is too large to open safely ({w}x{h}, over the limit "
                              f"of {max_pixels:,} pixels); it may be a decompression bomb")
            arr = series.asarray()
    except BadFile:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # tifffile raises TiffFileError, ValueError, struct errors, ...
        raise unreadable(path, what, exc) from None
    kept_axes = "".join(axes[i] for i in keep)
    arr = arr.reshape([shape[i] for i in keep])
    band_axis = next((i for i, a in enumerate(kept_axes) if a in "SC"), None)
    if band_axis is None:
        arr = arr[:, :, None]
    else:
        order = [kept_axes.index("Y"), kept_axes.index("X"), band_axis]
        arr = arr.transpose(order)
    return arr


def _tiff_pixels(arr: np.ndarray, path: Path, channels: int, pixel_max: Optional[int]) -> np.ndarray:
    if arr.dtype == np.uint8:
        out = arr
    elif arr.dtype in (np.uint16, np.int16) and (arr.dtype == np.uint16 or not arr.size or arr.min() >= 0):
        out = _scale16(arr, pixel_max, path, "image")
    elif arr.dtype == bool:
        out = arr.astype(np.uint8) * 255
    else:
        raise BadFile(path, "image_mode", f"{arr.dtype} pixels; cpx reads 8- and 16-bit integer images")
    return _bands(np.ascontiguousarray(out), channels, path, "the image")


def fit_size(hw: Size, side: int) -> Size:
    """The size an image of (height, width) ``hw`` takes on a square canvas of ``side``:
    ``side x side`` for a square image; otherwise its long side becomes ``side`` and its short
    side keeps the aspect ratio (rounded, at least 1), the rest of the canvas being padding on
    the right and below. This is letterboxing: cpx never squashes a non-square image, in
    training (the cache) or in prediction (:class:`cpx.eval.predict.Predictor`)."""
    h, w = int(hw[0]), int(hw[1])
    if h == w:
        return side, side
    long = max(h, w)
    return max(1, round(h * side / long)), max(1, round(w * side / long))


def letterbox(arr: np.ndarray, side: int, fill: int = 0, nearest: bool = False) -> np.ndarray:
    """``H x W`` or ``H x W x C`` uint8 resized to :func:`fit_size` (bilinear, antialiased, or
    nearest for masks) and padded with ``fill`` to ``side x side``."""
    fh, fw = fit_size(arr.shape[:2], side)
    if arr.shape[:2] != (fh, fw):
        if nearest:
            arr = np.asarray(Image.fromarray(np.ascontiguousarray(arr)).resize((fw, fh), Image.Resampling.NEAREST))
        else:
            arr = resize_bands(arr, (fh, fw))
    if (fh, fw) == (side, side):
        return arr
    out = np.full((side, side) + arr.shape[2:], fill, dtype=arr.dtype)
    out[:fh, :fw] = arr
    return out


def read_image(path: os.PathLike, channels: int = 3, pixel_max: Optional[int] = None,
               size: Optional[int] = None) -> tuple[np.ndarray, Size]:
    """An image file as ``H x W x channels`` uint8 (with ``size``: letterboxed onto a ``size`` x
    ``size`` canvas, :func:`letterbox`; a square image is simply resized) and its original
    (height, width).

    :raises BadFile: unreadable, truncated, too large, a mode with no faithful 8-bit form, or
        another band count than ``channels``.
    """
    path = Path(path)
    if _is_tiff(path):
        arr = _tiff_pixels(_tiff_array(path, path, "image", Image.MAX_IMAGE_PIXELS), path, channels, pixel_max)
    else:
        with open_image(path, "image", decode=True) as img:
            try:
                arr = pixel_array(img, path, channels, pixel_max)
            except (MemoryError, BadFile):
                raise
            except Exception as exc:
                raise unreadable(path, "image", exc) from None
    original = (int(arr.shape[0]), int(arr.shape[1]))
    if size is not None and original != (size, size):
        arr = letterbox(arr, size)
    return arr, original


def resize_bands(arr: np.ndarray, hw: Size) -> np.ndarray:
    """``H x W x C`` uint8 resized to ``hw`` with Pillow's bilinear filter (antialiased when
    shrinking), one band at a time when there are not exactly 3: the pixels every training
    cache and prediction use."""
    h, w = hw
    if arr.shape[2] == 3:
        return np.asarray(Image.fromarray(arr).resize((w, h), Image.Resampling.BILINEAR))
    planes = [np.asarray(Image.fromarray(np.ascontiguousarray(arr[:, :, c])).resize((w, h), Image.Resampling.BILINEAR))
              for c in range(arr.shape[2])]
    return np.stack(planes, axis=2)


def read_rgb(path: os.PathLike, size: Optional[int] = None) -> tuple[np.ndarray, Size]:
    """:func:`read_image` with 3 channels."""
    return read_image(path, 3, None, size)


@dataclass(frozen=True)
class ImageHeader:
    """What a file's header says, with nothing decoded: ``size`` (height, width), ``bands``
    (samples per pixel), ``bits`` per sample (1, 8, 16 or 32), ``format`` (``JPEG``, ``PNG``,
    ``TIFF``, ...), ``mode`` (Pillow's mode; for TIFF the sample type, e.g. ``uint16``) and
    ``rotation`` (the EXIF orientation tag when it asks for a turn or flip, else None)."""

    size: Size
    bands: int
    bits: int
    format: str
    mode: str
    rotation: Optional[int] = None

    @property
    def wide(self) -> bool:
        """Whether samples are wider than 8 bits (integers), so reading them needs the
        profile's ``pixel_max``."""
        return self.bits > 8 and self.mode not in ("F", "float16", "float32", "float64")


def _pillow_bits(mode: str) -> int:
    if mode == "1":
        return 1
    if mode.startswith("I;16"):
        return 16
    return 32 if mode in ("I", "F") else 8


def image_header(path: os.PathLike, what: str = "image") -> ImageHeader:
    """The header of an image or mask file (:class:`ImageHeader`), nothing decoded; TIFF
    through tifffile, anything else through Pillow.

    :raises BadFile: unreadable, not an image, or over the pixel limit
        (``Image.MAX_IMAGE_PIXELS``), in one line.
    """
    path = Path(path)
    if not _is_tiff(path):
        with open_image(path, what, decode=False) as img:
            return ImageHeader((img.height, img.width), len(img.getbands()), _pillow_bits(img.mode),
                               img.format or "", img.mode, exif_rotation(img))
    import tifffile

    try:
        with tifffile.TiffFile(str(path)) as tif:
            series = tif.series[0]
            axes, shape, dtype = series.axes, series.shape, np.dtype(series.dtype)
            h, w = shape[axes.index("Y")], shape[axes.index("X")]
    except Exception as exc:  # tifffile raises TiffFileError, ValueError, struct errors, ...
        raise unreadable(path, what, exc) from None
    if h * w > Image.MAX_IMAGE_PIXELS:
        raise BadFile(path, "too_large", f"{what} is too large to open safely ({w}x{h}, over Pillow's limit of "
                      f"{Image.MAX_IMAGE_PIXELS:,} pixels); it may be a decompression bomb")
    bands = int(np.prod([n for a, n in zip(axes, shape) if a in "SC"], dtype=np.int64))
    return ImageHeader((int(h), int(w)), bands, 1 if dtype.kind == "b" else dtype.itemsize * 8, "TIFF", dtype.name)


def image_size(path: os.PathLike) -> Size:
    """(height, width) of an image file, from its header (nothing decoded).

    :raises BadFile: unreadable, not an image, or over the pixel limit.
    """
    return image_header(path).size


def depth_problem(header: ImageHeader, path: os.PathLike, pixel_max: Optional[int]) -> Optional[BadFile]:
    """A :class:`BadFile` (kind ``image_depth``) when the image has samples wider than 8 bits
    and the profile gives no ``pixel_max`` to map them onto 0..255, else None."""
    if not header.wide or pixel_max is not None:
        return None
    return BadFile(Path(path), "image_depth", f"{header.bits}-bit image ({header.format} {header.mode}); set "
                   "pixel_max in the competition profile (the largest value its images use, e.g. 4095 or "
                   "65535) to read it")


def inspect_image(path: Path, channels: int = 3, pixel_max: Optional[int] = None) -> Size:
    """(height, width) of an image file that decodes in full to ``channels`` bands.

    :raises BadFile: it does not (see :func:`read_image`).
    """
    return read_image(path, channels, pixel_max)[1]


MASK_MODES = ("P", "L", "1", "I;16", "I;16B", "I;16L", "I")


def check_mask_mode(img: Image.Image, path: Path, modes: Sequence[str] = MASK_MODES) -> None:
    """A mask must be lossless (PNG, or TIFF) with one band of integers in one of ``modes``.

    :raises BadFile: another format, several channels, or another mode.
    """
    _mask_rules(img.format, img.mode, len(img.getbands()), path, modes)


def check_mask_header(header: ImageHeader, path: os.PathLike, modes: Sequence[str] = MASK_MODES) -> None:
    """:func:`check_mask_mode` on a file's header (:func:`image_header`): a TIFF mask needs one
    band of integers of up to 16 bits, anything else a PNG in one of ``modes``.

    :raises BadFile: the header breaks a mask rule.
    """
    path = Path(path)
    if header.format != "TIFF":
        _mask_rules(header.format, header.mode, header.bands, path, modes)
    elif header.bands != 1:
        raise BadFile(path, "mask_channels", f"mask has {header.bands} bands; expected one band of class ids")
    elif header.mode not in ("bool", "uint8", "uint16", "int8", "int16"):
        raise BadFile(path, "mask_mode", f"mask holds {header.mode} values; expected integer class ids")


def _mask_rules(fmt: Optional[str], mode: str, bands: int, path: Path, modes: Sequence[str]) -> None:
    if fmt not in (None, "", "PNG", "TIFF"):
        raise BadFile(path, "mask_format", f"mask is stored as {fmt}, not PNG or TIFF: a lossy format "
                      "changes class ids at every edge; save masks as PNG")
    if bands > 1:
        raise BadFile(path, "mask_channels",
                      f"mask has {bands} channels ({mode}); expected one channel of class "
                      f"ids (mode P or L)")
    if mode not in modes:
        raise BadFile(path, "mask_mode", f"mask mode {mode} is not supported; expected "
                      f"{' or '.join(m for m in modes if m in ('P', 'L'))}")


def mask_array(img: Image.Image, path: Path, modes: Sequence[str] = MASK_MODES) -> np.ndarray:
    """The stored values of an opened mask, ``H x W`` uint8 (uint16 for 16-bit masks); see
    :func:`check_mask_mode`."""
    check_mask_mode(img, path, modes)
    try:
        # for mode P this is the palette indices, which are the stored values
        arr = np.asarray(img)
    except MemoryError:
        raise
    except Exception as exc:
        raise unreadable(path, "mask", exc) from None
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if arr.size and (arr.min() < 0 or arr.max() > 65535):
        raise BadFile(path, "mask_mode", "mask values outside 0..65535")
    return arr.astype(np.uint16)


def _stored_mask(source: Source, path: Path, modes: Sequence[str], formats: Sequence[str] = ("PNG", "TIFF"),
                 max_pixels: Optional[int] = None) -> np.ndarray:
    """A mask file's (or bytes') stored values, ``H x W`` uint8 or uint16; its size is read from
    the header and checked against ``max_pixels`` (and Pillow's limit) before anything is
    decoded, and its container must be one of ``formats``."""
    data = source if isinstance(source, bytes) else None
    limit = min(max_pixels or Image.MAX_IMAGE_PIXELS, Image.MAX_IMAGE_PIXELS)
    if _is_tiff(path, data) if data is not None else _is_tiff(path):
        if "TIFF" not in formats:
            raise BadFile(path, "mask_format", f"mask is stored as TIFF; expected {' or '.join(formats)}")
        arr = _tiff_array(source, path, "mask", limit)
        if arr.shape[2] != 1:
            raise BadFile(path, "mask_channels", f"mask has {arr.shape[2]} bands; expected one band of class ids")
        arr = arr[:, :, 0]
        if arr.dtype == bool:
            return arr.astype(np.uint8)
        if arr.dtype.kind not in "ui" or (arr.size and (arr.min() < 0 or arr.max() > 65535)):
            raise BadFile(path, "mask_mode", f"mask holds {arr.dtype} values; expected integer class ids")
        return np.ascontiguousarray(arr.astype(np.uint8 if arr.size == 0 or arr.max() <= 255 else np.uint16))
    opened = io.BytesIO(data) if data is not None else path
    # opened without decoding: the header's size and format are judged first
    with open_image(opened, "mask", decode=False, name=path) as img:
        if img.format in ("PNG", "TIFF") and img.format not in formats:
            raise BadFile(path, "mask_format", f"mask is stored as {img.format}; expected {' or '.join(formats)}")
        if img.width * img.height > limit:
            raise BadFile(path, "too_large", f"mask is too large to open safely ({img.width}x{img.height}, over "
                          f"the limit of {limit:,} pixels); it may be a decompression bomb")
        return mask_array(img, path, modes)


def decode_mask(source: Source, competition: Optional["Competition"] = None, *, name: Optional[str] = None,
                modes: Sequence[str] = MASK_MODES) -> np.ndarray:
    """:func:`read_mask` for checks: the same array, but a file that cannot be used raises
    :class:`BadFile` (its kind and path kept) instead of :class:`DataError`."""
    path = Path(name) if name is not None else Path(source) if not isinstance(source, bytes) else Path("<mask>")
    stored = _stored_mask(source, path, modes)
    if competition is None:
        return stored
    try:
        return MaskCodec(competition).decode(stored)
    except UnknownValues as exc:
        raise BadFile(path, "bad_class", str(exc)) from None


def read_stored_mask(source: Source, *, name: Optional[str] = None, modes: Sequence[str] = MASK_MODES,
                     formats: Sequence[str] = ("PNG", "TIFF"), max_pixels: Optional[int] = None) -> np.ndarray:
    """A mask's stored values, ``H x W`` uint8 (uint16 for 16-bit masks), for checks that turn
    each problem into a :class:`Problem` (a submission's masks): like :func:`read_mask` without
    a competition, but raising :class:`BadFile`, whose ``kind`` says what is wrong.

    ``formats`` are the containers accepted (``PNG``, ``TIFF``); ``max_pixels`` caps height x
    width, read from the header, so an oversized mask is refused before it is decoded.

    :raises BadFile: unreadable, truncated, over ``max_pixels`` or Pillow's limit, another
        container than ``formats`` (a lossy one named as such), several channels, or a mode not
        in ``modes``.
    """
    path = Path(name) if name is not None else Path(source) if not isinstance(source, bytes) else Path("<mask>")
    return _stored_mask(source, path, modes, formats, max_pixels)


def read_mask(source: Source, competition: Optional["Competition"] = None, *, name: Optional[str] = None,
              modes: Sequence[str] = MASK_MODES) -> np.ndarray:
    """A mask's class ids as an ``H x W`` uint8 array (:data:`IGNORE` at the competition's ignore
    index), from a file or from a file's bytes (``name`` then labels it). Without a
    ``competition`` the stored values come back as they are (uint8 or uint16).

    :raises DataError: an unreadable file, a lossy format, several channels, a mode not in
        ``modes``, or a stored value the competition's mask encoding has no class for, in one
        line naming the file.
    """
    try:
        return decode_mask(source, competition, name=name, modes=modes)
    except BadFile as bad:
        raise bad.error() from None


def write_mask(path: os.PathLike, ids: np.ndarray, competition: "Competition") -> None:
    """Write class ids as the competition stores masks: its value map and ignore index, a PNG in
    its mask mode (P with the palette, or L; 16-bit greyscale when a stored value is over 255),
    or a one-band TIFF for ``.tif``/``.tiff``; atomically."""
    path = Path(path)
    arr = np.asarray(ids)
    if arr.ndim != 2:
        raise DataError(f"{path}: a mask must be H x W, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise DataError(f"{path}: class ids must fit in 0..255")
        arr = arr.astype(np.uint8)
    stored = MaskCodec(competition).encode(arr)
    write_stored_mask(path, stored, competition.masks.mode, competition.palette_bytes())


def write_stored_mask(path: os.PathLike, stored: np.ndarray, mode: str = "P",
                      palette: Optional[Sequence[int]] = None) -> None:
    """Write stored mask values as they are: a one-band TIFF for ``.tif``/``.tiff``, else a PNG
    in ``mode`` (P with ``palette``, or L; 16-bit greyscale for uint16 values); atomically."""
    path = Path(path)
    arr = np.ascontiguousarray(stored)
    if path.suffix.lower() in TIFF_SUFFIXES:
        _atomic_tiff(path, arr, photometric="minisblack")
        return
    if arr.dtype == np.uint16:
        # Pillow makes uint16 an I;16 image itself; Pillow 13 refuses an explicit mode="I;16" here
        img = Image.fromarray(arr.astype(np.uint16))
    elif mode == "P":
        pal = [int(v) for v in (palette if palette is not None else [i for i in range(256) for _ in range(3)])]
        if len(pal) > 768 or len(pal) % 3:
            raise DataError(f"{path}: a palette is up to 256 RGB triples, got {len(pal)} values")
        # a P image built from raw bytes keeps every value as its own palette index
        img = Image.frombytes("P", (arr.shape[1], arr.shape[0]), arr.astype(np.uint8).tobytes())
        img.putpalette(pal + [0] * (768 - len(pal)))
    else:
        img = Image.fromarray(arr.astype(np.uint8), mode="L")
    atomic_write(path, lambda f: img.save(f, format="PNG"))


def _atomic_tiff(path: Path, arr: np.ndarray, **options) -> None:
    """A TIFF (zlib-compressed) written atomically; tifffile needs a named file, so it is
    encoded in memory first."""
    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.ascontiguousarray(arr), compression="zlib", **options)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))


def write_image(path: os.PathLike, pixels: np.ndarray) -> None:
    """Write an ``H x W x C`` (or ``H x W``) uint8 image: JPEG (quality 95) for .jpg/.jpeg (1 or
    3 bands), a TIFF for .tif/.tiff (any bands, uint8 or uint16), PNG otherwise (1, 3 or 4
    bands); atomically."""
    path = Path(path)
    arr = np.asarray(pixels)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        if arr.dtype not in (np.uint8, np.uint16) or arr.ndim not in (2, 3):
            raise DataError(f"{path}: a TIFF image must be H x W (x C) uint8 or uint16, got {arr.dtype} {arr.shape}")
        photometric = "rgb" if arr.ndim == 3 and arr.shape[2] == 3 else "minisblack"
        _atomic_tiff(path, arr, photometric=photometric,
                     planarconfig="contig" if arr.ndim == 3 else None)
        return
    bands = 1 if arr.ndim == 2 else arr.shape[2]
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or bands not in ((1, 3) if suffix in (".jpg", ".jpeg")
                                                                        else (1, 3, 4)):
        raise DataError(f"{path}: an image must be H x W x 3 uint8 (1 or 4 bands: PNG or TIFF, more: TIFF), "
                        f"got {arr.dtype} {arr.shape}")
    img = Image.fromarray(np.ascontiguousarray(arr))
    if suffix in (".jpg", ".jpeg"):
        atomic_write(path, lambda f: img.save(f, format="JPEG", quality=95))
    else:
        atomic_write(path, lambda f: img.save(f, format="PNG"))
