"""``npz``: one NumPy ``.npz`` archive holding one 2-D array per image, named by the image's stem
(or its whole file name), for scorers written in Python that ``np.load`` the predictions.

Each array holds the mask's stored values (class ids, or ``masks.values``): uint8, or uint16
when a stored value is over 255. The archive is written compressed (``np.savez_compressed``'s
layout: a zip of ``<key>.npy`` members).

An npz is a zip inside the submission zip, and ``.npy`` members may hold pickled objects, so
reading trusts nothing: the archive is read within :data:`~cpx.submit.zipentries.READ_LIMIT`
and loaded with ``allow_pickle=False``; each member is judged first by the size its zip
records and then by its ``.npy`` header (dtype, shape), and only a 2-D integer array of at
most :data:`~cpx.submit.zipentries.MAX_MASK_PIXELS` pixels whose size matches its header is
loaded.
"""

from __future__ import annotations

import io
import zipfile
from collections import Counter
from pathlib import Path
from typing import Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from cpx.data.masks import MaskCodec, UnknownValues
from cpx.kernel.files import atomic_write_bytes
from cpx.submit.checkreport import CheckReport
from cpx.submit.formats import FormatWriter, SubmissionFormat
from cpx.submit.zipentries import MAX_MASK_PIXELS, FileSource, mib
from cpx_plugins.formats._common import Keys, checked_mask, file_name, read_limited, reason, stored_values

# A .npy header is at most numpy's max_header_size (10,000 bytes) after its magic and length.
HEADER_BYTES = 16 * 2**10
# The largest member a mask can need: the most pixels, at 8 bytes each (an int64 argmax saved as
# it is); a member recording more is refused before it is opened.
MAX_MEMBER_BYTES = MAX_MASK_PIXELS * 8 + HEADER_BYTES
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip with members, an empty zip
NPY_MAGIC = b"\x93NUMPY"


class NpzOptions(BaseModel):
    """Options of ``npz``, written beside ``name`` in the profile's ``submission``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: str = Field("predictions.npz", description="the npz file at the top of the zip")
    key: Literal["stem", "name"] = Field("stem", description="each array's name: the image's stem (IMG_1) or its "
                                                             "file name (IMG_1.JPG)")

    @field_validator("file")
    @classmethod
    def _file(cls, value: str) -> str:
        return file_name(value)


class Npz(SubmissionFormat):
    """One ``.npz`` of masks (see the module docstring)."""

    name = "npz"

    def key(self, image_name: str) -> str:
        return Path(image_name).stem if self.options.key == "stem" else image_name

    def entries(self) -> tuple[str, ...]:
        return (self.options.file,)

    def describe(self) -> str:
        values = self.competition.masks.values
        stored = "class ids" if values is None else f"values {', '.join(str(v) for v in sorted(values))} (masks.values)"
        return (f"{self.options.file}: one 2-D uint8 array of {stored} per image, named by the image's "
                f"{'stem' if self.options.key == 'stem' else 'file name'}")

    def writer(self, root: Path) -> FormatWriter:
        return NpzWriter(self, root)

    def read(self, files: FileSource, report: CheckReport) -> dict[str, np.ndarray]:
        file = self.options.file
        if file not in files.names:
            report.add(file, "missing_file", "missing: the submission has no such file")
            return {}
        label = files.label(file)
        data = read_limited(files, file, "archive", report, "the npz archive")
        if data is None:
            return {}
        if not data.startswith(ZIP_MAGIC):
            # np.load would unpickle anything else (refused with allow_pickle=False, but a plain
            # .npy would load as one array): only a zip goes further
            what = "a single .npy array" if data.startswith(NPY_MAGIC) else "not an npz archive"
            report.add(label, "bad_npz", f"{what}; expected an npz (np.savez: a zip of one .npy array per image)")
            return {}
        try:
            npz = np.load(io.BytesIO(data), allow_pickle=False)
        except Exception as exc:  # BadZipFile, OSError, ValueError, ...
            report.add(label, "bad_npz", f"cannot be opened as an npz ({reason(exc)})")
            return {}
        codec = MaskCodec(self.competition)
        masks: dict[str, np.ndarray] = {}
        with npz:
            infos = npz.zip.infolist()
            # np.load would give the last copy of a repeated member, a scorer perhaps the first
            repeated = {name: n for name, n in Counter(info.filename for info in infos).items() if n > 1}
            for member, n in repeated.items():
                report.add(label, "duplicate_entry", f"{member}: appears {n} times")
            for info in infos:
                member = info.filename
                if member in repeated:
                    continue
                if info.is_dir() or "/" in member or not member.endswith(".npy") or member == ".npy":
                    report.add(label, "bad_npz", f"{member}: not a .npy array at the top of the archive")
                    continue
                arr = _load_member(npz, info, label, report)
                if arr is None:
                    continue
                try:
                    masks[member[:-len(".npy")]] = codec.decode(arr.astype(np.uint8) if arr.dtype == bool else arr)
                except UnknownValues as exc:
                    report.add(label, "bad_class", f"{member}: {exc}")
        return masks


def _load_member(npz, info: zipfile.ZipInfo, label: str, report: CheckReport) -> Optional[np.ndarray]:
    """One member as an array, loaded only once its recorded size and its header pass; else
    None with the problem reported."""
    member = info.filename

    def refuse(kind: str, message: str) -> None:
        report.add(label, kind, f"{member}: {message}")

    if info.file_size > MAX_MEMBER_BYTES:
        refuse("too_large", f"unpacks to {mib(info.file_size)}; a mask array is at most {mib(MAX_MEMBER_BYTES)} "
                            "(not loaded)")
        return None
    try:
        with npz.zip.open(info) as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
            else:  # 3.0 only adds UTF-8 field names, for structured arrays no mask is
                refuse("bad_npz", f".npy format {version[0]}.{version[1]}; cpx reads 1.0 and 2.0")
                return None
            header = fh.tell()
    except Exception as exc:  # ValueError for a bad header, zip errors for a broken member
        refuse("bad_npz", f"not a .npy array ({reason(exc)})")
        return None
    if dtype.hasobject:
        refuse("bad_npz", "an array of Python objects (pickled data), which cpx never loads; save integer class ids")
        return None
    if dtype.kind not in "uib":
        refuse("bad_npz", f"{dtype} values; expected integer class ids (uint8)")
        return None
    if len(shape) != 2 or 0 in shape:
        refuse("bad_npz", f"shape {tuple(shape)}; expected one non-empty H x W mask")
        return None
    height, width = shape
    if height * width > MAX_MASK_PIXELS:
        refuse("too_large", f"{width}x{height} pixels; a mask is at most {MAX_MASK_PIXELS:,} pixels (not loaded)")
        return None
    expected = header + height * width * dtype.itemsize
    if info.file_size != expected:
        refuse("bad_npz", f"holds {info.file_size:,} bytes, but its header declares {expected:,} "
                          f"({dtype} {height}x{width})")
        return None
    try:
        # by its ZipInfo rather than npz[key]: NpzFile also answers "a.npy" with a member "a.npy.npy"
        with npz.zip.open(info) as fh:
            return np.lib.format.read_array(fh, allow_pickle=False)
    except Exception as exc:  # a broken member: CRC, truncated data
        refuse("bad_npz", f"cannot be loaded ({reason(exc)})")
        return None


class NpzWriter(FormatWriter):
    """Compresses each array into an archive in memory as it is added (masks compress to a
    fraction of their size) and writes the file atomically when closed."""

    def __init__(self, fmt: Npz, root: Path):
        super().__init__(root)
        self.fmt = fmt
        self.codec = MaskCodec(fmt.competition)
        self.keys = Keys()
        self.buffer = io.BytesIO()
        self.zip = zipfile.ZipFile(self.buffer, "w", compression=zipfile.ZIP_DEFLATED)

    def add(self, image_name: str, mask: np.ndarray) -> None:
        key = self.fmt.key(image_name)
        member = f"{key}.npy"
        stored = stored_values(self.codec, image_name, checked_mask(image_name, mask))
        self.keys.claim(key, image_name, f"{self.fmt.options.file}: {member}")
        with self.zip.open(member, "w", force_zip64=True) as fh:
            np.lib.format.write_array(fh, np.ascontiguousarray(stored), allow_pickle=False)

    def close(self) -> list[str]:
        self.zip.close()
        atomic_write_bytes(self.root / self.fmt.options.file, self.buffer.getvalue())
        return [self.fmt.options.file]

