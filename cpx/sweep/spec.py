"""What a sweep varies: factors (config key paths with grid levels or search ranges), seeds,
the fixed overrides of every trial, and the sweep's name.

``--grid dice=1.0,1.5`` and ``--search lr=1e-4..3e-3:log`` are parsed here into
:class:`Factor`; a :class:`SweepSpec` is stored with the study (so workers that join it need
only its name) and in the ledger. The name is derived from the spec, so running the same
command again finds and resumes the same study.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cpx.kernel.errors import ConfigError

SEED_KEY = "train.seed"
BUDGET_KEY = "train.budget_minutes"


class Factor(BaseModel):
    """One thing a sweep varies: a config key path with grid levels (``values``) or a range."""

    model_config = ConfigDict(extra="forbid")

    key: str = Field(description="config key path, e.g. loss.options.dice")
    values: Optional[list[Any]] = Field(None, description="grid levels, or the choices of a categorical search")
    low: Optional[float] = Field(None, description="lower end of a searched range")
    high: Optional[float] = Field(None, description="upper end of a searched range")
    log: bool = Field(False, description="search the range on a log scale")
    integer: bool = Field(False, description="search whole numbers only")

    @model_validator(mode="after")
    def _one_kind(self) -> "Factor":
        ranged = self.low is not None or self.high is not None
        if (self.values is None) == (not ranged):
            raise ValueError(f"{self.key}: give either values or a low..high range")
        if ranged:
            if self.low is None or self.high is None or not self.low < self.high:
                raise ValueError(f"{self.key}: a range needs low < high")
            if self.log and self.low <= 0:
                raise ValueError(f"{self.key}: a log range must be above zero")
        elif not self.values:
            raise ValueError(f"{self.key}: no values")
        return self

    @property
    def ranged(self) -> bool:
        return self.values is None

    def describe(self) -> str:
        if self.values is not None:
            return f"{self.key}=" + ",".join(_show(v) for v in self.values)
        suffix = ":log" if self.log else ":int" if self.integer else ""
        return f"{self.key}={_show(self.low)}..{_show(self.high)}{suffix}"


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return json.dumps(value) if not isinstance(value, str) else value


class SweepSpec(BaseModel):
    """A whole sweep: recipe, factors, seeds, fixed overrides and per-trial settings."""

    model_config = ConfigDict(extra="forbid")

    recipe: str = Field(description="recipe every trial starts from")
    mode: Literal["grid", "search"] = Field(description="grid: every combination; search: TPE over ranges")
    factors: list[Factor] = Field(description="what the sweep varies")
    seeds: int = Field(1, ge=1, description="grid: each cell is trained with seeds 0..N-1")
    trials: Optional[int] = Field(None, ge=1, description="search: number of trials")
    overrides: dict[str, Any] = Field(default_factory=dict, description="fixed overrides of every trial")
    budget_minutes: Optional[float] = Field(None, gt=0, description="wall-clock budget of each trial")
    prune: bool = Field(False, description="stop hopeless trials early (median of per-epoch val F)")

    @model_validator(mode="after")
    def _consistent(self) -> "SweepSpec":
        if not self.factors:
            raise ValueError("a sweep needs at least one --grid or --search factor")
        keys = [f.key for f in self.factors]
        if len(set(keys)) != len(keys):
            raise ValueError(f"a factor is given twice: {', '.join(sorted({k for k in keys if keys.count(k) > 1}))}")
        if self.mode == "grid":
            if any(f.ranged for f in self.factors):
                raise ValueError("a grid takes listed values (--grid k=a,b); ranges need --search")
            if self.seeds > 1 and SEED_KEY in keys:
                raise ValueError(f"--seeds repeats each cell over {SEED_KEY}; do not also vary it as a factor")
        else:
            if self.trials is None:
                raise ValueError("a search needs --trials N")
            if self.seeds > 1:
                raise ValueError("--seeds repeats grid cells; a search draws each trial once (use --grid)")
        return self

    @property
    def factor_keys(self) -> list[str]:
        return [f.key for f in self.factors]

    def grid(self) -> dict[str, list]:
        """The grid sampler's search space: each factor's levels, plus the seeds."""
        space = {f.key: list(f.values or []) for f in self.factors}
        if self.seeds > 1:
            space[SEED_KEY] = list(range(self.seeds))
        return space

    @property
    def total(self) -> int:
        """How many trials the sweep has (every grid cell times its seeds, or --trials)."""
        if self.mode == "search":
            return int(self.trials or 0)
        n = self.seeds
        for f in self.factors:
            n *= len(f.values or [])
        return n

    def identity(self) -> str:
        """A digest of what defines the results (not ``trials`` or ``prune``, so a search can be
        extended and pruning switched without starting another study)."""
        data = self.model_dump(mode="json", exclude={"trials", "prune"})
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:6]

    def default_name(self) -> str:
        words = [f.key.split(".")[-1] for f in self.factors]
        slug = re.sub(r"[^a-z0-9]+", "-", "-".join([self.recipe, *words]).lower()).strip("-")[:48]
        return f"{slug}-{self.identity()}"

    def trial_overrides(self, params: dict[str, Any]) -> dict[str, Any]:
        """The overrides of one trial: the fixed ones, the trial's factor values, its budget."""
        out = {**self.overrides, **params}
        if self.budget_minutes:
            out[BUDGET_KEY] = self.budget_minutes
        return out

    def describe(self) -> str:
        parts = [f.describe() for f in self.factors]
        if self.mode == "grid":
            parts.append(f"{self.seeds} seed(s)")
        else:
            parts.append(f"{self.trials} trials (TPE)")
        return f"{self.recipe}: " + "  ".join(parts)


def _scalar(text: str, where: str) -> Any:
    # numbers first: YAML 1.1 reads 1e-4 (no dot) as a string
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    if value is not None and not isinstance(value, (str, int, float, bool)):
        raise ConfigError(f"{where}: {text!r} is not a single value (numbers, words or true/false)")
    return value


def parse_grid(text: str, shortcuts: Optional[dict[str, str]] = None) -> Factor:
    """``dice=1.0,1.5,2`` (or a full key path) -> a grid factor."""
    key, sep, raw = text.partition("=")
    key = (shortcuts or {}).get(key.strip(), key.strip())
    if not sep or not key or not raw.strip():
        raise ConfigError(f"--grid {text!r}: expected key=value1,value2,...")
    values = [_scalar(v.strip(), f"--grid {key}") for v in raw.split(",")]
    if len(set(map(json.dumps, values))) != len(values):
        raise ConfigError(f"--grid {key}: a value is listed twice")
    return Factor(key=key, values=values)


def parse_search(text: str, shortcuts: Optional[dict[str, str]] = None) -> Factor:
    """``lr=1e-4..3e-3:log``, ``dice=0.5..3``, ``epochs=10..40:int`` or ``name=a,b`` -> a search factor."""
    key, sep, raw = text.partition("=")
    key = (shortcuts or {}).get(key.strip(), key.strip())
    if not sep or not key or not raw.strip():
        raise ConfigError(f"--search {text!r}: expected key=low..high[:log|:int] or key=a,b,c")
    if ".." not in raw:
        return Factor(key=key, values=[_scalar(v.strip(), f"--search {key}") for v in raw.split(",")])
    body, _, flag = raw.partition(":")
    if flag not in ("", "log", "int"):
        raise ConfigError(f"--search {key}: unknown flag :{flag} (use :log or :int)")
    lo_text, _, hi_text = body.partition("..")
    lo, hi = _scalar(lo_text.strip(), f"--search {key}"), _scalar(hi_text.strip(), f"--search {key}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lo, hi)):
        raise ConfigError(f"--search {key}: {body!r} is not a range of numbers")
    integer = flag == "int" or (flag == "" and isinstance(lo, int) and isinstance(hi, int))
    try:
        return Factor(key=key, low=float(lo), high=float(hi), log=flag == "log", integer=integer)
    except ValueError as exc:
        raise ConfigError(f"--search {key}: {exc}") from None
