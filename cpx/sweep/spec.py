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
VARIANT_KEY = "variant"  # the factor of an ablation: its levels are named sets of overrides
BASELINE = "baseline"  # the ablation's reference level: the recipe as it is


class Factor(BaseModel):
    """One thing a sweep varies: a config key path with grid levels (``values``) or a range."""

    model_config = ConfigDict(extra="forbid")

    key: str = Field(description="config key path, e.g. loss.options.dice")
    values: Optional[list[Any]] = Field(None, description="grid levels, or the choices of a categorical search")
    low: Optional[float] = Field(None, description="lower end of a searched range")
    high: Optional[float] = Field(None, description="upper end of a searched range")
    log: bool = Field(False, description="search the range on a log scale")
    integer: bool = Field(False, description="search whole numbers only")
    variants: Optional[dict[str, dict[str, Any]]] = Field(
        None, description="an ablation: each level's overrides (key path -> value); the first level, "
                          "baseline, is the recipe unchanged")

    @model_validator(mode="after")
    def _one_kind(self) -> "Factor":
        if self.variants is not None:
            if self.key != VARIANT_KEY or self.values != [BASELINE, *self.variants]:
                raise ValueError(f"an ablation factor is {VARIANT_KEY}={BASELINE},<its variants>")
            if not self.variants or not all(self.variants.values()):
                raise ValueError("each ablation variant needs at least one key=value")
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

    def overrides(self, level: Any) -> dict[str, Any]:
        """What this factor's ``level`` sets: ``{key: level}``, or an ablation variant's overrides."""
        if self.variants is None:
            return {self.key: level}
        return dict(self.variants.get(level, {}))

    def describe(self) -> str:
        if self.variants is not None:
            return "ablation " + "; ".join(
                f"{name}: " + ", ".join(f"{k}={_show(v)}" for k, v in o.items()) for name, o in self.variants.items())
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
    prune: bool = Field(False, description="stop hopeless trials early (median of per-epoch validation scores)")
    direction: Literal["maximize", "minimize"] = Field(
        "maximize", description="the competition metric's direction, which the study optimises")
    base_config: Optional[dict[str, Any]] = Field(
        None, description="the recipe with the fixed overrides, resolved and flattened (key path -> value) when "
                          "the sweep started: resuming after the recipe was edited is refused, naming what changed")

    @model_validator(mode="after")
    def _consistent(self) -> "SweepSpec":
        if not self.factors:
            raise ValueError("a sweep needs at least one --grid or --search factor")
        keys = [f.key for f in self.factors]
        if VARIANT_KEY in keys and self.mode != "grid":
            raise ValueError("--ablate makes a grid over its variants; combine it with --grid, not --search")
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
        # not base_config either: names stay those of studies made before it was recorded, and a
        # recipe edited since is caught by config_changes, which can say what changed
        data = self.model_dump(mode="json", exclude={"trials", "prune", "base_config"})
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:6]

    def config_changes(self, other: "SweepSpec", limit: int = 5) -> list[str]:
        """``key: old -> new`` for each field of the resolved recipe that differs between this
        (stored) spec and ``other``; empty when either was recorded without one."""
        if self.base_config is None or other.base_config is None:
            return []
        keys = sorted(set(self.base_config) | set(other.base_config))
        missing = object()
        changed = [f"{k}: {self.base_config.get(k, '(none)')!r} -> {other.base_config.get(k, '(none)')!r}"
                   for k in keys if k not in ("recipe", "description")
                   and self.base_config.get(k, missing) != other.base_config.get(k, missing)]
        return changed[:limit] + ([f"and {len(changed) - limit} more"] if len(changed) > limit else [])

    def default_name(self) -> str:
        words = [f.key.split(".")[-1] for f in self.factors]
        slug = re.sub(r"[^a-z0-9]+", "-", "-".join([self.recipe, *words]).lower()).strip("-")[:48]
        return f"{slug}-{self.identity()}"

    def trial_overrides(self, params: dict[str, Any]) -> dict[str, Any]:
        """The overrides of one trial: the fixed ones, the trial's factor values (an ablation
        variant's overrides in place of its name), its budget."""
        out = dict(self.overrides)
        factors = {f.key: f for f in self.factors}
        for key, value in params.items():
            out.update(factors[key].overrides(value) if key in factors else {key: value})
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


def parse_ablate(texts: list[str], shortcuts: Optional[dict[str, str]] = None) -> Factor:
    """``["plain-flip:augmentation.options.flip_swap=false", "msf:model.name=msf-lmsa"]`` -> the
    ablation factor ``variant`` with levels ``baseline`` (the recipe as it is) and each named
    variant. A name given twice collects several keys into one variant.

    :raises ConfigError: a text that is not ``NAME:key=value``, or a variant named baseline.
    """
    variants: dict[str, dict[str, Any]] = {}
    for text in texts:
        name, sep, assignment = text.partition(":")
        key, eq, raw = assignment.partition("=")
        name, key = name.strip(), (shortcuts or {}).get(key.strip(), key.strip())
        if not sep or not eq or not name or not key or not re.fullmatch(r"[A-Za-z0-9_.+-]+", name):
            raise ConfigError(f"--ablate {text!r}: expected NAME:key=value (NAME of letters, digits, . _ + -)")
        if name == BASELINE:
            raise ConfigError(f"--ablate {text!r}: {BASELINE} is the recipe unchanged; name the variant otherwise")
        raw = raw.strip()
        try:  # a list such as [0.5, 1.5] as YAML; one value as --grid reads it
            value = yaml.safe_load(raw) if raw.startswith("[") else _scalar(raw, f"--ablate {name}")
        except yaml.YAMLError:
            raise ConfigError(f"--ablate {text!r}: {raw!r} is not a value or a [list]") from None
        variant = variants.setdefault(name, {})
        if key in variant and variant[key] != value:
            raise ConfigError(f"--ablate {name}: {key} is set twice ({variant[key]!r} and {value!r}); give one")
        variant[key] = value
    return Factor(key=VARIANT_KEY, values=[BASELINE, *variants], variants=variants)


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
