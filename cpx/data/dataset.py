"""Training data in memory: the data fingerprint, the decode-once uint8 cache, loading pairs
and images at a training size, and the deterministic train/validation split."""

from __future__ import annotations

import hashlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Literal, Optional, Sequence, Union

import numpy as np
import torch

from cpx.data.competition import Competition
from cpx.data.images import BadFile, Size, letterbox, read_image, read_mask, relative_path
from cpx.data.layout import LABELLED_PARTS, Scan, scan
from cpx.data.masks import IGNORE
from cpx.kernel.errors import DataError
from cpx.kernel.files import atomic_write

# Bumped whenever the cached arrays would differ for the same inputs (resize rule, layout).
CACHE_VERSION = 2  # 2: letterboxed non-square images, C channels
# Over-eager values gain nothing on a laptop and crowd a shared machine.
MAX_WORKERS = 8

Progress = Optional[Callable[[int, int], None]]


# --------------------------------------------------------------------------------------------
# Decoding single files


def _decode_pair(img_path: Path, mask_path: Path, size: int, competition: Competition
                 ) -> tuple[np.ndarray, np.ndarray]:
    """One training pair letterboxed onto a size x size canvas (:func:`cpx.data.images.letterbox`):
    (C x S x S, S x S class ids, :data:`IGNORE` on the padding), validated."""
    mask = read_mask(mask_path, competition)
    image, original = read_image(img_path, competition.channels, competition.pixel_max, size)
    if mask.shape != original:
        raise BadFile(mask_path, "size_mismatch",
                      f"mask is {mask.shape[0]}x{mask.shape[1]} but {img_path.name} is "
                      f"{original[0]}x{original[1]} (height x width)")
    if mask.shape != (size, size):
        mask = letterbox(mask, size, fill=IGNORE, nearest=True)
    return image.transpose(2, 0, 1), mask


def worker_count(workers: Optional[int]) -> int:
    """Threads for decoding: ``workers`` when given (at least 1), else the CPU count capped at
    :data:`MAX_WORKERS`.
    """
    if workers is not None:
        return max(1, workers)
    return max(1, min(MAX_WORKERS, os.cpu_count() or 1))


# --------------------------------------------------------------------------------------------
# Fingerprint


def fingerprint(root: os.PathLike, competition: Competition) -> str:
    """A short hash of the labelled data: the relative paths and contents of the train (and
    the organisers' val) images and masks, as :func:`cpx.data.layout.scan` lists them.

    :raises DataError: a problem in those folders, in one line.
    """
    found = scan(root, competition)
    found.require(LABELLED_PARTS)
    # every command that reuses a run's data compares this, often several times in one process:
    # the hash of files whose names, sizes and times are unchanged is taken from memory
    key = (competition.name, tuple(sorted((str(p), *_stat(p)) for p in _labelled_files(found))))
    if key not in _FINGERPRINTS:
        _FINGERPRINTS[key] = _fingerprint(found)
    return _FINGERPRINTS[key]


_FINGERPRINTS: dict[tuple, str] = {}


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _labelled_files(found: Scan) -> list[Path]:
    return [*found.images.values(), *found.masks.values(), *found.val_images.values(), *found.val_masks.values()]


def _fingerprint(found: Scan) -> str:
    files = _labelled_files(found)
    h = hashlib.sha256()
    for rel, path in sorted((relative_path(p, found.root), p) for p in files):
        data = path.read_bytes()
        # lengths keep (path, content) boundaries unambiguous
        h.update(rel.encode("utf-8") + b"\0" + len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Loading


def _cache_paths(cache_dir: Path, competition: Competition, fp: str, names: Sequence[str],
                 size: int) -> tuple[Path, Path]:
    h = hashlib.sha256()
    h.update(f"v{CACHE_VERSION}\0{competition.name}\0{competition.num_classes}\0{fp}\0{size}\0"
             .encode("utf-8"))
    h.update("\n".join(names).encode("utf-8"))
    base = f"{competition.name}-s{size}-n{len(names)}-{h.hexdigest()[:16]}"
    return cache_dir / f"{base}.images.npy", cache_dir / f"{base}.masks.npy"


def _load_cached(paths: tuple[Path, Path], n: int, size: int, mmap: bool
                 ) -> Optional[tuple[np.ndarray, np.ndarray]]:
    img_path, mask_path = paths
    if not (img_path.is_file() and mask_path.is_file()):
        return None
    try:
        # copy-on-write keeps the mapping writable, which torch.from_numpy wants
        mode = "c" if mmap else None
        images = np.load(img_path, mmap_mode=mode, allow_pickle=False)
        masks = np.load(mask_path, mmap_mode=mode, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if (images.shape[0] != n or images.shape[2:] != (size, size) or masks.shape != (n, size, size)
            or images.dtype != np.uint8 or masks.dtype != np.uint8):
        return None
    return images, masks


def _save_npy(path: Path, arr: np.ndarray) -> None:
    def save(f):
        np.save(f, arr, allow_pickle=False)
    atomic_write(path, save)


def load_dataset(root: os.PathLike, competition: Competition, names: Sequence[str],
                 image_size: Optional[int] = None, cache_dir: Optional[os.PathLike] = None, *,
                 split: Literal["train", "val"] = "train", mmap: bool = False, workers: Optional[int] = None,
                 progress: Progress = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Labelled pairs as (images N x C x S x S uint8, masks N x S x S uint8 class ids), in
    ``names`` order (stems), from the train folders, or with ``split="val"`` from the
    organisers' validation folders.

    Each file is decoded once; images are resized bilinearly (antialiased) and masks with
    nearest-neighbour, only when their size differs from S. A problem in the listing of the
    labelled folders (:meth:`cpx.data.layout.Scan.require`), a name that is not there or a bad
    file raises DataError in one line naming the file. With ``cache_dir`` the arrays are stored
    there, keyed by the data fingerprint, the split, the names and S, and reused on the next call;
    with ``mmap`` too, the tensors are copy-on-write maps of those files (also right after
    writing them), so the data is paged in from the page cache as batches touch it, shared by
    processes that map the same files (data-parallel ranks, runs side by side) and never held
    twice; writing to the tensors changes only this process's pages.
    """
    root = Path(root)
    size = int(image_size or competition.image_size)
    names = [str(n) for n in names]
    if size <= 0:
        raise DataError(f"image size must be positive, not {size}")
    if split not in ("train", "val"):
        raise ValueError(f"split is train or val, not {split!r}")
    found = scan(root, competition)
    found.require(LABELLED_PARTS)
    if split == "val" and not competition.layout.has_val:
        raise DataError(f"competition {competition.name} names no validation folders (layout.val_images)")

    cache_paths = None
    if cache_dir is not None:
        cache_paths = _cache_paths(Path(cache_dir), competition, _fingerprint(found),
                                   names if split == "train" else ["val:", *names], size)
        hit = _load_cached(cache_paths, len(names), size, mmap)
        if hit is not None:
            if progress:
                progress(len(names), len(names))
            return torch.from_numpy(hit[0]), torch.from_numpy(hit[1])

    image_dir = competition.data_path(root, f"{split}_images")
    images_by, masks_by = (found.images, found.masks) if split == "train" else (found.val_images, found.val_masks)
    pairs = []
    for name in names:
        # after require() every listed image has its mask
        if name not in images_by or name not in masks_by:
            raise DataError(f"{image_dir}: no image named {name} "
                            f"({'/'.join(competition.layout.image_suffixes)})")
        pairs.append((images_by[name], masks_by[name]))

    images = np.empty((len(names), competition.channels, size, size), dtype=np.uint8)
    masks = np.empty((len(names), size, size), dtype=np.uint8)

    def work(i: int) -> None:
        images[i], masks[i] = _decode_pair(pairs[i][0], pairs[i][1], size, competition)

    _run_indexed(work, len(pairs), workers, progress)

    if cache_paths is not None:
        try:
            cache_paths[0].parent.mkdir(parents=True, exist_ok=True)
            # masks first: a reader only trusts the pair once the images file exists too
            _save_npy(cache_paths[1], masks)
            _save_npy(cache_paths[0], images)
        except OSError as exc:
            warnings.warn(f"could not write the data cache in {cache_dir}: {exc}")
        else:
            # the first run maps the files it wrote, as later runs do: the decoded copy goes
            mapped = _load_cached(cache_paths, len(names), size, True) if mmap else None
            if mapped is not None:
                images, masks = mapped
    return torch.from_numpy(images), torch.from_numpy(masks)


def _run_indexed(work: Callable[[int], None], n: int, workers: Optional[int],
                 progress: Progress) -> None:
    """Run ``work(i)`` for every i; the first failure in index order becomes a DataError."""
    with ThreadPoolExecutor(worker_count(workers)) as pool:
        futures = [pool.submit(work, i) for i in range(n)]
        try:
            for done, fut in enumerate(futures, 1):
                fut.result()
                if progress:
                    progress(done, n)
        except BadFile as bad:
            for fut in futures:
                fut.cancel()
            raise bad.error() from None


def load_images(paths: Sequence[os.PathLike], image_size: Optional[int] = None, *, channels: int = 3,
                pixel_max: Optional[int] = None, workers: Optional[int] = None, progress: Progress = None
                ) -> tuple[Union[torch.Tensor, list[torch.Tensor]], list[Size]]:
    """Unlabelled images and their original (height, width) sizes.

    With ``image_size`` the images come back as one N x C x S x S uint8 tensor; without it,
    as a list of C x H x W uint8 tensors at their own sizes (C = ``channels``; 16-bit images
    need ``pixel_max``, see :func:`cpx.data.images.read_image`).
    """
    paths = [Path(p) for p in paths]
    sizes: list[Optional[Size]] = [None] * len(paths)
    if image_size is not None:
        batch = np.empty((len(paths), channels, image_size, image_size), dtype=np.uint8)

        def into_batch(i: int) -> None:
            arr, sizes[i] = read_image(paths[i], channels, pixel_max, image_size)
            batch[i] = arr.transpose(2, 0, 1)

        _run_indexed(into_batch, len(paths), workers, progress)
        return torch.from_numpy(batch), sizes  # type: ignore[return-value]

    singles: list[Optional[torch.Tensor]] = [None] * len(paths)

    def one(i: int) -> None:
        arr, sizes[i] = read_image(paths[i], channels, pixel_max)
        singles[i] = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))

    _run_indexed(one, len(paths), workers, progress)
    return singles, sizes  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Splitting


def split_names(names: Iterable[str], val_fraction: float, seed: int
                ) -> tuple[list[str], list[str]]:
    """Train/validation split by a seeded permutation of the sorted names.

    The rule is fixed (it matches a reference script): permute the sorted names with
    ``np.random.RandomState(seed)`` and put the last ``int(n * val_fraction)`` in validation.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"validation fraction must be in [0, 1), not {val_fraction}")
    names = sorted(names)
    idx = np.random.RandomState(seed).permutation(len(names))
    n_val = int(len(names) * val_fraction)
    cut = len(names) - n_val
    return [names[i] for i in idx[:cut]], [names[i] for i in idx[cut:]]
