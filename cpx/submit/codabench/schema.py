"""What Codabench answers, as plain data: phases, submissions and their scores, and the
parsing of the server's JSON into them (tolerant of missing fields, strict about ids).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from cpx.kernel.errors import CodabenchError

FINISHED = "Finished"
FAILED = "Failed"
CANCELLED = "Cancelled"
FINAL_STATUSES = (FINISHED, FAILED, CANCELLED)
PENDING_STATUSES = ("Submitting", "Submitted", "Preparing", "Running", "Scoring")
# seconds a wait for the final status lasts unless told otherwise (`cpx submit --wait --timeout`)
WAIT_TIMEOUT = 3600.0


@dataclass(frozen=True)
class Phase:
    """A competition phase: its limits (None when not enforced) and, for the user who asked,
    the submissions used today and in total, as the server counts them (Failed ones left out)."""

    id: int
    name: str
    # "Current", "Previous" or "Next"; None when the server does not say
    status: Optional[str] = None
    index: Optional[int] = None
    max_submissions_per_day: Optional[int] = None
    max_submissions_per_person: Optional[int] = None
    used_submissions_per_day: Optional[int] = None
    used_submissions_per_person: Optional[int] = None

    @property
    def is_current(self) -> bool:
        """Whether the phase is open now (status Current)."""
        return (self.status or "").casefold() == "current"

    def limits_text(self) -> str:
        """``"3 of 5 today, 10 of 100 in total"``; empty when the server gave no limits."""
        parts = []
        for used, limit, span in ((self.used_submissions_per_day, self.max_submissions_per_day, "today"),
                                  (self.used_submissions_per_person, self.max_submissions_per_person,
                                   "in total")):
            if limit:
                parts.append(f"{used} of {limit} {span}" if used is not None else f"at most {limit} {span}")
        return ", ".join(parts)


@dataclass
class SubmissionResult:
    """A submission's state: status, scores by column key (floats), and why it failed."""

    id: int
    phase_id: Optional[int]
    status: str
    scores: dict[str, float] = field(default_factory=dict)
    # why it failed, or the server's status_details
    detail: Optional[str] = None
    # column key -> leaderboard column title, when the server tells
    titles: dict[str, str] = field(default_factory=dict)
    owner: Optional[str] = None
    created_when: Optional[str] = None
    filename: Optional[str] = None

    @property
    def done(self) -> bool:
        """Finished, Failed or Cancelled: it will not change any more."""
        return _same(self.status, *FINAL_STATUSES)

    @property
    def ok(self) -> bool:
        """Finished (and so scored)."""
        return _same(self.status, FINISHED)




def _same(status: Optional[str], *names: str) -> bool:
    folded = (status or "").casefold()
    return any(folded == n.casefold() for n in names)


def _int_or_none(value: Any) -> Optional[int]:
    try:
        return int(value) if value is not None and value != "" else None
    except (TypeError, ValueError):
        return None


def _phase_id(value: Any) -> Optional[int]:
    if isinstance(value, dict):
        value = value.get("id")
    return _int_or_none(value)


def _phase(raw: dict) -> Phase:
    # has_max_submissions off means the numbers are stored but not enforced
    enforced = raw.get("has_max_submissions", True) is not False
    return Phase(
        id=int(raw["id"]),
        name=str(raw.get("name") or f"phase {raw['id']}"),
        status=str(raw["status"]) if raw.get("status") else None,
        index=_int_or_none(raw.get("index")),
        max_submissions_per_day=_int_or_none(raw.get("max_submissions_per_day")) if enforced else None,
        max_submissions_per_person=_int_or_none(raw.get("max_submissions_per_person")) if enforced else None,
        used_submissions_per_day=_int_or_none(raw.get("used_submissions_per_day")),
        used_submissions_per_person=_int_or_none(raw.get("used_submissions_per_person")),
    )


def _scores(raw: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in raw or []:
        if not isinstance(item, dict):
            continue
        key = item.get("column_key") or item.get("key")
        try:
            value = float(item.get("score"))
        except (TypeError, ValueError):
            continue
        if key is not None:
            out.setdefault(str(key), value)
    return out


def _result(sub: dict) -> SubmissionResult:
    if sub.get("id") is None:
        raise CodabenchError("Codabench sent a submission without an id")
    detail = sub.get("status_details")
    return SubmissionResult(
        id=int(sub["id"]),
        phase_id=_phase_id(sub.get("phase")),
        status=str(sub.get("status") or "unknown"),
        scores=_scores(sub.get("scores")),
        detail=str(detail) if detail else None,
        owner=str(sub["owner"]) if sub.get("owner") else None,
        created_when=str(sub["created_when"]) if sub.get("created_when") else None,
        filename=str(sub["filename"]) if sub.get("filename") else None,
    )




@dataclass(frozen=True)
class LeaderboardColumn:
    """A leaderboard column: the score's ``key``, its title, position and sort order."""

    key: str
    title: str
    index: int = 0
    # "desc": higher is better
    sorting: str = "desc"


@dataclass
class LeaderboardEntry:
    """One row of a phase's public leaderboard, in the server's order (``rank`` 1 is first)."""

    rank: int
    id: int
    owner: str
    scores: dict[str, float] = field(default_factory=dict)
    entries: Optional[int] = None  # the owner's submissions in the phase
    last_entry_date: Optional[str] = None
    mine: bool = False


@dataclass
class Leaderboard:
    """``GET /api/phases/<id>/get_leaderboard/``: the columns of the first task and the rows."""

    phase_id: int
    title: str
    columns: list[LeaderboardColumn] = field(default_factory=list)
    entries: list[LeaderboardEntry] = field(default_factory=list)


def _leaderboard(raw: Any, phase_id: int) -> Leaderboard:
    if not isinstance(raw, dict):
        raise CodabenchError("Codabench answered get_leaderboard with an unexpected shape")
    columns: list[LeaderboardColumn] = []
    for task in raw.get("tasks") or []:
        for col in (task.get("columns") or []) if isinstance(task, dict) else []:
            if isinstance(col, dict) and col.get("key") and not col.get("hidden"):
                column = LeaderboardColumn(str(col["key"]), str(col.get("title") or col["key"]),
                                           _int_or_none(col.get("index")) or 0, str(col.get("sorting") or "desc"))
                if column.key not in {c.key for c in columns}:
                    columns.append(column)
    entries = []
    for row in raw.get("submissions") or []:
        if not isinstance(row, dict) or _int_or_none(row.get("id")) is None:
            continue
        entries.append(LeaderboardEntry(
            rank=len(entries) + 1, id=int(row["id"]), owner=str(row.get("owner") or "?"),
            scores=_scores(row.get("scores")), entries=_int_or_none(row.get("num_entries")),
            last_entry_date=str(row["last_entry_date"]) if row.get("last_entry_date") else None))
    return Leaderboard(phase_id=int(raw.get("id") or phase_id), title=str(raw.get("title") or "Results"),
                       columns=columns, entries=entries)
