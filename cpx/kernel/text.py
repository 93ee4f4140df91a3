"""How cpx writes scores: one format for every F-score, gap and difference it prints or stores
in a file name."""

from __future__ import annotations

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
