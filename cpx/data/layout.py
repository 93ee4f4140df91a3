"""The files of a competition data folder, found by the profile's ``Layout``::

    DIR/<train_images>/<stem>.jpg|png     DIR/<train_masks>/<stem>.png     DIR/<test_images>/*

Scanning lists files without opening them; ``write_dataset`` writes a folder in this layout
(synthetic data, tests).
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from cpx.data.competition import Competition
from cpx.data.images import relative_path, write_image, write_mask
from cpx.data.masks import bad_ids_message
from cpx.kernel.errors import DataError, Problem

SYNTH_PREFIX = "synth_"


@dataclass
class Scan:
    """The files of a data folder, by stem; no file is opened."""

    root: Path
    images: dict[str, Path] = field(default_factory=dict)
    masks: dict[str, Path] = field(default_factory=dict)
    test_images: list[Path] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def pairs(self) -> list[str]:
        return sorted(set(self.images) & set(self.masks))


def _list_folder(root: Path, folder: Path, suffixes: Sequence[str], what: str,
                 problems: list[Problem]) -> dict[str, Path]:
    rel = relative_path(folder, root)
    if not folder.exists():
        problems.append(Problem(rel, "missing_folder", f"{what} folder is missing"))
        return {}
    if not folder.is_dir():
        problems.append(Problem(rel, "missing_folder", f"{what} folder is not a folder"))
        return {}
    wanted = {s.lower() for s in suffixes}
    found: dict[str, Path] = {}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        # dot-files include our own half-written temp files and OS litter
        if entry.name.startswith(".") or not entry.is_file():
            continue
        path = Path(entry.path)
        if path.suffix.lower() not in wanted:
            continue
        if path.stem in found:
            problems.append(Problem(relative_path(path, root), "duplicate",
                                    f"same name as {found[path.stem].name}; one {what} per name"))
            continue
        found[path.stem] = path
    if not found:
        problems.append(Problem(rel, "empty_folder",
                                f"{what} folder holds no {'/'.join(sorted(wanted))} files"))
    return found


def scan(root: os.PathLike, competition: Competition) -> Scan:
    """The files of the data folder ``root`` under ``competition.layout``, by stem; no file is
    opened. Missing folders and duplicate stems are collected in ``problems``.
    """
    root = Path(root)
    lay = competition.layout
    out = Scan(root)
    out.images = _list_folder(root, competition.data_path(root, "train_images"),
                              lay.image_suffixes, "train image", out.problems)
    out.masks = _list_folder(root, competition.data_path(root, "train_masks"),
                             (lay.mask_suffix,), "train mask", out.problems)
    out.test_images = sorted(_list_folder(root, competition.data_path(root, "test_images"),
                                          lay.image_suffixes, "test image",
                                          out.problems).values())
    return out


def train_names(root: os.PathLike, competition: Competition) -> list[str]:
    """Sorted stems of the training images (whether or not each has a mask)."""
    folder = competition.data_path(root, "train_images")
    if not folder.is_dir():
        raise DataError(f"{folder}: folder is missing")
    found = scan(root, competition)
    if not found.images:
        raise DataError(f"{folder}: no training images "
                        f"({'/'.join(competition.layout.image_suffixes)})")
    return sorted(found.images)


def test_image_paths(root: os.PathLike, competition: Competition) -> list[Path]:
    """The test images of ``root``, sorted by name."""
    return scan(root, competition).test_images


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
