"""The two-sided Student-t critical value in pure Python (:func:`t_quantile`): the leaderboard's
prediction interval needs it, and `cpx leaderboard` must answer without importing scipy (about a
second) or numpy; the tests hold it to ``scipy.stats.t``.
"""

from __future__ import annotations

import math


def t_quantile(level: float, dof: float) -> float:
    """The two-sided critical value: P(|T| < t) = ``level`` with ``dof`` degrees of freedom
    (``t_quantile(0.95, 4)`` = 2.776), found by bisection on the upper tail, which is
    ``I_x(dof/2, 1/2) / 2`` with ``x = dof / (dof + t^2)``; within 1e-10 of ``scipy.stats.t.ppf``."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie strictly between 0 and 1, not {level}")
    if dof < 1:
        raise ValueError(f"degrees of freedom must be at least 1, not {dof}")
    tail = (1.0 - level) / 2.0

    def upper(t: float) -> float:
        return 0.5 * _incomplete_beta(dof / 2.0, 0.5, dof / (dof + t * t))

    low, high = 0.0, 1.0
    while upper(high) > tail:
        low, high = high, 2.0 * high
    mid = (low + high) / 2.0
    while low < mid < high:  # until the floats between them run out
        if upper(mid) > tail:
            low = mid
        else:
            high = mid
        mid = (low + high) / 2.0
    return mid


def _incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function ``I_x(a, b)``: its continued fraction evaluated
    by the modified Lentz method, where it converges fast (Numerical Recipes, 3rd ed., 6.4)."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - _incomplete_beta(b, a, 1.0 - x)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    tiny = 1e-300  # keeps the Lentz recurrences off zero
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 1000):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < 1e-16:
            break
    return front * f / a
