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

import json
import os
import time
import zipfile
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from cpx.data.competition import Competition
from cpx.data.images import BadFile, image_size
from cpx.data.layout import scan_images
from cpx.data.masks import bad_ids_message
from cpx.kernel.errors import ConfigError, Problem, SubmissionError
from cpx.kernel.manager import PluginHost, get_host
from cpx.kernel.workspace import Workspace
from cpx.runs.competition import default_competition
from cpx.submit.checkreport import CheckReport
from cpx.submit.formats import SubmissionFormat, create_format
from cpx.submit.solutioncheck import check_solution, estimate_params
from cpx.submit.zipentries import (
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


def _tops(fmt: SubmissionFormat) -> set[str]:
    return {e.rstrip("/") for e in fmt.entries()}


def _strip_nested_top(names: list[str], fmt: SubmissionFormat, report: CheckReport) -> dict[str, str]:
    """Checked path -> zip name; a single wrapping folder is reported and looked through."""
    expected = _tops(fmt)
    mapping = {n: n for n in names}
    if any(n.split("/", 1)[0] in expected for n in names):
        return mapping
    tops = {n.split("/", 1)[0] for n in names}
    if len(tops) == 1 and all("/" in n for n in names):
        top = tops.pop()
        if any(n.split("/", 2)[1] in expected for n in names):
            shown = ", ".join(sorted(fmt.entries()))
            report.add(f"{top}/", "nested_top_folder",
                       f"everything sits inside the folder {top}/; the scorer expects {shown} "
                       f"at the top of the zip (zip the folder's contents, not the folder)")
            return {n.split("/", 1)[1]: n for n in names}
    return mapping


def check_predictions(files: FileSource, fmt: SubmissionFormat, competition: Competition, report: CheckReport,
                      expected: Optional[dict[str, Size]]) -> dict[str, np.ndarray]:
    """Decode the predictions in ``files`` with the competition's submission format and check
    them the same way whatever the format: class ids in range, one prediction per test image
    (``expected``: format key -> (height, width) of its image; None: names and sizes not
    compared) at the image's size. Returns what decoded, by key."""
    masks = fmt.read(files, report)
    k = competition.num_classes
    seen_classes = np.zeros(256, dtype=bool)
    for key in sorted(masks):
        arr = masks[key]
        if arr.size:
            values = np.unique(arr)
            bad = values[values >= k]
            if bad.size:
                report.add(fmt.location(key), "bad_class", bad_ids_message(bad, k))
            seen_classes[values[values < k]] = True
        if expected is not None and key in expected and tuple(arr.shape) != tuple(expected[key]):
            h, w = expected[key]
            report.add(fmt.location(key), "mask_size",
                       f"prediction is {arr.shape[1]}x{arr.shape[0]} but the test image is {w}x{h}")
    report.masks = len(masks)
    report.classes_seen = [int(c) for c in np.flatnonzero(seen_classes)]
    if expected is not None:
        for key in sorted(set(expected) - set(masks)):
            where = fmt.location(key)
            # a prediction that is there but did not decode is already a problem
            if not any(p.path == where or p.path.endswith("/" + where) or p.message.startswith((f"{key}:", f"{key}."))
                       for p in report.problems):
                report.add(where, "missing_mask", "missing: the test image has no prediction")
        for key in sorted(set(masks) - set(expected)):
            report.add(fmt.location(key), "extra_mask", "no test image has this name")
    return masks


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


def check_files(files: FileSource, competition: Competition, fmt: SubmissionFormat, report: CheckReport,
                test_sizes: Optional[dict[str, Size]] = None) -> CheckReport:
    """Predictions (through the format's reader), solution, manifest and parameter checks on a
    set of files; adds to ``report`` and returns it. ``test_sizes`` maps each test image's FILE
    NAME to its (height, width); when None, prediction names and sizes are not compared with
    the test images (and a note says so)."""
    solution = competition.submission.solution
    known_tops = _tops(fmt) | {MANIFEST} | ({solution.folder} if solution else set())
    for top in sorted({n.split("/", 1)[0] for n in files.names} - known_tops):
        report.notes.append(f"unexpected top-level entry {top} (left as is)")
    _check_manifest(files, report)
    expected = None if test_sizes is None else {fmt.key(name): size for name, size in test_sizes.items()}
    check_predictions(files, fmt, competition, report, expected)
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


def check_folder(root: os.PathLike, competition: Competition, fmt: Optional[SubmissionFormat] = None,
                 test_sizes: Optional[dict[str, Size]] = None) -> CheckReport:
    """The checks of :func:`check_zip` on a folder laid out as the zip will be (``root`` is the
    zip's top level); used on a staged package before it is zipped."""
    fmt = fmt or create_format(competition, get_host())
    start = time.perf_counter()
    report = CheckReport(path=str(root), competition=competition.name)
    check_files(DirSource(Path(root)), competition, fmt, report, test_sizes)
    report.seconds = time.perf_counter() - start
    return report


def check_zip(zip_path: os.PathLike, competition: Competition, fmt: Optional[SubmissionFormat] = None,
              test_images: Optional[dict[str, Path]] = None, *,
              test_sizes: Optional[dict[str, Size]] = None) -> CheckReport:
    """Every problem a scorer would trip on in the submission zip at ``zip_path``, read with
    the competition's submission format ``fmt`` (default: the one its profile names, from the
    current plugin host).

    ``test_images`` (stem -> path) or ``test_sizes`` (image file name -> (height, width)) name
    the test images the predictions must match one to one. A file that is not a zip is a
    ``not_a_zip`` problem in the report.

    :raises SubmissionError: ``zip_path`` does not exist.
    :raises DataError: a test image cannot be read.
    """
    fmt = fmt or create_format(competition, get_host())
    start = time.perf_counter()
    zip_path = Path(zip_path)
    report = CheckReport(path=str(zip_path), competition=competition.name)
    if test_sizes is None and test_images is not None:
        test_sizes = {test_images[stem].name: size for stem, size in image_sizes(test_images).items()}
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
        mapping = _strip_nested_top([i.filename for i in keep], fmt, report)
        check_files(ZipSource(zf, mapping, frozenset(skipped)), competition, fmt, report, test_sizes)
    report.seconds = time.perf_counter() - start
    return report


def check_submission(zip_path: os.PathLike, workspace: Workspace, host: PluginHost, *,
                     competition: Optional[str] = None, test_dir: Optional[os.PathLike] = None
                     ) -> CheckReport:
    """:func:`check_zip` with the competition and test images worked out.

    The competition is the one given, else the one the zip's manifest names, else
    :func:`cpx.runs.competition.default_competition`. The test images come from
    ``test_dir``, else the folder the manifest recorded (when it still exists), else the
    workspace's ``data`` setting.
    """
    zip_path = Path(zip_path)
    if not zip_path.is_file():
        raise SubmissionError(f"{zip_path}: no such file")
    manifest = _peek_manifest(zip_path)
    name = competition or manifest.get("competition") or default_competition(workspace, host)
    if not name:
        names = host.competitions.names()
        raise ConfigError(f"--competition: choose one of {', '.join(names) or '(none registered)'} "
                          "(or set competition: in the workspace's cpx.yaml)")
    comp = host.competition(name)
    folder: Optional[Path] = Path(test_dir) if test_dir else None
    if folder is None and manifest.get("test_dir") and Path(manifest["test_dir"]).is_dir():
        folder = Path(manifest["test_dir"])
    if folder is None and workspace.settings().get("data"):
        candidate = comp.data_path(Path(workspace.settings()["data"]), "test_images")
        folder = candidate if candidate.is_dir() else None
    images = list_test_images(folder, comp) if folder is not None else None
    report = check_zip(zip_path, comp, create_format(comp, host), images)
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
