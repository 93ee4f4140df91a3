"""Scoring with the organisers' own program, beside cpx's metric.

``validate --official``, ``score --official`` and the check ``package`` runs lay out what the
Codabench worker would give the program (:mod:`cpx.bundle.program`): ``input/ref`` holds the
validation references and ``input/res`` the predictions, both written by the competition's
submission format (the writer that packs a zip serves for the references too, so the program
reads them as it reads the organisers' own), and for ``package`` the zip's other entries
(manifest, solution) as well. The program's ranked column is compared with cpx's own metric
on the same masks: a difference above :data:`TOLERANCE` is a warning, most often a profile
that does not match the organisers' metric (scale, classes, format options).
"""

from __future__ import annotations

import os
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from cpx.bundle.program import Layout, ProgramRun, run_program
from cpx.data import read_mask
from cpx.data.competition import DEFAULT_TIME_LIMIT, Competition, Phase
from cpx.data.masks import IGNORE
from cpx.eval.validate import Evaluation, FolderScore, Labelled, record_validation, score_folders, validate_run
from cpx.kernel.errors import BundleError, DataError, LedgerBusy, SubmissionError
from cpx.kernel.files import check_writable
from cpx.kernel.manager import PluginHost
from cpx.kernel.workspace import Workspace
from cpx.runs.folder import run_folder
from cpx.runs.ledger import Ledger
from cpx.submit.formats import FormatWriter, create_format

TOLERANCE = 1e-4


@dataclass
class Official:
    """The organisers' program's ranked ``column`` and its ``value``, beside cpx's own
    ``cpx_score`` (``metric``) on the same masks; every score it wrote, where its input and
    output are kept, and the phase whose program and time limit were used."""

    column: str
    value: float
    cpx_score: float
    metric: str
    greater_is_better: bool
    scores: dict[str, float]
    folder: str
    seconds: float
    program: str
    phase: Optional[str] = None
    scores_file: str = "scores.json"
    notes: list[str] = field(default_factory=list)

    @property
    def difference(self) -> float:
        return self.value - self.cpx_score

    @property
    def agrees(self) -> bool:
        return abs(self.difference) <= TOLERANCE

    def warning(self) -> Optional[str]:
        """Said when the two scores differ by more than :data:`TOLERANCE`."""
        if self.agrees:
            return None
        return (f"the organisers' program gives {self.column} {self.value:.6f} but cpx's {self.metric} is "
                f"{self.cpx_score:.6f} (difference {self.difference:+.6f}, more than {TOLERANCE:g}): check the "
                "profile's metric (its options and scale) and submission format against the competition's rules")

    def to_dict(self) -> dict:
        return {"column": self.column, "value": self.value, "cpx_score": self.cpx_score, "metric": self.metric,
                "difference": self.difference, "agrees": self.agrees, "tolerance": TOLERANCE,
                "greater_is_better": self.greater_is_better, "scores": dict(self.scores), "folder": self.folder,
                "seconds": round(self.seconds, 3), "program": self.program, "phase": self.phase,
                "scores_file": self.scores_file, "notes": list(self.notes), "warning": self.warning()}


def scoring_setup(competition: Competition) -> tuple[Path, Optional[Phase]]:
    """The competition's scoring program folder and the phase it belongs to (the current one).

    :raises BundleError: the profile names no scoring program, or its folder is gone.
    """
    phase = competition.current_phase()
    program = competition.scoring_program(phase)
    if program is None:
        raise BundleError(f"competition {competition.name} names no scoring program (phases[].scoring_program); "
                          "`cpx init DIR --bundle PATH` copies the organisers' into a workspace")
    if not program.is_dir():
        raise BundleError(f"competition {competition.name}: its scoring program {program} is not a folder")
    if phase is not None and phase.scoring_program is None:
        phase = next((p for p in competition.phases if p.scoring_program), phase)
    return program, phase


def _metric_label(scores) -> str:
    return scores.metric + (f" x{scores.scale:g}" if scores.scale != 1 else "")


class References:
    """Writers of the references (``input/ref``) and, unless ``res`` is None, the predictions
    (``input/res``) through the competition's submission format, fed one image at a time."""

    def __init__(self, competition: Competition, host: PluginHost, ref: Path, res: Optional[Path]):
        self.competition = competition
        fmt = create_format(competition, host)
        self.res: Optional[FormatWriter] = fmt.writer(res) if res is not None else None
        self.ref: FormatWriter = fmt.writer(ref)
        self.ignored = 0
        self.count = 0

    def name_of(self, item: Labelled) -> str:
        return item.file or f"{item.name}{self.competition.layout.image_suffixes[0]}"

    def add(self, item: Labelled, mask) -> None:
        name = self.name_of(item)
        if self.res is not None:
            self.res.add(name, np.asarray(mask.detach().cpu().numpy() if hasattr(mask, "detach") else mask,
                                          dtype=np.uint8))
        self.add_truth(name, np.asarray(item.mask.numpy() if hasattr(item.mask, "numpy") else item.mask,
                                        dtype=np.uint8))

    def add_truth(self, name: str, truth: np.ndarray) -> None:
        self.count += 1
        try:
            self.ref.add(name, truth)
        except DataError:
            if not (truth == IGNORE).any():
                raise
            # a format that cannot mark ignored pixels (run lengths of one class): background there
            self.ref.add(name, np.where(truth == IGNORE, 0, truth).astype(np.uint8))
            self.ignored += 1

    def close(self) -> list[str]:
        notes = []
        if self.res is not None:
            self.res.close()
        self.ref.close()
        if self.ignored:
            notes.append(f"{self.ignored} reference mask(s) hold ignored pixels the submission format cannot mark; "
                         "they are background in input/ref")
        return notes


def _official(run: ProgramRun, cpx_score: float, metric: str, competition: Competition, program: Path,
              phase: Optional[Phase], notes: list[str]) -> Official:
    board = competition.leaderboard
    return Official(column=run.column, value=run.value, cpx_score=cpx_score, metric=metric,
                    greater_is_better=board.greater_is_better if board else True, scores=run.scores,
                    folder=str(run.folder), seconds=run.seconds, program=str(program),
                    phase=phase.name if phase else None, scores_file=run.scores_file, notes=notes)


def _run(program: Path, layout: Layout, competition: Competition, phase: Optional[Phase],
         python: Optional[str]) -> ProgramRun:
    limit = phase.time_limit if phase is not None else DEFAULT_TIME_LIMIT
    column = competition.leaderboard.column if competition.leaderboard else None
    return run_program(program, layout, time_limit=limit, column=column, python=python)


def validate_official(ref: str, workspace: Workspace, host: PluginHost, *, python: Optional[str] = None,
                      record: bool = True, progress=None, **options) -> tuple[Evaluation, Official]:
    """:func:`cpx.eval.validate.validate_run` with the organisers' scoring program run on the
    same predictions (see the module docstring); the layout, the program's output and its logs
    stay in the run folder (``official/<time>/``), and with ``record`` the validation is
    recorded with the program's score (``official_score``, ``official_column``). ``options``
    are ``validate_run``'s (checkpoint, data, tta, ...).

    :raises BundleError: no scoring program, or one that fails (exit code, time limit, no or
        malformed scores), in one line; nothing is recorded then.
    """
    if record:
        check_writable(workspace.ledger_path)
    with Ledger(workspace.ledger_path) as ledger:
        row = ledger.get_run(ref)
    competition = host.competition(row["competition"]) if row.get("competition") else None
    if competition is None:
        raise BundleError(f"run {row['id']} names no competition, so no scoring program is known")
    program, phase = scoring_setup(competition)
    layout = Layout(run_folder(row, workspace.runs_dir).new_official_dir()).make()
    writers = References(competition, host, layout.ref, layout.res)
    try:
        evaluation = validate_run(row["id"], workspace, host, record=False, on_mask=writers.add, progress=progress,
                                  **options)
        notes = writers.close()
    except BaseException:
        shutil.rmtree(layout.root, ignore_errors=True)  # nothing was run: nothing worth keeping
        raise
    result = _run(program, layout, competition, phase, python)
    official = _official(result, evaluation.score, _metric_label(evaluation.scores), competition, program, phase, notes)
    if record:
        try:
            with Ledger(workspace.ledger_path) as ledger:
                saved = record_validation(ledger, row["id"], evaluation, checkpoint=evaluation.checkpoint,
                                          data=evaluation.data, official_score=official.value,
                                          official_column=official.column, official_dir=official.folder)
            evaluation.validation_id = saved["id"]
        except LedgerBusy as exc:
            evaluation.warnings.append(f"not recorded: {exc}; validate again to record it")
    return evaluation, official


def score_official(pred_dir: os.PathLike, gt_dir: os.PathLike, competition: Competition, host: PluginHost,
                   workspace: Workspace, *, python: Optional[str] = None) -> tuple[FolderScore, Optional[Official]]:
    """``cpx score PRED GT --official``: cpx's score of the mask folders and the organisers'
    program's on the same masks written in the submission format (each mask named as an image
    of the first image suffix, ``<stem>.jpg``); the layout stays in
    ``experiments/official/<time>/``. No official score when cpx's own check found problems.

    :raises BundleError: no scoring program, or one that fails.
    """
    from cpx.eval.metrics import create_metric
    from cpx.runs.folder import RunFolder

    program, phase = scoring_setup(competition)
    report = score_folders(pred_dir, gt_dir, competition, create_metric(competition, host))
    if not report.ok:
        return report, None
    layout = Layout(RunFolder(workspace.experiments_dir).new_official_dir()).make()
    writers = References(competition, host, layout.ref, layout.res)
    suffix = competition.layout.mask_suffix.lower()
    preds = {p.stem: p for p in Path(pred_dir).iterdir() if p.is_file() and p.suffix.lower() == suffix}
    truths = {p.stem: p for p in Path(gt_dir).iterdir() if p.is_file() and p.suffix.lower() == suffix}
    image_suffix = competition.layout.image_suffixes[0]
    try:
        for stem in report.names:
            name = f"{stem}{image_suffix}"
            writers.res.add(name, read_mask(preds[stem], competition))
            writers.add_truth(name, read_mask(truths[stem], competition))
        notes = writers.close()
    except BaseException:
        shutil.rmtree(layout.root, ignore_errors=True)
        raise
    result = _run(program, layout, competition, phase, python)
    return report, _official(result, report.scores.score, _metric_label(report.scores), competition, program,
                             phase, notes)


def package_check(workspace: Workspace, host: PluginHost, *, python: Optional[str] = None,
                  progress=None) -> Callable:
    """The check ``cpx package`` runs before publishing a zip, as a callback
    ``check(request, run_id, zip_path) -> dict | None`` for :func:`cpx.submit.package.package`:
    when the competition's profile names a scoring program, it is run once on the zip's
    entries, its predictions replaced by those of the run's validation images (predicted as the
    package predicts: checkpoint, TTA, calibration, post-processing, tiles), against their
    references; a program that fails stops the package. None when there is no program."""

    def check(request, run_id: str, zip_path: Path) -> Optional[dict]:
        from cpx.eval.predict import parse_tta

        with Ledger(workspace.ledger_path) as ledger:
            row = ledger.get_run(run_id)
        competition = host.competition(row["competition"])
        if competition.scoring_program() is None:
            return None
        folder = run_folder(row, workspace.runs_dir)
        if not folder.read_val_names():
            return {"skipped": f"run {run_id} has no validation images to run the organisers' program on"}
        program, phase = scoring_setup(competition)
        layout = Layout(folder.new_official_dir()).make()
        fmt = create_format(competition, host)
        tops = {e.rstrip("/") for e in fmt.entries()}
        with zipfile.ZipFile(zip_path) as zf:  # cpx's own zip, checked already
            others = [n for n in zf.namelist() if not n.endswith("/") and n.split("/", 1)[0] not in tops]
            zf.extractall(layout.res, others)
        writers = References(competition, host, layout.ref, layout.res)
        try:
            evaluation = validate_run(run_id, workspace, host, checkpoint=request.checkpoint,
                                      tta=parse_tta(request.tta), device=request.device,
                                      calibration=request.calibration, post=request.post or None, tile=request.tile,
                                      batch_size=request.batch_size, record=False, on_mask=writers.add,
                                      progress=(lambda d, t: progress("official", d, t)) if progress else None)
            notes = writers.close()
        except BaseException:
            shutil.rmtree(layout.root, ignore_errors=True)
            raise
        try:
            result = _run(program, layout, competition, phase, python)
        except BundleError as exc:
            raise SubmissionError(f"not packaged: the organisers' scoring program failed on this zip's layout with "
                                  f"the validation images' predictions: {exc}") from None
        official = _official(result, evaluation.score, _metric_label(evaluation.scores), competition, program, phase,
                             notes + [f"run on the zip's entries with the predictions of the {len(evaluation.names)} "
                                      "validation images, against their references"])
        return official.to_dict()

    return check
