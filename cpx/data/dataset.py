"""The data layer: scan, check, fingerprint, load, split and write competition data.

A competition data folder follows the profile's ``Layout``::

    DIR/<train_images>/<stem>.jpg|png     DIR/<train_masks>/<stem>.png     DIR/<test_images>/*

Masks are single-channel PNGs (palette "P" or greyscale "L") whose pixel values are class ids.
Sizes are reported as (height, width) throughout, the order torch uses.

Decoding goes through PIL with ``ImageFile.LOAD_TRUNCATED_IMAGES`` left at its default (False),
so a file cut short raises instead of decoding to grey.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from cpx.data.competition import Competition
from cpx.kernel.errors import DataError

# Bumped whenever the cached arrays would differ for the same inputs (resize rule, layout).
CACHE_VERSION = 1
SYNTH_PREFIX = "synth_"
# Over-eager values gain nothing on a laptop and crowd a shared machine.
MAX_WORKERS = 8

Size = tuple[int, int]  # (height, width)
Progress = Optional[Callable[[int, int], None]]


# --------------------------------------------------------------------------------------------
# Problems and reports


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a data folder, naming the file (relative to the data root)."""

    path: str
    kind: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class DataReport:
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
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        out = asdict(self)
        out["root"] = str(self.root)
        out["class_names"] = list(self.class_names)
        # JSON has no tuple keys
        out["image_sizes"] = {f"{h}x{w}": n for (h, w), n in sorted(self.image_sizes.items())}
        out["test_image_sizes"] = {f"{h}x{w}": n
                                   for (h, w), n in sorted(self.test_image_sizes.items())}
        out["problems"] = [asdict(p) for p in self.problems]
        out["ok"] = self.ok
        return out


class _Bad(Exception):
    """A file-level problem, turned into a Problem by checks and a DataError by loaders."""

    def __init__(self, path: Path, kind: str, message: str):
        super().__init__(message)
        self.path = Path(path)
        self.kind = kind
        self.message = message

    def problem(self, root: Path) -> Problem:
        return Problem(_rel(self.path, root), self.kind, self.message)

    def error(self) -> DataError:
        return DataError(f"{self.path}: {self.message}")


def _rel(path: Path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------------------------
# Scanning


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
    rel = _rel(folder, root)
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
            problems.append(Problem(_rel(path, root), "duplicate",
                                    f"same name as {found[path.stem].name}; one {what} per name"))
            continue
        found[path.stem] = path
    if not found:
        problems.append(Problem(rel, "empty_folder",
                                f"{what} folder holds no {'/'.join(sorted(wanted))} files"))
    return found


def scan(root: os.PathLike, competition: Competition) -> Scan:
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
    return scan(root, competition).test_images


# --------------------------------------------------------------------------------------------
# Decoding single files


def _unreadable(path: Path, what: str, exc: BaseException) -> _Bad:
    # PIL's own message repeats the full path, which the problem already names
    if isinstance(exc, UnidentifiedImageError):
        return _Bad(path, "unreadable", f"cannot read {what} (not a recognised image format)")
    reason = str(exc).strip() or exc.__class__.__name__
    if len(reason) > 120:
        reason = reason[:117] + "..."
    return _Bad(path, "unreadable", f"cannot read {what} ({reason})")


def _open(path: Path, what: str, decode: bool) -> Image.Image:
    try:
        img = Image.open(path)
        if decode:
            img.load()
        return img
    except MemoryError:
        raise
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, EOFError, ...
        raise _unreadable(path, what, exc) from None


def _check_mask_mode(img: Image.Image, path: Path) -> None:
    bands = img.getbands()
    if len(bands) > 1:
        raise _Bad(path, "mask_channels",
                   f"mask has {len(bands)} channels ({img.mode}); expected one channel of class "
                   f"ids (mode P or L)")
    if img.mode not in ("P", "L", "1"):
        raise _Bad(path, "mask_mode", f"mask mode {img.mode} is not supported; expected P or L")


def _mask_array(img: Image.Image, path: Path) -> np.ndarray:
    _check_mask_mode(img, path)
    try:
        # for mode P this is the palette indices, which are the class ids
        arr = np.asarray(img)
    except MemoryError:
        raise
    except Exception as exc:
        raise _unreadable(path, "mask", exc) from None
    return arr.astype(np.uint8) if arr.dtype != np.uint8 else arr


def _bad_ids_message(ids: Iterable[int], num_classes: int) -> str:
    ids = sorted(int(i) for i in ids)
    shown = ", ".join(str(i) for i in ids[:10]) + (", ..." if len(ids) > 10 else "")
    noun = "class id" if len(ids) == 1 else "class ids"
    return f"{noun} {shown} outside 0..{num_classes - 1}"


def read_mask(path: os.PathLike, num_classes: Optional[int] = None) -> np.ndarray:
    """A mask's class ids as an H x W uint8 array.

    Raises DataError for an unreadable file, a multi-channel mask or (when ``num_classes`` is
    given) a class id out of range.
    """
    path = Path(path)
    try:
        with _open(path, "mask", decode=True) as img:
            arr = _mask_array(img, path)
        if num_classes is not None and arr.size and int(arr.max()) >= num_classes:
            raise _Bad(path, "bad_class",
                       _bad_ids_message(np.unique(arr[arr >= num_classes]), num_classes))
    except _Bad as bad:
        raise bad.error() from None
    return arr


def _read_rgb(path: Path, size: Optional[int]) -> tuple[np.ndarray, Size]:
    with _open(path, "image", decode=True) as img:
        original = (img.height, img.width)
        try:
            rgb = img if img.mode == "RGB" else img.convert("RGB")
            if size is not None and original != (size, size):
                # PIL widens the bilinear kernel when shrinking, so this is antialiased
                rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
            arr = np.asarray(rgb)
        except MemoryError:
            raise
        except Exception as exc:
            raise _unreadable(path, "image", exc) from None
    return arr, original


def _decode_pair(img_path: Path, mask_path: Path, size: int, num_classes: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """One training pair at size x size: (3 x S x S, S x S), validated."""
    with _open(mask_path, "mask", decode=True) as m:
        mask = _mask_array(m, mask_path)
    image, original = _read_rgb(img_path, size)
    if mask.shape != original:
        raise _Bad(mask_path, "size_mismatch",
                   f"mask is {mask.shape[0]}x{mask.shape[1]} but {img_path.name} is "
                   f"{original[0]}x{original[1]} (height x width)")
    if mask.size and int(mask.max()) >= num_classes:
        raise _Bad(mask_path, "bad_class",
                   _bad_ids_message(np.unique(mask[mask >= num_classes]), num_classes))
    if mask.shape != (size, size):
        mask = np.asarray(Image.fromarray(mask).resize((size, size), Image.Resampling.NEAREST))
    return image.transpose(2, 0, 1), mask


def _workers(workers: Optional[int]) -> int:
    if workers is not None:
        return max(1, workers)
    return max(1, min(MAX_WORKERS, os.cpu_count() or 1))


# --------------------------------------------------------------------------------------------
# Checking


@dataclass
class _PairResult:
    image_size: Optional[Size] = None
    counts: Optional[np.ndarray] = None  # bincount over 0..255
    problems: list[_Bad] = field(default_factory=list)


def _check_pair(img_path: Path, mask_path: Path, num_classes: int, deep: bool) -> _PairResult:
    res = _PairResult()
    mask_size = None
    try:
        with _open(img_path, "image", decode=deep) as img:
            res.image_size = (img.height, img.width)
    except _Bad as bad:
        res.problems.append(bad)
    try:
        with _open(mask_path, "mask", decode=deep) as m:
            mask_size = (m.height, m.width)
            if deep:
                arr = _mask_array(m, mask_path)
                res.counts = np.bincount(arr.ravel(), minlength=256)
                bad_ids = np.flatnonzero(res.counts[num_classes:]) + num_classes
                if bad_ids.size:
                    res.problems.append(_Bad(mask_path, "bad_class",
                                             _bad_ids_message(bad_ids, num_classes)))
            else:
                _check_mask_mode(m, mask_path)
    except _Bad as bad:
        res.problems.append(bad)
    if res.image_size and mask_size and res.image_size != mask_size:
        res.problems.append(_Bad(
            mask_path, "size_mismatch",
            f"mask is {mask_size[0]}x{mask_size[1]} but {img_path.name} is "
            f"{res.image_size[0]}x{res.image_size[1]} (height x width)"))
    return res


def _check_image(path: Path, deep: bool) -> tuple[Optional[Size], Optional[_Bad]]:
    try:
        with _open(path, "image", decode=deep) as img:
            return (img.height, img.width), None
    except _Bad as bad:
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
            problems.append(Problem(_rel(found.images[stem], root), "no_mask",
                                    f"image has no mask {stem}{competition.layout.mask_suffix}"))
    if found.images:
        for stem in sorted(set(found.masks) - set(found.images)):
            problems.append(Problem(_rel(found.masks[stem], root), "no_image",
                                    "mask has no image of the same name"))
    pairs = found.pairs
    report.train_pairs = len(pairs)

    total = len(pairs) + len(found.test_images)
    done = 0
    counts = np.zeros(256, dtype=np.int64)
    presence = np.zeros(256, dtype=np.int64)
    masks_counted = 0
    with ThreadPoolExecutor(_workers(workers)) as pool:
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


# --------------------------------------------------------------------------------------------
# Fingerprint


def fingerprint(root: os.PathLike, competition: Competition) -> str:
    """A short hash of the training images and masks: their relative paths and contents."""
    root = Path(root)
    files: list[Path] = []
    for part, suffixes in (("train_images", competition.layout.image_suffixes),
                           ("train_masks", (competition.layout.mask_suffix,))):
        folder = competition.data_path(root, part)
        if not folder.is_dir():
            raise DataError(f"{folder}: folder is missing")
        wanted = {s.lower() for s in suffixes}
        files.extend(p for p in folder.iterdir()
                     if not p.name.startswith(".") and p.suffix.lower() in wanted and p.is_file())
    h = hashlib.sha256()
    for rel, path in sorted((_rel(p, root), p) for p in files):
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
    if (images.shape != (n, 3, size, size) or masks.shape != (n, size, size)
            or images.dtype != np.uint8 or masks.dtype != np.uint8):
        return None
    return images, masks


def _save_npy(path: Path, arr: np.ndarray) -> None:
    def save(f):
        np.save(f, arr, allow_pickle=False)
    _atomic_write(path, save)


def load_dataset(root: os.PathLike, competition: Competition, names: Sequence[str],
                 image_size: Optional[int] = None, cache_dir: Optional[os.PathLike] = None, *,
                 mmap: bool = False, workers: Optional[int] = None,
                 progress: Progress = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Training pairs as (images N x 3 x S x S uint8, masks N x S x S uint8), in ``names`` order.

    Each file is decoded once; images are resized bilinearly (antialiased) and masks with
    nearest-neighbour, only when their size differs from S. Any problem raises DataError
    naming the file. With ``cache_dir`` the arrays are stored there, keyed by the data
    fingerprint, the names and S, and reused on the next call.
    """
    root = Path(root)
    size = int(image_size or competition.image_size)
    names = [str(n) for n in names]
    if size <= 0:
        raise DataError(f"image size must be positive, not {size}")

    cache_paths = None
    if cache_dir is not None:
        cache_paths = _cache_paths(Path(cache_dir), competition, fingerprint(root, competition),
                                   names, size)
        hit = _load_cached(cache_paths, len(names), size, mmap)
        if hit is not None:
            if progress:
                progress(len(names), len(names))
            return torch.from_numpy(hit[0]), torch.from_numpy(hit[1])

    image_dir = competition.data_path(root, "train_images")
    mask_dir = competition.data_path(root, "train_masks")
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            raise DataError(f"{folder}: folder is missing")
    found = scan(root, competition)
    pairs = []
    for name in names:
        if name not in found.images:
            raise DataError(f"{image_dir}: no image named {name} "
                            f"({'/'.join(competition.layout.image_suffixes)})")
        if name not in found.masks:
            raise DataError(f"{found.images[name]}: image has no mask "
                            f"{name}{competition.layout.mask_suffix} in {mask_dir}")
        pairs.append((found.images[name], found.masks[name]))

    images = np.empty((len(names), 3, size, size), dtype=np.uint8)
    masks = np.empty((len(names), size, size), dtype=np.uint8)
    k = competition.num_classes

    def work(i: int) -> None:
        images[i], masks[i] = _decode_pair(pairs[i][0], pairs[i][1], size, k)

    _run_indexed(work, len(pairs), workers, progress)

    if cache_paths is not None:
        try:
            cache_paths[0].parent.mkdir(parents=True, exist_ok=True)
            # masks first: a reader only trusts the pair once the images file exists too
            _save_npy(cache_paths[1], masks)
            _save_npy(cache_paths[0], images)
        except OSError as exc:
            warnings.warn(f"could not write the data cache in {cache_dir}: {exc}")
    return torch.from_numpy(images), torch.from_numpy(masks)


def _run_indexed(work: Callable[[int], None], n: int, workers: Optional[int],
                 progress: Progress) -> None:
    """Run ``work(i)`` for every i; the first failure in index order becomes a DataError."""
    with ThreadPoolExecutor(_workers(workers)) as pool:
        futures = [pool.submit(work, i) for i in range(n)]
        try:
            for done, fut in enumerate(futures, 1):
                fut.result()
                if progress:
                    progress(done, n)
        except _Bad as bad:
            for fut in futures:
                fut.cancel()
            raise bad.error() from None


def load_images(paths: Sequence[os.PathLike], image_size: Optional[int] = None, *,
                workers: Optional[int] = None, progress: Progress = None
                ) -> tuple[Union[torch.Tensor, list[torch.Tensor]], list[Size]]:
    """Unlabelled images and their original (height, width) sizes.

    With ``image_size`` the images come back as one N x 3 x S x S uint8 tensor; without it,
    as a list of 3 x H x W uint8 tensors at their own sizes.
    """
    paths = [Path(p) for p in paths]
    sizes: list[Optional[Size]] = [None] * len(paths)
    if image_size is not None:
        batch = np.empty((len(paths), 3, image_size, image_size), dtype=np.uint8)

        def into_batch(i: int) -> None:
            arr, sizes[i] = _read_rgb(paths[i], image_size)
            batch[i] = arr.transpose(2, 0, 1)

        _run_indexed(into_batch, len(paths), workers, progress)
        return torch.from_numpy(batch), sizes  # type: ignore[return-value]

    singles: list[Optional[torch.Tensor]] = [None] * len(paths)

    def one(i: int) -> None:
        arr, sizes[i] = _read_rgb(paths[i], None)
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


# --------------------------------------------------------------------------------------------
# Writing


def _atomic_write(path: Path, write: Callable) -> None:
    """Write through a temp file in the same folder, so readers never see half a file."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        with open(tmp, "xb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_mask(path: os.PathLike, mask: np.ndarray, palette: Sequence[int]) -> None:
    """Write class ids as a single-channel palette PNG."""
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise DataError(f"{path}: a mask must be H x W, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise DataError(f"{path}: mask values must fit in 0..255")
        arr = arr.astype(np.uint8)
    pal = [int(v) for v in palette]
    if len(pal) > 768 or len(pal) % 3:
        raise DataError(f"{path}: a palette is up to 256 RGB triples, got {len(pal)} values")
    # a P image built from raw bytes keeps every value as its own palette index
    img = Image.frombytes("P", (arr.shape[1], arr.shape[0]), np.ascontiguousarray(arr).tobytes())
    img.putpalette(pal + [0] * (768 - len(pal)))
    _atomic_write(Path(path), lambda f: img.save(f, format="PNG"))


def write_image(path: os.PathLike, rgb: np.ndarray) -> None:
    """Write an H x W x 3 uint8 image: JPEG (quality 95) for .jpg/.jpeg, PNG otherwise."""
    path = Path(path)
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise DataError(f"{path}: an image must be H x W x 3 uint8, got {arr.dtype} {arr.shape}")
    img = Image.fromarray(np.ascontiguousarray(arr))
    if path.suffix.lower() in (".jpg", ".jpeg"):
        _atomic_write(path, lambda f: img.save(f, format="JPEG", quality=95))
    else:
        _atomic_write(path, lambda f: img.save(f, format="PNG"))


def write_dataset(root: os.PathLike, competition: Competition,
                  samples: Iterable[tuple[np.ndarray, np.ndarray]], test_count: int = 0, *,
                  exist_ok: bool = False) -> tuple[int, int]:
    """Write (image, mask) pairs into the competition layout as synth_00000, synth_00001, ...

    The last ``test_count`` samples become test images without masks. Returns
    (train pairs, test images) written. Refuses folders that already hold files unless
    ``exist_ok``.
    """
    root = Path(root)
    if test_count < 0:
        raise DataError(f"test count must be >= 0, not {test_count}")
    lay = competition.layout
    dirs = [competition.data_path(root, p) for p in ("train_images", "train_masks", "test_images")]
    if not exist_ok:
        for d in dirs:
            if d.is_dir() and any(not e.name.startswith(".") for e in os.scandir(d)):
                raise DataError(f"{d}: folder is not empty; choose an empty destination")
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    image_suffix = lay.image_suffixes[0] if lay.image_suffixes else ".png"
    palette = competition.palette_bytes()
    k = competition.num_classes

    def name(i: int) -> str:
        return f"{SYNTH_PREFIX}{i:05d}"

    def validate(i: int, image: np.ndarray, mask: np.ndarray) -> None:
        image, mask = np.asarray(image), np.asarray(mask)
        if image.ndim != 3 or image.shape[2] != 3 or mask.shape != image.shape[:2]:
            raise DataError(f"sample {i}: expected image H x W x 3 and mask H x W, got "
                            f"{image.shape} and {mask.shape}")
        if mask.size and (int(mask.max()) >= k or int(mask.min()) < 0):
            raise DataError(f"sample {i}: {_bad_ids_message(np.unique(mask[(mask >= k) | (mask < 0)]), k)}")

    # samples may be a generator of unknown length, so hold back the last test_count
    pending: deque = deque()
    n_train = 0
    index = 0
    for image, mask in samples:
        validate(index, image, mask)
        pending.append((index, image, mask))
        index += 1
        if len(pending) > test_count:
            i, img, msk = pending.popleft()
            write_image(dirs[0] / f"{name(i)}{image_suffix}", img)
            write_mask(dirs[1] / f"{name(i)}{lay.mask_suffix}", msk, palette)
            n_train += 1
    for i, img, _ in pending:
        write_image(dirs[2] / f"{name(i)}{image_suffix}", img)
    return n_train, len(pending)
