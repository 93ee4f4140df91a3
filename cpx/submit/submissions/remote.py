"""Submissions on Codabench: uploading a packaged zip and recording the upload, putting it on
the public leaderboard, reading that leaderboard, and syncing the ledger with the server's
submissions (status and scores, matched by Codabench id).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

from cpx.kernel.errors import CodabenchError, SubmissionError
from cpx.kernel.files import sha256_file
from cpx.kernel.text import format_f, utc_now
from cpx.runs.ledger import Ledger
from cpx.submit.codabench import (
    CodabenchClient,
    CodabenchConnectionError,
    CodabenchHTTPError,
    Leaderboard,
    Phase,
    SubmissionResult,
    choose_phase,
    stored_identity,
    submit_zip,
    whoami,
)
from cpx.submit.submissions.records import mark_final
from cpx.submit.submissions.scores import DEFAULT_PHASE, main_score

Progress = Callable[[str], None]
# statuses after which the same zip may be uploaded again: it was never scored
RESUBMITTABLE = ("failed", "cancelled")


def _record_codabench(ledger: Ledger, name: str, result, phase: str, scale: float) -> tuple[dict, list[str]]:
    """Store every column Codabench reported; columns that are not scores on the metric's
    scale, 0..``scale`` (a run time, say), are skipped and named."""
    recorded, skipped = {}, []
    for key, value in result.scores.items():
        try:
            ledger.record_score(name, value, phase=phase, column_key=key, source="codabench", replace=True,
                                scale=scale)
        except SubmissionError:
            skipped.append(f"column '{key}' = {value} is not a score between 0 and {scale:g}; not recorded")
            continue
        recorded[key] = value
    return recorded, skipped


@dataclass
class UploadOutcome:
    """An upload: its ledger row, Codabench id and status, the scores recorded (column ->
    score) with the main one, and what happened about the leaderboard."""

    submission: dict
    codabench_id: int
    status: str
    phase_id: Optional[int]
    scores: dict = field(default_factory=dict)
    main: Optional[float] = None
    detail: Optional[str] = None
    messages: list[str] = field(default_factory=list)
    # what happened about the public leaderboard (None when it was not asked for)
    leaderboard: Optional[str] = None
    on_leaderboard: bool = False


def upload_submission(ledger: Ledger, name: str, client: CodabenchClient, competition_id: int, *,
                      phase_id: Optional[int] = None, phase: str = DEFAULT_PHASE, wait: bool = False,
                      timeout: float = 3600, initial_interval: float = 2.0, max_interval: float = 30.0,
                      progress: Optional[Progress] = None, metric: str = "", scale: float = 1.0,
                      final: bool = False, leaderboard: bool = False,
                      before_upload: Optional[Callable[[Phase], None]] = None) -> UploadOutcome:
    """Upload the packaged zip of ``name`` to Codabench and record the upload.

    The Codabench id is written to the ledger as soon as the server has it, before any
    waiting, so a wait that times out leaves a submission that ``cpx codabench sync``
    can complete. With ``wait``, a finished submission's scores are recorded with
    source ``codabench``: the columns that are scores in 0..``scale`` (the competition
    metric's scale), the main one by ``metric``'s name. ``final`` marks it final in the ledger; ``leaderboard`` (or
    ``final``) also puts it on the phase's public leaderboard: once scored with ``wait``,
    else right away. ``before_upload(phase)`` runs before anything is sent (see
    :func:`cpx.submit.codabench.submit_zip`).

    :raises SubmissionError: already uploaded or scored, no zip, or the zip changed.
    :raises CodabenchError: the server refused, or the wait timed out (the id is kept).
    """
    sub = ledger.get_submission(name)
    zip_path = _uploadable_zip(ledger, sub, name, phase, metric)
    created = _send(ledger, sub, name, client, zip_path, competition_id, phase_id, progress, before_upload)
    sub = ledger.update_submission(
        name, uploaded=True, uploaded_at=utc_now(), codabench_id=str(created.id), status=created.status,
        codabench_competition=int(competition_id), codabench_phase=created.phase_id, phase=phase,
        status_detail=None, upload_attempt=None)
    if final:
        sub = mark_final(ledger, name)
    outcome = UploadOutcome(sub, created.id, created.status, created.phase_id)
    if not wait:
        if leaderboard or final:
            outcome.leaderboard, outcome.on_leaderboard = connect_to_leaderboard(
                client, created.id, status=created.status)
        return outcome
    try:
        result = client.wait(created.id, timeout, initial_interval=initial_interval,
                             max_interval=max_interval, progress=progress)
    except CodabenchError as exc:
        raise CodabenchError(f"{exc}; `cpx codabench sync --competition {competition_id}` "
                             f"records its score once it is done") from None
    outcome = _apply_result(ledger, name, result, phase, metric, scale, outcome)
    if leaderboard or final:
        outcome.leaderboard, outcome.on_leaderboard = connect_to_leaderboard(client, created.id, status=result.status)
    return outcome


def _uploadable_zip(ledger: Ledger, sub: dict, name: str, phase: str, metric: str) -> Path:
    """The zip of the submission ``sub`` (named ``name``), once it is known never to have
    been uploaded or scored and to be unchanged since it was recorded.

    :raises SubmissionError: already uploaded or scored, no zip, or the zip changed.
    """
    if sub.get("codabench_id") and (sub.get("status") or "").casefold() not in RESUBMITTABLE:
        raise SubmissionError(f"'{name}' was already uploaded (Codabench id {sub['codabench_id']}, "
                              f"{sub.get('status') or 'status unknown'}); run `cpx codabench sync` for its score")
    scored = main_score(ledger.scores_for(name), phase, metric)
    if scored is not None:
        raise SubmissionError(f"'{name}' already has a {phase} score ({format_f(scored['score'])}, {scored['source']}), "
                              f"so it was submitted already; package it again under a new name to resubmit")
    if not sub.get("zip_path"):
        raise SubmissionError(f"'{name}' has no zip recorded")
    zip_path = Path(sub["zip_path"])
    if not zip_path.is_file():
        raise SubmissionError(f"'{name}': its zip {zip_path} is gone")
    if sub.get("zip_sha256") and sha256_file(zip_path) != sub["zip_sha256"]:
        raise SubmissionError(f"'{name}': {zip_path} changed since it was recorded (sha256 differs); "
                              f"package it again under a new name")
    return zip_path


def _send(ledger: Ledger, sub: dict, name: str, client: CodabenchClient, zip_path: Path, competition_id: int,
          phase_id: Optional[int], progress: Optional[Progress],
          before_upload: Optional[Callable[[Phase], None]]) -> SubmissionResult:
    """The Codabench submission of ``zip_path``: the one an earlier, unanswered attempt made,
    or a new upload, recorded as an attempt in the ledger before it is sent.

    :raises CodabenchError: the server refused, or the connection failed.
    """
    created = None
    if sub.get("upload_attempt"):
        created = _reconcile_attempt(ledger, sub, client, progress)
    if created is not None:
        return created

    def record_attempt(target: Phase) -> None:
        # before the request that spends a submission: if its answer is lost, the next upload of
        # this zip looks for what it created among the phase's submissions that are new since now
        mine = client.list_submissions(target.id, owner=_owner(client))
        ledger.update_submission(name, upload_attempt={
            "competition": int(competition_id), "phase": target.id, "started_at": utc_now(),
            "before": sorted(r.id for r in mine)})

    try:
        return submit_zip(client, zip_path, competition_id, phase_id, wait=False, progress=progress,
                          before_upload=before_upload, before_post=record_attempt)
    except CodabenchConnectionError as exc:
        if ledger.get_submission(name).get("upload_attempt"):
            raise CodabenchError(f"{exc}; the attempt is recorded: `cpx submit {name} --upload` again looks "
                                 "the submission up on Codabench before sending anything") from None
        raise
    except CodabenchHTTPError:
        ledger.update_submission(name, upload_attempt=None)  # refused outright: nothing was spent
        raise


def _owner(client: CodabenchClient) -> Optional[str]:
    names = my_names(client)
    return names[0] if names else None


def _reconcile_attempt(ledger: Ledger, sub: dict, client: CodabenchClient,
                       progress: Optional[Progress]) -> Optional[SubmissionResult]:
    """An upload of ``sub`` was sent before and its answer never came: the submission it made on
    Codabench, when the phase holds exactly one of yours that is new since the attempt (and not
    another ledger submission's); None when it made none, so uploading again spends nothing twice.

    :raises CodabenchError: several new submissions (one may be this zip's): nothing is sent.
    """
    attempt = sub["upload_attempt"]
    if not isinstance(attempt, dict) or not isinstance(attempt.get("phase"), int):
        return None
    known = set(attempt.get("before") or []) | {
        int(s["codabench_id"]) for s in ledger.list_submissions() if str(s.get("codabench_id") or "").isdigit()}
    new = [r for r in client.list_submissions(attempt["phase"], owner=_owner(client)) if r.id not in known]
    if not new:
        ledger.update_submission(sub["name"], upload_attempt=None)
        return None
    if len(new) > 1:
        ids = ", ".join(str(r.id) for r in new)
        raise CodabenchError(f"'{sub['name']}': an earlier upload's answer was lost, and phase {attempt['phase']} "
                             f"now holds {len(new)} new submissions of yours ({ids}); one may be this zip, so it "
                             "is not sent again: check them on Codabench, then `cpx codabench sync`")
    found = new[0]
    found.phase_id = found.phase_id or attempt["phase"]
    if progress:
        progress(f"found on Codabench: submission {found.id}, made by the upload started {attempt.get('started_at')} "
                 "whose answer was lost; not sending the zip again")
    return found


def connect_to_leaderboard(client: CodabenchClient, codabench_id: int, *,
                           status: Optional[str] = None) -> tuple[str, bool]:
    """Put Codabench submission ``codabench_id`` on its phase's public leaderboard; returns
    (what happened, in one line; whether it is on the leaderboard now). Under Codabench's
    default rule this replaces your previous entry; a failed or cancelled submission is not
    sent, and a competition with an automatic rule refuses (403): both are reported, not raised.

    :raises CodabenchError: any other refusal, or the server could not be reached.
    """
    if (status or "").casefold() in RESUBMITTABLE:
        return f"not added to the leaderboard: Codabench submission {codabench_id} is {status}", False
    try:
        client.add_to_leaderboard(codabench_id)
    except CodabenchHTTPError as exc:
        if exc.status_code != 403:
            raise
        return (f"not added to the leaderboard: Codabench refused ({exc.detail or 'permission denied'}); "
                f"this competition may choose the leaderboard entry itself"), False
    done = (status or "").casefold() == "finished"
    return (f"added Codabench submission {codabench_id} to the public leaderboard (it replaces your previous entry)"
            + ("" if done else "; it shows there once it is scored")), True


def _apply_result(ledger: Ledger, name: str, result, phase: str, metric: str, scale: float,
                  outcome: Optional[UploadOutcome] = None) -> UploadOutcome:
    sub = ledger.update_submission(name, status=result.status, status_detail=result.detail)
    outcome = outcome or UploadOutcome(sub, result.id, result.status, result.phase_id)
    outcome.submission, outcome.status, outcome.detail = sub, result.status, result.detail
    if result.ok and result.scores:
        outcome.scores, outcome.messages = _record_codabench(ledger, name, result, phase, scale)
        best = main_score(ledger.scores_for(name), phase, metric)
        outcome.main = best["score"] if best else None
    return outcome


@dataclass
class SyncReport:
    """What ``cpx codabench sync`` found and changed in the Codabench phase."""

    phase_id: int
    phase_name: str
    remote: int
    updated: list[tuple[str, str]] = field(default_factory=list)  # (name, new status)
    filled: list[tuple[str, float]] = field(default_factory=list)  # (name, main score)
    unknown: list[dict] = field(default_factory=list)  # on Codabench, not in the ledger
    missing: list[str] = field(default_factory=list)  # uploaded here, not found there
    messages: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """Plain data for ``--json``."""
        return asdict(self)


def my_names(client: CodabenchClient) -> tuple[str, ...]:
    """The names your submissions appear under on ``client``'s server: the stored login's
    username (and display name), else the token's user from ``GET /api/my_profile/``."""
    names = stored_identity(client.base_url)
    if names:
        return names
    who = whoami(client)
    return tuple(n for n in (who.username, who.display_name) if n)


def sync_submissions(ledger: Ledger, client: CodabenchClient, competition_id: int, *,
                     phase_id: Optional[int] = None, phase: str = DEFAULT_PHASE, owner: Optional[str] = None,
                     metric: str = "", scale: float = 1.0) -> SyncReport:
    """Match your Codabench submissions to the ledger by Codabench id; update their status
    and fill in the scores of finished ones that have none in ``phase`` yet.

    Yours are those owned by ``owner``, else by your username (:func:`my_names`): after an
    e-mail login the server still names the owner by username.

    :raises CodabenchError: the server refused or could not be reached.
    """
    if owner is None:
        names = my_names(client)
        owner = names[0] if names else None
    chosen = choose_phase(client.phases(competition_id), phase_id, competition_id)
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
        _sync_one(ledger, client, sub, item, phase, metric, scale, report)
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
        _sync_one(ledger, client, sub, item, phase, metric, scale, report)
    return report


def _sync_one(ledger: Ledger, client, sub: dict, item, phase: str, metric: str, scale: float,
              report: SyncReport) -> None:
    name = sub["name"]
    has_score = main_score(ledger.scores_for(name), phase, metric) is not None
    if not has_score and not (item.done and not item.ok):
        # a listing may lag behind and carries no per-task children; the submission's own
        # record is current and folds the children in
        item = client.result(item.id)
    if (sub.get("status") or "") != item.status:
        report.updated.append((name, item.status))
    if item.ok and item.scores and not has_score:
        outcome = _apply_result(ledger, name, item, phase, metric, scale)
        report.messages += [f"{name}: {m}" for m in outcome.messages]
        if outcome.main is not None:
            report.filled.append((name, outcome.main))
    else:
        ledger.update_submission(name, status=item.status, status_detail=item.detail)


@dataclass
class RemoteLeaderboard:
    """A phase's public leaderboard with your entries marked (``mine``) and your best rank."""

    competition_id: int
    phase: Phase
    board: Leaderboard
    me: tuple[str, ...] = ()

    @property
    def my_rank(self) -> Optional[int]:
        """Your best rank on the leaderboard (1 is first); None when you are not on it."""
        ranks = [e.rank for e in self.board.entries if e.mine]
        return min(ranks) if ranks else None

    def to_dict(self) -> dict:
        """Plain data for ``--json``."""
        return {"competition": self.competition_id, "phase": asdict(self.phase), "title": self.board.title,
                "columns": [asdict(c) for c in self.board.columns],
                "entries": [asdict(e) for e in self.board.entries], "me": list(self.me), "my_rank": self.my_rank}


def remote_leaderboard(ledger: Ledger, client: CodabenchClient, competition_id: int, *,
                       phase_id: Optional[int] = None) -> RemoteLeaderboard:
    """The public leaderboard of the competition's current phase (or ``phase_id``), from
    ``GET /api/phases/<id>/get_leaderboard/``. An entry is yours when its Codabench id is one of
    the ledger's submissions or its owner is your username or display name.

    :raises CodabenchError: the server refused or could not be reached.
    """
    phase = choose_phase(client.phases(competition_id), phase_id, competition_id)
    board = client.leaderboard(phase.id)
    me = my_names(client)
    ours = {str(s["codabench_id"]) for s in ledger.list_submissions() if s.get("codabench_id")}
    folded = {n.casefold() for n in me}
    for entry in board.entries:
        entry.mine = str(entry.id) in ours or entry.owner.casefold() in folded
    return RemoteLeaderboard(int(competition_id), phase, board, me)
