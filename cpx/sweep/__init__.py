"""Sweeps: many cpx runs that differ in a few factors, scheduled by an Optuna study.

``spec`` parses what varies, ``study`` holds the Optuna plumbing (storage, samplers, pruner,
slots shared by workers, retries) and ``runner`` trains trials as ordinary runs. The statistics
of a sweep's results live in ``cpx.report``.

May import: ``cpx.kernel``, ``cpx.data``, ``cpx.runs``, ``cpx.eval``, ``cpx.train``.
"""

from cpx.sweep.runner import SweepEvent, SweepOutcome, SweepRequest, SweepStatus, run_sweep
from cpx.sweep.spec import Factor, SweepSpec, parse_grid, parse_search

__all__ = ["Factor", "SweepEvent", "SweepOutcome", "SweepRequest", "SweepSpec", "SweepStatus", "parse_grid",
           "parse_search", "run_sweep"]
