"""How cpx writes scores and times: one format for every F-score, gap and difference it prints
or puts in a file name, and one for timestamps."""

from __future__ import annotations

import datetime as _dt
import math
from typing import Optional

DIGITS = 4


def format_f(value: Optional[float]) -> str:
    """An F-score (or any score in 0..1) with four decimals; ``-`` for none, NaN or a negative
    placeholder."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value < 0:
        return "-"
    return f"{value:.{DIGITS}f}"


def format_signed(value: Optional[float]) -> str:
    """A difference of scores with its sign (``+0.0123``); ``-`` for none or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:+.{DIGITS}f}"


def utc_now() -> str:
    """The current time as UTC ISO-8601 to the second, as the ledger stores times."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def safe_filename(text: str) -> str:
    """``text`` with every character other than letters, digits, ``-``, ``_`` and ``.``
    replaced by ``_``: a run or sweep name usable as one file name on any system."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)
