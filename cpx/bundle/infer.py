"""What no bundle says, guessed from a labelled data folder: where the training, validation and
test files are, their suffixes and mask names, the stored mask values (hence the classes), the
images' bands and sizes. Every guess comes with a note saying what it was read from, and
``cpx init`` marks each one in the profile for the user to confirm: class names in particular
cannot be read from pixels.

Only headers and a sample of the masks are read (:data:`SAMPLE` of them, spread over the
sorted list), through the one reader (:mod:`cpx.data.images`).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from cpx.data.images import BadFile, image_header, read_stored_mask
from cpx.kernel.errors import DataError

SAMPLE = 64
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
MASK_WORDS = {"mask", "masks", "label", "labels", "ann", "anns", "annotation", "annotations", "gt", "groundtruth",
              "ground_truth", "segmentation", "segmentations", "target", "targets", "seg", "labels_png"}
IMAGE_WORDS = {"image", "images", "img", "imgs", "jpegimages", "input", "inputs", "rgb", "photos"}
PARTS = {"train": ("train", "training", "trainval"), "val": ("val", "valid", "validation", "dev", "development"),
         "test": ("test", "testing", "eval")}


@dataclass
class Inferred:
    """A draft of the profile's data fields (``layout``, ``classes``, ``masks``, ``channels``,
    ``size``, ``pixel_max``) with a note for each field saying what it was read from."""

    fields: dict[str, Any]
    notes: dict[str, str] = field(default_factory=dict)
    pairs: int = 0


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def _role(rel: Path) -> tuple[Optional[str], Optional[str]]:
    """(part, kind) of a folder from its path's words (``train/masks`` -> ("train", "masks"))."""
    words = [w.lower() for w in rel.parts]
    part = next((p for p, names in PARTS.items() if any(w in names for w in words)), None)
    kind = ("masks" if any(w in MASK_WORDS for w in words) else
            "images" if any(w in IMAGE_WORDS for w in words) else None)
    return part, kind


def _folders(root: Path) -> dict[tuple[str, str], Path]:
    """(part, kind) -> the folder, for every folder up to three levels down holding images."""
    found: dict[tuple[str, str], Path] = {}
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        depth = len(here.relative_to(root).parts)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if depth < 3 else []
        if not any(Path(f).suffix.lower() in IMAGE_SUFFIXES for f in files):
            continue
        part, kind = _role(here.relative_to(root))
        if kind is None and part == "test":
            kind = "images"
        if part and kind and (part, kind) not in found:
            found[(part, kind)] = here
    return found


def _sample(items: list, n: int = SAMPLE) -> list:
    if len(items) <= n:
        return list(items)
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, n)]


def _mask_pattern(images: list[Path], masks: list[Path], suffix: str) -> Optional[str]:
    """``{stem}<tail><suffix>`` when every sampled mask is named after an image plus one tail;
    None when masks are named ``<stem><suffix>``."""
    stems = {p.stem for p in images}
    mask_stems = [p.name[:-len(suffix)] for p in masks if p.name.lower().endswith(suffix)]
    if not mask_stems or sum(m in stems for m in mask_stems) * 2 >= len(mask_stems):
        return None
    tails = Counter()
    for m in _sample(mask_stems):
        owner = max((s for s in stems if m.startswith(s)), key=len, default=None)
        if owner is not None:
            tails[m[len(owner):]] += 1
    if not tails:
        return None
    tail, _ = tails.most_common(1)[0]
    return "{stem}" + tail + suffix


def infer_data(root: os.PathLike) -> Inferred:
    """The :class:`Inferred` fields of the labelled data folder ``root``.

    :raises DataError: not a folder, or no folder of training images and one of masks found
        (named by the usual words: train/images, train/masks, img/train, ann/train, ...).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"--from-data: {root} is not a folder")
    folders = _folders(root)
    if ("train", "images") not in folders or ("train", "masks") not in folders:
        seen = ", ".join(sorted(str(p.relative_to(root)) for p in folders.values())) or "none"
        raise DataError(f"--from-data: cannot tell which folders of {root} hold the training images and masks "
                        f"(folders of images found: {seen}); name them like train/images and train/masks")
    data = f"--from-data {root}"
    rel = {key: path.relative_to(root).as_posix() for key, path in folders.items()}
    images = _files(folders[("train", "images")])
    masks = _files(folders[("train", "masks")])
    image_suffixes = sorted({p.suffix.lower() for p in images if p.suffix.lower() in IMAGE_SUFFIXES})
    mask_suffix = Counter(p.suffix.lower() for p in masks).most_common(1)[0][0]
    layout: dict[str, Any] = {"train_images": rel[("train", "images")], "train_masks": rel[("train", "masks")]}
    if ("val", "images") in rel and ("val", "masks") in rel:
        layout.update(val_images=rel[("val", "images")], val_masks=rel[("val", "masks")])
    layout["test_images"] = rel.get(("test", "images"), "test/images")
    layout.update(image_suffixes=image_suffixes, mask_suffix=mask_suffix)
    pattern = _mask_pattern(images, masks, mask_suffix)
    if pattern:
        layout["mask_pattern"] = pattern
    out = Inferred(fields={"layout": layout})
    out.notes["layout"] = (f"folders found in {root}" + ("" if ("test", "images") in rel else
                                                          "; no test images found, test/images assumed"))
    out.pairs = len(masks)

    # stored mask values -> classes
    values: set[int] = set()
    for path in _sample(masks):
        try:
            values |= {int(v) for v in np.unique(read_stored_mask(path))}
        except BadFile as bad:
            raise bad.error() from None
    ordered = sorted(values)
    classes, masks_field, why = _classes(ordered)
    out.fields["classes"] = classes
    if masks_field:
        out.fields["masks"] = masks_field
    out.notes["classes"] = f"stored mask values {_shown(ordered)} in {min(len(masks), SAMPLE)} masks; {why}"

    # bands, depth and sizes from the images' headers
    headers = []
    for path in _sample(images, 16):
        try:
            headers.append(image_header(path))
        except BadFile as bad:
            raise bad.error() from None
    bands = Counter(h.bands for h in headers).most_common(1)[0][0]
    out.fields["channels"] = bands
    out.notes["channels"] = f"{bands} band(s) in the image headers ({headers[0].format} {headers[0].mode})"
    wide = [h for h in headers if h.wide]
    if wide:
        out.fields["pixel_max"] = 2 ** wide[0].bits - 1
        out.notes["pixel_max"] = (f"{wide[0].bits}-bit images: the largest value is assumed to be "
                                  f"{2 ** wide[0].bits - 1}")
    sizes = {h.size for h in headers}
    if len(sizes) == 1:
        h, w = next(iter(sizes))
        out.fields["size"] = h if h == w else [h, w]
        out.notes["size"] = f"every sampled image is {w}x{h}"
    else:
        out.fields["size"] = "variable"
        out.notes["size"] = f"{len(sizes)} sizes among {len(headers)} sampled images"
    out.notes["data"] = data
    return out


def _shown(values: list[int]) -> str:
    return ", ".join(map(str, values[:12])) + (", ..." if len(values) > 12 else "")


def _classes(values: list[int]) -> tuple[list[str], Optional[dict], str]:
    """(class names, the ``masks`` section or None, why) for the stored values seen."""
    if not values:
        return ["background", "foreground"], None, "no values read; two classes assumed"
    if set(values) <= {0, 1} or set(values) <= {0, 255}:
        values_map = {0: 0, 255: 1} if 255 in values else None
        return (["background", "foreground"], {"values": values_map} if values_map else None,
                "a binary mask: class names are placeholders")
    ignore = None
    if 255 in values and len(values) > 2:
        ignore, values = 255, [v for v in values if v != 255]  # the usual "ignore" value of multi-class masks
    if values == list(range(len(values))) or (values[0] == 0 and values[-1] < 64):
        count = values[-1] + 1
        names = [f"class{i}" for i in range(count)]
        masks = {"ignore_index": ignore} if ignore is not None else None
        why = (f"values 0..{count - 1} read as class ids" + (" (ids missing from the sample kept)"
                                                              if len(values) < count else ""))
        return names, masks, why + ("; 255 read as the ignore index" if ignore is not None else "") + \
            "; class names are placeholders"
    mapping = {v: i for i, v in enumerate(values)}
    masks = {"values": mapping}
    if ignore is not None:
        masks["ignore_index"] = ignore
    return ([f"class{i}" for i in range(len(values))], masks,
            "each stored value mapped to a class in order; class names are placeholders")
