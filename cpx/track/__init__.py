"""Where runs go outside cpx: experiment trackers (MLflow, TensorBoard, and any a plugin adds
through ``register_loggers``).

This package owns the logger contract (:mod:`cpx.track.logger`: :class:`Logger`,
:class:`RunRecord`, ``NAME:TARGET`` specs), what a run looks like to a tracker
(:func:`cpx.track.record.run_record`: params, tags, per-epoch metrics, summary values,
submissions and scores, artifacts) and the export of recorded runs
(:func:`cpx.track.export.export_runs`). Live logging while training is
:class:`cpx.train.tracking.TrackingCallback`, which makes the same calls. It never imports a
tracker's package, which the built-in loggers (``cpx_plugins.loggers``) import only when one is
used. Only the contract is imported here, so a plugin importing it stays light at command-line
start-up.

May import: ``cpx.kernel``, ``cpx.runs``, ``cpx.eval`` (a metric's tag). Never ``cpx.train``.
"""

from cpx.track.logger import (
    EPOCH_METRICS,
    Logger,
    LoggerSpec,
    RunRecord,
    TrackedRun,
    create_logger,
    epoch_metrics,
    flatten_params,
    metric_key,
    parse_spec,
)

__all__ = ["EPOCH_METRICS", "Logger", "LoggerSpec", "RunRecord", "TrackedRun", "create_logger", "epoch_metrics",
           "flatten_params", "metric_key", "parse_spec"]
