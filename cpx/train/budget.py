"""Wall-clock budgets: ``--budget 2h`` read as minutes, and the callback that fits the epoch
count (and so the cosine schedule) to them."""

from __future__ import annotations

import time
from typing import Optional

from cpx.kernel.errors import ConfigError
from cpx.train.collective import rank0_float
from cpx.train.loop import Callback, StopReason, Trainer


def parse_budget(text: Optional[str]) -> Optional[float]:
    """A wall-clock budget as minutes: ``90m``, ``2h``, ``1h30m``, ``45s`` or plain minutes.

    :raises ConfigError: unreadable text, or not more than zero.
    """
    if not text:
        return None
    s, total, num = text.strip().lower(), 0.0, ""
    if s.startswith("-"):
        raise ConfigError(f"--budget: must be more than zero, not {text!r}")
    try:
        for ch in s:
            if ch.isdigit() or ch == ".":
                num += ch
            elif ch in "hms":
                total += float(num) * {"h": 60, "m": 1, "s": 1 / 60}[ch]
                num = ""
            else:
                raise ValueError
        if num:
            total += float(num)
    except ValueError:
        raise ConfigError(f"--budget: cannot read {text!r}; use e.g. 90m, 2h or 1h30m") from None
    if total <= 0:
        raise ConfigError("--budget: must be more than zero")
    return total


class BudgetCallback(Callback):
    """Fits the epoch count (and so the cosine length) to a wall-clock budget.

    After the first epoch it plans the epochs that fit; after the second it plans once more
    from the second alone, as the first pays one-off costs (allocations, kernel selection).
    While the plan is in its first half it follows the pace both ways (epochs that ran slower
    while the machine was shared shorten it, a quieter machine lengthens it again); in the
    second half it only ever shortens the plan, so the cosine still ends inside the budget
    instead of being cut off at a high learning rate. The time includes validation and
    checkpoints. Under data parallelism rank 0's clock decides, so
    every rank plans the same epochs.
    """

    margin = 0.98  # plan into 98% of the budget: later epochs wobble by a percent or two

    def __init__(self, minutes: float, start_epoch: int, used_seconds: float = 0.0,
                 max_epochs: Optional[int] = None):
        """``used_seconds``: budget already spent by earlier sessions of a resumed run;
        ``max_epochs``: the most the plan may grow to (the config's ``train.epochs``; by
        default the trainer's epochs when the first epoch ends, which for a resumed run is
        its earlier plan)."""
        self.budget = minutes * 60
        self.start_epoch = start_epoch
        self.started = time.perf_counter() - used_seconds
        self.planned: Optional[int] = None
        self.first_plan: Optional[int] = None
        self.durations: list[float] = []
        self._cap: Optional[int] = max_epochs
        self._seen = used_seconds

    def elapsed(self) -> float:
        """Seconds of the budget spent: since the callback was made, plus what earlier sessions
        of a resumed run used."""
        return time.perf_counter() - self.started

    def on_epoch_end(self, trainer: Trainer, record) -> None:
        """Re-plan ``trainer.epochs`` from the epoch times so far; when the budget ends the run
        short of ``train.epochs``, the stop reason says so (:attr:`StopReason.BUDGET`)."""
        elapsed = rank0_float(self.elapsed())
        self.durations.append(elapsed - self._seen)
        self._seen = elapsed
        if self._cap is None:
            self._cap = trainer.epochs
        recent = self.durations[1:] or self.durations
        per_epoch = sum(recent) / len(recent)
        fit = trainer.epoch + int(max(0.0, self.budget * self.margin - elapsed) // max(per_epoch, 1e-9))
        # the plan may grow again (a shared machine got quieter) while the cosine is in its first
        # half, where a slightly longer schedule changes the learning rate little; later only shorten
        early = len(self.durations) <= 2 or trainer.epoch < trainer.epochs / 2
        ceiling = self._cap if early else trainer.epochs
        self.planned = max(trainer.epoch, min(ceiling, fit))
        if self.first_plan is None:
            self.first_plan = self.planned
        trainer.set_epochs(self.planned)  # the learning-rate schedule follows the new plan
        if trainer.epoch >= self.planned and self.planned < self._cap:
            trainer.stop(StopReason.BUDGET, self.summary())

    def summary(self) -> str:
        """One line: the budget, the epochs planned (first and last plan) and the minutes used."""
        return (f"budget {self.budget / 60:g} min: planned {self.planned} epoch{'' if self.planned == 1 else 's'} "
                f"(first plan {self.first_plan}), used {self.elapsed() / 60:.2f} min")
