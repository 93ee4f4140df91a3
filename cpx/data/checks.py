"""``cpx data check``: every problem of a data folder, each naming its file, and the class
statistics of its masks.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from cpx.data.competition import Competition
from cpx.data.dataset import Progress, worker_count
from cpx.data.images import (
    BadFile,
    Size,
    bad_ids_message,
    check_mask_mode,
    exif_rotation,
    mask_array,
    open_image,
    relative_path,
    rgb_array,
)
from cpx.data.layout import scan
from cpx.kernel.errors import Problem


@dataclass
class DataReport:
    """What ``cpx data check`` found in a data folder: counts, image sizes, per-class pixel and
    image shares (deep checks only), ``problems`` that stop training and ``warnings`` that do not.
    """

    root: Path
    competition: str
    class_names: tuple[str, ...]
    deep: bool
    train_pairs: int = 0
    train_images: int = 0
    train_masks: int = 0
    test_images: int = 0
    # per class id: share of all mask pixels / share of masks containing it; None when not deep
    pixel_share: Optional[list[float]] = None
    presence_share: Optional[list[float]] = None
    image_sizes: dict[Size, int] = field(default_factory=dict)
    test_image_sizes: dict[Size, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    # things that do not stop training but deserve a look (EXIF rotation tags)
    warnings: list[Problem] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        """JSON-ready form (sizes as ``"HxW"`` keys, problems as mappings, ``ok``)."""
        out = asdict(self)
        out["root"] = str(self.root)
        out["class_names"] = list(self.class_names)
        # JSON has no tuple keys
        out["image_sizes"] = {f"{h}x{w}": n for (h, w), n in sorted(self.image_sizes.items())}
        out["test_image_sizes"] = {f"{h}x{w}": n
                                   for (h, w), n in sorted(self.test_image_sizes.items())}
        out["problems"] = [asdict(p) for p in self.problems]
        out["warnings"] = [asdict(p) for p in self.warnings]
        out["ok"] = self.ok
        return out


@dataclass
class _PairResult:
    image_size: Optional[Size] = None
    counts: Optional[np.ndarray] = None  # bincount over 0..255
    problems: list[BadFile] = field(default_factory=list)
    warnings: list[BadFile] = field(default_factory=list)


def _rotation_warning(img, path: Path) -> Optional[BadFile]:
    tag = exif_rotation(img)
    if tag is None:
        return None
    return BadFile(path, "exif_rotation", f"EXIF orientation tag {tag} asks viewers to rotate or flip this image; "
                   "cpx uses the pixels as stored (as the masks and the scorer do), so check that they match")


def _check_pair(img_path: Path, mask_path: Path, num_classes: int, deep: bool) -> _PairResult:
    res = _PairResult()
    mask_size = None
    try:
        with open_image(img_path, "image", decode=deep) as img:
            res.image_size = (img.height, img.width)
            if deep:
                rgb_array(img, img_path)  # a mode with no faithful RGB form is refused here too
            warning = _rotation_warning(img, img_path)
            if warning:
                res.warnings.append(warning)
    except BadFile as bad:
        res.problems.append(bad)
    try:
        with open_image(mask_path, "mask", decode=deep) as m:
            mask_size = (m.height, m.width)
            if deep:
                arr = mask_array(m, mask_path)
                res.counts = np.bincount(arr.ravel(), minlength=256)
                bad_ids = np.flatnonzero(res.counts[num_classes:]) + num_classes
                if bad_ids.size:
                    res.problems.append(BadFile(mask_path, "bad_class",
                                             bad_ids_message(bad_ids, num_classes)))
            else:
                check_mask_mode(m, mask_path)
    except BadFile as bad:
        res.problems.append(bad)
    if res.image_size and mask_size and res.image_size != mask_size:
        res.problems.append(BadFile(
            mask_path, "size_mismatch",
            f"mask is {mask_size[0]}x{mask_size[1]} but {img_path.name} is "
            f"{res.image_size[0]}x{res.image_size[1]} (height x width)"))
    return res


def _check_image(path: Path, deep: bool) -> tuple[Optional[Size], Optional[BadFile]]:
    try:
        with open_image(path, "image", decode=deep) as img:
            if deep:
                rgb_array(img, path)
            return (img.height, img.width), None
    except BadFile as bad:
        return None, bad


def check_dataset(root: os.PathLike, competition: Competition, *, deep: bool = True,
                  workers: Optional[int] = None, progress: Progress = None) -> DataReport:
    """Check a data folder and summarise it; problems are collected, never raised.

    ``deep`` decodes every file in full (finds truncated files and counts class pixels);
    otherwise only headers are read.
    """
    start = time.perf_counter()
    root = Path(root)
    found = scan(root, competition)
    k = competition.num_classes
    report = DataReport(root=root, competition=competition.name,
                        class_names=tuple(competition.classes), deep=deep,
                        train_images=len(found.images), train_masks=len(found.masks),
                        test_images=len(found.test_images))
    problems = list(found.problems)
    # with one side missing altogether, its folder problem says it once instead of per file
    if found.masks:
        for stem in sorted(set(found.images) - set(found.masks)):
            problems.append(Problem(relative_path(found.images[stem], root), "no_mask",
                                    f"image has no mask {stem}{competition.layout.mask_suffix}"))
    if found.images:
        for stem in sorted(set(found.masks) - set(found.images)):
            problems.append(Problem(relative_path(found.masks[stem], root), "no_image",
                                    "mask has no image of the same name"))
    pairs = found.pairs
    report.train_pairs = len(pairs)

    total = len(pairs) + len(found.test_images)
    done = 0
    counts = np.zeros(256, dtype=np.int64)
    presence = np.zeros(256, dtype=np.int64)
    masks_counted = 0
    with ThreadPoolExecutor(worker_count(workers)) as pool:
        pair_results = pool.map(lambda s: _check_pair(found.images[s], found.masks[s], k, deep),
                                pairs)
        for res in pair_results:
            if res.image_size:
                report.image_sizes[res.image_size] = report.image_sizes.get(res.image_size, 0) + 1
            if res.counts is not None:
                counts += res.counts
                presence += res.counts > 0
                masks_counted += 1
            problems.extend(b.problem(root) for b in res.problems)
            report.warnings.extend(b.problem(root) for b in res.warnings)
            done += 1
            if progress:
                progress(done, total)
        for size, bad in pool.map(lambda p: _check_image(p, deep), found.test_images):
            if size:
                report.test_image_sizes[size] = report.test_image_sizes.get(size, 0) + 1
            if bad:
                problems.append(bad.problem(root))
            done += 1
            if progress:
                progress(done, total)

    if deep:
        pixels = int(counts.sum())
        report.pixel_share = [float(c) / pixels if pixels else 0.0 for c in counts[:k]]
        report.presence_share = [float(c) / masks_counted if masks_counted else 0.0
                                 for c in presence[:k]]
    report.problems = problems
    report.seconds = time.perf_counter() - start
    return report

