"""What a tracker logger is: the :class:`Logger` interface plugins implement, the
:class:`RunRecord` it is handed, and how a ``NAME:TARGET`` spec becomes a logger.

A logger never sees the trainer, the ledger or a run folder: live logging
(:class:`cpx.train.tracking.TrackingCallback`) and export (:func:`cpx.track.export.export_runs`)
both turn a run into the same calls (``start``, ``log_metrics`` per epoch, ``finish``) with
records made by one function (:func:`cpx.track.record.run_record`), so a run logged live and the
same run exported later hold the same fields.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from cpx.kernel.errors import ConfigError
from cpx.kernel.manager import PluginHost

# the per-epoch values of a history entry that trackers get (history.json's keys; the
# competition's metric is val_score, the EMA weights' val_score_ema)
EPOCH_METRICS = ("train_loss", "val_loss", "val_score", "val_loss_ema", "val_score_ema", "lr", "images_per_s",
                 "seconds")

# characters every tracker we know accepts in a key (MLflow's rule is the narrowest)
_KEY_BAD = re.compile(r"[^A-Za-z0-9_.\-/ ]")


def metric_key(*parts: Any) -> str:
    """A metric or tag key from ``parts`` joined with dots, each character MLflow would refuse
    replaced by ``_`` (a Codabench column may be called anything)."""
    return ".".join(_KEY_BAD.sub("_", str(p)) for p in parts)


@dataclass
class RunRecord:
    """One cpx run as a tracker gets it (:func:`cpx.track.record.run_record` makes it).

    ``id`` is the cpx run id: a logger keys the tracker's run by it, so a second export or a
    resumed run reopens the same one. ``experiment`` is where runs group (the competition's
    name). ``params`` is the resolved config flattened to dotted keys, values as text (strings
    as they are, anything else as JSON). ``tags`` describe the run (``cpx.run_id``, recipe,
    competition, model, sweep, trial, git_commit, metric, status, ...). ``summary`` holds
    single values (best_val_score, best_epoch, epochs, param_count, wall_seconds, and each
    submission's ``submission.<name>.val_score`` and recorded ``submission.<name>.<phase>.<column>``
    scores). ``artifacts`` maps file names to the files to upload (config.yaml, history.json,
    curves.png, best.pt with weights). ``started_at`` / ``finished_at`` are milliseconds since
    the epoch (None when unknown or still running). ``status`` is the cpx status: running,
    completed, stopped, pruned or failed.
    """

    id: str
    name: str
    experiment: str
    status: str
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    summary: dict[str, float] = field(default_factory=dict)
    artifacts: dict[str, Path] = field(default_factory=dict)
    started_at: Optional[int] = None
    finished_at: Optional[int] = None


@dataclass
class TrackedRun:
    """What a tracker holds of a run, as a logger's optional ``read`` returns it (for
    :func:`cpx.testing.check_logger` and tests): params, tags, each metric's ``(step, value)``
    pairs in step order, and the artifact names."""

    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    artifacts: list[str] = field(default_factory=list)


class Logger:
    """A connection to an experiment tracker that runs are logged to, one run after another:
    ``start(run)``, then ``log_metrics`` for each epoch, then ``finish(run)``. All calls for one
    logger come from one thread (live logging runs them off the training thread).

    A logger must be idempotent: ``start`` of a run the tracker already holds (keyed by
    ``run.id``) reopens it, params and tags written again are no change, and a metric value
    already held for a step is not written twice; so exporting twice, or logging a resumed run
    whose first epochs were logged already, leaves one run with one value per epoch.
    """

    def start(self, run: RunRecord) -> Optional[str]:
        """Open (or reopen) the tracker's run for ``run`` and write its params and tags;
        returns where the run is in the tracker (its id or folder), for people to find it."""
        raise NotImplementedError

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        """The values of epoch ``step`` of the run started last (finite floats only)."""
        raise NotImplementedError

    def finish(self, run: RunRecord) -> None:
        """Write the run's final tags, ``summary`` values and ``artifacts`` and its status
        (``run.status``); the run is then closed."""
        raise NotImplementedError

    def read(self, run_id: str) -> Optional[TrackedRun]:
        """What the tracker holds of cpx run ``run_id`` (None: not there). Optional: a logger
        that cannot read back returns None for every run and skips the read-back checks."""
        return None


def epoch_metrics(entry: Mapping[str, Any]) -> dict[str, float]:
    """The tracked values of one ``history.json`` entry: :data:`EPOCH_METRICS` that are finite
    numbers (an epoch without validation has no val_score)."""
    out = {}
    for key in EPOCH_METRICS:
        value = entry.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[key] = float(value)
    return out


def param_value(value: Any) -> str:
    """A config value as a tracker param: a string as it is, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def flatten_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A resolved config as dotted keys (``optimizer.lr``, ``model.options.dropout``); a
    non-empty mapping nests, anything else (lists, empty mappings) is one value."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten_params(value, name + "."))
        else:
            out[name] = param_value(value)
    return out


@dataclass(frozen=True)
class LoggerSpec:
    """``NAME[:TARGET]`` as ``--log-to`` takes it: the registered logger and its target (the
    text after the first colon, e.g. ``sqlite:///mlruns.db`` or a folder; None when absent)."""

    name: str
    target: Optional[str] = None

    def __str__(self) -> str:
        return self.name if self.target is None else f"{self.name}:{self.target}"


def parse_spec(spec: str) -> LoggerSpec:
    """``mlflow:sqlite:///mlruns.db`` -> ``LoggerSpec("mlflow", "sqlite:///mlruns.db")``.

    :raises ConfigError: an empty spec or name.
    """
    name, sep, target = str(spec).strip().partition(":")
    if not name:
        raise ConfigError(f"--log-to {spec!r}: give NAME:TARGET, e.g. mlflow:sqlite:///mlruns.db or tensorboard:tb")
    return LoggerSpec(name, target if sep and target else None)


def create_logger(spec: str | LoggerSpec, host: PluginHost, options: Any = None) -> Logger:
    """A logger for ``spec`` from the plugins' ``register_loggers``.

    :raises UnknownComponent: no logger of that name (close names suggested).
    :raises MissingDependency: the tracker's package is not installed (the extra to install named).
    :raises ConfigError: options that do not validate, a factory that returned no logger.
    """
    spec = spec if isinstance(spec, LoggerSpec) else parse_spec(spec)
    entry = host.loggers.get(spec.name)
    logger = entry.create(options, spec.target, where=f"--log-to {spec.name}")
    for method in ("start", "log_metrics", "finish"):
        if not callable(getattr(logger, method, None)):
            raise ConfigError(f"logger {spec.name} ({entry.origin}): its factory returned {type(logger).__name__}, "
                              f"which has no {method}()")
    return logger


__all__ = ["EPOCH_METRICS", "Logger", "LoggerSpec", "RunRecord", "TrackedRun", "create_logger", "epoch_metrics",
           "flatten_params", "metric_key", "param_value", "parse_spec"]
