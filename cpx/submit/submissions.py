"""Submissions after packaging: scores read off the leaderboard, zips made by hand,
uploads to Codabench, the phase's submission budget and the final pick.

A submission *counts* against the phase's limit once it has been uploaded or scored in
that phase, unless Codabench failed or cancelled it (failed submissions do not count).
The *final* submission is the one marked with ``--final``, else the latest that counts.
Scores live in the ledger's ``scores`` table, one per submission, phase and column; the
"test F" of a submission is its main column (:func:`main_score`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from cpx.data.competition import Competition
from cpx.kernel.errors import CodabenchError, CpxError, RunError, SubmissionError
from cpx.kernel.text import utc_now
from cpx.runs.ledger import Ledger
from cpx.kernel.files import sha256_file
from cpx.runs.folder import RunFolder
from cpx.submit.zipcheck import CheckReport, check_submission

DEFAULT_PHASE = "test"
NOT_COUNTED = ("failed", "cancelled")

Progress = Callable[[str], None]


# ---------------------------------------------------------------- scores


def main_score(scores: list[dict], phase: str = DEFAULT_PHASE, metric: str = "fscore") -> Optional[dict]:
    """The score row that stands for a submission's result in ``phase``.

    A hand-recorded score sits in column ``score``; Codabench reports its own column keys.
    Preference: ``score``, then the column named like the competition's metric, then any
    column holding the metric's name; the latest recorded wins within the chosen kind.
    """
    rows = [s for s in scores if s.get("phase") == phase and s.get("score") is not None]
    if not rows:
        return None
    metric = (metric or "").casefold()
    for pick in (lambda s: s["column_key"] == "score",
                 lambda s: metric and s["column_key"].casefold() == metric,
                 lambda s: metric and metric in s["column_key"].casefold().replace("_", ""),
                 lambda s: True):
        chosen = [s for s in rows if pick(s)]
        if chosen:
            return max(chosen, key=lambda s: (s.get("recorded_at") or "", s.get("id") or 0))
    return None


def parse_score(score: Any) -> float:
    """A leaderboard score given on the command line, checked to be a number in 0..1."""
    try:
        value = float(score)
    except (TypeError, ValueError):
        raise SubmissionError(f"--record-score: {score!r} is not a number") from None
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise SubmissionError(f"--record-score: {score!r} is outside 0..1 (scores are F values, e.g. 0.73)")
    return value


@dataclass
class Recorded:
    submission: dict
    score: dict
    replaced: Optional[float] = None
    warnings: list[str] = field(default_factory=list)


def record_score(ledger: Ledger, name: str, score: float, *, phase: str = DEFAULT_PHASE,
                 replace: bool = False, note: Optional[str] = None, final: bool = False,
                 metric: str = "fscore", competition: Optional[Competition] = None) -> Recorded:
    """Record the leaderboard score of submission ``name`` read off by hand.

    A second score for the same phase is refused unless ``replace`` (then it overwrites
    the submission's main score, whatever column it was recorded under).
    """
    value = parse_score(score)
    sub = ledger.get_submission(name)
    existing = main_score(ledger.scores_for(name), phase, metric)
    if existing is not None and not replace:
        raise SubmissionError(
            f"'{name}' already has a {phase} score {existing['score']:.4f} ({existing['source']}, "
            f"{existing['recorded_at']}); use --replace to overwrite it")
    before = used_in_phase(ledger, phase)
    column = existing["column_key"] if existing else "score"
    row = ledger.record_score(name, value, phase=phase, column_key=column, source="manual", replace=replace)
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


# ---------------------------------------------------------------- zips made elsewhere




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
    submission: dict
    check: CheckReport
    notes: list[str] = field(default_factory=list)


def register_submission(ledger: Ledger, name: str, zip_path: Path, *, workspace, host,
                        competition: Optional[str] = None, run: Optional[str] = None,
                        val_score: Optional[float] = None, test_dir: Optional[Path] = None,
                        note: Optional[str] = None) -> Registered:
    """Record a zip made before cpx (or by hand) as submission ``name``, after the same
    verification as ``cpx package --check``; any problem refuses it. The zip stays where
    it is: the ledger keeps its absolute path and sha256."""
    zip_path = Path(zip_path).expanduser()
    if not zip_path.is_file():
        raise SubmissionError(f"--zip {zip_path}: no such file")
    try:
        ledger.get_submission(name)
    except SubmissionError:
        pass
    else:
        raise SubmissionError(f"a submission named '{name}' already exists; choose another name")
    run_row = ledger.get_run(run) if run else None
    if val_score is not None:
        try:
            val_score = float(val_score)
        except (TypeError, ValueError):
            raise SubmissionError(f"--val-score: {val_score!r} is not a number") from None
        if math.isnan(val_score) or not 0.0 <= val_score <= 1.0:
            raise SubmissionError(f"--val-score: {val_score!r} is outside 0..1")
    if test_dir is not None and not Path(test_dir).is_dir():
        raise SubmissionError(f"--test {test_dir}: no such folder")
    competition = competition or (run_row or {}).get("competition")
    report = check_submission(zip_path, workspace, host, competition=competition,
                              test_dir=test_dir or run_test_dir(run_row, host))
    if report.problems:
        problems = [str(p) for p in report.problems]
        raise SubmissionError("\n".join(
            [f"{zip_path}: {len(problems)} problem{'s' if len(problems) != 1 else ''}; not registered"]
            + [f"  {p}" for p in problems]))
    if val_score is None and run_row is not None:
        val_score = run_row.get("best_val_f")
    row = ledger.add_submission(
        name, run_id=run_row["id"] if run_row else None, zip_path=str(zip_path.resolve()),
        zip_sha256=sha256_file(zip_path), size_bytes=zip_path.stat().st_size,
        val_score=val_score, note=note, status="registered")
    return Registered(row, report, list(getattr(report, "notes", []) or []))


# ---------------------------------------------------------------- listing


def _counts(sub: dict, scored: bool) -> bool:
    if (sub.get("status") or "").casefold() in NOT_COUNTED:
        return False
    return bool(sub.get("uploaded")) or scored


def used_in_phase(ledger: Ledger, phase: str = DEFAULT_PHASE) -> list[str]:
    """Names of the submissions that count against ``phase``'s limit, oldest first."""
    out = []
    for sub in reversed(ledger.list_submissions(phase)):
        scored = sub.get("latest_score") is not None
        in_phase = scored or (sub.get("phase") or DEFAULT_PHASE) == phase
        if in_phase and _counts(sub, scored):
            out.append(sub["name"])
    return out


@dataclass
class SubmissionRow:
    name: str
    run_id: Optional[str]
    run_name: Optional[str]
    date: str
    val_f: Optional[float]
    test_f: Optional[float]
    gap: Optional[float]
    status: str
    score_source: Optional[str]
    counts: bool
    final: bool
    codabench_id: Optional[str]
    zip_path: Optional[str]
    note: Optional[str]


@dataclass
class SubmissionReport:
    phase: str
    rows: list[SubmissionRow]
    used: int
    limit: Optional[int]
    final: Optional[str]
    final_reason: Optional[str]  # "marked" or "latest"
    only_final_counts: bool
    warnings: list[str] = field(default_factory=list)

    @property
    def left(self) -> Optional[int]:
        return None if self.limit is None else max(0, self.limit - self.used)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["left"] = self.left
        return out


def submission_report(ledger: Ledger, competition: Optional[Competition] = None,
                      phase: str = DEFAULT_PHASE) -> SubmissionReport:
    """Every submission with its val and test F, the phase's budget, and the final pick."""
    metric = competition.metric if competition else "fscore"
    rows: list[SubmissionRow] = []
    for sub in ledger.list_submissions(phase):
        score = main_score(ledger.scores_for(sub["name"]), phase, metric)
        test = score["score"] if score else None
        val = sub.get("val_score")
        if val is None:
            val = sub.get("run_best_val_f")
        in_phase = score is not None or (sub.get("phase") or DEFAULT_PHASE) == phase
        status = sub.get("status") or "packaged"
        if score is not None and status in ("packaged", "registered"):
            status = "scored"
        rows.append(SubmissionRow(
            name=sub["name"], run_id=sub.get("run_id"), run_name=sub.get("run_name"),
            date=(sub.get("uploaded_at") or sub.get("created_at") or "")[:16].replace("T", " "),
            val_f=val, test_f=test, gap=None if test is None or val is None else test - val,
            status=status, score_source=score["source"] if score else None,
            counts=in_phase and _counts(sub, score is not None), final=bool(sub.get("is_final")),
            codabench_id=sub.get("codabench_id"), zip_path=sub.get("zip_path"), note=sub.get("note")))

    counted = [r for r in rows if r.counts]
    marked = [r for r in rows if r.final]
    final, reason = None, None
    if marked:
        final, reason = marked[0].name, "marked"
    elif counted:
        final, reason = counted[0].name, "latest"  # rows are newest first
    for r in rows:
        r.final = r.name == final

    limit = competition.rules.submissions_per_phase if competition else None
    only_final = bool(competition and competition.rules.only_final_counts)
    warnings = []
    if limit is not None and len(counted) > limit:
        warnings.append(f"{len(counted)} submissions count in phase '{phase}', "
                        f"but {competition.name} allows {limit}")
    scored = [r for r in counted if r.test_f is not None]
    if only_final and final is not None and scored:
        best = max(scored, key=lambda r: r.test_f)
        mine = next(r for r in rows if r.name == final)
        if best.name != final and (mine.test_f is None or best.test_f > mine.test_f):
            shown = f"{mine.test_f:.4f}" if mine.test_f is not None else "unscored"
            warnings.append(
                f"only the final submission counts in {competition.name}, and the final one, "
                f"{final} ({shown}), is not your best: {best.name} ({best.test_f:.4f}); "
                f"choose it with `cpx submit {best.name} --final`")
    return SubmissionReport(phase=phase, rows=rows, used=len(counted), limit=limit, final=final,
                            final_reason=reason, only_final_counts=only_final, warnings=warnings)


# ---------------------------------------------------------------- Codabench


def _record_codabench(ledger: Ledger, name: str, result, phase: str, metric: str) -> tuple[dict, list[str]]:
    """Store every column Codabench reported; columns that are not 0..1 scores (a run
    time, say) are skipped and named."""
    recorded, skipped = {}, []
    for key, value in result.scores.items():
        try:
            ledger.record_score(name, value, phase=phase, column_key=key, source="codabench", replace=True)
        except SubmissionError:
            skipped.append(f"column '{key}' = {value} is not a score between 0 and 1; not recorded")
            continue
        recorded[key] = value
    return recorded, skipped


@dataclass
class UploadOutcome:
    submission: dict
    codabench_id: int
    status: str
    phase_id: Optional[int]
    scores: dict = field(default_factory=dict)
    main: Optional[float] = None
    detail: Optional[str] = None
    messages: list[str] = field(default_factory=list)


def upload_submission(ledger: Ledger, name: str, client, competition_id: int, *,
                      phase_id: Optional[int] = None, phase: str = DEFAULT_PHASE, wait: bool = False,
                      timeout: float = 3600, initial_interval: float = 2.0, max_interval: float = 30.0,
                      progress: Optional[Progress] = None, metric: str = "fscore",
                      final: bool = False) -> UploadOutcome:
    """Upload the packaged zip of ``name`` to Codabench and record the upload.

    The Codabench id is written to the ledger as soon as the server has it, before any
    waiting, so a wait that times out leaves a submission that ``cpx codabench sync``
    can complete. With ``wait``, a finished submission's scores are recorded with
    source ``codabench``.
    """
    from cpx.submit import codabench as cb
    sub = ledger.get_submission(name)
    if sub.get("codabench_id") and (sub.get("status") or "").casefold() not in NOT_COUNTED:
        raise SubmissionError(f"'{name}' was already uploaded (Codabench id {sub['codabench_id']}, "
                              f"{sub.get('status') or 'status unknown'}); run `cpx codabench sync` for its score")
    scored = main_score(ledger.scores_for(name), phase, metric)
    if scored is not None:
        raise SubmissionError(f"'{name}' already has a {phase} score ({scored['score']:.4f}, {scored['source']}), "
                              f"so it was submitted already; package it again under a new name to resubmit")
    if not sub.get("zip_path"):
        raise SubmissionError(f"'{name}' has no zip recorded")
    zip_path = Path(sub["zip_path"])
    if not zip_path.is_file():
        raise SubmissionError(f"'{name}': its zip {zip_path} is gone")
    if sub.get("zip_sha256") and sha256_file(zip_path) != sub["zip_sha256"]:
        raise SubmissionError(f"'{name}': {zip_path} changed since it was recorded (sha256 differs); "
                              f"package it again under a new name")

    created = cb.submit_zip(client, zip_path, competition_id, phase_id, wait=False, progress=progress)
    sub = ledger.update_submission(
        name, uploaded=True, uploaded_at=utc_now(), codabench_id=str(created.id), status=created.status,
        codabench_competition=int(competition_id), codabench_phase=created.phase_id, phase=phase,
        status_detail=None)
    if final:
        sub = mark_final(ledger, name)
    outcome = UploadOutcome(sub, created.id, created.status, created.phase_id)
    if not wait:
        return outcome
    try:
        result = client.wait(created.id, timeout, initial_interval=initial_interval,
                             max_interval=max_interval, progress=progress)
    except CodabenchError as exc:
        raise CodabenchError(f"{exc}; `cpx codabench sync --competition {competition_id}` "
                             f"records its score once it is done") from None
    return _apply_result(ledger, name, result, phase, metric, outcome)


def _apply_result(ledger: Ledger, name: str, result, phase: str, metric: str,
                  outcome: Optional[UploadOutcome] = None) -> UploadOutcome:
    sub = ledger.update_submission(name, status=result.status, status_detail=result.detail)
    outcome = outcome or UploadOutcome(sub, result.id, result.status, result.phase_id)
    outcome.submission, outcome.status, outcome.detail = sub, result.status, result.detail
    if result.ok and result.scores:
        outcome.scores, outcome.messages = _record_codabench(ledger, name, result, phase, metric)
        best = main_score(ledger.scores_for(name), phase, metric)
        outcome.main = best["score"] if best else None
    return outcome


@dataclass
class SyncReport:
    phase_id: int
    phase_name: str
    remote: int
    updated: list[tuple[str, str]] = field(default_factory=list)  # (name, new status)
    filled: list[tuple[str, float]] = field(default_factory=list)  # (name, main score)
    unknown: list[dict] = field(default_factory=list)  # on Codabench, not in the ledger
    missing: list[str] = field(default_factory=list)  # uploaded here, not found there
    messages: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def sync_submissions(ledger: Ledger, client, competition_id: int, *, phase_id: Optional[int] = None,
                     phase: str = DEFAULT_PHASE, owner: Optional[str] = None,
                     metric: str = "fscore") -> SyncReport:
    """Match your Codabench submissions to the ledger by Codabench id; update their status
    and fill in the scores of finished ones that have none in ``phase`` yet."""
    from cpx.submit import codabench as cb
    chosen = cb.choose_phase(client.phases(competition_id), phase_id, competition_id)
    remote = client.list_submissions(chosen.id, owner=owner)
    report = SyncReport(chosen.id, chosen.name, len(remote))
    local = {str(s["codabench_id"]): s for s in ledger.list_submissions(phase) if s.get("codabench_id")}
    seen = set()
    for item in remote:
        sub = local.get(str(item.id))
        if sub is None:
            score = next(iter(item.scores.values()), None)
            report.unknown.append({"id": item.id, "status": item.status, "score": score,
                                   "created": item.created_when, "filename": item.filename})
            continue
        seen.add(str(item.id))
        _sync_one(ledger, client, sub, item, phase, metric, report)
    for cid, sub in local.items():
        if cid in seen:
            continue
        if sub.get("codabench_competition") not in (None, int(competition_id)):
            continue
        if sub.get("codabench_phase") not in (None, chosen.id):
            continue
        try:
            item = client.result(int(cid))
        except CodabenchError as exc:
            report.missing.append(sub["name"])
            report.messages.append(f"{sub['name']}: Codabench submission {cid} not found ({exc})")
            continue
        _sync_one(ledger, client, sub, item, phase, metric, report)
    return report


def _sync_one(ledger: Ledger, client, sub: dict, item, phase: str, metric: str, report: SyncReport) -> None:
    name = sub["name"]
    has_score = main_score(ledger.scores_for(name), phase, metric) is not None
    if not has_score and not (item.done and not item.ok):
        # a listing may lag behind and carries no per-task children; the submission's own
        # record is current and folds the children in
        item = client.result(item.id)
    if (sub.get("status") or "") != item.status:
        report.updated.append((name, item.status))
    if item.ok and item.scores and not has_score:
        outcome = _apply_result(ledger, name, item, phase, metric)
        report.messages += [f"{name}: {m}" for m in outcome.messages]
        if outcome.main is not None:
            report.filled.append((name, outcome.main))
    else:
        ledger.update_submission(name, status=item.status, status_detail=item.detail)
