"""``rle-json``: one JSON file of run-length encoded masks of one class, keyed by image file name,
the format of binary challenges (vegetation, buildings, lesions) scored from a single file::

    {"IMG_0001.JPG": {"counts": [start, length, start, length, ...], "height": H, "width": W}, ...}

A run covers ``length`` pixels from index ``start``; pixels are numbered along rows
(``row-major``: row r, column c is ``r * W + c``) or down columns (``column-major``:
``c * H + r``), the first one being ``index_base`` (0 or 1). Organisers differ on both, so the
profile must say which (no default). Runs are written sorted, apart and non-empty, in compact
JSON.

The runs mark the pixels of one class (``class``; class 1 of a two-class competition unless
given). This suits binary competitions: decoding gives that class's id inside the runs and the
background (class 0) everywhere else, so writing a mask of more classes keeps only that class
(:meth:`RleJson.kept_classes`).

Reading names the file and the field of every problem (``results.json: IMG_1.JPG.counts:
missing``), leaves out the entries that have one, and never allocates a mask of more than
:data:`~cpx.submit.zipentries.MAX_MASK_PIXELS` pixels.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Optional, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator

from cpx.kernel.errors import ConfigError, DataError
from cpx.kernel.files import atomic_write_text
from cpx.submit.checkreport import CheckReport
from cpx.submit.formats import FormatWriter, SubmissionFormat
from cpx.submit.zipentries import MAX_MASK_PIXELS, FileSource
from cpx_plugins.formats._common import Keys, checked_mask, file_name, read_limited, reason

FIELDS = ("counts", "height", "width")


class RleJsonOptions(BaseModel):
    """Options of ``rle-json``, written beside ``name`` in the profile's ``submission``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: str = Field("results.json", description="the JSON file at the top of the zip")
    order: Literal["row-major", "column-major"] = Field(
        description="pixel numbering: row-major (r * W + c) or column-major (c * H + r); the organisers' rules say")
    index_base: Literal[0, 1] = Field(description="index of the first pixel: 0 or 1; the organisers' rules say")
    class_: Optional[Union[StrictInt, StrictStr]] = Field(
        None, alias="class", description="the class the runs mark (name or id); default class 1 of a two-class "
                                         "competition, required with more classes")

    @field_validator("file")
    @classmethod
    def _file(cls, value: str) -> str:
        return file_name(value)


class RleJson(SubmissionFormat):
    """Run-length encoded masks of one class in one JSON object (see the module docstring).

    :raises ConfigError: no ``class`` for a competition of more than two classes, a class that
        is not one of the competition's, or class 0 (the background the runs are cut from),
        named ``submission.class``.
    """

    name = "rle-json"

    def __init__(self, options: RleJsonOptions, competition):
        super().__init__(options, competition)
        self.class_id = _resolve_class(options.class_, competition.classes)
        self.file = options.file
        self.column_major = options.order == "column-major"
        self.base = options.index_base

    def key(self, image_name: str) -> str:
        return image_name

    def entries(self) -> tuple[str, ...]:
        return (self.file,)

    def kept_classes(self) -> tuple[int, ...]:
        return (0, self.class_id)

    def describe(self) -> str:
        return (f"{self.file}: run-length encoded masks of class {self.competition.classes[self.class_id]}, "
                f"{self.options.order}, {self.base}-based")

    def writer(self, root: Path) -> FormatWriter:
        return RleJsonWriter(self, root)

    # --- encoding ------------------------------------------------------------------------

    def encode(self, mask: np.ndarray) -> list[int]:
        """``counts`` of the class's pixels in an ``H x W`` mask: sorted ``start, length`` pairs."""
        flat = (mask == self.class_id).ravel(order="F" if self.column_major else "C")
        # a run starts where the padded line rises and ends where it falls
        edges = np.flatnonzero(np.diff(np.concatenate(([False], flat, [False])).astype(np.int8)))
        starts, ends = edges[0::2], edges[1::2]
        counts = np.empty(2 * len(starts), dtype=np.int64)
        counts[0::2] = starts + self.base
        counts[1::2] = ends - starts
        return counts.tolist()

    def decode(self, counts: np.ndarray, height: int, width: int) -> np.ndarray:
        """The ``H x W`` uint8 mask of validated ``counts``: the class's id inside the runs, 0 outside."""
        starts = counts[0::2] - self.base
        ends = starts + counts[1::2]
        edges = np.zeros(height * width + 1, dtype=np.int8)
        edges[starts] += 1  # runs are apart, so each index starts or ends at most one run
        edges[ends] -= 1
        flat = np.cumsum(edges[:-1], dtype=np.int8).astype(np.uint8) * np.uint8(self.class_id)
        if self.column_major:
            return np.ascontiguousarray(flat.reshape(width, height).T)
        return flat.reshape(height, width)

    # --- reading -------------------------------------------------------------------------

    def read(self, files: FileSource, report: CheckReport) -> dict[str, np.ndarray]:
        if self.file not in files.names:
            report.add(self.file, "missing_file", "missing: the submission has no such file")
            return {}
        label = files.label(self.file)
        data = read_limited(files, self.file, "json", report, "the JSON file")
        if data is None:
            return {}
        try:
            top = json.loads(data, object_pairs_hook=_Object.of, parse_constant=_refuse_constant)
        except RecursionError:
            report.add(label, "bad_json", "not JSON that cpx can read (nested too deeply)")
            return {}
        except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
            report.add(label, "bad_json", f"not JSON ({reason(exc)})")
            return {}
        if not isinstance(top, dict):
            report.add(label, "bad_json", f"the top level is {_kind(top)}; expected an object keyed by image "
                                          "file name")
            return {}
        masks: dict[str, np.ndarray] = {}
        for key in getattr(top, "duplicates", ()):
            report.add(label, "duplicate_entry", f"{key}: appears more than once")
        for key, value in top.items():
            if key in getattr(top, "duplicates", ()):
                continue
            problems = []
            mask = self._entry(key, value, problems)
            for field, message in problems:
                report.add(label, "bad_entry", f"{field}: {message}")
            if mask is not None:
                masks[key] = mask
        return masks

    def _entry(self, key: str, value: Any, problems: list) -> Optional[np.ndarray]:
        """The mask of one entry, or None with each of its problems as ``(field, message)``."""
        if not isinstance(value, dict):
            problems.append((key, f"{_kind(value)}; expected an object with counts, height and width"))
            return None
        for field in getattr(value, "duplicates", ()):
            problems.append((f"{key}.{field}", "appears more than once"))
        for field in FIELDS:
            if field not in value:
                problems.append((f"{key}.{field}", "missing"))
        for field in value:
            if field not in FIELDS:
                problems.append((f"{key}.{field}", "unknown field (an entry has counts, height and width)"))
        for field in ("height", "width"):
            side = value.get(field)
            if field in value and not (type(side) is int and side > 0):  # True is no side
                problems.append((f"{key}.{field}", f"{side!r} is not a positive integer"))
        counts = None
        if "counts" in value:
            counts, problem = _counts(value["counts"])
            if problem is not None:
                problems.append((f"{key}.counts{problem[0]}", problem[1]))
        if problems or counts is None:
            return None
        height, width = value["height"], value["width"]
        if height * width > MAX_MASK_PIXELS:
            problems.append((key, f"{width}x{height} pixels; a mask is at most {MAX_MASK_PIXELS:,} pixels "
                                  "(not decoded)"))
            return None
        bounds = self._bounds(counts, height * width)
        if bounds is not None:
            problems.append((f"{key}.counts{bounds[0]}", bounds[1]))
            return None
        return self.decode(counts, height, width)

    def _bounds(self, counts: np.ndarray, pixels: int) -> Optional[tuple[str, str]]:
        """``([index], message)`` for the first run outside pixels ``base .. base + pixels - 1``."""
        if not len(counts):
            return None
        if counts[0] < self.base:
            return "[0]", f"{int(counts[0])} is before the first pixel, {self.base} (index_base)"
        ends = counts[0::2] + counts[1::2]
        past = np.flatnonzero(ends - self.base > pixels)
        if past.size:
            i = int(past[0])
            return (f"[{2 * i}]", f"the run {int(counts[2 * i])}+{int(counts[2 * i + 1])} ends past the last pixel, "
                                  f"{pixels - 1 + self.base} ({self.options.order}, {self.base}-based)")
        return None


class RleJsonWriter(FormatWriter):
    """Collects every image's runs and writes the JSON object when closed."""

    def __init__(self, fmt: RleJson, root: Path):
        super().__init__(root)
        self.fmt = fmt
        self.keys = Keys()
        self.entries: dict[str, dict] = {}

    def add(self, image_name: str, mask: np.ndarray) -> None:
        key = self.fmt.key(image_name)
        mask = checked_mask(image_name, mask)
        k = self.fmt.competition.num_classes
        if int(mask.max()) >= k:
            raise DataError(f"{image_name}: class id {int(mask.max())} is outside 0..{k - 1}")
        self.keys.claim(key, image_name, f"{self.fmt.file}: {key}")
        height, width = mask.shape
        self.entries[key] = {"counts": self.fmt.encode(mask), "height": int(height), "width": int(width)}

    def close(self) -> list[str]:
        text = json.dumps(self.entries, separators=(",", ":"), sort_keys=True)
        atomic_write_text(self.root / self.fmt.file, text)
        return [self.fmt.file]


def _resolve_class(value: Optional[Union[int, str]], classes: tuple[str, ...]) -> int:
    """The id of the class the runs mark; see :class:`RleJson`."""
    if value is None:
        if len(classes) != 2:
            raise ConfigError(f"submission.class: required for a competition of {len(classes)} classes: the class "
                              "whose pixels the runs mark (a name or an id)")
        return 1
    if isinstance(value, str) and value in classes:
        cid = classes.index(value)
    elif isinstance(value, int) and 0 <= value < len(classes):
        cid = value
    else:
        raise ConfigError(f"submission.class: {value!r} is not one of the classes ({', '.join(classes)}) or "
                          f"their ids 0..{len(classes) - 1}")
    if cid == 0:
        raise ConfigError(f"submission.class: class 0 ({classes[0]}) is the background outside the runs; "
                          "name the class the runs mark")
    return cid


def _counts(value: Any) -> tuple[Optional[np.ndarray], Optional[tuple[str, str]]]:
    """``counts`` as int64 ``start, length`` pairs, sorted and apart, or the first problem as
    ``(index, message)`` (index ``""`` for the list itself, ``[i]`` for an element)."""
    if not isinstance(value, list):
        return None, ("", f"{_kind(value)}; expected a list of integers start, length, ...")
    for i, v in enumerate(value):
        # bool is an int to Python, not to the scorer
        if type(v) is not int:
            return None, (f"[{i}]", f"{v!r} is not an integer")
        if v < 0:
            return None, (f"[{i}]", f"{v} is negative")
        if v > 2**62:  # far past any mask, and past int64
            return None, (f"[{i}]", f"{v} is past the last pixel")
    if len(value) % 2:
        return None, ("", f"odd length {len(value)}; expected start, length pairs")
    counts = np.asarray(value, dtype=np.int64)
    starts, lengths = counts[0::2], counts[1::2]
    empty = np.flatnonzero(lengths == 0)
    if empty.size:
        return None, (f"[{2 * int(empty[0]) + 1}]", "a run of length 0")
    ends = starts + lengths
    back = np.flatnonzero(starts[1:] < ends[:-1])
    if back.size:
        i = int(back[0]) + 1
        return None, (f"[{2 * i}]", f"the run at {int(starts[i])} starts before the previous one ends "
                                    f"({int(ends[i - 1])}); runs must be sorted and apart")
    return counts, None


class _Object(dict):
    """A JSON object that remembers the keys it held more than once (the last value is kept,
    as most JSON readers do, but a scorer may keep the first)."""

    duplicates: tuple = ()

    @classmethod
    def of(cls, pairs: list[tuple[str, Any]]) -> "_Object":
        obj, repeated = cls(), []
        for key, value in pairs:
            if key in obj and key not in repeated:
                repeated.append(key)
            obj[key] = value
        obj.duplicates = tuple(repeated)
        return obj


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not standard JSON")


def _kind(value: Any) -> str:
    """``a list``, ``a string``, ... for messages."""
    # bool before int: True is an int to Python
    for types, name in ((bool, "a boolean"), (dict, "an object"), (list, "a list"), (str, "a string"),
                        ((int, float), "a number"), (type(None), "null")):
        if isinstance(value, types):
            return name
    return "a value"

