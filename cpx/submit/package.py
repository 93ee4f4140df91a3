"""Packaging a run as a verified submission zip, and checking any submission zip.

A package is ``submissions/submission-<name>_f<val F>.zip`` holding ``masks/<stem>.png`` for
every test image, a standalone ``solution/`` (see :mod:`cpx.submit.solution`) and ``manifest.json``
(the run, its config, the parameter count, TTA and the sha256 of every other file).

Nothing reaches ``submissions/`` unverified: the staged folder is checked, the zip is built
under a temporary name, reopened and checked again, its ``solution/run.py`` is run in a fresh
interpreter on a few test images and compared with the packaged masks, and only then is the
zip moved into place and recorded in the ledger. Any failure leaves no file behind.

:func:`check_zip` is the same verification for any zip, hand-made ones included; it collects
every problem instead of stopping at the first.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import stat
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from cpx import __version__
from cpx.data.competition import Competition
from cpx.kernel.device import count_params
from cpx.kernel.errors import ConfigError, DataError, Problem, RuleViolation, SubmissionError
from cpx.kernel.files import sha256_bytes, sha256_file
from cpx.kernel.manager import PluginHost
from cpx.kernel.text import utc_now
from cpx.kernel.workspace import Workspace
from cpx.runs.handle import RunHandle, open_run
from cpx.runs.ledger import Ledger
from cpx.submit.solution import (
    export_solution,
    model_source,
    postprocess_sources,
    run_solution,
    runner_mentions_arguments,
)

MANIFEST = "manifest.json"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# Files that archivers add on their own and that a scorer would count as extra entries.
JUNK_NAMES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})
# Batch-norm statistics sit in a state_dict but are not trainable parameters.
_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")
# A fixed timestamp keeps the same files zipping to the same bytes.
_ZIP_TIME = (2020, 1, 1, 0, 0, 0)

Progress = Optional[Callable[[str, int, int], None]]
Size = tuple[int, int]  # (height, width)


# --------------------------------------------------------------------------------------------
# Reports


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
    max_params: Optional[int] = None
    classes_seen: list[int] = field(default_factory=list)
    manifest: Optional[dict] = None
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, path: str, kind: str, message: str) -> None:
        self.problems.append(Problem(path, kind, message))

    def to_dict(self) -> dict:
        out = asdict(self)
        out["ok"] = self.ok
        out["manifest"] = None if self.manifest is None else {
            k: v for k, v in self.manifest.items() if k != "files"}
        return out


@dataclass
class PackageRequest:
    run: str
    name: str
    tta: tuple[str, ...] = ()
    test_dir: Optional[str] = None
    checkpoint: str = "best"
    allow_rule_break: bool = False
    # test images the packaged solution/run.py is run on and compared with the masks
    solution_check_images: int = 3
    device: str = "auto"
    # one image per forward pass, exactly as run.py does: a different batch shape can pick a
    # different kernel and flip argmax ties, and the two must agree to the pixel
    batch_size: int = 1
    # (recipe hook) the run's stored logit offsets, and post-processing steps (--post)
    calibration: bool = True
    post: tuple[str, ...] = ()


@dataclass
class PackageResult:
    name: str
    run_id: str
    competition: str
    zip_path: str
    sha256: str
    size_bytes: int
    masks: int
    params: int
    val_score: Optional[float]
    tta: list[str]
    checkpoint: str
    check: CheckReport
    solution_images: int = 0
    solution_agreement: Optional[float] = None
    solution_exact: Optional[bool] = None
    predict_seconds: float = 0.0
    solution_seconds: float = 0.0
    seconds: float = 0.0
    rule_breaks: list[str] = field(default_factory=list)
    submission: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["check"] = self.check.to_dict()
        return out


# --------------------------------------------------------------------------------------------
# File sources: the same checks run on a staged folder and on a zip


class _Files:
    """Regular files by posix path relative to the submission root."""

    names: list[str]

    def read(self, name: str) -> bytes:
        raise NotImplementedError

    def label(self, name: str) -> str:
        """How to name the file in a problem: its path as the user sees it."""
        return name


class _DirFiles(_Files):
    def __init__(self, root: Path):
        self.root = Path(root)
        self.names = sorted(p.relative_to(self.root).as_posix()
                            for p in self.root.rglob("*") if p.is_file())

    def read(self, name: str) -> bytes:
        return (self.root / name).read_bytes()


class _ZipFiles(_Files):
    def __init__(self, zf: zipfile.ZipFile, names: dict[str, str]):
        # names: path as checked -> name inside the zip (they differ under a nested top folder)
        self.zf = zf
        self.map = names
        self.names = sorted(names)

    def read(self, name: str) -> bytes:
        return self.zf.read(self.map[name])

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
            with Image.open(io.BytesIO(files.read(name))) as img:
                img.load()
                fmt_name, mode, size = img.format, img.mode, (img.height, img.width)
                bands = len(img.getbands())
                arr = np.asarray(img) if mode in ("P", "L") else None
        except Exception as exc:  # PIL raises many types for broken files
            report.add(files.label(name), "unreadable", f"cannot read the mask ({exc.__class__.__name__})")
            continue
        if fmt_name != "PNG":
            report.add(files.label(name), "not_png", f"file is {fmt_name or 'not an image'}, not PNG")
        if mode not in fmt.mask_modes:
            report.add(files.label(name), "mask_mode",
                       f"mode {mode} ({bands} channel{'s' if bands != 1 else ''}); the scorer "
                       f"needs one channel of class ids, mode {' or '.join(fmt.mask_modes)}")
        if arr is not None and arr.size:
            values = np.unique(arr)
            bad = values[values >= k]
            if bad.size:
                shown = ", ".join(str(int(v)) for v in bad[:10]) + (", ..." if bad.size > 10 else "")
                report.add(files.label(name), "bad_class", f"value{'s' if bad.size > 1 else ''} {shown} outside "
                                              f"the class ids 0..{k - 1}")
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
    if runner not in files.names:
        report.add(files.label(runner), "no_runner", f"missing: {competition.name} requires {fmt.runner} "
                                        f"taking --input, --output and --weights")
    else:
        source = files.read(runner).decode("utf-8", errors="replace")
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
        state = torch.load(io.BytesIO(files.read(weights)), map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else exc.__class__.__name__
        report.add(files.label(weights), "weights_unreadable",
                   f"torch.load(weights_only=True) cannot read it ({reason})")
        return
    if not isinstance(state, dict) or fmt.weights_key not in state:
        keys = ", ".join(map(str, list(state)[:6])) if isinstance(state, dict) else type(state).__name__
        report.add(files.label(weights), "no_weights_key", f"no '{fmt.weights_key}' key (found: {keys or 'nothing'})")
        return
    weights_dict = state[fmt.weights_key]
    if not isinstance(weights_dict, dict) or not weights_dict or not all(
            isinstance(v, torch.Tensor) for v in weights_dict.values()):
        report.add(files.label(weights), "bad_state_dict", f"'{fmt.weights_key}' is not a mapping of names to tensors")
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
        manifest = json.loads(files.read(MANIFEST))
        if not isinstance(manifest, dict):
            raise ValueError("not a JSON object")
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
        elif sha256_bytes(files.read(name)) != listed[name]:
            report.add(files.label(name), "manifest_hash", "content differs from the sha256 in the manifest")
    for name in files.names:
        if name != MANIFEST and name not in listed:
            report.add(files.label(name), "manifest_unlisted", "file is not listed in the manifest")


def check_files(files: _Files, competition: Competition, report: CheckReport,
                test_sizes: Optional[dict[str, Size]] = None) -> CheckReport:
    """Masks, solution, manifest and parameter checks on a set of files; adds to ``report``."""
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


def check_zip(zip_path: os.PathLike, competition: Competition,
              test_images: Optional[dict[str, Path]] = None, *,
              test_sizes: Optional[dict[str, Size]] = None) -> CheckReport:
    """Every problem a scorer would trip on in the submission zip at ``zip_path``."""
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
        corrupt = zf.testzip()
        if corrupt is not None:
            report.add(corrupt, "corrupt_entry", "entry fails its CRC check")
        keep = _entry_problems(infos, report)
        mapping = _strip_nested_top([i.filename for i in keep], competition, report)
        check_files(_ZipFiles(zf, mapping), competition, report, test_sizes)
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


def _peek_manifest(zip_path: Path) -> dict:
    try:
        with zipfile.ZipFile(zip_path) as zf:
            names = [n for n in zf.namelist() if n == MANIFEST or n.endswith("/" + MANIFEST)]
            data = json.loads(zf.read(min(names, key=len))) if names else {}
        return data if isinstance(data, dict) else {}
    except (zipfile.BadZipFile, OSError, ValueError, KeyError):
        return {}


# --------------------------------------------------------------------------------------------
# Packaging


def zip_name(name: str, val_score: Optional[float]) -> str:
    return f"submission-{name}_f{val_score:.4f}.zip" if val_score is not None else f"submission-{name}.zip"


def _name_taken(name: str, workspace: Workspace, ledger: Ledger) -> Optional[str]:
    try:
        row = ledger.get_submission(name)
    except SubmissionError:
        row = None
    if row is not None:
        return f"a submission named '{name}' is already recorded ({row.get('zip_path') or 'no zip'})"
    pattern = re.compile(rf"^submission-{re.escape(name)}(_f\d+\.\d+)?\.zip$")
    folder = workspace.submissions_dir
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if pattern.match(path.name):
                return f"{path} already exists; choose another --name"
    return None


def _val_score(run: RunHandle, checkpoint: str) -> Optional[float]:
    best = run.row.get("best_val_f")
    if checkpoint == "best":
        return None if best is None or best < 0 else float(best)
    if checkpoint == "last":
        scored = [h["val_f"] for h in run.folder.read_history() if isinstance(h.get("val_f"), (int, float))]
        if scored:
            return float(scored[-1])
    return None


def _zip_folder(src: Path, dest: Path) -> None:
    """Zip every file under ``src`` (sorted, fixed timestamps) into the new file ``dest``."""
    files = sorted(p for p in src.rglob("*") if p.is_file())
    with zipfile.ZipFile(dest, "x", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for path in files:
            info = zipfile.ZipInfo(path.relative_to(src).as_posix(), date_time=_ZIP_TIME)
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            with open(path, "rb") as f:
                zf.writestr(info, f.read())


def _read_png_array(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img)


def _problems_error(what: str, problems: Iterable[Problem]) -> SubmissionError:
    problems = list(problems)
    lines = [f"{what}: {len(problems)} problem{'s' if len(problems) != 1 else ''}"]
    lines += [f"  {p}" for p in problems]
    return SubmissionError("\n".join(lines))


def _resolve_test_dir(run: RunHandle, request: PackageRequest) -> Path:
    if request.test_dir:
        return Path(request.test_dir).expanduser()
    root = run.data_root
    if root is None:
        raise DataError(f"run {run.id} trained on synthetic data, so it has no test images; "
                        f"give --test DIR")
    return run.competition.data_path(root, "test_images")


def package(request: PackageRequest, workspace: Workspace, host: PluginHost,
            progress: Progress = None) -> PackageResult:
    """Predict every test image with a run and write a verified submission zip.

    Raises SubmissionError (name taken, a failed check, a solution that does not reproduce
    the masks), RuleViolation (a rule the competition forbids, unless allowed) or DataError;
    in every failure case ``submissions/`` is left as it was.
    """
    from cpx.eval.predict import (
        check_ensemble_allowed,
        is_ensemble,
        parse_tta,
        predict_folder,
        predictor_for_run,
        read_ensemble_spec,
    )
    from cpx.kernel.device import resolve_device

    start = time.perf_counter()
    name = str(request.name).strip()
    if not NAME_RE.match(name):
        raise SubmissionError(f"--name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
                              f"starting with a letter or digit")
    if request.checkpoint not in ("best", "last") and not Path(request.checkpoint).is_file():
        raise SubmissionError(f"--checkpoint {request.checkpoint!r}: use best, last or a checkpoint file")
    tta = parse_tta(request.tta)

    with Ledger(workspace.ledger_path) as ledger:
        taken = _name_taken(name, workspace, ledger)
        if taken:
            raise SubmissionError(taken)
        row = ledger.get_run(request.run)
        rule_breaks: list[str] = []
        if is_ensemble(row):
            comp_name = row.get("competition") or read_ensemble_spec(row, workspace).get("competition")
            warning = check_ensemble_allowed(row, host.competition(comp_name), request.allow_rule_break)
            raise SubmissionError(f"run {row['id']} is an ensemble; cpx cannot yet write a standalone "
                                  f"solution or count parameters for ensembles"
                                  + (f" ({warning})" if warning else ""))
        run = open_run(row["id"], workspace, host, ledger)
    competition = run.competition
    fmt = competition.submission

    test_dir = _resolve_test_dir(run, request)
    test_images = list_test_images(test_dir, competition)
    test_sizes = image_sizes(test_images)

    device = resolve_device(request.device)
    model = run.load_model(request.checkpoint, "cpu", host)
    if fmt.solution_dir:
        model_source(model, run.config.model.name)  # fail before minutes of prediction
    params = count_params(model)
    too_many = competition.check_params(params)
    if too_many:
        if not request.allow_rule_break:
            raise RuleViolation(f"{too_many} (run {run.id}); --allow-rule-break packages it anyway")
        rule_breaks.append(too_many)
    val_score = _val_score(run, request.checkpoint)
    final = workspace.submissions_dir / zip_name(name, val_score)

    with tempfile.TemporaryDirectory(prefix="cpx-package-") as tmp:
        stage = Path(tmp) / "stage"
        masks_dir = stage / fmt.masks_dir
        masks_dir.mkdir(parents=True)

        # 1. masks
        predictor = predictor_for_run(run.id, workspace, host, checkpoint=request.checkpoint,
                                      tta=tta, device=str(device), precision="fp32",
                                      calibration=request.calibration, post=request.post)
        if fmt.solution_dir:  # recipe hook: run.py must repeat every post step; fail before predicting
            postprocess_sources(predictor.post)
        cb = (lambda done, total: progress("predict", done, total)) if progress else None
        predicted = predict_folder(predictor, test_dir, masks_dir, batch_size=request.batch_size,
                                   skip_bad=True, progress=cb)
        predict_seconds = float(predicted.seconds)
        # predict_folder takes every image in the folder; only the competition's test images
        # count, and any of those it could not read is fatal
        unreadable = [f"{p}: {why}" for p, why in predicted.skipped if p.stem in test_images
                      and test_images[p.stem] == p]
        if unreadable:
            raise DataError("\n".join(unreadable))
        for path in masks_dir.iterdir():
            if path.stem not in test_images:
                path.unlink()

        # 2. solution
        if fmt.solution_dir:
            # the predictor runs every model channels-last, and so must run.py to match it
            export_solution(model, stage / fmt.solution_dir, competition,
                            image_size=run.image_size, channels_last=True,
                            model_name=run.config.model.name,
                            logit_offsets=None if predictor.logit_offsets is None
                            else predictor.logit_offsets.tolist(),
                            postprocess=predictor.post)

        # 3. verify the staged files before anything is zipped
        staged = CheckReport(path=str(stage), competition=competition.name)
        check_files(_DirFiles(stage), competition, staged, test_sizes)
        blocking = [p for p in staged.problems if not (p.kind == "params" and request.allow_rule_break)]
        if blocking:
            raise _problems_error("the staged submission failed its check", blocking)

        # 4. manifest, then the zip under a temporary name in submissions/
        manifest = {
            "name": name,
            "run_id": run.id,
            "run_name": run.row.get("name"),
            "competition": competition.name,
            "recipe": run.config.recipe,
            "model": run.config.model.name,
            "config": run.config.model_dump(mode="json"),
            "checkpoint": request.checkpoint,
            "val_score": val_score,
            "params": params,
            "max_params": competition.max_params,
            "tta": list(tta),
            "image_size": run.image_size,
            "precision": "fp32",
            "test_dir": str(test_dir.resolve()),
            "test_images": len(test_images),
            "cpx_version": __version__,
            "torch_version": torch.__version__,
            "created_at": utc_now(),
            "rule_breaks": rule_breaks,
            "files": {p.relative_to(stage).as_posix(): sha256_file(p)
                      for p in sorted(stage.rglob("*")) if p.is_file()},
        }
        (stage / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")

        workspace.submissions_dir.mkdir(parents=True, exist_ok=True)
        partial = workspace.submissions_dir / f".{final.name}.{os.getpid()}.tmp"
        try:
            _zip_folder(stage, partial)

            # 5. reopen the zip and check it as a scorer would see it
            report = check_zip(partial, competition, test_sizes=test_sizes)
            report.path = str(final)
            report.test_dir = str(test_dir)
            blocking = [p for p in report.problems if not (p.kind == "params" and request.allow_rule_break)]
            if blocking:
                raise _problems_error(f"{final.name} failed its check", blocking)

            # 6. run the packaged solution on a few test images and compare
            sol_images, agreement, exact, sol_seconds = 0, None, None, 0.0
            if fmt.solution_dir and request.solution_check_images > 0:
                sol_images, agreement, sol_seconds = _try_solution(
                    partial, competition, test_images, request.solution_check_images, Path(tmp),
                    device=device.type, progress=progress)
                exact = agreement == 1.0
                if not exact and not tta:
                    raise SubmissionError(
                        f"solution/{fmt.runner} does not reproduce the packaged masks: "
                        f"{agreement:.4%} of pixels agree on {sol_images} test images")

            # 7. move into place without overwriting, then record
            try:
                os.link(partial, final)
            except FileExistsError:
                raise SubmissionError(f"{final} already exists; choose another --name") from None
            except OSError:
                # no hard links here (some network or FAT file systems): check, then rename
                if final.exists():
                    raise SubmissionError(f"{final} already exists; choose another --name") from None
                os.replace(partial, final)
        finally:
            partial.unlink(missing_ok=True)

    digest = sha256_file(final)
    size = final.stat().st_size
    try:
        with Ledger(workspace.ledger_path) as ledger:
            recorded = ledger.add_submission(
                name, run_id=run.id, zip_path=str(final), zip_sha256=digest, val_score=val_score,
                tta=",".join(tta) or "none", checkpoint=request.checkpoint, size_bytes=size,
                note="; ".join(rule_breaks) or None)
    except BaseException:
        final.unlink(missing_ok=True)
        raise
    report.size_bytes = size
    return PackageResult(
        name=name, run_id=run.id, competition=competition.name, zip_path=str(final), sha256=digest,
        size_bytes=size, masks=report.masks, params=params, val_score=val_score, tta=list(tta),
        checkpoint=request.checkpoint, check=report, solution_images=sol_images,
        solution_agreement=agreement, solution_exact=exact, predict_seconds=round(predict_seconds, 3),
        solution_seconds=round(sol_seconds, 3), seconds=round(time.perf_counter() - start, 3),
        rule_breaks=rule_breaks, submission=recorded)


def _try_solution(zip_path: Path, competition: Competition, test_images: dict[str, Path],
                  count: int, scratch: Path, *, device: str = "cpu",
                  progress: Progress = None) -> tuple[int, float, float]:
    """Run the zip's own solution on the first ``count`` test images, in a folder extracted
    from the zip; return (images, share of pixels equal to the packaged masks, seconds)."""
    fmt = competition.submission
    root = scratch / "solution-check"
    inputs, outputs = scratch / "solution-input", scratch / "solution-output"
    for folder in (root, inputs, outputs):
        shutil.rmtree(folder, ignore_errors=True)
    inputs.mkdir(parents=True)
    stems = sorted(test_images)[:count]
    for stem in stems:
        shutil.copy2(test_images[stem], inputs / test_images[stem].name)
    with zipfile.ZipFile(zip_path) as zf:
        # entries were checked above: relative, no '..', no links
        members = [n for n in zf.namelist() if n.startswith(fmt.solution_dir + "/")]
        zf.extractall(root, members)
        packaged = {s: _read_png_array(zf.read(f"{fmt.masks_dir}/{s}{competition.layout.mask_suffix}"))
                    for s in stems}
    if progress:
        progress("solution", 0, len(stems))
    seconds = run_solution(root / fmt.solution_dir, inputs, outputs, runner=fmt.runner,
                           weights=root / fmt.solution_dir / fmt.weights_file, device=device)
    if progress:
        progress("solution", len(stems), len(stems))
    equal = total = 0
    for stem in stems:
        out = outputs / f"{stem}{competition.layout.mask_suffix}"
        if not out.is_file():
            raise SubmissionError(f"solution/{fmt.runner} wrote no mask for {test_images[stem].name}")
        with Image.open(out) as img:
            if img.mode not in fmt.mask_modes:
                raise SubmissionError(f"solution/{fmt.runner} wrote a mode {img.mode} mask for {stem}")
            mine = np.asarray(img)
        theirs = packaged[stem]
        if mine.shape != theirs.shape:
            raise SubmissionError(f"solution/{fmt.runner} wrote a {mine.shape[1]}x{mine.shape[0]} mask "
                                  f"for {stem}; the packaged one is {theirs.shape[1]}x{theirs.shape[0]}")
        equal += int((mine == theirs).sum())
        total += mine.size
    return len(stems), (equal / total if total else 1.0), seconds


__all__ = [
    "CheckReport", "PackageRequest", "PackageResult", "Problem", "check_files", "check_submission",
    "check_zip", "estimate_params", "image_sizes", "list_test_images", "package", "zip_name",
]
