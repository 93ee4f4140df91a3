"""Submission formats: the files a zip holds for the organisers' scorer, as plugins.

A format writes each predicted mask (``cpx package``, and the references an ``--official``
scoring lays out for the organisers' program) and reads a zip or a folder back into masks,
reporting every problem with the file and the field (``package --check``, ``submit --zip``,
``cpx score``). Built-ins (``cpx_plugins.formats``): ``masks-png``, ``masks-tiff``,
``rle-json`` and ``npz``; a competition profile picks one with ``submission: {name: ...}``.

Every prediction is keyed by its image's file name (``IMG_0001.JPG``): :meth:`SubmissionFormat.key`
says how the format names it (the stem, for a folder of mask files; the whole name, for a JSON
object keyed by file name), so cpx can compare a zip with the test images, and can refuse before
anything is written two images the format could not tell apart. Masks are ``H x W`` uint8
arrays of class ids (``0 .. num_classes - 1``); a format stores them as the organisers do (a
palette, 0/255 through the profile's ``masks.values`` with :class:`cpx.data.masks.MaskCodec`,
run lengths) and reads them back.

The checks around a format (entry safety, sizes against the test images, class ids, the
solution folder, the manifest) are the core's (:mod:`cpx.submit.zipcheck`); a format only
knows its own files.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel

if TYPE_CHECKING:
    from cpx.data.competition import Competition
    from cpx.submit.checkreport import CheckReport
    from cpx.submit.zipentries import FileSource


class FormatWriter(ABC):
    """Writes one submission's predictions into a folder (the zip's top level), one mask at a
    time; :meth:`close` finishes what is written at the end (a JSON object, an archive).
    Use as a context manager: ``close`` runs when the block ends without an error."""

    def __init__(self, root: Path):
        self.root = Path(root)

    @abstractmethod
    def add(self, image_name: str, mask: np.ndarray) -> None:
        """Add the prediction of image file ``image_name``: ``mask`` is ``H x W`` uint8 class ids
        at the image's own size.

        :raises DataError: a mask this format cannot store (wrong shape or dtype, a class id the
            encoding has no value for), naming the image.
        """

    @abstractmethod
    def close(self) -> list[str]:
        """Finish writing; the files written, as posix paths relative to :attr:`root`."""

    def __enter__(self) -> "FormatWriter":
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is None:
            self.close()


class SubmissionFormat(ABC):
    """A registered submission format, built by its factory for one competition with its
    validated options (``factory(options, competition)``)."""

    name: str = ""

    def __init__(self, options: BaseModel, competition: "Competition"):
        self.options = options
        self.competition = competition

    @abstractmethod
    def key(self, image_name: str) -> str:
        """How this format names the prediction of the image file ``image_name``."""

    @abstractmethod
    def entries(self) -> tuple[str, ...]:
        """The top-level names this format writes (a folder as ``masks/``, a file as
        ``results.json``): any other top-level entry of a zip is reported as unexpected."""

    @abstractmethod
    def writer(self, root: Path) -> FormatWriter:
        """A writer into the folder ``root`` (created when missing)."""

    @abstractmethod
    def read(self, files: "FileSource", report: "CheckReport") -> dict[str, np.ndarray]:
        """Every prediction in ``files`` (a zip or a folder, through the size limits of
        :mod:`cpx.submit.zipentries`), by :meth:`key`, as ``H x W`` uint8 class ids.

        Each problem (a missing or unreadable file, a malformed field, a value the encoding
        does not have) goes to ``report`` with the entry's name and, inside a structured file,
        the field (``results.json: IMG_1.JPG.counts: ...``); what cannot be decoded is left out.
        Class ids are not range-checked here (the core does it for every format)."""

    def location(self, key: str) -> str:
        """Where the prediction of ``key`` lives, for problems about it (a missing mask, a size
        or class id that is wrong): by default the key itself; a folder of mask files names
        the file (``masks/IMG_1.png``)."""
        return key

    def kept_classes(self) -> tuple[int, ...]:
        """The class ids a mask keeps through this format: every class of the competition,
        unless the format stores only some (run lengths of one class write every other id as
        background); only masks of these ids read back as they were written."""
        return tuple(range(self.competition.num_classes))

    def describe(self) -> str:
        """One line saying what the zip holds, for ``cpx competitions`` and messages."""
        return self.name


def create_format(competition: "Competition", host: Any) -> SubmissionFormat:
    """The submission format of ``competition`` with its options validated.

    :raises UnknownComponent: an unregistered format; :raises ConfigError: bad options
        (named ``submission.<field>``).
    """
    spec = competition.submission
    return host.submission_formats.get(spec.name).create(spec.options, competition, where="submission")


def duplicate_keys(fmt: SubmissionFormat, image_names: list[str]) -> list[tuple[str, str]]:
    """Pairs of image names the format would store under one key (``a.jpg`` and ``a.png`` in a
    folder of ``<stem>.png`` masks), in order."""
    seen: dict[str, str] = {}
    clashes = []
    for name in image_names:
        key = fmt.key(name)
        if key in seen:
            clashes.append((seen[key], name))
        else:
            seen[key] = name
    return clashes
