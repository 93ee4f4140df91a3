"""The phase's submission budget and the listing of submissions with the final pick.

A submission *counts* against the phase's limit once it has been uploaded or scored in that
phase, unless Codabench failed it: as on the server, only Failed submissions are left out
(Cancelled ones count). When the server's own counts are at hand (a Codabench phase's
``used_submissions_per_day`` / ``used_submissions_per_person``), they win over the ledger's,
which cannot see submissions made through the website. The *final* submission is the one
marked with ``--final``, else the latest that counts.

The limits are those of the profile's phase of that name (a bundle's ``max_submissions`` and
``max_submissions_per_day``), else its ``rules``; a day is a UTC day, as Codabench counts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

from cpx.data.competition import Competition
from cpx.kernel.errors import CodabenchError
from cpx.kernel.text import format_f, utc_now
from cpx.kernel.workspace import Workspace
from cpx.runs.ledger import Ledger
from cpx.submit.codabench import Phase, choose_phase, client_from_config
from cpx.submit.submissions.scores import DEFAULT_PHASE, main_score

# statuses whose submissions do not count against the limit, as Codabench counts
NOT_COUNTED = ("failed",)


def _counts(sub: dict, scored: bool) -> bool:
    if (sub.get("status") or "").casefold() in NOT_COUNTED:
        return False
    return bool(sub.get("uploaded")) or scored


def used_in_phase(ledger: Ledger, phase: str = DEFAULT_PHASE, day: Optional[str] = None) -> list[str]:
    """Names of the submissions that count against ``phase``'s limit, oldest first; with
    ``day`` (``YYYY-MM-DD``, UTC) only those uploaded (else scored, else packaged) that day."""
    out = []
    for sub in reversed(ledger.list_submissions(phase)):
        scored = sub.get("latest_score") is not None
        in_phase = scored or (sub.get("phase") or DEFAULT_PHASE) == phase
        when = sub.get("uploaded_at") or sub.get("latest_score_at") or sub.get("created_at") or ""
        if in_phase and _counts(sub, scored) and (day is None or when[:10] == day):
            out.append(sub["name"])
    return out


def phase_limits(competition: Optional[Competition], phase: str) -> tuple[Optional[int], Optional[int]]:
    """(submissions in the phase, submissions a day) the profile allows in ledger phase
    ``phase``: its bundle phase of that name's, else its rules'."""
    if competition is None:
        return None, None
    named = competition.phase(phase) if competition.phases else None
    if named is not None:
        return named.max_submissions, named.max_submissions_per_day
    return competition.rules.submissions_per_phase, competition.rules.submissions_per_day


@dataclass
class SubmissionRow:
    """One line of ``cpx submissions``; ``counts`` when it counts against the phase's limit."""

    name: str
    run_id: Optional[str]
    run_name: Optional[str]
    date: str
    val_score: Optional[float]
    test_score: Optional[float]
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
    """Every submission (newest first), the phase's used count and limit, the final pick and
    warnings about the rules."""

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
        """Submissions left by the ledger's count; None without a known limit."""
        return None if self.limit is None else max(0, self.limit - self.used)

    def to_dict(self) -> dict:
        """Plain data for ``--json``."""
        out = asdict(self)
        out["left"] = self.left
        return out


def submission_report(ledger: Ledger, competition: Optional[Competition] = None,
                      phase: str = DEFAULT_PHASE, *, greater_is_better: Optional[bool] = None) -> SubmissionReport:
    """Every submission with its validation and test scores, the phase's budget, and the final
    pick. ``greater_is_better`` is the direction of the competition's metric (default: the
    registered metric's, from the current plugin host)."""
    metric = competition.metric.name if competition else ""
    rows: list[SubmissionRow] = []
    for sub in ledger.list_submissions(phase):
        score = main_score(ledger.scores_for(sub["name"]), phase, metric)
        test = score["score"] if score else None
        val = sub.get("val_score")
        if val is None:
            val = sub.get("run_best_val_score")
        in_phase = score is not None or (sub.get("phase") or DEFAULT_PHASE) == phase
        status = sub.get("status") or "packaged"
        if score is not None and status in ("packaged", "registered"):
            status = "scored"
        rows.append(SubmissionRow(
            name=sub["name"], run_id=sub.get("run_id"), run_name=sub.get("run_name"),
            date=(sub.get("uploaded_at") or sub.get("created_at") or "")[:16].replace("T", " "),
            val_score=val, test_score=test, gap=None if test is None or val is None else test - val,
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

    limit = phase_limits(competition, phase)[0]
    only_final = bool(competition and competition.rules.only_final_counts)
    warnings = []
    if limit is not None and len(counted) > limit:
        warnings.append(f"{len(counted)} submissions count in phase '{phase}', "
                        f"but {competition.name} allows {limit}")
    if only_final and final is not None:
        if greater_is_better is None:
            from cpx.eval.metrics import create_metric
            from cpx.kernel.manager import get_host

            greater_is_better = create_metric(competition, get_host()).greater_is_better
        warning = final_not_best(rows, final, competition.name, metric=metric,
                                 greater_is_better=greater_is_better)
        if warning:
            warnings.append(warning)
    return SubmissionReport(phase=phase, rows=rows, used=len(counted), limit=limit, final=final,
                            final_reason=reason, only_final_counts=only_final, warnings=warnings)


def final_not_best(rows: list[SubmissionRow], final: str, competition: str, *, metric: str = "",
                   greater_is_better: bool = True) -> Optional[str]:
    """A warning when the final submission is not the best of those that count: by test score
    when any is scored, else by validation score, in the direction of the competition's
    ``metric``; None when it is the best (or nothing compares)."""
    counted = [r for r in rows if r.counts or r.name == final]
    mine = next(r for r in rows if r.name == final)
    sign = 1.0 if greater_is_better else -1.0
    what = metric or "score"
    for label, value in ((f"test {what}", lambda r: r.test_score), (f"validation {what}", lambda r: r.val_score)):
        known = [r for r in counted if value(r) is not None]
        if not known:
            continue
        best = max(known, key=lambda r: sign * value(r))
        if best.name != final and (value(mine) is None or sign * value(best) > sign * value(mine)):
            shown = f"{format_f(value(mine))}" if value(mine) is not None else "unscored"
            return (f"only the final submission counts in {competition}, and the final one, {final} "
                    f"({shown}), is not your best: {best.name} ({format_f(value(best))}) by {label}; "
                    f"choose it with `cpx submit {best.name} --final`")
        return None
    return None


# --------------------------------------------------------------------------------------------
# The budget before a submission is spent


@dataclass
class Budget:
    """How many submissions are left: the ledger's count against the competition profile's
    limits for the ledger phase ``phase`` (in the phase, and today), and the Codabench phase's
    own counts (per day and in total) when the server was asked. ``left`` is the smallest of
    what each says."""

    phase: str
    used: int
    limit: Optional[int] = None
    used_today: int = 0
    per_day: Optional[int] = None
    competition: Optional[str] = None
    remote: Optional[Phase] = None
    # why the server's numbers are missing, when it was asked and did not answer
    remote_note: Optional[str] = None

    def spans(self) -> list[tuple[str, int, int]]:
        """(where, used, limit) for every limit known."""
        out = []
        if self.limit:
            out.append((f"phase '{self.phase}'", self.used, self.limit))
        if self.per_day:
            out.append((f"phase '{self.phase}' today", self.used_today, self.per_day))
        if self.remote is not None:
            p = self.remote
            for used, limit, span in ((p.used_submissions_per_day, p.max_submissions_per_day, "today"),
                                      (p.used_submissions_per_person, p.max_submissions_per_person, "in total")):
                if limit and used is not None:
                    out.append((f"Codabench phase {p.id} ({p.name}) {span}", used, limit))
        return out

    @property
    def left(self) -> Optional[int]:
        """The fewest submissions left by any count; None when no limit is known."""
        spans = self.spans()
        return min(max(0, limit - used) for _, used, limit in spans) if spans else None

    def describe(self) -> str:
        """``phase 'test': 1 of 10 used, 9 left; Codabench phase 7 (Development) today: ...``"""
        parts = [f"{where}: {used} of {limit} used, {max(0, limit - used)} left" for where, used, limit in self.spans()]
        if not parts:
            parts.append(f"phase '{self.phase}': {self.used} used (no limit known)")
        return "; ".join(parts)

    def warning(self) -> Optional[str]:
        """Said before spending one: none left, or this is the last one; else None."""
        spans = self.spans()
        if not spans:
            return None
        where, used, limit = min(spans, key=lambda s: s[2] - s[1])
        if used >= limit:
            return f"no submissions left in {where}: {used} of {limit} used"
        if limit - used == 1:
            return f"this is your last submission in {where}: {used} of {limit} used"
        return None

    def to_dict(self) -> dict:
        """Plain data for ``--json``, with ``left`` and the one-line ``text``."""
        out = asdict(self)
        out["left"] = self.left
        out["text"] = self.describe()
        return out


def phase_budget(ledger: Ledger, competition: Optional[Competition], phase: str = DEFAULT_PHASE,
                 remote: Optional[Phase] = None, remote_note: Optional[str] = None) -> Budget:
    """The budget of ledger phase ``phase`` under ``competition``'s limits (:func:`phase_limits`),
    with the Codabench phase ``remote`` when known (its counts come from the server)."""
    limit, per_day = phase_limits(competition, phase)
    today = utc_now()[:10] if per_day else None
    return Budget(phase=phase, used=len(used_in_phase(ledger, phase)), limit=limit,
                  used_today=len(used_in_phase(ledger, phase, day=today)) if today else 0, per_day=per_day,
                  competition=competition.name if competition else None, remote=remote, remote_note=remote_note)


def server_phase(workspace: Workspace, competition_id: Optional[int] = None, phase_id: Optional[int] = None,
                 url: Optional[str] = None) -> tuple[Optional[Phase], Optional[str]]:
    """The Codabench phase to count against, when the server can be asked: a Codabench
    competition (``competition_id`` or ``codabench_competition`` in cpx.yaml) and a token for the
    server. Returns (phase, None), or (None, why not) without raising: the budget works
    without the server."""
    cid = competition_id or workspace.settings().get("codabench_competition")
    if not cid or not str(cid).strip().isdigit():
        return None, None
    try:
        client = client_from_config(url)
        if not client.token:
            return None, f"not logged in to {client.base_url}, so the server's counts are unknown"
        return choose_phase(client.phases(int(cid)), phase_id, int(cid)), None
    except CodabenchError as exc:
        return None, f"Codabench's counts are unknown ({exc})"
