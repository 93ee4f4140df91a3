"""Packaging a run as a verified submission zip.

A package is ``submissions/submission-<name>_<metric><validation score>.zip`` holding the
predictions of every test image in the competition's submission format (``masks/<stem>.png``,
one ``results.json``, ...; :mod:`cpx.submit.formats`), the standalone ``solution/`` when the
competition asks for one (see :mod:`cpx.submit.solution`) and ``manifest.json`` (the run, its
config, the parameter count, what the prediction applied, the validation score of exactly that
prediction and the sha256 of every other file).

:func:`package` is a pipeline of small steps, each named for what it does: prepare (the
request, the run, its model and the test images), stage (masks, solution, a check of the
staged folder, the manifest), zip (under a temporary name, reopened and checked as a scorer
would see it), prove the solution (its ``run.py`` run in a fresh interpreter and compared
with the packaged masks), publish (moved into place without overwriting) and record (the
ledger). Nothing reaches ``submissions/`` unverified, and any failure leaves no file behind.
The zip rules themselves live in :mod:`cpx.submit.zipcheck`.
"""

from __future__ import annotations

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
from typing import Callable, Optional

import numpy as np
import torch

from cpx import __version__
from cpx.data.competition import Competition
from cpx.data.images import read_mask
from cpx.eval.predict import DEFAULT_SCALES
from cpx.kernel.device import count_params
from cpx.kernel.errors import DataError, RuleViolation, SubmissionError
from cpx.kernel.files import sha256_file
from cpx.kernel.manager import PluginHost
from cpx.kernel.text import utc_now
from cpx.kernel.workspace import Workspace
from cpx.runs.handle import RunHandle, open_run
from cpx.runs.ledger import Ledger
from cpx.submit.checkreport import CheckReport
from cpx.submit.formats import SubmissionFormat, create_format, duplicate_keys
from cpx.submit.solution import export_solution, model_source, postprocess_sources, run_solution
from cpx.submit.submissions import Budget, default_phase, phase_budget, server_phase
from cpx.submit.zipcheck import MANIFEST, check_folder, check_zip, image_sizes, list_test_images, refusal

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# A fixed timestamp keeps the same files zipping to the same bytes.
_ZIP_TIME = (2020, 1, 1, 0, 0, 0)

# progress(stage, done, total), stage being "predict" or "solution"
Progress = Optional[Callable[[str, int, int], None]]
Size = tuple[int, int]  # (height, width)


@dataclass
class PackageRequest:
    """What to package: ``run`` (id, id prefix or name) as submission ``name``."""

    run: str
    name: str
    tta: tuple[str, ...] = ()
    test_dir: Optional[str] = None
    checkpoint: str = "best"
    allow_rule_break: bool = False
    device: str = "auto"
    # package for the last submission left (or none left) without asking
    yes: bool = False
    # images of one size per forward pass; solution/run.py batches them the same way, since a
    # different batch shape can pick a different kernel and flip argmax ties
    batch_size: int = 8
    # (recipe hook) the run's stored logit offsets, and post-processing steps (--post)
    calibration: bool = True
    post: tuple[str, ...] = ()
    tile: Optional[int] = None
    # use the run's data folder although it no longer holds the data the run trained on
    allow_changed_data: bool = False


@dataclass
class PackageResult:
    """A packaged, checked and recorded submission; ``submission`` is its ledger row."""

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
    metric: str = ""  # what val_score is (the competition's metric, and its scale when not 1)
    format: str = ""
    solution_images: int = 0
    solution_agreement: Optional[float] = None
    solution_exact: Optional[bool] = None
    predict_seconds: float = 0.0
    solution_seconds: float = 0.0
    seconds: float = 0.0
    rule_breaks: list[str] = field(default_factory=list)
    submission: dict = field(default_factory=dict)
    # submissions left in the phase when it was packaged (ledger, and server when logged in)
    budget: Optional[Budget] = None
    # what the organisers' scoring program made of the zip's layout (the ``official`` check)
    official: Optional[dict] = None

    def to_dict(self) -> dict:
        """Plain data for ``--json``."""
        out = asdict(self)
        out["check"] = self.check.to_dict()
        out["budget"] = self.budget.to_dict() if self.budget else None
        return out


def zip_name(name: str, metric: str, val_score: Optional[float]) -> str:
    """``submission-<name>_<metric><validation score, 4 decimals>.zip`` (``..._fscore0.7312.zip``,
    ``..._class-iou29.5871.zip``), or without the score when unknown."""
    return (f"submission-{name}_{metric}{val_score:.4f}.zip" if val_score is not None
            else f"submission-{name}.zip")


# --------------------------------------------------------------------------------------------
# The pipeline


@dataclass
class _Job:
    """What the steps of one packaging share; each step fills in its part."""

    request: PackageRequest
    workspace: Workspace
    host: PluginHost
    progress: Progress
    name: str = ""
    tta: tuple[str, ...] = ()
    run: Optional[RunHandle] = None
    model: Optional[torch.nn.Module] = None
    params: int = 0
    rule_breaks: list[str] = field(default_factory=list)
    val_score: Optional[float] = None
    test_dir: Optional[Path] = None
    test_images: dict[str, Path] = field(default_factory=dict)
    test_sizes: dict[str, Size] = field(default_factory=dict)  # by image file name
    device: Optional[torch.device] = None
    format: Optional[SubmissionFormat] = None
    validation: Optional[dict] = None  # the ledger validation of exactly what is packaged
    final: Optional[Path] = None
    predict_seconds: float = 0.0
    budget: Optional[Budget] = None
    # (recipe hook) what the predictor applied, for run.py to repeat
    logit_offsets: Optional[list[float]] = None
    post: list = field(default_factory=list)

    @property
    def competition(self) -> Competition:
        return self.run.competition

    @property
    def metric_label(self) -> str:
        spec = self.competition.metric
        return spec.name + (f" x{spec.scale:g}" if spec.scale != 1 else "")

    def blocking(self, report: CheckReport) -> list:
        """The problems that stop packaging: all of them, but the parameter cap when the
        rules may be broken on purpose."""
        return [p for p in report.problems if not (p.kind == "params" and self.request.allow_rule_break)]


def package(request: PackageRequest, workspace: Workspace, host: PluginHost,
            progress: Progress = None, confirm: Optional[Callable[[str], bool]] = None,
            official: Optional[Callable[[PackageRequest, str, Path], Optional[dict]]] = None) -> PackageResult:
    """Predict every test image with a run and write a verified submission zip.

    ``official(request, run_id, zip_path)``, when given, checks the checked zip before it is
    published (the organisers' scoring program, :func:`cpx.bundle.official.package_check`):
    it raises to refuse the zip, and what it returns is kept in the result.

    Before any work the phase's budget is worked out (the ledger, and Codabench when
    ``codabench_competition`` is set and a token is at hand); when this would be the last
    submission, or none is left, ``confirm(question)`` must say yes unless ``request.yes``.

    :raises SubmissionError: a bad name or checkpoint, a name taken, a declined budget
        question, a failed check, a solution that does not reproduce the masks.
    :raises RuleViolation: a rule the competition forbids (unless ``allow_rule_break``).
    :raises DataError: missing or unreadable test images.

    In every failure case ``submissions/`` and the ledger are left as they were.
    """
    start = time.perf_counter()
    job = _Job(request, workspace, host, progress)
    _read_request(job)
    _open_run(job)
    _check_budget(job, confirm)
    _load_model(job)
    _find_test_images(job)
    _measure_validation(job)
    with tempfile.TemporaryDirectory(prefix="cpx-package-") as tmp:
        scratch = Path(tmp)
        stage = scratch / "stage"
        _predict_masks(job, stage)
        _write_solution(job, stage)
        _check_stage(job, stage)
        _write_manifest(job, stage)
        job.workspace.submissions_dir.mkdir(parents=True, exist_ok=True)
        partial = job.workspace.submissions_dir / f".{job.final.name}.{os.getpid()}.tmp"
        try:
            _zip_folder(stage, partial)
            report = _check_zip(job, partial)
            checked = official(request, job.run.id, partial) if official is not None else None
            proof = _prove_solution(job, partial, scratch)
            _publish(partial, job.final)
        finally:
            partial.unlink(missing_ok=True)
    recorded = _record(job)
    report.size_bytes = recorded["size_bytes"]
    sol_images, agreement, exact, sol_seconds = proof
    return PackageResult(
        name=job.name, run_id=job.run.id, competition=job.competition.name, zip_path=str(job.final),
        sha256=recorded["zip_sha256"], size_bytes=recorded["size_bytes"], masks=report.masks,
        params=job.params, val_score=job.val_score, tta=list(job.tta), checkpoint=request.checkpoint,
        check=report, metric=job.metric_label, format=job.format.describe(), solution_images=sol_images, solution_agreement=agreement, solution_exact=exact,
        predict_seconds=round(job.predict_seconds, 3), solution_seconds=round(sol_seconds, 3),
        seconds=round(time.perf_counter() - start, 3), rule_breaks=job.rule_breaks, submission=recorded,
        budget=job.budget, official=checked)


def _read_request(job: _Job) -> None:
    """Name, checkpoint and TTA, checked before anything is loaded."""
    from cpx.eval.predict import parse_tta

    request = job.request
    job.name = str(request.name).strip()
    if not NAME_RE.match(job.name):
        raise SubmissionError(f"--name {job.name!r}: use 1-64 letters, digits, '.', '_' or '-', "
                              f"starting with a letter or digit")
    if request.checkpoint not in ("best", "last") and not Path(request.checkpoint).is_file():
        raise SubmissionError(f"--checkpoint {request.checkpoint!r}: use best, last or a checkpoint file")
    job.tta = parse_tta(request.tta)


def _open_run(job: _Job) -> None:
    """The run to package; refuses a name already used and ensembles."""
    from cpx.eval.predict import check_ensemble_allowed, is_ensemble, read_ensemble_spec

    with Ledger(job.workspace.ledger_path) as ledger:
        taken = _name_taken(job.name, job.workspace, ledger)
        if taken:
            raise SubmissionError(taken)
        row = ledger.get_run(job.request.run)
        if is_ensemble(row):
            comp_name = row.get("competition") or read_ensemble_spec(row, job.workspace).get("competition")
            warning = check_ensemble_allowed(row, job.host.competition(comp_name), job.request.allow_rule_break)
            raise SubmissionError(f"run {row['id']} is an ensemble; cpx cannot yet write a standalone "
                                  f"solution or count parameters for ensembles"
                                  + (f" ({warning})" if warning else ""))
        job.run = open_run(row["id"], job.workspace, job.host, ledger)


def _check_budget(job: _Job, confirm: Optional[Callable[[str], bool]]) -> None:
    """How many submissions are left; the last one (or none) is only packaged when confirmed."""
    remote, note = server_phase(job.workspace)
    with Ledger(job.workspace.ledger_path) as ledger:
        job.budget = phase_budget(ledger, job.competition, default_phase(job.competition), remote=remote,
                                  remote_note=note)
    warning = job.budget.warning()
    if warning and not job.request.yes:
        if confirm is None or not confirm(f"{warning}; package {job.name} anyway?"):
            raise SubmissionError(f"not packaged: {warning} (--yes packages without asking)")


def _load_model(job: _Job) -> None:
    """The checkpoint's model, its parameter count against the cap, and the submission format."""
    from cpx.kernel.device import resolve_device

    run, request = job.run, job.request
    job.device = resolve_device(request.device)
    job.model = run.load_model(request.checkpoint, "cpu", job.host)
    job.format = create_format(job.competition, job.host)
    if job.competition.submission.solution:
        model_source(job.model, run.config.model.name)  # fail before minutes of prediction
    job.params = count_params(job.model)
    too_many = job.competition.check_params(job.params)
    if too_many:
        if not request.allow_rule_break:
            raise RuleViolation(f"{too_many} (run {run.id}); --allow-rule-break packages it anyway")
        job.rule_breaks.append(too_many)


def _find_test_images(job: _Job) -> None:
    job.test_dir = _resolve_test_dir(job.run, job.request)
    job.test_images = list_test_images(job.test_dir, job.competition)
    job.test_sizes = {job.test_images[stem].name: size for stem, size in image_sizes(job.test_images).items()}
    clashes = duplicate_keys(job.format, sorted(job.test_sizes))
    if clashes:
        a, b = clashes[0]
        raise DataError(f"{job.test_dir}: {a} and {b} would both be stored as {job.format.key(a)!r} in "
                        f"{job.format.describe()}; rename one")


def _measure_validation(job: _Job) -> None:
    """The validation score of exactly what is packaged (checkpoint, TTA, calibration,
    post-processing, tiles): the ledger's when recorded, else measured now (and recorded), so
    the zip's name, the manifest and the leaderboard's gap all speak of this prediction."""
    from cpx.eval.validate import VAL_LIST, validate_run

    request, run = job.request, job.run
    if not run.val_names or run.data_root is None or not run.data_root.is_dir():
        job.val_score = _carried_score(run, request.checkpoint)
        return
    calibrated = request.calibration and run.folder.read_calibration() is not None
    post = ",".join(request.post) or None
    with Ledger(job.workspace.ledger_path) as ledger:
        rows = [v for v in ledger.list_validations(run.id) if v.get("data") == VAL_LIST
                and v.get("checkpoint") == request.checkpoint and v.get("tta") == (",".join(job.tta) or "none")
                and bool(v.get("calibrated")) == calibrated and (v.get("post") or None) == post
                and request.tile is None and v.get("score") is not None]
    if rows:
        job.validation = rows[-1]
    else:
        progress = job.progress
        evaluation = validate_run(run.id, job.workspace, job.host, checkpoint=request.checkpoint, tta=job.tta,
                                  device=request.device, calibration=request.calibration, post=request.post or None,
                                  tile=request.tile, record=True, allow_changed_data=request.allow_changed_data,
                                  progress=(lambda d, t: progress("validate", d, t)) if progress else None)
        job.validation = {"id": evaluation.validation_id, "score": evaluation.score, "measured_now": True}
    job.val_score = float(job.validation["score"])
    job.final = job.workspace.submissions_dir / zip_name(job.name, job.competition.metric.name, job.val_score)


def _chunks(sizes: dict[str, Size], batch_size: int) -> list[list[str]]:
    """Image names in (size, name) order, cut into batches of one size: the order and batches
    of :func:`cpx.eval.predict_folder.predict_folder`, which solution/run.py repeats."""
    chunks: list[list[str]] = []
    for name in sorted(sizes, key=lambda n: (sizes[n], n)):
        if chunks and len(chunks[-1]) < batch_size and sizes[chunks[-1][-1]] == sizes[name]:
            chunks[-1].append(name)
        else:
            chunks.append([name])
    return chunks


def _predict_masks(job: _Job, stage: Path) -> None:
    """A prediction of every test image, written into ``stage`` by the competition's format."""
    from cpx.data.images import read_image
    from cpx.eval.predict import predictor_for_run

    if job.final is None:
        job.final = job.workspace.submissions_dir / zip_name(job.name, job.competition.metric.name, job.val_score)
    predictor = predictor_for_run(job.run.id, job.workspace, job.host, checkpoint=job.request.checkpoint,
                                  tta=job.tta, device=str(job.device), precision="fp32",
                                  calibration=job.request.calibration, post=job.request.post, tile=job.request.tile)
    # (recipe hook) run.py must repeat the offsets and every post step: fail before predicting
    job.logit_offsets = None if predictor.logit_offsets is None else predictor.logit_offsets.tolist()
    job.post = predictor.post
    if job.competition.submission.solution:
        postprocess_sources(job.post)
    if job.request.batch_size < 1:
        raise SubmissionError(f"--batch-size must be at least 1, not {job.request.batch_size}")
    paths = {p.name: p for p in job.test_images.values()}
    comp = job.competition
    start, done = time.perf_counter(), 0
    with job.format.writer(stage) as writer:
        for chunk in _chunks(job.test_sizes, job.request.batch_size):
            images = []
            for name in chunk:
                arr, _ = _read(read_image, paths[name], comp)
                images.append(torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))))
            for name, mask in zip(chunk, predictor.predict(images)):
                writer.add(name, mask.numpy())
            done += len(chunk)
            if job.progress:
                job.progress("predict", done, len(paths))
    job.predict_seconds = time.perf_counter() - start


def _read(reader, path: Path, comp: Competition):
    from cpx.data.images import BadFile

    try:
        return reader(path, comp.channels, comp.pixel_max)
    except BadFile as bad:
        raise bad.error() from None


def _write_solution(job: _Job, stage: Path) -> None:
    solution = job.competition.submission.solution
    if solution:
        # the predictor runs every model channels-last, and so must run.py to match it
        export_solution(job.model, stage / solution.folder, job.competition, image_size=job.run.image_size,
                        tta=job.tta, scales=DEFAULT_SCALES, channels_last=True,
                        model_name=job.run.config.model.name, logit_offsets=job.logit_offsets,
                        postprocess=job.post, batch_size=job.request.batch_size, tile=job.request.tile)


def _check_stage(job: _Job, stage: Path) -> None:
    """The zip rules on the staged folder, before anything is zipped."""
    blocking = job.blocking(check_folder(stage, job.competition, job.format, job.test_sizes))
    if blocking:
        raise refusal("the staged submission failed its check", blocking)


def _write_manifest(job: _Job, stage: Path) -> None:
    run = job.run
    manifest = {
        "name": job.name,
        "run_id": run.id,
        "run_name": run.row.get("name"),
        "competition": job.competition.name,
        "recipe": run.config.recipe,
        "model": run.config.model.name,
        "config": run.config.model_dump(mode="json"),
        "checkpoint": job.request.checkpoint,
        "val_score": job.val_score,
        "metric": job.metric_label,
        "validation": job.validation,
        "format": job.format.describe(),
        "calibrated": job.logit_offsets is not None,
        "post": [step.name for step in job.post],
        "tile": job.request.tile,
        "params": job.params,
        "max_params": job.competition.max_params,
        "tta": list(job.tta),
        "image_size": run.image_size,
        "precision": "fp32",
        "test_dir": str(job.test_dir.resolve()),
        "test_images": len(job.test_images),
        "cpx_version": __version__,
        "torch_version": torch.__version__,
        "created_at": utc_now(),
        "rule_breaks": job.rule_breaks,
        "files": {p.relative_to(stage).as_posix(): sha256_file(p)
                  for p in sorted(stage.rglob("*")) if p.is_file()},
    }
    (stage / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")


def _zip_folder(src: Path, dest: Path) -> None:
    """Zip every file under ``src`` (sorted, fixed timestamps) into the new file ``dest``."""
    files = sorted(p for p in src.rglob("*") if p.is_file())
    with zipfile.ZipFile(dest, "x", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for path in files:
            info = zipfile.ZipInfo(path.relative_to(src).as_posix(), date_time=_ZIP_TIME)
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            with open(path, "rb") as f, zf.open(info, "w") as out:
                shutil.copyfileobj(f, out, 1 << 20)


def _check_zip(job: _Job, partial: Path) -> CheckReport:
    """The zip reopened and checked as a scorer would see it."""
    report = check_zip(partial, job.competition, job.format, test_sizes=job.test_sizes)
    report.path = str(job.final)
    report.test_dir = str(job.test_dir)
    blocking = job.blocking(report)
    if blocking:
        raise refusal(f"{job.final.name} failed its check", blocking)
    return report


def _prove_solution(job: _Job, partial: Path, scratch: Path) -> tuple[int, Optional[float], Optional[bool], float]:
    """Run the zip's own ``solution/run.py`` on every test image, in a fresh interpreter from a
    folder extracted from the zip, and compare each mask with the packaged prediction (decoded
    by the format); any difference fails the package. Returns (images, share of equal pixels,
    exact, seconds)."""
    from cpx.submit.zipentries import ZipSource

    sol = job.competition.submission.solution
    if not sol:
        return 0, None, None, 0.0
    root, inputs, outputs = scratch / "solution-check", scratch / "solution-input", scratch / "solution-output"
    inputs.mkdir(parents=True)
    for path in job.test_images.values():
        shutil.copy2(path, inputs / path.name)
    with zipfile.ZipFile(partial) as zf:
        # entries were checked above: relative, no '..', no links
        zf.extractall(root, [n for n in zf.namelist() if n.startswith(sol.folder + "/")])
        packaged = job.format.read(ZipSource(zf, {n: n for n in zf.namelist() if not n.endswith("/")}),
                                   CheckReport(path=str(partial), competition=job.competition.name))
    progress, total = job.progress, len(job.test_images)
    if progress:
        progress("solution", 0, total)
    seconds = run_solution(root / sol.folder, inputs, outputs, runner=sol.runner,
                           weights=root / sol.folder / sol.weights_file, device=job.device.type)
    if progress:
        progress("solution", total, total)
    equal = pixels = 0
    differ: list[tuple[str, float]] = []
    for name in sorted(job.test_sizes):
        theirs = packaged[job.format.key(name)]
        out = outputs / job.competition.layout.mask_name(name)
        if not out.is_file():
            raise SubmissionError(f"solution/{sol.runner} wrote no mask for {name}")
        try:
            mine = read_mask(out, job.competition)
        except DataError as exc:
            raise SubmissionError(f"solution/{sol.runner} wrote a mask cpx cannot read: {exc}") from None
        if mine.shape != theirs.shape:
            raise SubmissionError(f"solution/{sol.runner} wrote a {mine.shape[1]}x{mine.shape[0]} mask for "
                                  f"{name}; the packaged one is {theirs.shape[1]}x{theirs.shape[0]}")
        same = int((mine == theirs).sum())
        equal, pixels = equal + same, pixels + mine.size
        if same != mine.size:
            differ.append((name, same / mine.size))
    if differ:
        name, share = differ[0]
        raise SubmissionError(
            f"solution/{sol.runner} does not reproduce the packaged masks: {len(differ)} of {total} differ "
            f"(first {name}: {share:.4%} of pixels agree); the zip was not written")
    return total, (equal / pixels if pixels else 1.0), True, seconds


def _publish(partial: Path, final: Path) -> None:
    """Move the checked zip into place, never over an existing file."""
    try:
        os.link(partial, final)
    except FileExistsError:
        raise SubmissionError(f"{final} already exists; choose another --name") from None
    except OSError:
        # no hard links here (some network or FAT file systems): check, then rename
        if final.exists():
            raise SubmissionError(f"{final} already exists; choose another --name") from None
        os.replace(partial, final)


def _record(job: _Job) -> dict:
    """The submission's ledger row; the zip is removed again if recording fails."""
    final = job.final
    try:
        with Ledger(job.workspace.ledger_path) as ledger:
            return ledger.add_submission(
                job.name, run_id=job.run.id, zip_path=str(final), zip_sha256=sha256_file(final),
                val_score=job.val_score, tta=",".join(job.tta) or "none", checkpoint=job.request.checkpoint,
                size_bytes=final.stat().st_size, note="; ".join(job.rule_breaks) or None)
    except BaseException:
        final.unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------------------------
# Helpers of the steps


def _name_taken(name: str, workspace: Workspace, ledger: Ledger) -> Optional[str]:
    try:
        row = ledger.get_submission(name)
    except SubmissionError:
        row = None
    if row is not None:
        return f"a submission named '{name}' is already recorded ({row.get('zip_path') or 'no zip'})"
    pattern = re.compile(rf"^submission-{re.escape(name)}(_[a-z0-9.-]*?-?\d+\.\d+)?\.zip$")
    folder = workspace.submissions_dir
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if pattern.match(path.name):
                return f"{path} already exists; choose another --name"
    return None


def _carried_score(run: RunHandle, checkpoint: str) -> Optional[float]:
    """The score a run without validation images carries (a refit's parent's), for ``best``."""
    best = run.row.get("best_val_score")
    return None if checkpoint != "best" or best is None else float(best)


def _resolve_test_dir(run: RunHandle, request: PackageRequest) -> Path:
    if request.test_dir:
        return Path(request.test_dir).expanduser()
    root = run.data_root
    if root is None:
        raise DataError(f"run {run.id} trained on synthetic data, so it has no test images; "
                        f"give --test DIR")
    # the test images beside the labelled data the run trained on, not another folder of that name
    root = run.checked_data_root(allow_changed=request.allow_changed_data, hint="give --test DIR")
    return run.competition.data_path(root, "test_images")


__all__ = ["PackageRequest", "PackageResult", "package", "zip_name"]
