"""Submission records in the ledger: scores read off the leaderboard by hand, the final
pick, and zips made elsewhere registered after the same check as ``cpx package --check``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from cpx.data.competition import Competition
from cpx.kernel.errors import CpxError, RunError, SubmissionError
from cpx.kernel.files import sha256_file
from cpx.kernel.text import format_f
from cpx.runs.folder import RunFolder
from cpx.runs.ledger import Ledger
from cpx.submit.checkreport import CheckReport
from cpx.submit.submissions.budget import used_in_phase
from cpx.submit.submissions.scores import DEFAULT_PHASE, main_score, parse_score


@dataclass
class Recorded:
    """A score recorded by hand: the submission, the score row, the score it replaced, and
    warnings about the phase's limit."""

    submission: dict
    score: dict
    replaced: Optional[float] = None
    warnings: list[str] = field(default_factory=list)


def record_score(ledger: Ledger, name: str, score: float, *, phase: str = DEFAULT_PHASE,
                 replace: bool = False, note: Optional[str] = None, final: bool = False,
                 metric: str = "", competition: Optional[Competition] = None) -> Recorded:
    """Record the leaderboard score of submission ``name`` read off by hand.

    A second score for the same phase is refused unless ``replace`` (then it overwrites
    the submission's main score, whatever column it was recorded under).
    """
    value = parse_score(score, competition)
    sub = ledger.get_submission(name)
    existing = main_score(ledger.scores_for(name), phase, metric)
    if existing is not None and not replace:
        raise SubmissionError(
            f"'{name}' already has a {phase} score {format_f(existing['score'])} ({existing['source']}, "
            f"{existing['recorded_at']}); use --replace to overwrite it")
    before = used_in_phase(ledger, phase)
    column = existing["column_key"] if existing else "score"
    row = ledger.record_score(name, value, phase=phase, column_key=column, source="manual", replace=replace,
                              scale=float(competition.metric.scale) if competition else 1.0)
    fields: dict[str, Any] = {}
    if not sub.get("phase"):
        fields["phase"] = phase
    if note is not None:
        fields["note"] = note
    if fields:
        sub = ledger.update_submission(name, **fields)
    if final:
        sub = mark_final(ledger, name)
    warnings = []
    limit = competition.rules.submissions_per_phase if competition else None
    if limit and existing is None and name not in before and len(before) + 1 > limit:
        warnings.append(f"this is submission {len(before) + 1} in phase '{phase}', "
                        f"but {competition.name} allows {limit}")
    return Recorded(sub, row, existing["score"] if existing else None, warnings)


def mark_final(ledger: Ledger, name: str) -> dict:
    """Make ``name`` the final submission (and no other)."""
    ledger.get_submission(name)
    for other in ledger.list_submissions():
        if other["is_final"] and other["name"] != name:
            ledger.update_submission(other["name"], is_final=False)
    return ledger.update_submission(name, is_final=True)



def run_test_dir(run: Optional[dict], host) -> Optional[Path]:
    """The test images next to the data a run trained on, when that folder still exists."""
    if not run or not run.get("run_dir") or not run.get("competition"):
        return None
    try:
        recorded = RunFolder(run["run_dir"]).read_data_info()
    except RunError:
        return None
    if not recorded or recorded.get("synthetic") or not isinstance(recorded.get("path"), str):
        return None
    try:
        folder = host.competition(run["competition"]).data_path(Path(recorded["path"]), "test_images")
    except CpxError:
        return None
    return folder if folder.is_dir() else None


@dataclass
class Registered:
    """A zip registered from elsewhere: its ledger row and the check it passed (with notes)."""

    submission: dict
    check: CheckReport
    notes: list[str] = field(default_factory=list)


def register_submission(ledger: Ledger, name: str, zip_path: Path, *, workspace, host,
                        competition: Optional[str] = None, run: Optional[str] = None,
                        val_score: Optional[float] = None, test_dir: Optional[Path] = None,
                        note: Optional[str] = None, score: Optional[str] = None) -> Registered:
    """Record a zip made before cpx (or by hand) as submission ``name``, after the same
    verification as ``cpx package --check``; any problem refuses it. The zip stays where
    it is: the ledger keeps its absolute path and sha256. ``val_score`` and ``score`` (a
    leaderboard score about to be recorded for it) are checked against the scale of the
    metric of the competition the zip was checked for, before anything is recorded.

    :raises SubmissionError: no such zip, a name taken, the same zip (same sha256) already
        recorded under another name (naming it), a ``val_score`` or ``score`` that is not a
        number on the metric's scale, or problems in the zip (each listed; nothing is
        recorded).
    """
    zip_path = Path(zip_path).expanduser()
    if not zip_path.is_file():
        raise SubmissionError(f"--zip {zip_path}: no such file")
    try:
        ledger.get_submission(name)
    except SubmissionError:
        pass
    else:
        raise SubmissionError(f"a submission named '{name}' already exists; choose another name")
    digest = sha256_file(zip_path)
    same = [s for s in ledger.list_submissions() if s.get("zip_sha256") == digest]
    if same:
        first = same[-1]  # the oldest
        raise SubmissionError(f"--zip {zip_path}: the same zip (sha256 {digest[:12]}…) is already recorded as "
                              f"'{first['name']}' ({first.get('zip_path') or 'no path'}); one zip is one "
                              f"submission, use that name")
    run_row = ledger.get_run(run) if run else None
    for value, option in ((val_score, "--val-score"), (score, "--record-score")):
        if value is not None:
            parse_score(value, None, option)  # a number, before the zip is read
    if test_dir is not None and not Path(test_dir).is_dir():
        raise SubmissionError(f"--test {test_dir}: no such folder")
    competition = competition or (run_row or {}).get("competition")
    # the check loads the weights with torch: imported here, so listing submissions does not wait for it
    from cpx.submit.zipcheck import check_submission

    report = check_submission(zip_path, workspace, host, competition=competition,
                              test_dir=test_dir or run_test_dir(run_row, host))
    if report.problems:
        problems = [str(p) for p in report.problems]
        raise SubmissionError("\n".join(
            [f"{zip_path}: {len(problems)} problem{'s' if len(problems) != 1 else ''}; not registered"]
            + [f"  {p}" for p in problems]))
    comp = host.competition(report.competition)
    if val_score is not None:
        val_score = parse_score(val_score, comp, "--val-score")
    if score is not None:
        parse_score(score, comp)
    if val_score is None and run_row is not None:
        val_score = run_row.get("best_val_score")
    row = ledger.add_submission(
        name, run_id=run_row["id"] if run_row else None, zip_path=str(zip_path.resolve()),
        zip_sha256=digest, size_bytes=zip_path.stat().st_size,
        val_score=val_score, note=note, status="registered")
    return Registered(row, report, list(getattr(report, "notes", []) or []))
