"""The zip rules: every problem a scorer would trip on in a submission zip, or in a folder
about to become one.

This module alone knows what a valid submission holds: ``masks/<stem>.png`` for every test image
(single-channel class ids at the image's size), the ``solution/`` folder the competition asks
for (runner, requirements, weights under the expected key), an optional ``manifest.json`` whose
sha256 list matches the files, and a parameter count under the competition's cap. It also
knows the entries no scorer wants (absolute or ``..`` paths, links, ``__MACOSX/``, OS junk).

A zip is small on disk but its entries may inflate a thousandfold, so nothing is trusted to be
small: an entry larger than :data:`MAX_ENTRY_BYTES` once unpacked, a large entry packed more
tightly than :data:`MAX_RATIO` to 1 (a zip bomb), more than :data:`MAX_TOTAL_BYTES` in all, or
a mask of more than :data:`MAX_MASK_PIXELS` pixels is a problem and is never unpacked; what is
read is read in blocks (CRCs, hashes) or up to a per-kind limit (masks, text, weights).
Weights are loaded with ``torch.load(weights_only=True)``, so a checkpoint cannot run code.

:func:`check_zip` checks a zip, :func:`check_folder` a staged folder, and
:func:`check_submission` a zip with its competition and test images worked out, as
``cpx package --check`` and ``cpx submit --zip`` do. Every check collects all problems into a
:class:`CheckReport` instead of stopping at the first.
"""

from __future__ import annotations

import io
import json
import os
import re
import stat
import time
import warnings
import zipfile
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Iterable, Optional

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from cpx.data.competition import Competition
from cpx.data.images import BadFile, bad_ids_message, check_mask_mode
from cpx.kernel.errors import ConfigError, DataError, Problem, SubmissionError
from cpx.kernel.files import sha256_stream
from cpx.kernel.manager import PluginHost
from cpx.kernel.workspace import Workspace
from cpx.submit.solution import runner_mentions_arguments

MANIFEST = "manifest.json"
# Files that archivers add on their own and that a scorer would count as extra entries.
JUNK_NAMES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})
# Batch-norm statistics sit in a state_dict but are not trainable parameters.
_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")
# Keys other scripts keep the weights under; the competition's own key is tried first.
WEIGHT_KEYS = ("state_dict", "model_state_dict", "model")

# Resource limits (bytes once unpacked unless said otherwise)
MAX_ENTRY_BYTES = 512 * 2**20
MAX_TOTAL_BYTES = 4 * 2**30
# unpacked / packed; deflate reaches about 1030:1 on constant data, real masks and weights ~1-10:1
MAX_RATIO = 200
RATIO_FLOOR = 16 * 2**20  # smaller entries are not judged by their ratio
MAX_MASK_PIXELS = 8192 * 8192
_READ_LIMIT = {"mask": 64 * 2**20, "text": 16 * 2**20, "weights": MAX_ENTRY_BYTES}

Size = tuple[int, int]  # (height, width)


@dataclass
class CheckReport:
    """What :func:`check_zip` found. ``ok`` when ``problems`` is empty."""

    path: str
    competition: str
    entries: int = 0
    size_bytes: int = 0
    masks: int = 0
    # test images the masks were compared with; None when no test folder was known
    test_images: Optional[int] = None
    test_dir: Optional[str] = None
    solution_required: bool = False
    solution_files: list[str] = field(default_factory=list)
    params: Optional[int] = None
    params_source: str = ""
    # floating-point weights in the checkpoint, batch-norm statistics left out
    weights_params: Optional[int] = None
    # the key the weights were found under in the checkpoint
    weights_key: Optional[str] = None
    max_params: Optional[int] = None
    classes_seen: list[int] = field(default_factory=list)
    manifest: Optional[dict] = None
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """No problems found."""
        return not self.problems

    def add(self, path: str, kind: str, message: str) -> None:
        """Record a problem with ``path`` (as the user sees it in the zip)."""
        self.problems.append(Problem(path, kind, message))

    def to_dict(self) -> dict:
        """Plain data for ``--json``; the manifest without its file list."""
        out = asdict(self)
        out["ok"] = self.ok
        out["manifest"] = None if self.manifest is None else {
            k: v for k, v in self.manifest.items() if k != "files"}
        return out


# --------------------------------------------------------------------------------------------
# File sources: the same checks run on a staged folder and on a zip


class _Skipped(Exception):
    """An entry not read because it broke a resource limit (already reported)."""


class _Files:
    """Regular files by posix path relative to the submission root."""

    names: list[str]

    def size(self, name: str) -> int:
        raise NotImplementedError

    def open(self, name: str) -> IO[bytes]:
        raise NotImplementedError

    def skipped(self, name: str) -> bool:
        """Whether ``name`` broke a resource limit and must not be read."""
        return False

    def read(self, name: str, kind: str) -> bytes:
        """The whole file, when it is within the limit for its ``kind`` (mask, text, weights).

        :raises _Skipped: it broke a limit (a problem already says so) or exceeds ``kind``'s.
        """
        limit = _READ_LIMIT[kind]
        if self.skipped(name) or self.size(name) > limit:
            raise _Skipped(name)
        with self.open(name) as fh:
            data = fh.read(limit + 1)
        if len(data) > limit:
            raise _Skipped(name)
        return data

    def sha256(self, name: str) -> str:
        """Hex sha256 of the file, read in blocks."""
        with self.open(name) as fh:
            return sha256_stream(fh)

    def label(self, name: str) -> str:
        """How to name the file in a problem: its path as the user sees it."""
        return name


class _DirFiles(_Files):
    def __init__(self, root: Path):
        self.root = Path(root)
        self.names = sorted(p.relative_to(self.root).as_posix()
                            for p in self.root.rglob("*") if p.is_file())

    def size(self, name: str) -> int:
        return (self.root / name).stat().st_size

    def open(self, name: str) -> IO[bytes]:
        return open(self.root / name, "rb")


class _ZipFiles(_Files):
    def __init__(self, zf: zipfile.ZipFile, names: dict[str, str], skipped: frozenset = frozenset()):
        # names: path as checked -> name inside the zip (they differ under a nested top folder)
        self.zf = zf
        self.map = names
        self.names = sorted(names)
        self._skipped = skipped  # zip names

    def size(self, name: str) -> int:
        return self.zf.getinfo(self.map[name]).file_size

    def open(self, name: str) -> IO[bytes]:
        # a ZipExtFile never yields more than the entry's recorded size
        return self.zf.open(self.map[name])

    def skipped(self, name: str) -> bool:
        return self.map.get(name, name) in self._skipped

    def label(self, name: str) -> str:
        return self.map.get(name, name)


# --------------------------------------------------------------------------------------------
# Test images


def list_test_images(folder: os.PathLike, competition: Competition) -> dict[str, Path]:
    """Test images in ``folder`` by stem, with the competition's image suffixes."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: test image folder does not exist")
    wanted = {s.lower() for s in competition.layout.image_suffixes}
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file() or path.suffix.lower() not in wanted:
            continue
        if path.stem in found:
            raise DataError(f"{path}: two test images share the stem {path.stem!r} "
                            f"({found[path.stem].name}); masks are named by stem")
        found[path.stem] = path
    if not found:
        raise DataError(f"{folder}: no test images ({'/'.join(competition.layout.image_suffixes)})")
    return found


def image_sizes(paths: dict[str, Path]) -> dict[str, Size]:
    """(height, width) of each image, read from the file headers only."""
    sizes: dict[str, Size] = {}
    for stem, path in paths.items():
        try:
            with Image.open(path) as img:
                sizes[stem] = (img.height, img.width)
        except (OSError, UnidentifiedImageError) as exc:
            raise DataError(f"{path}: cannot read test image ({exc.__class__.__name__})") from None
    return sizes


# --------------------------------------------------------------------------------------------
# Checking


def _entry_problems(infos: list[zipfile.ZipInfo], report: CheckReport) -> list[zipfile.ZipInfo]:
    """Flag unsafe or junk entries; return the regular files worth checking further."""
    keep: list[zipfile.ZipInfo] = []
    seen: set[str] = set()
    macosx = 0
    for info in infos:
        name = info.filename
        parts = [p for p in name.replace("\\", "/").split("/") if p]
        if name in seen:
            report.add(name, "duplicate", "entry appears twice in the zip")
            continue
        seen.add(name)
        if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
            report.add(name, "absolute_path", "absolute path; entries must be relative to the zip root")
            continue
        if ".." in parts:
            report.add(name, "parent_path", "path climbs out of the zip folder ('..')")
            continue
        if "\\" in name:
            report.add(name, "backslash", "path uses backslashes; a Linux scorer reads them as part "
                                          "of the file name (zip with forward slashes)")
            continue
        if parts and parts[0] == "__MACOSX":
            macosx += 1
            continue
        if stat.S_ISLNK(info.external_attr >> 16):
            report.add(name, "symlink", "symbolic link; the scorer needs real files")
            continue
        if info.is_dir():
            continue
        if parts and (parts[-1] in JUNK_NAMES or parts[-1].startswith("._")):
            report.add(name, "junk_file", "file added by the operating system; remove it")
            continue
        keep.append(info)
    if macosx:
        report.add("__MACOSX/", "macosx",
                   f"{macosx} macOS resource entr{'y' if macosx == 1 else 'ies'} under __MACOSX/; "
                   f"zip without them (e.g. `zip -r -X` from inside the folder, or cpx package)")
    return keep


def _size_problems(infos: list[zipfile.ZipInfo], report: CheckReport) -> set[str]:
    """Flag entries that would unpack to too much, judged by the sizes the zip records (reading
    never yields more than those); return the names that must not be read."""
    skipped: set[str] = set()
    for info in infos:
        if info.is_dir():
            continue
        if info.file_size > MAX_ENTRY_BYTES:
            report.add(info.filename, "entry_too_large",
                       f"unpacks to {_mib(info.file_size)}; cpx reads at most {_mib(MAX_ENTRY_BYTES)} per "
                       f"entry (not unpacked)")
            skipped.add(info.filename)
        elif info.file_size > RATIO_FLOOR and info.file_size > MAX_RATIO * max(1, info.compress_size):
            ratio = info.file_size / max(1, info.compress_size)
            report.add(info.filename, "compression_ratio",
                       f"{_mib(info.compress_size)} unpacks to {_mib(info.file_size)} ({ratio:,.0f}:1), the mark "
                       f"of a zip bomb; at most {MAX_RATIO}:1 above {_mib(RATIO_FLOOR)} (not unpacked)")
            skipped.add(info.filename)
    total = sum(i.file_size for i in infos if not i.is_dir())
    if total > MAX_TOTAL_BYTES:
        report.add("", "zip_too_large", f"the entries unpack to {_mib(total)} in all; cpx reads at most "
                                        f"{_mib(MAX_TOTAL_BYTES)} (nothing was unpacked)")
        skipped |= {i.filename for i in infos}
    return skipped


def _crc_problems(zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo], skipped: set[str],
                  report: CheckReport) -> None:
    """Unpack every entry within the limits in 1 MiB blocks, as a scorer would, and flag the
    ones whose data or CRC is broken (``zipfile.testzip`` would unpack the oversized ones too)."""
    for info in infos:
        if info.is_dir() or info.filename in skipped:
            continue
        try:
            with zf.open(info) as fh:
                while fh.read(1 << 20):
                    pass
        except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as exc:
            report.add(info.filename, "corrupt_entry", f"entry cannot be unpacked ({_reason(exc)})")
        except NotImplementedError as exc:
            report.add(info.filename, "corrupt_entry", f"entry uses a compression cpx cannot read ({_reason(exc)})")
        except RuntimeError as exc:  # encrypted entries
            report.add(info.filename, "corrupt_entry", f"entry cannot be unpacked ({_reason(exc)})")


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB" if n >= 2**20 else f"{n:,} bytes"


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
    return text or exc.__class__.__name__


def _strip_nested_top(names: list[str], competition: Competition, report: CheckReport) -> dict[str, str]:
    """Checked path -> zip name; a single wrapping folder is reported and looked through."""
    masks_dir = competition.submission.masks_dir
    mapping = {n: n for n in names}
    if any(n.startswith(masks_dir + "/") for n in names):
        return mapping
    tops = {n.split("/", 1)[0] for n in names}
    if len(tops) == 1 and all("/" in n for n in names):
        top = tops.pop()
        if any(n.startswith(f"{top}/{masks_dir}/") for n in names):
            report.add(f"{top}/", "nested_top_folder",
                       f"everything sits inside the folder {top}/; the scorer expects {masks_dir}/ "
                       f"at the top of the zip (zip the folder's contents, not the folder)")
            return {n.split("/", 1)[1]: n for n in names}
    return mapping


def _check_masks(files: _Files, competition: Competition, report: CheckReport,
                 test_sizes: Optional[dict[str, Size]]) -> None:
    fmt = competition.submission
    k = competition.num_classes
    prefix = fmt.masks_dir + "/"
    entries = [n for n in files.names if n.startswith(prefix)]
    if not entries:
        report.add(prefix, "no_masks", f"no {prefix} folder with masks at the top of the zip")
    stems: dict[str, str] = {}
    seen_classes = np.zeros(256, dtype=bool)
    for name in entries:
        rel = name[len(prefix):]
        if "/" in rel:
            report.add(files.label(name), "mask_subfolder", f"masks must sit directly in {prefix}, not in a subfolder")
            continue
        stem, suffix = os.path.splitext(rel)
        if suffix != competition.layout.mask_suffix:
            report.add(files.label(name), "mask_suffix", f"not a {competition.layout.mask_suffix} file")
            continue
        if stem in stems:
            report.add(files.label(name), "duplicate_mask", f"second mask for {stem} (also {stems[stem]})")
            continue
        stems[stem] = name
        try:
            data = files.read(name, "mask")
        except _Skipped:
            if not files.skipped(name):
                report.add(files.label(name), "mask_too_large",
                           f"{_mib(files.size(name))}; a mask is at most {_mib(_READ_LIMIT['mask'])}")
            continue
        expected = test_sizes.get(stem) if test_sizes is not None else None
        try:
            with warnings.catch_warnings():
                # Pillow's own decompression-bomb warning: the header check below answers first
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data)) as img:
                    fmt_name, mode, size = img.format, img.mode, (img.height, img.width)
                    bands = len(img.getbands())
                    if size[0] * size[1] > MAX_MASK_PIXELS or (expected is not None and size != expected
                                                                and size[0] * size[1] > expected[0] * expected[1]):
                        arr = None  # not decoded: too many pixels, or a wrong size reported below
                        if size[0] * size[1] > MAX_MASK_PIXELS:
                            report.add(files.label(name), "mask_too_large",
                                       f"{size[1]}x{size[0]} pixels; a mask is at most {MAX_MASK_PIXELS:,} "
                                       f"pixels (not decoded)")
                    else:
                        img.load()
                        arr = np.asarray(img) if mode in ("P", "L") else None
        except Image.DecompressionBombError:
            report.add(files.label(name), "mask_too_large", "too many pixels to decode safely (Pillow's "
                                                            "decompression-bomb limit)")
            continue
        except Exception as exc:  # PIL raises many types for broken files
            report.add(files.label(name), "unreadable", f"cannot read the mask ({exc.__class__.__name__})")
            continue
        try:  # the mask rules every command applies (cpx.data.images): lossless PNG, one channel, a scorer's mode
            check_mask_mode(_Header(fmt_name, mode, bands), Path(name), fmt.mask_modes)
        except BadFile as bad:
            report.add(files.label(name), bad.kind, bad.message)
        if arr is not None and arr.size:
            values = np.unique(arr)
            bad = values[values >= k]
            if bad.size:
                report.add(files.label(name), "bad_class", bad_ids_message(bad, k))
            seen_classes[values[values < k]] = True
        if test_sizes is not None and stem in test_sizes and size != test_sizes[stem]:
            h, w = test_sizes[stem]
            report.add(files.label(name), "mask_size", f"mask is {size[1]}x{size[0]} but the test image is {w}x{h}")
    report.masks = len(stems)
    report.classes_seen = [int(c) for c in np.flatnonzero(seen_classes)]
    if test_sizes is not None:
        for stem in sorted(set(test_sizes) - set(stems)):
            report.add(f"{prefix}{stem}{competition.layout.mask_suffix}", "missing_mask",
                       "missing: the test image has no mask")
        for stem in sorted(set(stems) - set(test_sizes)):
            report.add(files.label(stems[stem]), "extra_mask", "no test image has this name")


class _Header:
    """What :func:`cpx.data.images.check_mask_mode` reads of an image, kept from a zip entry."""

    def __init__(self, format: Optional[str], mode: str, bands: int):
        self.format, self.mode, self._bands = format or "an unknown format", mode, bands

    def getbands(self) -> tuple:
        return tuple(range(self._bands))


def estimate_params(state: dict) -> int:
    """Trainable parameters a state_dict holds, leaving out batch-norm statistics."""
    return int(sum(v.numel() for k, v in state.items()
                   if isinstance(v, torch.Tensor) and not k.endswith(_BUFFER_SUFFIXES)
                   and v.is_floating_point()))


def _check_solution(files: _Files, competition: Competition, report: CheckReport) -> None:
    fmt = competition.submission
    if not fmt.solution_dir:
        return
    report.solution_required = True
    sol = fmt.solution_dir + "/"
    report.solution_files = [n[len(sol):] for n in files.names if n.startswith(sol)]
    if not report.solution_files:
        report.add(sol, "no_solution", f"no {sol} folder; {competition.name} requires the code and "
                                       f"weights ({fmt.runner}, {fmt.weights_file})")
        return
    runner = sol + fmt.runner
    source = None
    if runner not in files.names:
        report.add(files.label(runner), "no_runner", f"missing: {competition.name} requires {fmt.runner} "
                                        f"taking --input, --output and --weights")
    else:
        try:
            source = files.read(runner, "text").decode("utf-8", errors="replace")
        except _Skipped:
            if not files.skipped(runner):
                report.add(files.label(runner), "runner_too_large",
                           f"{_mib(files.size(runner))}; a runner script is at most {_mib(_READ_LIMIT['text'])}")
    if source is not None:
        try:
            compile(source, runner, "exec")
        except SyntaxError as exc:
            report.add(files.label(runner), "runner_syntax", f"not valid Python ({exc.msg}, line {exc.lineno})")
        missing = runner_mentions_arguments(source)
        if missing:
            report.add(files.label(runner), "runner_arguments", f"never mentions {', '.join(missing)}; the "
                                                   f"organisers call it with --input, --output, --weights")
    if sol + "requirements.txt" not in files.names:
        report.add(sol + "requirements.txt", "no_requirements", "missing: list the packages run.py needs")
    weights = sol + fmt.weights_file
    if weights not in files.names:
        report.add(files.label(weights), "no_weights", f"missing: the weights, under the key '{fmt.weights_key}'")
        return
    try:
        data = files.read(weights, "weights")
    except _Skipped:
        return  # too large: already a problem
    try:
        # weights_only: unpickling may rebuild tensors and plain containers, never run code
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else exc.__class__.__name__
        report.add(files.label(weights), "weights_unreadable",
                   f"torch.load(weights_only=True) cannot read it ({reason})")
        return
    accepted = tuple(dict.fromkeys((fmt.weights_key, *WEIGHT_KEYS)))
    key = next((k for k in accepted if isinstance(state, dict) and k in state), None)
    if key is None:
        keys = ", ".join(map(str, list(state)[:6])) if isinstance(state, dict) else type(state).__name__
        report.add(files.label(weights), "no_weights_key",
                   f"no '{fmt.weights_key}' key (nor {', '.join(repr(k) for k in accepted[1:])}; "
                   f"found: {keys or 'nothing'})")
        return
    report.weights_key = key
    if key != fmt.weights_key:
        report.notes.append(f"{fmt.weights_file}: weights found under '{key}' (cpx package writes "
                            f"'{fmt.weights_key}'); the zip's own {fmt.runner} must load that key")
    weights_dict = state[key]
    if not isinstance(weights_dict, dict) or not weights_dict or not all(
            isinstance(v, torch.Tensor) for v in weights_dict.values()):
        report.add(files.label(weights), "bad_state_dict", f"'{key}' is not a mapping of names to tensors")
        return
    report.weights_params = estimate_params(weights_dict)
    if report.params is None:
        report.params = report.weights_params
        report.params_source = f"{fmt.weights_file} (excluding batch-norm statistics)"
    elif report.params != report.weights_params:
        # not a problem by itself: models may keep other buffers in their state_dict
        report.notes.append(f"{MANIFEST} states {report.params:,} parameters; {fmt.weights_file} holds "
                            f"{report.weights_params:,} weights besides batch-norm statistics")


def _check_manifest(files: _Files, report: CheckReport) -> None:
    if MANIFEST not in files.names:
        return
    try:
        manifest = json.loads(files.read(MANIFEST, "text"))
        if not isinstance(manifest, dict):
            raise ValueError("not a JSON object")
    except _Skipped:
        if not files.skipped(MANIFEST):
            report.add(files.label(MANIFEST), "manifest_invalid", f"larger than {_mib(_READ_LIMIT['text'])}")
        return
    except ValueError as exc:
        report.add(files.label(MANIFEST), "manifest_invalid", f"not a valid manifest ({exc})")
        return
    report.manifest = manifest
    if isinstance(manifest.get("params"), int):
        report.params = manifest["params"]
        report.params_source = MANIFEST
    listed = manifest.get("files")
    if not isinstance(listed, dict):
        report.add(files.label(MANIFEST), "manifest_invalid", "no 'files' mapping of path -> sha256")
        return
    for name in sorted(listed):
        if name not in files.names:
            report.add(files.label(name), "manifest_missing_file", "listed in the manifest but not in the zip")
        elif files.skipped(name):
            continue  # too large to read: already a problem
        elif files.sha256(name) != listed[name]:
            report.add(files.label(name), "manifest_hash", "content differs from the sha256 in the manifest")
    for name in files.names:
        if name != MANIFEST and name not in listed:
            report.add(files.label(name), "manifest_unlisted", "file is not listed in the manifest")


def check_files(files: _Files, competition: Competition, report: CheckReport,
                test_sizes: Optional[dict[str, Size]] = None) -> CheckReport:
    """Masks, solution, manifest and parameter checks on a set of files; adds to ``report``
    and returns it. ``test_sizes`` maps each test image's stem to its (height, width); when
    None, mask names and sizes are not compared with the test images (and a note says so)."""
    fmt = competition.submission
    known_tops = {fmt.masks_dir, fmt.solution_dir, MANIFEST} - {None}
    for top in sorted({n.split("/", 1)[0] for n in files.names} - known_tops):
        report.notes.append(f"unexpected top-level entry {top} (left as is)")
    _check_manifest(files, report)
    _check_masks(files, competition, report, test_sizes)
    _check_solution(files, competition, report)
    report.max_params = competition.max_params
    if report.params is not None:
        message = competition.check_params(report.params)
        if message:
            report.add("", "params", f"{message} (count from {report.params_source})")
    if test_sizes is None:
        report.notes.append("mask names and sizes were not compared with the test images "
                            "(give --test DIR)")
    else:
        report.test_images = len(test_sizes)
    return report


def check_folder(root: os.PathLike, competition: Competition,
                 test_sizes: Optional[dict[str, Size]] = None) -> CheckReport:
    """The checks of :func:`check_zip` on a folder laid out as the zip will be (``root`` is the
    zip's top level); used on a staged package before it is zipped."""
    start = time.perf_counter()
    report = CheckReport(path=str(root), competition=competition.name)
    check_files(_DirFiles(Path(root)), competition, report, test_sizes)
    report.seconds = time.perf_counter() - start
    return report


def check_zip(zip_path: os.PathLike, competition: Competition,
              test_images: Optional[dict[str, Path]] = None, *,
              test_sizes: Optional[dict[str, Size]] = None) -> CheckReport:
    """Every problem a scorer would trip on in the submission zip at ``zip_path``.

    ``test_images`` (stem -> path) or ``test_sizes`` (stem -> (height, width)) name the test
    images the masks must match one to one. A file that is not a zip is a ``not_a_zip``
    problem in the report.

    :raises SubmissionError: ``zip_path`` does not exist.
    :raises DataError: a test image cannot be read.
    """
    start = time.perf_counter()
    zip_path = Path(zip_path)
    report = CheckReport(path=str(zip_path), competition=competition.name)
    if test_sizes is None and test_images is not None:
        test_sizes = image_sizes(test_images)
    if not zip_path.is_file():
        raise SubmissionError(f"{zip_path}: no such file")
    report.size_bytes = zip_path.stat().st_size
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        report.add("", "not_a_zip", f"not a readable zip file ({exc})")
        report.seconds = time.perf_counter() - start
        return report
    with zf:
        infos = zf.infolist()
        report.entries = len(infos)
        if not infos:
            report.add("", "empty_zip", "the zip is empty")
        skipped = _size_problems(infos, report)
        _crc_problems(zf, infos, skipped, report)
        keep = _entry_problems(infos, report)
        mapping = _strip_nested_top([i.filename for i in keep], competition, report)
        check_files(_ZipFiles(zf, mapping, frozenset(skipped)), competition, report, test_sizes)
    report.seconds = time.perf_counter() - start
    return report


def check_submission(zip_path: os.PathLike, workspace: Workspace, host: PluginHost, *,
                     competition: Optional[str] = None, test_dir: Optional[os.PathLike] = None
                     ) -> CheckReport:
    """:func:`check_zip` with the competition and test images worked out.

    The competition is the one given, else the one the zip's manifest names, else the
    workspace's setting, else the only one registered. The test images come from
    ``test_dir``, else the folder the manifest recorded (when it still exists), else the
    workspace's ``data`` setting.
    """
    zip_path = Path(zip_path)
    if not zip_path.is_file():
        raise SubmissionError(f"{zip_path}: no such file")
    manifest = _peek_manifest(zip_path)
    name = (competition or manifest.get("competition") or workspace.settings().get("competition"))
    if not name:
        names = host.competitions.names()
        if len(names) != 1:
            raise ConfigError(f"--competition: choose one of {', '.join(names) or '(none registered)'}")
        name = names[0]
    comp = host.competition(name)
    folder: Optional[Path] = Path(test_dir) if test_dir else None
    if folder is None and manifest.get("test_dir") and Path(manifest["test_dir"]).is_dir():
        folder = Path(manifest["test_dir"])
    if folder is None and workspace.settings().get("data"):
        candidate = comp.data_path(Path(workspace.settings()["data"]), "test_images")
        folder = candidate if candidate.is_dir() else None
    images = list_test_images(folder, comp) if folder is not None else None
    report = check_zip(zip_path, comp, images)
    report.test_dir = str(folder) if folder is not None else None
    return report


def refusal(what: str, problems: Iterable[Problem]) -> SubmissionError:
    """One error listing every problem: ``what: N problems`` and one indented line each."""
    problems = list(problems)
    lines = [f"{what}: {len(problems)} problem{'s' if len(problems) != 1 else ''}"]
    lines += [f"  {p}" for p in problems]
    return SubmissionError("\n".join(lines))


def _peek_manifest(zip_path: Path) -> dict:
    try:
        with zipfile.ZipFile(zip_path) as zf:
            names = [n for n in zf.namelist() if n == MANIFEST or n.endswith("/" + MANIFEST)]
            data = json.loads(zf.read(min(names, key=len))) if names else {}
        return data if isinstance(data, dict) else {}
    except (zipfile.BadZipFile, OSError, ValueError, KeyError):
        return {}




__all__ = ["MANIFEST", "CheckReport", "check_files", "check_folder", "check_submission", "check_zip",
           "estimate_params", "image_sizes", "list_test_images", "refusal"]
