"""Leaderboard scores of submissions: the one that stands for a submission's result in a
phase, and a score typed on the command line checked to be an F value.

Scores live in the ledger's ``scores`` table, one per submission, phase and column; the
"test F" of a submission is its main column (:func:`main_score`).
"""

from __future__ import annotations

import math
from typing import Any, Optional

from cpx.kernel.errors import SubmissionError

DEFAULT_PHASE = "test"


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

