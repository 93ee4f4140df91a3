"""The statistics behind reports, sweeps and comparisons, on ``scipy.stats``.

* :func:`t_quantile`: the two-sided Student-t critical value, from :mod:`cpx.report.student_t`.
* :func:`mean_interval`: a mean with its t interval (a sweep cell over its seeds).
* :func:`paired_test`: two runs scored on the same images: the mean per-image difference, a
  bootstrap interval for it, and the paired t and Wilcoxon signed-rank p-values.
* :func:`factor_effects`: the effect of each level of each factor of a grid against its
  reference level, with an interval from the seed-to-seed noise (``significant`` only when the
  interval excludes zero).
* :func:`slope_effect`: the linear trend of a score along a continuous factor (searches).
* :func:`seeds_needed`: how many seeds per level would detect an effect of a given size.

Nothing here reads the ledger: callers pass numbers in and get numbers (and the words that
describe them) back.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import asdict, dataclass
from typing import Any, Hashable, Mapping, Optional, Sequence

import numpy as np

from cpx.report.student_t import t_quantile  # noqa: F401 (re-exported: one owner, no numpy)

# scipy.stats takes about a second to import, so each function that needs it imports it

DEFAULT_LEVEL = 0.95
BOOTSTRAP_RESAMPLES = 9999
NOT_SIGNIFICANT = "not significant: within the noise"
SIGNIFICANT = "significant"


def words(low: Optional[float], high: Optional[float]) -> str:
    """``significant`` when the interval excludes zero, else says it is within the noise."""
    if low is None or high is None:
        return "noise unknown (one run per setting): cannot tell"
    return SIGNIFICANT if low > 0 or high < 0 else NOT_SIGNIFICANT


@dataclass(frozen=True)
class MeanInterval:
    mean: float
    sd: Optional[float]  # sample standard deviation; None for one value
    n: int
    low: Optional[float]
    high: Optional[float]
    level: float = DEFAULT_LEVEL


def mean_interval(values: Sequence[float], level: float = DEFAULT_LEVEL) -> MeanInterval:
    """Mean, sample sd and the t interval of the mean (none for fewer than two values)."""
    x = np.asarray([float(v) for v in values], dtype=float)
    if x.size == 0:
        raise ValueError("no values")
    mean = float(x.mean())
    if x.size < 2:
        return MeanInterval(mean, None, 1, None, None, level)
    sd = float(x.std(ddof=1))
    hw = t_quantile(level, x.size - 1) * sd / math.sqrt(x.size)
    return MeanInterval(mean, sd, int(x.size), mean - hw, mean + hw, level)


# ---------------------------------------------------------------- paired per-image test


class _Verdict:
    """An estimate with an interval (``low``, ``high``) says in words whether it is significant."""

    low: Optional[float]
    high: Optional[float]

    @property
    def significant(self) -> bool:
        return words(self.low, self.high) == SIGNIFICANT

    @property
    def verdict(self) -> str:
        return words(self.low, self.high)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["verdict"] = self.verdict
        return out


@dataclass(frozen=True)
class PairedTest(_Verdict):
    """B − A over the images both were scored on."""

    n: int
    mean_a: float
    mean_b: float
    diff: float  # mean of the per-image differences B − A
    low: Optional[float]  # bootstrap interval of ``diff``
    high: Optional[float]
    t_p: Optional[float]  # paired t-test p-value (two-sided)
    wilcoxon_p: Optional[float]  # Wilcoxon signed-rank p-value (two-sided)
    level: float = DEFAULT_LEVEL
    only_a: int = 0  # images scored for A only
    only_b: int = 0



def _rng_kwargs(seed: int) -> dict:
    from scipy import stats

    # scipy 1.15 renamed random_state to rng; both accept a Generator
    name = "rng" if "rng" in inspect.signature(stats.bootstrap).parameters else "random_state"
    return {name: np.random.default_rng(seed)}


def bootstrap_mean_interval(x: Sequence[float], level: float = DEFAULT_LEVEL,
                            resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """The bootstrap (BCa) interval of the mean of ``x``; a constant sample gives a point."""
    from scipy import stats

    x = np.asarray(x, dtype=float)
    if x.size < 2 or np.all(x == x[0]):
        return float(x.mean()), float(x.mean())
    res = stats.bootstrap((x,), np.mean, n_resamples=resamples, confidence_level=level, method="BCa",
                          vectorized=True, **_rng_kwargs(seed))
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if not (math.isfinite(low) and math.isfinite(high)):  # BCa can fail on tiny samples
        res = stats.bootstrap((x,), np.mean, n_resamples=resamples, confidence_level=level,
                              method="percentile", vectorized=True, **_rng_kwargs(seed))
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return low, high


def paired_test(a: Mapping[Hashable, float], b: Mapping[Hashable, float], level: float = DEFAULT_LEVEL,
                resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> PairedTest:
    """Compare per-image scores of two runs on the images both were scored on.

    The difference is B − A per image; its mean gets a bootstrap interval (resampling images),
    and the paired t-test and Wilcoxon signed-rank test give p-values. Raises ValueError when
    fewer than two images are shared.
    """
    from scipy import stats

    shared = sorted(set(a) & set(b), key=str)
    if len(shared) < 2:
        raise ValueError(f"the runs share {len(shared)} scored image(s); a paired test needs at least 2")
    xa = np.array([float(a[k]) for k in shared])
    xb = np.array([float(b[k]) for k in shared])
    d = xb - xa
    low, high = bootstrap_mean_interval(d, level, resamples, seed)
    if np.all(d == d[0]):
        t_p = w_p = 1.0 if d[0] == 0 else 0.0
    else:
        t_p = float(stats.ttest_rel(xb, xa).pvalue)
        w_p = float(stats.wilcoxon(d).pvalue) if np.any(d != 0) else 1.0
    return PairedTest(n=len(shared), mean_a=float(xa.mean()), mean_b=float(xb.mean()), diff=float(d.mean()),
                      low=low, high=high, t_p=t_p, wilcoxon_p=w_p, level=level,
                      only_a=len(set(a) - set(b)), only_b=len(set(b) - set(a)))


# ---------------------------------------------------------------- factor effects (grids)


@dataclass(frozen=True)
class Effect(_Verdict):
    """``level`` against ``reference`` of ``factor``: the difference of their mean scores."""

    factor: str
    level: Any
    reference: Any
    estimate: float
    low: Optional[float]
    high: Optional[float]
    p: Optional[float]
    n_level: int
    n_reference: int
    dof: Optional[float]
    level_mean: float
    reference_mean: float
    noise_sd: Optional[float]  # the seed-to-seed standard deviation used
    confidence: float = DEFAULT_LEVEL



@dataclass(frozen=True)
class Noise:
    """The spread of a score that no factor explains, and where its estimate comes from."""

    sd: Optional[float]
    dof: int
    source: str  # "seeds" (replicates within cells), "residual" (additive model) or "none"


def noise(observations: Sequence[tuple[Mapping[str, Any], float]], factors: Sequence[str]) -> Noise:
    """The seed-to-seed standard deviation pooled over cells (cells = combinations of the
    factors' levels). Without replicates, the residual of an additive model of the factors;
    with too few runs for that either, none."""
    cells: dict[tuple, list[float]] = {}
    for params, y in observations:
        cells.setdefault(tuple(level_key(params.get(f)) for f in factors), []).append(float(y))
    n = sum(len(v) for v in cells.values())
    dof = n - len(cells)
    if dof > 0:
        ss = sum(float(np.sum((np.array(v) - np.mean(v)) ** 2)) for v in cells.values())
        return Noise(math.sqrt(ss / dof), dof, "seeds")
    # additive model y = mu + sum of per-level offsets, fitted by least squares
    columns = [np.ones(n)]
    rows = [(params, y) for params, y in observations]
    for f in factors:
        levels = sorted({level_key(p.get(f)) for p, _ in rows}, key=level_order)
        for lv in levels[1:]:
            columns.append(np.array([1.0 if level_key(p.get(f)) == lv else 0.0 for p, _ in rows]))
    x = np.column_stack(columns)
    y = np.array([y for _, y in rows], dtype=float)
    rank = np.linalg.matrix_rank(x)
    dof = n - rank
    if dof <= 0:
        return Noise(None, 0, "none")
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    ss = float(np.sum((y - x @ coef) ** 2))
    return Noise(math.sqrt(ss / dof), dof, "residual")


def level_key(value: Any) -> Any:
    """A factor level as a hashable key (lists become tuples)."""
    return tuple(value) if isinstance(value, list) else value


def level_order(value: Any) -> tuple:
    """Sort key of factor levels: numbers in order, then the rest by name."""
    return (0, float(value), "") if isinstance(value, (int, float)) and not isinstance(value, bool) else (1, 0.0, str(value))


def factor_levels(observations: Sequence[tuple[Mapping[str, Any], float]], factor: str) -> list:
    """The levels of ``factor`` seen, numbers in order, then the rest by name."""
    return sorted({level_key(p.get(factor)) for p, _ in observations}, key=level_order)


def factor_effects(observations: Sequence[tuple[Mapping[str, Any], float]], factors: Sequence[str],
                   references: Optional[Mapping[str, Any]] = None,
                   level: float = DEFAULT_LEVEL) -> tuple[list[Effect], Noise]:
    """Each level of each factor against the factor's reference level (``references``, else its
    first level): the difference of the mean scores at the two levels (over every other factor
    and seed), with a t interval whose standard error comes from the pooled noise
    (``sd · sqrt(1/n_level + 1/n_reference)``) and the two-sided p-value."""
    from scipy import stats

    nz = noise(observations, factors)
    effects: list[Effect] = []
    for f in factors:
        levels = factor_levels(observations, f)
        if len(levels) < 2:
            continue
        ref = level_key((references or {}).get(f, levels[0]))
        if ref not in levels:
            ref = levels[0]
        ref_values = [y for p, y in observations if level_key(p.get(f)) == ref]
        for lv in levels:
            if lv == ref:
                continue
            values = [y for p, y in observations if level_key(p.get(f)) == lv]
            est = float(np.mean(values) - np.mean(ref_values))
            low = high = p = None
            if nz.sd is not None:
                se = nz.sd * math.sqrt(1.0 / len(values) + 1.0 / len(ref_values))
                hw = t_quantile(level, nz.dof) * se
                low, high = est - hw, est + hw
                p = 1.0 if se == 0 and est == 0 else (0.0 if se == 0 else float(2 * stats.t.sf(abs(est) / se, nz.dof)))
            effects.append(Effect(factor=f, level=lv, reference=ref, estimate=est, low=low, high=high, p=p,
                                  n_level=len(values), n_reference=len(ref_values),
                                  dof=nz.dof if nz.sd is not None else None, level_mean=float(np.mean(values)),
                                  reference_mean=float(np.mean(ref_values)), noise_sd=nz.sd, confidence=level))
    return effects, nz


def level_means(observations: Sequence[tuple[Mapping[str, Any], float]], factor: str, nz: Noise,
                level: float = DEFAULT_LEVEL) -> list[tuple[Any, float, int, Optional[float]]]:
    """(level, mean score, runs, interval half-width from the pooled noise) per level of ``factor``."""
    out = []
    for lv in factor_levels(observations, factor):
        values = [y for p, y in observations if level_key(p.get(factor)) == lv]
        hw = None
        if nz.sd is not None:
            hw = t_quantile(level, nz.dof) * nz.sd / math.sqrt(len(values))
        out.append((lv, float(np.mean(values)), len(values), hw))
    return out


# ---------------------------------------------------------------- trends (searches)


@dataclass(frozen=True)
class Slope:
    """The least-squares trend of the score along a factor (per unit, or per decade on a log
    scale), with its interval and p-value."""

    factor: str
    log: bool
    slope: float
    low: float
    high: float
    p: float
    n: int
    confidence: float = DEFAULT_LEVEL

    @property
    def verdict(self) -> str:
        return words(self.low, self.high)

    @property
    def significant(self) -> bool:
        return self.verdict == SIGNIFICANT

    def to_dict(self) -> dict:
        out = asdict(self)
        out["verdict"] = self.verdict
        return out


def slope_effect(factor: str, x: Sequence[float], y: Sequence[float], log: bool = False,
                 level: float = DEFAULT_LEVEL) -> Optional[Slope]:
    """The trend of ``y`` along ``x`` (``log``: per factor of ten); None with fewer than 3 points
    or a single x value."""
    from scipy import stats

    xs = np.asarray(x, dtype=float)
    ys = np.asarray(y, dtype=float)
    if log:
        xs = np.log10(xs)
    if xs.size < 3 or np.all(xs == xs[0]):
        return None
    fit = stats.linregress(xs, ys)
    hw = t_quantile(level, xs.size - 2) * float(fit.stderr)
    return Slope(factor, log, float(fit.slope), float(fit.slope) - hw, float(fit.slope) + hw, float(fit.pvalue),
                 int(xs.size), level)


def seeds_needed(sd: float, effect: float, power: float = 0.8, level: float = DEFAULT_LEVEL) -> Optional[int]:
    """Runs per level for a two-sided test at ``level`` to detect ``effect`` with ``power``, given
    a seed-to-seed ``sd`` (normal approximation): ``2 (z_a + z_b)^2 sd^2 / effect^2``."""
    from scipy import stats

    if not sd or not effect:
        return None
    z = stats.norm.ppf(0.5 + level / 2.0) + stats.norm.ppf(power)
    return max(2, int(math.ceil(2.0 * (z * sd / effect) ** 2)))
