"""A folder of mask files, one per image named by the image's stem: what ``masks-png`` and
``masks-tiff`` share (the key, the listing rules, the size limit, the value map), each adding
its container, suffix and writing mode.

Reading is strict about names because the scorer is: it looks for ``<folder>/<stem><suffix>``
on a case-sensitive file system, so a mask in a subfolder, with another suffix or suffix case,
or whose name differs from another's only in case is reported, not guessed at. Files outside
the folder are the core's business (:mod:`cpx.submit.zipcheck`).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np

from cpx.data.images import MASK_MODES, BadFile, read_stored_mask, write_stored_mask
from cpx.data.masks import MaskCodec, UnknownValues
from cpx.submit.checkreport import CheckReport
from cpx.submit.formats import FormatWriter, SubmissionFormat
from cpx.submit.zipentries import MAX_MASK_PIXELS, FileSource
from cpx_plugins.formats._common import Keys, checked_mask, read_limited, stored_values


class MaskFolder(SubmissionFormat):
    """``<folder>/<stem><suffix>`` for every image; subclasses set the container and suffix."""

    container = "PNG"  # the one container accepted (images.read_stored_mask's formats)
    suffix = ".png"  # of every mask file, exactly (the scorer's file system tells case apart)
    read_modes: tuple[str, ...] = ()  # Pillow modes accepted when reading (empty: any mask mode)

    @property
    def folder(self) -> str:
        return self.options.folder

    def values_phrase(self) -> str:
        """How classes are stored, for :meth:`describe`."""
        values = self.competition.masks.values
        if values is None:
            return "class ids as pixel values"
        return f"pixel values {', '.join(str(v) for v in sorted(values))} (masks.values)"

    def key(self, image_name: str) -> str:
        return Path(image_name).stem

    def entries(self) -> tuple[str, ...]:
        return (PurePosixPath(self.folder).parts[0] + "/",)

    def writer(self, root: Path) -> FormatWriter:
        return MaskFolderWriter(self, root)

    def path_of(self, key: str) -> str:
        """The mask file of ``key``, relative to the zip's top."""
        return f"{self.folder}/{key}{self.suffix}"

    def location(self, key: str) -> str:
        return self.path_of(key)

    def read(self, files: FileSource, report: CheckReport) -> dict[str, np.ndarray]:
        prefix = self.folder + "/"
        top = self.entries()[0]
        codec = MaskCodec(self.competition)
        masks: dict[str, np.ndarray] = {}
        seen: dict[str, str] = {}  # case-folded stem -> the entry that has it
        found = False
        for name in files.names:
            if not name.startswith(top):
                continue
            label = files.label(name)
            if not name.startswith(prefix):  # beside a nested folder (predictions/ of predictions/masks/)
                report.add(label, "unexpected_file", f"not in {prefix}, where the masks go")
                continue
            found = True
            rel = name[len(prefix):]
            if "/" in rel:
                report.add(label, "mask_subfolder", f"masks sit directly in {prefix}, not in a subfolder")
                continue
            stem, suffix = rel[:-len(self.suffix)], rel[-len(self.suffix):]
            if suffix != self.suffix or not stem:
                hint = (f" (the scorer looks for {self.suffix}; case matters on its file system)"
                        if suffix.lower() == self.suffix and stem else "")
                report.add(label, "mask_suffix", f"not a {self.suffix} mask{hint}")
                continue
            if stem.casefold() in seen:
                report.add(label, "duplicate_mask", f"same name as {files.label(seen[stem.casefold()])} but for case; "
                                                    "the two collide when unzipped on Windows or macOS")
                continue
            seen[stem.casefold()] = name
            data = read_limited(files, name, "mask", report, "a mask")
            if data is None:
                continue
            try:
                stored = read_stored_mask(data, name=label, modes=self.read_modes or MASK_MODES,
                                          formats=(self.container,), max_pixels=MAX_MASK_PIXELS)
                masks[stem] = codec.decode(stored)
            except BadFile as bad:
                report.add(label, bad.kind, bad.message)
            except UnknownValues as exc:
                report.add(label, "bad_class", str(exc))
        if not found:
            report.add(prefix, "no_masks", f"no {prefix} folder of {self.suffix} masks at the top of the zip")
        return masks


class MaskFolderWriter(FormatWriter):
    """Writes each mask as a file as soon as it is added (atomically), so nothing is held."""

    def __init__(self, fmt: MaskFolder, root: Path):
        super().__init__(root)
        self.fmt = fmt
        self.codec = MaskCodec(fmt.competition)
        self.palette = fmt.competition.palette_bytes()
        self.keys = Keys(fold=True)
        self.written: list[str] = []

    def add(self, image_name: str, mask: np.ndarray) -> None:
        key = self.fmt.key(image_name)
        rel = self.fmt.path_of(key)
        stored = stored_values(self.codec, image_name, checked_mask(image_name, mask))
        self.keys.claim(key, image_name, rel)
        write_stored_mask(self.root / rel, stored, self.fmt.competition.masks.mode, self.palette)
        self.written.append(rel)

    def close(self) -> list[str]:
        return list(self.written)
