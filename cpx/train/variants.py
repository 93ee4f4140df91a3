"""Budgets that choose: which of a recipe's ``budget_variants`` a ``--budget`` run trains.

A variant is a way to spend the minutes (a resolution, a width: config changes) with the scores
recorded for it (:class:`~cpx.kernel.config.BudgetVariant`: ``[images, score]`` points of runs
whose schedule was fitted to that many training images). Fewer pixels per image buy more
epochs; which wins depends on how many images this machine can show the model in the budget.
For each variant cpx

1. times this machine: training images/s over :data:`PROBE_STEPS` steps of random pixels at the
   variant's settings (model, resolution, batch, precision, threads), after
   :data:`PROBE_WARMUP` untimed steps;
2. counts the images it can see: that pace x the seconds the budget has left x
   :data:`TRAINING_SHARE` (the rest validates and checkpoints);
3. reads the score its curve gives for that many images (:func:`predict_score`),

and trains the variant with the best predicted score (the first listed on a tie). The choice,
the figures behind it and the probe's seconds (counted in the budget) are printed, written to
the run folder as ``budget_choice.json`` and recorded in the ledger through the config
(``train.budget_variant`` and the keys the variant sets). A user who sets a key a variant sets
(``--image-size 384``) gets the recipe as asked; ``--set train.budget_variant=NAME`` pins one.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from cpx.kernel.config import BudgetVariant, ExperimentConfig, build_config
from cpx.kernel.errors import ConfigError

# share of a budget's seconds spent in training steps; validations (at the competition's size)
# and checkpoints take the rest
TRAINING_SHARE = 0.9
PROBE_WARMUP = 1
PROBE_STEPS = 2
CHOICE_FILE = "budget_choice.json"


def predict_score(curve: Sequence[Sequence[float]], images: float, greater_is_better: bool = True) -> float:
    """The score a run fitted to ``images`` training images is expected to reach, from
    ``curve`` (``[images, score]`` points, images strictly increasing): linear in
    ``log10(images)`` between points; outside them, the nearest segment's line, never better
    than the best recorded score (nothing recorded says more images help beyond it) and never
    below zero. One point: its score. ``images`` must be positive.
    """
    if images <= 0:
        raise ValueError(f"images must be positive, not {images}")
    xs = [math.log10(p[0]) for p in curve]
    ys = [float(p[1]) for p in curve]
    if len(xs) == 1:
        return ys[0]
    x = math.log10(images)
    i = 0
    while i < len(xs) - 2 and x > xs[i + 1]:
        i += 1
    value = ys[i] + (ys[i + 1] - ys[i]) / (xs[i + 1] - xs[i]) * (x - xs[i])
    value = min(max(ys), value) if greater_is_better else max(min(ys), value)
    return max(0.0, value)


@dataclass
class VariantEstimate:
    """One variant's figures: this machine's pace, the images it fits in the budget, the score
    its curve predicts for them."""

    name: str
    images_per_s: float
    images: int
    predicted: float
    source: str = ""  # where the variant's curve was measured


@dataclass
class BudgetChoice:
    """The variant a budget run trains and why (``reason`` is one line)."""

    chosen: Optional[str]
    reason: str
    minutes: float
    probe_seconds: float = 0.0
    estimates: list[VariantEstimate] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_pace(config: ExperimentConfig, host, steps: int = PROBE_STEPS, warmup: int = PROBE_WARMUP) -> float:
    """Training images/s of ``config`` on this machine: ``steps`` timed steps of
    ``train.batch_size`` random images at ``data.image_size`` after ``warmup`` untimed ones,
    through the trainer's own step (augmentation, loss, optimizer, precision, memory format).
    Random pixels cost what real ones do, so no data is read."""
    import torch

    from cpx.kernel.device import resolve_device, resolve_precision
    from cpx.train.run import build_components
    from cpx.train.timing import time_training

    competition = host.competition(config.competition)
    device = resolve_device(config.train.device)
    precision = resolve_precision(config.train.precision, device)
    size, batch = int(config.data.image_size), int(config.train.batch_size)
    model, loss_fn, augment = build_components(config, host, competition)
    g = torch.Generator().manual_seed(0)
    count = batch * (warmup + steps)
    images = torch.randint(0, 256, (count, competition.channels, size, size), dtype=torch.uint8, generator=g)
    masks = torch.randint(0, competition.num_classes, (count, size, size), dtype=torch.uint8, generator=g)
    rate, _ = time_training(config, model.to(device), loss_fn, augment, images, masks, warmup, device, precision,
                            lambda: None)
    return rate


def _variant(config: ExperimentConfig, name: str) -> BudgetVariant:
    for v in config.budget_variants:
        if v.name == name:
            return v
    known = ", ".join(v.name for v in config.budget_variants) or "none: the recipe lists no budget_variants"
    raise ConfigError(f"train.budget_variant: no variant {name!r} (known: {known})")


def _with_variant(recipe: str, overrides: dict[str, Any], variant: BudgetVariant, experiments_dir: Path,
                  host) -> tuple[ExperimentConfig, dict]:
    return build_config(recipe, {**overrides, **variant.set, "train.budget_variant": variant.name},
                        experiments_dir, host)


def choose_budget_variant(recipe: str, overrides: dict[str, Any], config: ExperimentConfig, experiments_dir: Path,
                          host, greater_is_better: bool = True,
                          pace=measure_pace) -> tuple[ExperimentConfig, dict, Optional[BudgetChoice]]:
    """The config a run trains once its recipe's ``budget_variants`` are weighed: ``config``
    (built from ``recipe`` and ``overrides``) unchanged when the recipe lists none, when the
    user set a key a variant sets, or when there is no budget and no pinned variant; the pinned
    variant's (``train.budget_variant``); else the variant with the best predicted score for
    the budget (see the module docstring). Returns ``(config, diff, choice)``; ``choice`` is
    None when nothing was weighed. ``pace(config, host)`` gives images/s (the probe; tests
    pass their own).

    :raises ConfigError: ``train.budget_variant`` names no variant of the recipe.
    """
    variants = config.budget_variants
    pinned = config.train.budget_variant
    minutes = config.train.budget_minutes
    if pinned:
        cfg, diff = _with_variant(recipe, overrides, _variant(config, pinned), experiments_dir, host)
        return cfg, diff, BudgetChoice(pinned, f"{pinned}, pinned by train.budget_variant", minutes or 0.0)
    if not variants or not minutes:
        return config, None, None
    fixed = sorted({key for v in variants for key in v.set} & set(overrides))
    if fixed:
        return config, None, BudgetChoice(None, f"none chosen: {', '.join(fixed)} set, so the recipe trains as asked",
                                          minutes)
    start = time.perf_counter()
    built = [(v, *_with_variant(recipe, overrides, v, experiments_dir, host)) for v in variants]
    rates = [pace(cfg, host) for _, cfg, _ in built]
    probe = round(time.perf_counter() - start, 2)
    left = max(0.0, minutes * 60 - probe)
    estimates = [VariantEstimate(v.name, round(rate, 3), int(rate * left * TRAINING_SHARE),
                                 round(predict_score(v.curve, max(1.0, rate * left * TRAINING_SHARE),
                                                     greater_is_better), 4), v.source)
                 for (v, _, _), rate in zip(built, rates)]
    sign = 1.0 if greater_is_better else -1.0
    best = max(range(len(estimates)), key=lambda i: (sign * estimates[i].predicted, -i))
    e = estimates[best]
    others = "; ".join(f"{o.name} {o.images_per_s:.1f} images/s, {o.images} images -> {o.predicted:g}"
                       for o in estimates if o is not e)
    reason = (f"{e.name} ({e.images_per_s:.1f} images/s here, {e.images} images in the {left / 60:.1f} of "
              f"{minutes:g} min left after {probe:.0f} s of timing, recorded curve predicts {e.predicted:g}"
              + (f"; others: {others}" if others else "") + ")")
    if not config.data.path:
        reason += "; the curves were measured on the competition's data, not on synthetic images"
    _, cfg, diff = built[best]
    return cfg, diff, BudgetChoice(e.name, reason, minutes, probe, estimates)


def weigh_budget_variants(recipe: str, overrides: dict[str, Any], config: ExperimentConfig, diff: dict,
                          experiments_dir: Path, host, choose: bool = True) -> tuple[ExperimentConfig, dict, Any]:
    """``(config, diff, choice)`` a new run trains: :func:`choose_budget_variant`'s, by the
    competition metric's direction (only a pinned variant unless ``choose``; ``config`` and
    ``diff`` unchanged when nothing is weighed). Under data parallelism rank 0 times the machine
    and every rank trains its choice."""
    from cpx.eval.metrics import create_metric
    from cpx.train.collective import rank0_object, rank_world

    if not config.train.budget_variant and (not config.budget_variants or not choose):
        return config, diff, None
    chosen = None
    if rank_world()[0] == 0:  # one process times the machine; the others wait for its choice
        metric = create_metric(host.competition(config.competition), host)
        chosen = choose_budget_variant(recipe, overrides, config, experiments_dir, host,
                                       greater_is_better=metric.greater_is_better)[2]
    chosen = rank0_object(chosen)
    if chosen is None or chosen.chosen is None:
        return config, diff, chosen
    config, diff = _with_variant(recipe, overrides, _variant(config, chosen.chosen), experiments_dir, host)
    return config, diff, chosen
