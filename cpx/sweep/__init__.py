"""Sweeps: many cpx runs that differ in a few factors, scheduled by an Optuna study.

``spec`` parses what varies, ``study`` holds the Optuna plumbing (storage, samplers, pruner,
slots shared by workers, retries) and ``runner`` trains trials as ordinary runs. The statistics
of a sweep's results live in ``cpx.report``.

May import: ``cpx.kernel``, ``cpx.data``, ``cpx.runs``, ``cpx.eval``, ``cpx.train``.
"""

from cpx.kernel.lazy import lazy_exports

# imported on first use: the runner needs Optuna and torch, the spec (read by reports) neither
_EXPORTS = {
    "runner": ("SweepEvent", "SweepOutcome", "SweepRequest", "SweepStatus", "run_sweep"),
    "spec": ("Factor", "SweepSpec", "parse_grid", "parse_search"),
}
__all__ = sorted(name for names in _EXPORTS.values() for name in names)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
