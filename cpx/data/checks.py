"""``cpx data check``: every problem of a data folder, each naming its file, and the class
statistics of its masks.

The listing's problems come from :func:`cpx.data.layout.scan`; every file is read through
:mod:`cpx.data.images` with the competition's channels, ``pixel_max`` and mask encoding, so a
file passes here exactly when training, validation and prediction can read it. Images with
samples wider than 8 bits are a problem when the profile has no ``pixel_max``.
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
    ImageHeader,
    Size,
    check_mask_header,
    decode_mask,
    depth_problem,
    image_header,
    read_image,
)
from cpx.data.labels import LabelCheck, class_centroids, judge_centroids
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
    # the organisers' validation split, when the layout names one
    val_pairs: int = 0
    val_images: int = 0
    val_masks: int = 0
    test_images: int = 0
    # per class id: share of all mask pixels / share of masks containing it; None when not deep
    pixel_share: Optional[list[float]] = None
    presence_share: Optional[list[float]] = None
    image_sizes: dict[Size, int] = field(default_factory=dict)
    test_image_sizes: dict[Size, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    # things that do not stop training but deserve a look (EXIF rotation tags)
    warnings: list[Problem] = field(default_factory=list)
    # masks with left/right classes on the wrong side (``labels=True`` only)
    labels: Optional[LabelCheck] = None
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
        out["labels"] = self.labels.to_dict() if self.labels is not None else None
        out["ok"] = self.ok
        return out


@dataclass
class _PairResult:
    image_size: Optional[Size] = None
    counts: Optional[np.ndarray] = None  # bincount of class ids over 0..255 (255: ignored pixels)
    centroids: Optional[np.ndarray] = None  # per class mean column (labels=True)
    problems: list[BadFile] = field(default_factory=list)
    warnings: list[BadFile] = field(default_factory=list)


def _rotation_warning(header: ImageHeader, path: Path) -> Optional[BadFile]:
    if header.rotation is None:
        return None
    return BadFile(path, "exif_rotation", f"EXIF orientation tag {header.rotation} asks viewers to rotate or flip "
                   "this image; cpx uses the pixels as stored (as the masks and the scorer do), so check that "
                   "they match")


def _check_image(path: Path, competition: Competition, deep: bool, res: _PairResult) -> None:
    """The image rules of :func:`cpx.data.images.read_image` for the competition's channels and
    ``pixel_max``, plus a wide image in a profile without ``pixel_max``; sets ``res.image_size``."""
    try:
        header = image_header(path)
        res.image_size = header.size
        warning = _rotation_warning(header, path)
        if warning:
            res.warnings.append(warning)
        depth = depth_problem(header, path, competition.pixel_max)
        if depth is not None:
            res.problems.append(depth)
        elif deep:
            read_image(path, competition.channels, competition.pixel_max)
    except BadFile as bad:
        res.problems.append(bad)


def _check_pair(img_path: Path, mask_path: Path, competition: Competition, deep: bool,
                labels: bool = False) -> _PairResult:
    res = _PairResult()
    _check_image(img_path, competition, deep, res)
    mask_size = None
    try:
        header = image_header(mask_path, "mask")
        mask_size = header.size
        check_mask_header(header, mask_path)
        if deep:
            ids = decode_mask(mask_path, competition)
            res.counts = np.bincount(ids.ravel(), minlength=256)
            if labels:
                res.centroids = class_centroids(ids, competition.num_classes)
    except BadFile as bad:
        res.problems.append(bad)
    if res.image_size and mask_size and res.image_size != mask_size:
        res.problems.append(BadFile(
            mask_path, "size_mismatch",
            f"mask is {mask_size[0]}x{mask_size[1]} but {img_path.name} is "
            f"{res.image_size[0]}x{res.image_size[1]} (height x width)"))
    return res


def _check_test_image(path: Path, competition: Competition, deep: bool) -> _PairResult:
    res = _PairResult()
    _check_image(path, competition, deep, res)
    return res


def check_dataset(root: os.PathLike, competition: Competition, *, deep: bool = True, labels: bool = False,
                  workers: Optional[int] = None, progress: Progress = None) -> DataReport:
    """Check a data folder and summarise it; problems are collected, never raised.

    ``deep`` decodes every file in full (finds truncated files and counts class pixels);
    otherwise only headers are read. ``labels`` (implies ``deep``) also looks for masks whose
    left/right classes sit on the wrong side (:mod:`cpx.data.labels`), in ``report.labels``.
    """
    deep = deep or labels
    start = time.perf_counter()
    root = Path(root)
    found = scan(root, competition)
    k = competition.num_classes
    report = DataReport(root=root, competition=competition.name,
                        class_names=tuple(competition.classes), deep=deep,
                        train_images=len(found.images), train_masks=len(found.masks),
                        val_images=len(found.val_images), val_masks=len(found.val_masks),
                        test_images=len(found.test_images))
    problems = list(found.problems)
    pairs = [(s, found.images[s], found.masks[s]) for s in found.pairs]
    # the organisers' validation pairs obey the same rules and count in the class statistics
    pairs += [(s, found.val_images[s], found.val_masks[s]) for s in found.val_pairs]
    report.train_pairs = len(found.pairs)
    report.val_pairs = len(found.val_pairs)

    total = len(pairs) + len(found.test_images)
    done = 0
    counts = np.zeros(256, dtype=np.int64)
    presence = np.zeros(256, dtype=np.int64)
    masks_counted = 0
    with ThreadPoolExecutor(worker_count(workers)) as pool:
        pair_results = pool.map(lambda p: _check_pair(p[1], p[2], competition, deep, labels), pairs)
        centroids: list[tuple[str, np.ndarray]] = []
        for (stem, _, _), res in zip(pairs, pair_results):
            if res.centroids is not None:
                centroids.append((stem, res.centroids))
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
        for res in pool.map(lambda p: _check_test_image(p, competition, deep), found.test_images):
            size = res.image_size
            if size:
                report.test_image_sizes[size] = report.test_image_sizes.get(size, 0) + 1
            problems.extend(b.problem(root) for b in res.problems)
            report.warnings.extend(b.problem(root) for b in res.warnings)
            done += 1
            if progress:
                progress(done, total)

    if deep:
        pixels = int(counts[:k].sum())  # ignored pixels are no class's share
        report.pixel_share = [float(c) / pixels if pixels else 0.0 for c in counts[:k]]
        report.presence_share = [float(c) / masks_counted if masks_counted else 0.0
                                 for c in presence[:k]]
    if labels:
        table = np.stack([c for _, c in centroids]) if centroids else np.zeros((0, k))
        report.labels = judge_centroids(table, [n for n, _ in centroids], competition)
    report.problems = problems
    report.seconds = time.perf_counter() - start
    return report

