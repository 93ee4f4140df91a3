"""The zip rules: every problem a scorer would trip on in a submission zip, or in a folder
about to become one.

This module and its two helpers alone know what a valid submission holds: ``masks/<stem>.png``
for every test image (single-channel class ids at the image's size), the ``solution/`` folder
the competition asks for (runner, requirements, weights under the expected key;
:mod:`cpx.submit.solutioncheck`), an optional ``manifest.json`` whose sha256 list matches the
files, and a parameter count under the competition's cap. :mod:`cpx.submit.zipentries` knows
the entries no scorer wants (absolute or ``..`` paths, links, ``__MACOSX/``, OS junk) and the
resource limits: nothing in a zip is trusted to be small. A mask of more than
:data:`~cpx.submit.zipentries.MAX_MASK_PIXELS` pixels is a problem and is never decoded.
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
import time
import warnings
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
from PIL import Image

from cpx.data.competition import Competition
from cpx.data.images import BadFile, bad_ids_message, check_mask_mode, image_size
from cpx.data.layout import scan_images
from cpx.kernel.errors import ConfigError, Problem, SubmissionError
from cpx.kernel.manager import PluginHost
from cpx.kernel.workspace import Workspace
from cpx.submit.checkreport import CheckReport
from cpx.submit.solutioncheck import check_solution, estimate_params
from cpx.submit.zipentries import (
    MAX_MASK_PIXELS,
    READ_LIMIT,
    DirSource,
    FileSource,
    Skipped,
    ZipSource,
    crc_problems,
    entry_problems,
    mib,
    size_problems,
)

MANIFEST = "manifest.json"

Size = tuple[int, int]  # (height, width)


# --------------------------------------------------------------------------------------------
# Test images


def list_test_images(folder: os.PathLike, competition: Competition) -> dict[str, Path]:
    """Test images in ``folder`` by stem, with the competition's image suffixes (any case), as
    :func:`cpx.data.layout.scan_images` lists them.

    :raises DataError: a missing or empty folder, two images of one stem, or a folder or broken
        link named like an image, in one line naming the count and the first.
    """
    found = scan_images(folder, competition, what="test image")
    found.require()
    return {path.stem: path for path in found.test_images}


def image_sizes(paths: dict[str, Path]) -> dict[str, Size]:
    """(height, width) of each image, read from the file headers only
    (:func:`cpx.data.images.image_size`).

    :raises DataError: an image that cannot be read or is over the pixel limit, in one line
        naming the file.
    """
    sizes: dict[str, Size] = {}
    for stem, path in paths.items():
        try:
            sizes[stem] = image_size(path)
        except BadFile as bad:
            raise bad.error() from None
    return sizes


# --------------------------------------------------------------------------------------------
# Checking


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


def _check_masks(files: FileSource, competition: Competition, report: CheckReport,
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
        except Skipped:
            if not files.skipped(name):
                report.add(files.label(name), "mask_too_large",
                           f"{mib(files.size(name))}; a mask is at most {mib(READ_LIMIT['mask'])}")
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


def _check_manifest(files: FileSource, report: CheckReport) -> None:
    if MANIFEST not in files.names:
        return
    try:
        manifest = json.loads(files.read(MANIFEST, "text"))
        if not isinstance(manifest, dict):
            raise ValueError("not a JSON object")
    except Skipped:
        if not files.skipped(MANIFEST):
            report.add(files.label(MANIFEST), "manifest_invalid", f"larger than {mib(READ_LIMIT['text'])}")
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


def check_files(files: FileSource, competition: Competition, report: CheckReport,
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
    check_solution(files, competition, report)
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
    check_files(DirSource(Path(root)), competition, report, test_sizes)
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
        skipped = size_problems(infos, report)
        crc_problems(zf, infos, skipped, report)
        keep = entry_problems(infos, report)
        mapping = _strip_nested_top([i.filename for i in keep], competition, report)
        check_files(ZipSource(zf, mapping, frozenset(skipped)), competition, report, test_sizes)
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
