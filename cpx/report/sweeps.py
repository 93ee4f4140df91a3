"""A sweep's results from the ledger: its runs, each cell's mean and spread over seeds, and each
factor's effect with its interval (:mod:`cpx.report.stats`). Behind ``cpx sweep show`` and the
report's factor sections.

A run counts towards the statistics when it finished (completed, or stopped by its budget) with a
validation score; pruned and failed runs are counted but left out, as their best score is cut short.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from cpx.draw.figures import FactorPanel, plot_factor_panels
from cpx.kernel.config import flatten
from cpx.report import stats
from cpx.runs.ledger import Ledger
from cpx.sweep.spec import BASELINE, SEED_KEY, Factor

COUNTED = ("completed", "stopped")


@dataclass
class SweepRun:
    run_id: str
    name: str
    status: str
    params: dict[str, Any]  # factor key -> value, from the run's config
    seed: Optional[int]
    value: Optional[float]  # best validation score
    best_epoch: Optional[int]
    last_epoch: Optional[int]

    @property
    def counted(self) -> bool:
        return self.status in COUNTED and self.value is not None


@dataclass
class Cell:
    params: dict[str, Any]
    runs: list[SweepRun]
    summary: Optional[stats.MeanInterval]

    @property
    def label(self) -> str:
        return ", ".join(f"{short_key(k)}={show_value(v)}" for k, v in self.params.items())


@dataclass
class SweepResults:
    name: str
    sweep: dict  # the ledger row
    factors: list[Factor]
    runs: list[SweepRun]
    cells: list[Cell]
    effects: list[stats.Effect] = field(default_factory=list)
    slopes: list[stats.Slope] = field(default_factory=list)
    noise: Optional[stats.Noise] = None
    references: dict[str, Any] = field(default_factory=dict)

    @property
    def factor_keys(self) -> list[str]:
        return [f.key for f in self.factors]

    @property
    def mode(self) -> str:
        return self.sweep.get("mode") or "grid"

    @property
    def kind(self) -> str:
        """``ablation`` for a grid over ablation variants, else the mode (grid or search)."""
        return "ablation" if any(f.variants is not None for f in self.factors) else self.mode

    @property
    def counted(self) -> list[SweepRun]:
        return [r for r in self.runs if r.counted]

    def observations(self) -> list[tuple[dict, float]]:
        return [(r.params, float(r.value)) for r in self.counted]

    @property
    def best_cell(self) -> Optional[Cell]:
        scored = [c for c in self.cells if c.summary is not None]
        return max(scored, key=lambda c: c.summary.mean) if scored else None

    def status_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.runs:
            out[r.status] = out.get(r.status, 0) + 1
        return out

    def to_dict(self) -> dict:
        return {
            "name": self.name, "mode": self.mode, "factors": self.factor_keys, "runs": len(self.runs),
            "status": self.status_counts(),
            "noise": None if self.noise is None else {"sd": self.noise.sd, "dof": self.noise.dof,
                                                      "source": self.noise.source},
            "cells": [{"params": c.params, "runs": [r.run_id for r in c.runs],
                       "n": c.summary.n if c.summary else 0, "mean": c.summary.mean if c.summary else None,
                       "sd": c.summary.sd if c.summary else None} for c in self.cells],
            "effects": [e.to_dict() for e in self.effects],
            "slopes": [s.to_dict() for s in self.slopes],
        }


def short_key(key: str) -> str:
    return "seed" if key == SEED_KEY else key.split(".")[-1]


def show_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _value(config: Optional[dict], diff: Optional[dict], key: str) -> Any:
    if isinstance(diff, dict) and key in diff:
        return diff[key]
    flat = flatten(config or {})
    return flat.get(key)


def _level(factor: Factor, config: Optional[dict], diff: Optional[dict]) -> Any:
    """The factor's level a run was trained at: its config value, or for an ablation the variant
    whose overrides the run's config holds (the one setting most keys; baseline when none)."""
    if factor.variants is None:
        return _value(config, diff, factor.key)
    flat = flatten(config or {})
    matches = [(len(o), name) for name, o in factor.variants.items()
               if all(k in flat and flat[k] == v for k, v in o.items())]
    return max(matches)[1] if matches else BASELINE


def sweep_results(ledger: Ledger, name: str, level: float = stats.DEFAULT_LEVEL) -> SweepResults:
    """Collect a sweep's runs from the ledger and compute its cells and effects."""
    sweep = ledger.get_sweep(name)
    factors = [Factor.model_validate(f) for f in sweep.get("factors") or []]
    keys = [f.key for f in factors]
    runs: list[SweepRun] = []
    for row in ledger.list_runs():
        if row.get("sweep") != name:
            continue
        params = {f.key: _level(f, row.get("config"), row.get("config_diff")) for f in factors}
        seed = _value(row.get("config"), row.get("config_diff"), SEED_KEY)
        runs.append(SweepRun(run_id=row["id"], name=row.get("name") or row["id"], status=row.get("status") or "",
                             params=params, seed=seed, value=row.get("best_val_score"), best_epoch=row.get("best_epoch"),
                             last_epoch=row.get("last_epoch")))
    runs.sort(key=lambda r: (tuple(stats.level_order(r.params.get(k)) for k in keys), r.seed or 0, r.run_id))
    result = SweepResults(name=name, sweep=sweep, factors=factors, runs=runs, cells=[])
    # references: the recipe's own level where the grid holds it (a run whose diff lacks the key)
    for f in factors:
        if f.variants is not None:
            result.references[f.key] = BASELINE
    for key in keys:
        if key in result.references:
            continue
        for row in ledger.list_runs():
            if row.get("sweep") == name and key not in (row.get("config_diff") or {}):
                result.references[key] = _value(row.get("config"), None, key)
                break
    if result.mode == "grid":
        groups: dict[tuple, list[SweepRun]] = {}
        for r in runs:
            groups.setdefault(tuple(stats.level_key(r.params.get(k)) for k in keys), []).append(r)
        for params, members in groups.items():
            values = [m.value for m in members if m.counted]
            result.cells.append(Cell(dict(zip(keys, params)), members,
                                     stats.mean_interval(values, level) if values else None))
        obs = result.observations()
        if obs:
            result.effects, result.noise = stats.factor_effects(obs, keys, result.references, level)
    else:
        for r in runs:
            result.cells.append(Cell(dict(r.params), [r], stats.mean_interval([r.value], level) if r.counted else None))
        for f in factors:
            pts = [(r.params.get(f.key), r.value) for r in result.counted
                   if isinstance(r.params.get(f.key), (int, float)) and not isinstance(r.params.get(f.key), bool)]
            if f.ranged and pts:
                slope = stats.slope_effect(f.key, [p[0] for p in pts], [p[1] for p in pts], log=f.log, level=level)
                if slope is not None:
                    result.slopes.append(slope)
    return result


def describe_effect(e: stats.Effect) -> str:
    """``dice 2 vs 1: +0.0123 (95% CI -0.0040..+0.0286), not significant: within the noise``."""
    pct = f"{e.confidence * 100:g}%"
    ci = "" if e.low is None else f" ({pct} CI {e.low:+.4f}..{e.high:+.4f})"
    return f"{short_key(e.factor)} {show_value(e.level)} vs {show_value(e.reference)}: {e.estimate:+.4f}{ci}, {e.verdict}"


def describe_slope(s: stats.Slope) -> str:
    unit = "per x10" if s.log else "per unit"
    return (f"{short_key(s.factor)}: {s.slope:+.4f} {unit} ({s.confidence * 100:g}% CI {s.low:+.4f}..{s.high:+.4f}, "
            f"p={s.p:.3f}), {s.verdict}")


def factor_panels(results: SweepResults, level: float = stats.DEFAULT_LEVEL) -> list[FactorPanel]:
    """What the factor plot draws: per factor, each run as a point, each level's mean with its interval."""
    panels = []
    obs = results.observations()
    if not obs:
        return panels
    for f in results.factors:
        points = [(r.params.get(f.key), float(r.value), r.seed) for r in results.counted]
        if results.mode == "grid":
            nz = results.noise or stats.noise(obs, results.factor_keys)
            means = stats.level_means(obs, f.key, nz, level)
            verdicts = {e.level: e.verdict for e in results.effects if e.factor == f.key}
            title = f"{short_key(f.key)}"
            sig = [e for e in results.effects if e.factor == f.key]
            if len(sig) > 3:  # many levels (an ablation): name the ones beyond the noise only
                beyond = [e for e in sig if e.significant]
                title += ("  (significant: " + ", ".join(f"{show_value(e.level)} {e.estimate:+.4f}" for e in beyond)
                          + ")") if beyond else "  (no level beyond the noise)"
            elif sig:
                title += "  (" + "; ".join(f"{show_value(e.level)}: {e.estimate:+.4f}, {_short_verdict(e)}"
                                           for e in sig) + ")"
            panels.append(FactorPanel(factor=short_key(f.key), points=points, means=means, categorical=True,
                                      log=False, title=title, reference=results.references.get(f.key),
                                      notes=verdicts))
        else:
            slope = next((s for s in results.slopes if s.factor == f.key), None)
            title = short_key(f.key) + (f"  (trend {s_text(slope)})" if slope else "")
            panels.append(FactorPanel(factor=short_key(f.key), points=points, means=[], categorical=not f.ranged,
                                      log=f.log, title=title, reference=None, notes={}))
    return panels


def _short_verdict(e: stats.Effect) -> str:
    """The verdict in a plot title's few words: significant, not significant, or cannot tell."""
    if e.low is None:
        return "cannot tell"
    return "significant" if e.significant else "not significant"


def s_text(slope: stats.Slope) -> str:
    return f"{slope.slope:+.4f} {'per x10' if slope.log else 'per unit'}, {'significant' if slope.significant else 'not significant'}"


def plot_sweep(results: SweepResults, path: Path, level: float = stats.DEFAULT_LEVEL,
               metric: str = "score") -> Optional[Path]:
    """The factor plot of a sweep (None when no run finished); ``metric`` names the score."""
    panels = factor_panels(results, level)
    if not panels:
        return None
    noise = results.noise
    sub = ""
    if noise is not None and noise.sd is not None:
        sub = f"seed-to-seed sd {noise.sd:.4f} ({noise.source}, {noise.dof} dof); bars: {level * 100:g}% interval of the mean"
    return plot_factor_panels(panels, path, title=f"sweep {results.name}: best val {metric} per run", subtitle=sub,
                              ylabel=f"best validation {metric}")
