"""Leaderboard scores of submissions: the one that stands for a submission's result in a
phase, and a score typed on the command line checked against the competition metric's scale.

Scores live in the ledger's ``scores`` table, one per submission, phase and column; the
test score of a submission is its main column (:func:`main_score`).
"""

from __future__ import annotations

import math
from typing import Any, Optional

from cpx.kernel.errors import SubmissionError

DEFAULT_PHASE = "test"


def default_phase(competition: Optional[Any] = None) -> str:
    """The ledger phase scores, budgets and listings use when none is named: the name of the
    competition's current phase when its profile has phases (a bundle's), else
    :data:`DEFAULT_PHASE`."""
    phase = competition.current_phase() if competition is not None and getattr(competition, "phases", ()) else None
    return phase.name if phase is not None else DEFAULT_PHASE


def main_score(scores: list[dict], phase: str = DEFAULT_PHASE, metric: str = "") -> Optional[dict]:
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


def parse_score(score: Any, competition: Optional[Any] = None, option: str = "--record-score") -> float:
    """A score given on the command line (``option`` names it in errors), checked to be a
    number on the scale of the competition's metric: ``0..1``, or ``0..100`` for organisers
    who print percent (``metric: {scale: 100}``). Without a competition only a finite number
    is required.

    :raises SubmissionError: not a finite number, or outside the metric's range (with a hint
        when the value looks like a percent on a 0..1 scale).
    """
    try:
        value = float(score)
    except (TypeError, ValueError):
        raise SubmissionError(f"{option}: {score!r} is not a number") from None
    if not math.isfinite(value):
        raise SubmissionError(f"{option}: {score!r} is not a finite number")
    if competition is None:
        return value
    spec = competition.metric
    top = float(spec.scale)
    if not 0.0 <= value <= top:
        hint = ""
        if top == 1 and 1 < value <= 100:
            hint = (f" (if the leaderboard prints percent, give {value / 100:g}, or set metric.scale: 100 "
                    f"in its profile)")
        raise SubmissionError(f"{option}: {score!r} is outside 0..{top:g}, the scale of {competition.name}'s "
                              f"{spec.name}{hint}")
    return value
