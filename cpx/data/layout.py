"""The files of a competition data folder, found by the profile's ``Layout``: the one place
that lists a data folder, so every command sees the same files::

    DIR/<train_images>/<stem><image suffix>     DIR/<train_masks>/<layout.mask_name(image name)>
    DIR/<val_images>/...  DIR/<val_masks>/...   (the organisers' validation split, when named)
    DIR/<test_images>/<stem><image suffix>

Scanning lists files without opening them. Suffixes match in any case (``a.JPG`` and
``a.jpg``); a mask belongs to the image whose :meth:`Layout.mask_name` it carries; images are
known by their stems. Everything wrong with the listing is a :class:`Problem` of the part it
is in: a missing folder, two files of one stem, a folder or a broken link named like an image
or mask, an image without its mask and a mask without its image. Files with other suffixes
and dot-files are ignored. Commands stop on the problems of the parts they use with
:meth:`Scan.require` (one line), or go on and say so with :meth:`Scan.warning`.
``write_dataset`` writes a folder in this layout (synthetic data, tests).
"""

from __future__ import annotations

import os
import re
import shlex
import stat
import string
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from cpx.data.competition import DATA_PARTS, Competition, Layout
from cpx.data.images import relative_path, write_image, write_mask
from cpx.data.masks import bad_ids_message
from cpx.kernel.errors import DataError, Problem

SYNTH_PREFIX = "synth_"

TRAIN_PARTS = ("train_images", "train_masks")
VAL_PARTS = ("val_images", "val_masks")
# the parts training reads: its pairs and, when the layout names them, the organisers' val pairs
LABELLED_PARTS = TRAIN_PARTS + VAL_PARTS
TEST_PARTS = ("test_images",)
# problem kinds about a folder as a whole rather than a file in it
FOLDER_KINDS = frozenset({"missing_folder", "unreadable_folder", "empty_folder"})


@dataclass
class Scan:
    """The files of a data folder (no file opened): train and val images by stem, their masks
    by the stem of their image (a mask without an image under the stem its name implies), the
    test images sorted by name, the files ignored for their suffix, and the problems of each
    part (one of :data:`~cpx.data.competition.DATA_PARTS`) in ``by_part``.

    ``data_folder`` is False for :func:`scan_images` of a lone folder of images.
    """

    root: Path
    images: dict[str, Path] = field(default_factory=dict)
    masks: dict[str, Path] = field(default_factory=dict)
    val_images: dict[str, Path] = field(default_factory=dict)
    val_masks: dict[str, Path] = field(default_factory=dict)
    test_images: list[Path] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)
    by_part: dict[str, list[Problem]] = field(default_factory=lambda: {p: [] for p in DATA_PARTS})
    data_folder: bool = True

    @property
    def pairs(self) -> list[str]:
        """Sorted stems of the training images that have a mask."""
        return sorted(set(self.images) & set(self.masks))

    @property
    def val_pairs(self) -> list[str]:
        """Sorted stems of the organisers' validation images that have a mask (none when the
        layout names no validation folders)."""
        return sorted(set(self.val_images) & set(self.val_masks))

    @property
    def problems(self) -> list[Problem]:
        """Every problem of the listing, part by part (train, val, test)."""
        return self.problems_in(DATA_PARTS)

    def problems_in(self, parts: Iterable[str] = DATA_PARTS) -> list[Problem]:
        """The problems of ``parts`` (names from :data:`~cpx.data.competition.DATA_PARTS`, or one
        such name)."""
        parts = (parts,) if isinstance(parts, str) else tuple(parts)
        unknown = [p for p in parts if p not in self.by_part]
        if unknown:
            raise ValueError(f"unknown data part {unknown[0]!r}; one of {', '.join(DATA_PARTS)}")
        return [p for part in DATA_PARTS if part in parts for p in self.by_part[part]]

    def _where(self, count: int) -> str:
        noun = "problem" if count == 1 else "problems"
        return f"{self.root}: {count} {noun} in the {'data ' if self.data_folder else ''}folder"

    def _hint(self) -> str:
        return f"; run `cpx data check {shlex.quote(str(self.root))}` for all" if self.data_folder else ""

    def summary(self, parts: Iterable[str] = DATA_PARTS) -> str:
        """One line naming the count of problems in ``parts`` and the first of them, e.g.
        ``DIR: 2 problems in the data folder, first: train/images/zz.jpg: a folder, not an
        image file; run `cpx data check DIR` for all``; empty when there are none."""
        found = self.problems_in(parts)
        if not found:
            return ""
        if len(found) == 1:
            return f"{self._where(1)}: {found[0]}"
        return f"{self._where(len(found))}, first: {found[0]}{self._hint()}"

    def require(self, parts: Iterable[str] = DATA_PARTS) -> None:
        """Stop a command on the listing problems of the ``parts`` it uses.

        :raises DataError: one line, :meth:`summary`.
        """
        line = self.summary(parts)
        if line:
            raise DataError(line)

    def warning(self, parts: Iterable[str] = DATA_PARTS, shown: int = 3) -> Optional[str]:
        """For commands that go on without the files in question: one line naming the count
        and the first ``shown`` problems (``path (why)``), or None when there are none."""
        found = self.problems_in(parts)
        if not found:
            return None
        listed = ", ".join(f"{p.path} ({p.message})" if p.path else p.message for p in found[:shown])
        more = f", and {len(found) - shown} more" if len(found) > shown else ""
        return f"{self._where(len(found))}, skipped: {listed}{more}{self._hint() if more else ''}"


# --------------------------------------------------------------------------------------------
# Listing one folder


@dataclass
class _Listing:
    files: dict[str, Path] = field(default_factory=dict)  # key (stem, or mask name) -> file
    problems: list[Problem] = field(default_factory=list)
    unusable: set[str] = field(default_factory=set)  # keys of entries named like files but not usable
    ignored: list[Path] = field(default_factory=list)


def _name_key(name: str) -> str:
    """A file name with its suffix in lower case: how mask names are compared."""
    base, suffix = os.path.splitext(name)
    return base + suffix.lower()


def _stem_key(name: str) -> str:
    return Path(name).stem


def _entry_problem(path: Path, rel: str, noun: str) -> Optional[Problem]:
    """Why a directory entry named like an image or mask is not a file to read, or None."""
    try:
        mode = os.stat(path).st_mode  # follows links
    except OSError as exc:
        if path.is_symlink():
            try:
                target = os.readlink(path)
            except OSError:
                target = "?"
            why = "does not exist" if isinstance(exc, FileNotFoundError) else f"cannot be reached ({exc.strerror})"
            return Problem(rel, "broken_link", f"a broken link, not {noun} file: its target {target} {why}")
        return Problem(rel, "unreadable", f"cannot look at the file ({exc.strerror or exc})")
    if stat.S_ISDIR(mode):
        return Problem(rel, "not_a_file", f"a folder, not {noun} file")
    if not stat.S_ISREG(mode):
        return Problem(rel, "not_a_file", f"not a regular file, so not {noun} file")
    return None


def _list_folder(root: Path, folder: Path, suffixes: Sequence[str], what: str, noun: str,
                 key: Callable[[str], str]) -> _Listing:
    """The files of ``folder`` with one of ``suffixes`` (any case) by ``key(name)``; problem
    paths are relative to ``root`` (empty for ``folder`` itself when it is ``root``)."""
    out = _Listing()
    rel = "" if folder == root else relative_path(folder, root)
    if not folder.is_dir():
        why = "is not a folder" if folder.exists() or folder.is_symlink() else "is missing"
        out.problems.append(Problem(rel, "missing_folder", f"{what} folder {why}"))
        return out
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        out.problems.append(Problem(rel, "unreadable_folder", f"cannot list the {what} folder ({exc.strerror})"))
        return out
    wanted = {s.lower() for s in suffixes}
    for entry in entries:
        # dot-files include our own half-written temp files and OS litter
        if entry.name.startswith("."):
            continue
        path = Path(entry.path)
        if path.suffix.lower() not in wanted:
            if entry.is_file():
                out.ignored.append(path)
            continue
        file_rel = relative_path(path, root)
        k = key(entry.name)
        bad = _entry_problem(path, file_rel, noun)
        if bad is not None:
            out.problems.append(bad)
            out.unusable.add(k)
            continue
        if k in out.files:
            out.problems.append(Problem(file_rel, "duplicate", f"same name as {out.files[k].name} but for the "
                                                               f"suffix's case; one {what} per name"))
            continue
        out.files[k] = path
    if not out.files:
        out.problems.append(Problem(rel, "empty_folder", f"{what} folder holds no {'/'.join(sorted(wanted))} files"))
    return out


def _mask_image(layout: Layout, name: str) -> Optional[tuple[str, str]]:
    """The image a mask's file name implies under ``layout.mask_pattern``: (its stem, how to
    name it in a message), or None when the name does not follow the pattern."""
    pattern = layout.mask_pattern or "{stem}" + layout.mask_suffix
    regex, seen = "", set()
    for literal, name_field, _, _ in string.Formatter().parse(pattern):
        regex += re.escape(literal)
        if name_field:
            regex += f"(?P={name_field})" if name_field in seen else f"(?P<{name_field}>.+)"
            seen.add(name_field)
    # suffixes match in any case, so the whole name does
    match = re.fullmatch(regex, name, re.IGNORECASE)
    if match is None:
        return None
    groups = match.groupdict()
    if "name" in groups:
        if not layout.accepts_image(groups["name"]):
            return None
        return Path(groups["name"]).stem, groups["name"]
    return groups["stem"], f"{groups['stem']} ({'/'.join(layout.image_suffixes)})"


# --------------------------------------------------------------------------------------------
# Scanning


def _scan_labelled(out: Scan, competition: Competition, split: str) -> tuple[dict[str, Path], dict[str, Path]]:
    """The images and masks of ``split`` (train or val), with their problems in ``out``."""
    root, lay = out.root, competition.layout
    image_part, mask_part = f"{split}_images", f"{split}_masks"
    images = _list_folder(root, competition.data_path(root, image_part), lay.image_suffixes, f"{split} image",
                          "an image", _stem_key)
    masks = _list_folder(root, competition.data_path(root, mask_part), (lay.mask_suffix,), f"{split} mask",
                         "a mask", _name_key)
    out.by_part[image_part].extend(images.problems)
    out.by_part[mask_part].extend(masks.problems)
    out.ignored.extend(images.ignored + masks.ignored)
    paired: dict[str, Path] = {}
    claimed: set[str] = set()
    # with one side missing altogether, its folder problem says it once instead of per file
    for stem, path in images.files.items():
        wanted = lay.mask_name(path.name)
        mask = masks.files.get(_name_key(wanted))
        if mask is not None:
            paired[stem] = mask
            claimed.add(_name_key(wanted))
        elif masks.files and _name_key(wanted) not in masks.unusable:
            out.by_part[mask_part].append(Problem(relative_path(path, root), "no_mask",
                                                  f"image has no mask {wanted}"))
    for k, path in masks.files.items():
        if k in claimed:
            continue
        implied = _mask_image(lay, path.name)
        stem = implied[0] if implied is not None else None
        if stem is not None and stem not in images.files and stem not in paired:
            paired[stem] = path  # known by the stem it implies; pairs with nothing
        if not images.files or stem in images.unusable:
            continue  # the image folder's, or the image entry's, own problem says it
        if implied is None:
            why = f"its name does not follow layout.mask_pattern {lay.mask_pattern}"
        else:
            why = f"no image {implied[1]} in {getattr(lay, image_part)}"
        out.by_part[mask_part].append(Problem(relative_path(path, root), "no_image", f"mask has no image: {why}"))
    return images.files, paired


def scan(root: os.PathLike, competition: Competition) -> Scan:
    """The files of the data folder ``root`` under ``competition.layout`` (see the module
    docstring): train pairs, the organisers' validation pairs when the layout names their
    folders, and test images; no file is opened. Nothing is raised: every problem is in
    ``Scan.by_part`` (and ``Scan.problems``).
    """
    out = Scan(Path(root))
    out.images, out.masks = _scan_labelled(out, competition, "train")
    if competition.layout.has_val:
        out.val_images, out.val_masks = _scan_labelled(out, competition, "val")
        for stem in sorted(set(out.val_images) & set(out.images)):
            # names stand for images in split lists and run records, so they must tell train and val apart
            out.by_part["val_images"].append(Problem(
                relative_path(out.val_images.pop(stem), out.root), "duplicate",
                f"same name as the train image {out.images[stem].name}; names must differ between train and val"))
            out.val_masks.pop(stem, None)
    test = _list_folder(out.root, competition.data_path(out.root, "test_images"), competition.layout.image_suffixes,
                        "test image", "an image", _stem_key)
    out.by_part["test_images"].extend(test.problems)
    out.ignored.extend(test.ignored)
    out.test_images = sorted(test.files.values())
    return out


def scan_images(folder: os.PathLike, competition: Optional[Competition] = None, *,
                suffixes: Optional[Sequence[str]] = None, what: str = "image") -> Scan:
    """A lone folder of images (``cpx package --test DIR``, ``cpx predict --input DIR``) as a
    :class:`Scan` whose ``test_images`` are its images (``suffixes``, any case; by default the
    competition's), with their problems under ``test_images``; paths in problems are relative
    to ``folder``.
    """
    folder = Path(folder)
    if suffixes is None:
        if competition is None:
            raise ValueError("scan_images needs a competition or suffixes")
        suffixes = competition.layout.image_suffixes
    out = Scan(folder, data_folder=False)
    listing = _list_folder(folder, folder, suffixes, what, "an image", _stem_key)
    out.by_part["test_images"].extend(listing.problems)
    out.ignored = listing.ignored
    out.test_images = sorted(listing.files.values())
    return out


def train_names(root: os.PathLike, competition: Competition) -> list[str]:
    """Sorted stems of the training pairs.

    :raises DataError: a problem in the train (or the organisers' val) folders, in one line
        (:meth:`Scan.require`).
    """
    found = scan(root, competition)
    found.require(LABELLED_PARTS)
    return found.pairs


def test_image_paths(root: os.PathLike, competition: Competition) -> list[Path]:
    """The test images of ``root``, sorted by name.

    :raises DataError: a problem in the test image folder, in one line.
    """
    found = scan(root, competition)
    found.require(TEST_PARTS)
    return found.test_images


# --------------------------------------------------------------------------------------------
# Writing


def write_dataset(root: os.PathLike, competition: Competition,
                  samples: Iterable[tuple[np.ndarray, np.ndarray]], test_count: int = 0, *,
                  val_count: int = 0, exist_ok: bool = False) -> tuple[int, int]:
    """Write (image, mask) pairs (class ids) into the competition layout as synth_00000,
    synth_00001, ... with its first image suffix, its mask names and its mask encoding.

    The last ``test_count`` samples become test images without masks; the ``val_count`` before
    them go to the layout's validation folders (a layout without them: refused). Returns
    (labelled pairs, test images) written. Refuses folders that already hold files unless
    ``exist_ok``.
    """
    root = Path(root)
    if test_count < 0 or val_count < 0:
        raise DataError(f"test and validation counts must be >= 0, not {test_count} and {val_count}")
    lay = competition.layout
    parts = ["train_images", "train_masks", "test_images"] + (["val_images", "val_masks"] if val_count else [])
    dirs = {p: competition.data_path(root, p) for p in parts}
    if not exist_ok:
        for d in dirs.values():
            if d.is_dir() and any(not e.name.startswith(".") for e in os.scandir(d)):
                raise DataError(f"{d}: folder is not empty; choose an empty destination")
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    image_suffix = lay.image_suffixes[0]
    k, channels = competition.num_classes, competition.channels

    def name(i: int) -> str:
        return f"{SYNTH_PREFIX}{i:05d}{image_suffix}"

    def validate(i: int, image: np.ndarray, mask: np.ndarray) -> None:
        image, mask = np.asarray(image), np.asarray(mask)
        if image.ndim != 3 or image.shape[2] != channels or mask.shape != image.shape[:2]:
            raise DataError(f"sample {i}: expected image H x W x {channels} and mask H x W, got "
                            f"{image.shape} and {mask.shape}")
        if mask.size and (int(mask.max()) >= k or int(mask.min()) < 0):
            raise DataError(f"sample {i}: {bad_ids_message(np.unique(mask[(mask >= k) | (mask < 0)]), k)}")

    def write_pair(i: int, img: np.ndarray, msk: np.ndarray, part: str) -> None:
        write_image(dirs[f"{part}_images"] / name(i), img)
        write_mask(dirs[f"{part}_masks"] / lay.mask_name(name(i)), msk, competition)

    # samples may be a generator of unknown length, so hold back the last val + test samples
    pending: deque = deque()
    labelled = 0
    index = 0
    for image, mask in samples:
        validate(index, image, mask)
        pending.append((index, image, mask))
        index += 1
        if len(pending) > test_count + val_count:
            write_pair(*pending.popleft(), "train")
            labelled += 1
    while len(pending) > test_count:
        write_pair(*pending.popleft(), "val")
        labelled += 1
    for i, img, _ in pending:
        write_image(dirs["test_images"] / name(i), img)
    return labelled, len(pending)
