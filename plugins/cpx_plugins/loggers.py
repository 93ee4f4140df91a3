"""Built-in loggers: MLflow (through its client) and TensorBoard (through
``torch.utils.tensorboard``), each an optional extra (``pip install 'cpx[mlflow]'``,
``'cpx[tensorboard]'``).

Making a logger checks that its package is installed (else
:class:`~cpx.kernel.errors.MissingDependency` naming the extra, before any training); the
package is imported when a run starts, on the tracking worker thread, and never when this module
loads, so the command line starts without it. Both are idempotent as
:class:`cpx.track.Logger` asks: MLflow finds its run by the ``cpx.run_id`` tag and reads which
steps each metric holds; TensorBoard reads the event files already in the run's folder.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping, Optional

from pydantic import BaseModel, ConfigDict, Field

from cpx.kernel.errors import ConfigError, MissingDependency
from cpx.kernel.hookspecs import hookimpl
from cpx.track import Logger, RunRecord, TrackedRun

# MLflow refuses longer values; its batch call takes at most 100 params or tags, 1000 metrics
_PARAM_MAX, _TAG_MAX, _KEY_MAX = 6000, 5000, 250
_BATCH = 100
# cpx status -> MLflow run status (a run still training stays RUNNING)
_MLFLOW_STATUS = {"completed": "FINISHED", "pruned": "FINISHED", "failed": "FAILED", "stopped": "KILLED",
                  "interrupted": "KILLED", "imported": "FINISHED"}
RUN_TAG = "cpx.run_id"


def _require(package: str, extra: str) -> None:
    """Fail now, in one line naming the extra, when ``package`` is not installed; it is imported
    later, off the training thread (importing mlflow takes seconds)."""
    try:
        found = importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # a parent package missing, or blocked in sys.modules
        found = False
    if not found:
        raise MissingDependency(f"--log-to {extra} needs the {package} package, which is not installed: "
                                f"pip install 'cpx[{extra}]'")


def _first_sentence(exc: Exception) -> str:
    """The first sentence of an exception's message, on one line (mlflow's run to a paragraph)."""
    text = " ".join(str(exc).split())
    return text.split(". ")[0].rstrip(".") or type(exc).__name__


def _chunks(items: list, size: int = _BATCH):
    for i in range(0, len(items), size):
        yield items[i:i + size]


class _Seen:
    """The values a tracker holds, by key and step, so nothing is written twice."""

    def __init__(self):
        self.values: dict[str, dict[int, float]] = {}

    def holds(self, key: str, step: int, value: Optional[float] = None) -> bool:
        """Whether ``key`` has a value at ``step`` (equal to ``value``, when given)."""
        held = self.values.get(key, {})
        if step not in held:
            return False
        return value is None or held[step] == value or abs(held[step] - value) <= 1e-6 * max(1.0, abs(value))

    def add(self, key: str, step: int, value: float) -> None:
        self.values.setdefault(key, {})[step] = value


# --------------------------------------------------------------------------------------------
# MLflow


class MlflowOptions(BaseModel):
    """Options of the ``mlflow`` logger."""

    model_config = ConfigDict(extra="forbid")

    experiment: Optional[str] = Field(None, description="the MLflow experiment runs go to; default: "
                                                        "$MLFLOW_EXPERIMENT_NAME, else the run's competition")


class MlflowLogger(Logger):
    """A run as an MLflow run: params, tags, per-epoch metrics (step = epoch), summary values at
    step 0, artifacts, status; found again by its ``cpx.run_id`` tag. ``target`` is the tracking
    URI (``sqlite:///mlruns.db``, ``http://host:5000``); None: MLflow's own default
    (``$MLFLOW_TRACKING_URI``, else ``./mlruns``)."""

    def __init__(self, options: MlflowOptions, target: Optional[str]):
        _require("mlflow", "mlflow")
        self.uri, self.experiment = target, options.experiment
        self._client = None
        self._run_id: Optional[str] = None
        self._seen = _Seen()

    @property
    def client(self):
        if self._client is None:
            from mlflow import MlflowClient

            # a new SQLite store announces its table creation on the root logger's handlers
            for name in ("mlflow.store.db.utils", "alembic.runtime.migration"):
                logging.getLogger(name).setLevel(logging.WARNING)
            from mlflow.exceptions import MlflowException

            try:
                self._client = MlflowClient(self.uri)
            except MlflowException as exc:  # an unknown scheme, a file store mlflow refuses, ...
                raise ConfigError(f"mlflow tracking URI {self.uri!r} cannot be used ({_first_sentence(exc)}); "
                                  "give one such as sqlite:///mlruns.db") from None
        return self._client

    def _experiment_id(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is None:
            try:
                return self.client.create_experiment(name)
            except MlflowException:  # another process made it meanwhile
                found = self.client.get_experiment_by_name(name)
                if found is None:
                    raise
        if found.lifecycle_stage == "deleted":
            self.client.restore_experiment(found.experiment_id)
        return found.experiment_id

    def _find(self, run_id: str, experiment_ids: list[str]):
        from mlflow.entities import ViewType

        quoted = run_id.replace("'", "\\'")
        runs = self.client.search_runs(experiment_ids, filter_string=f"tags.`{RUN_TAG}` = '{quoted}'",
                                        run_view_type=ViewType.ALL, max_results=1,
                                        order_by=["attributes.start_time ASC"])
        return runs[0] if runs else None

    def start(self, run: RunRecord) -> Optional[str]:
        from mlflow.entities import Param

        experiment = self.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or run.experiment
        exp_id = self._experiment_id(experiment)
        found = self._find(run.id, [exp_id])
        self._seen = _Seen()
        if found is None:
            found = self.client.create_run(exp_id, start_time=run.started_at, tags={RUN_TAG: run.id},
                                           run_name=run.name)
        else:
            if found.info.lifecycle_stage == "deleted":
                self.client.restore_run(found.info.run_id)
            for key in found.data.metrics:
                for m in self.client.get_metric_history(found.info.run_id, key):
                    self._seen.add(key, m.step, m.value)
        self._run_id = found.info.run_id
        held = found.data.params
        params = [Param(k[:_KEY_MAX], str(v)[:_PARAM_MAX]) for k, v in sorted(run.params.items())
                  if k[:_KEY_MAX] not in held]  # params never change in MLflow; a held one stays
        for batch in _chunks(params):
            self.client.log_batch(self._run_id, params=batch)
        self._tags(run)
        if run.status == "running" and found.info.status != "RUNNING":
            self.client.update_run(self._run_id, status="RUNNING")
        return self._run_id

    def _tags(self, run: RunRecord) -> None:
        from mlflow.entities import RunTag

        tags = [RunTag(k[:_KEY_MAX], str(v)[:_TAG_MAX]) for k, v in sorted(run.tags.items())]
        tags.append(RunTag("mlflow.runName", run.name))
        for batch in _chunks(tags):
            self.client.log_batch(self._run_id, tags=batch)

    def _metrics(self, step: int, metrics: Mapping[str, float], fresh: bool) -> None:
        """Log the values not held yet at ``step`` (``fresh``: a value that changed is logged
        again, becoming the latest, as a summary value that moved)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        todo = [Metric(k[:_KEY_MAX], float(v), now, int(step)) for k, v in sorted(metrics.items())
                if not self._seen.holds(k[:_KEY_MAX], int(step), float(v) if fresh else None)]
        for batch in _chunks(todo, 1000):
            self.client.log_batch(self._run_id, metrics=batch)
        for m in todo:
            self._seen.add(m.key, m.step, m.value)

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        self._metrics(step, metrics, fresh=False)

    def finish(self, run: RunRecord) -> None:
        self._tags(run)
        self._metrics(0, run.summary, fresh=True)
        for name, path in sorted(run.artifacts.items()):
            self.client.log_artifact(self._run_id, str(path))
        status = _MLFLOW_STATUS.get(run.status)
        if status is not None:
            self.client.set_terminated(self._run_id, status, end_time=run.finished_at)

    def read(self, run_id: str) -> Optional[TrackedRun]:
        from mlflow.entities import ViewType

        ids = [e.experiment_id for e in self.client.search_experiments(view_type=ViewType.ALL)]
        found = self._find(run_id, ids) if ids else None
        if found is None:
            return None
        uuid = found.info.run_id
        metrics = {key: [(m.step, m.value) for m in sorted(self.client.get_metric_history(uuid, key),
                                                           key=lambda m: (m.step, m.timestamp))]
                   for key in found.data.metrics}
        return TrackedRun(params=dict(found.data.params), tags=dict(found.data.tags), metrics=metrics,
                          artifacts=sorted(f.path for f in self.client.list_artifacts(uuid)))


# --------------------------------------------------------------------------------------------
# TensorBoard


class TensorBoardLogger(Logger):
    """A run as TensorBoard event files in ``target/<run id>/`` (``target`` default:
    ``tensorboard``): each epoch's values as scalars (step = epoch), summary values as scalars
    at step 0, the params and tags as text, and the curves figure as an image at the run's last
    epoch. TensorBoard files only grow, so what the folder already holds (read back first) is
    not written again; a tag that changed later is not rewritten."""

    def __init__(self, options: Any, target: Optional[str]):
        _require("tensorboard", "tensorboard")
        self.root = Path(target or "tensorboard").expanduser()
        self._writer = None
        self._seen = _Seen()
        self._texts: set[str] = set()
        self._images: dict[str, set[int]] = {}

    @staticmethod
    def _accumulator(folder: Path):
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        # 0: keep every value (the default keeps a sample of 10,000 scalars and 4 images)
        acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
        acc.Reload()
        return acc

    def start(self, run: RunRecord) -> Optional[str]:
        from torch.utils.tensorboard import SummaryWriter

        folder = self.root / run.id
        self._seen, self._texts, self._images = _Seen(), set(), {}
        if folder.is_dir() and any(folder.glob("events.out.tfevents.*")):
            acc = self._accumulator(folder)
            tags = acc.Tags()
            for tag in tags.get("scalars", []):
                for event in acc.Scalars(tag):
                    self._seen.add(tag, event.step, event.value)
            self._texts = {t.removesuffix("/text_summary") for t in tags.get("tensors", [])}
            for tag in tags.get("images", []):
                self._images[tag] = {event.step for event in acc.Images(tag)}
        self._writer = SummaryWriter(log_dir=str(folder))
        if "params" not in self._texts and run.params:
            self._writer.add_text("params", _table(run.params), 0)
        return str(folder)

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        for key, value in sorted(metrics.items()):
            if not self._seen.holds(key, int(step)):
                self._writer.add_scalar(key, float(value), int(step))
                self._seen.add(key, int(step), float(value))

    def finish(self, run: RunRecord) -> None:
        for key, value in sorted(run.summary.items()):
            if not self._seen.holds(key, 0, float(value)):
                self._writer.add_scalar(key, float(value), 0)
                self._seen.add(key, 0, float(value))
        if "tags" not in self._texts:
            self._writer.add_text("tags", _table(run.tags), 0)
        curves = run.artifacts.get("curves.png")
        step = int(run.summary.get("epochs", 0))
        if curves is not None and step not in self._images.get("curves", set()):
            from cpx.data.images import read_image

            pixels, _ = read_image(curves, 3)
            self._writer.add_image("curves", pixels, step, dataformats="HWC")
        self._writer.close()
        self._writer = None

    def read(self, run_id: str) -> Optional[TrackedRun]:
        folder = self.root / run_id
        if not folder.is_dir():
            return None
        acc = self._accumulator(folder)
        tags = acc.Tags()
        # by step, and in the order written within a step (the last is the latest)
        metrics = {tag: sorted(((e.step, e.value) for e in acc.Scalars(tag)), key=lambda sv: sv[0])
                   for tag in tags.get("scalars", [])}
        return TrackedRun(metrics=metrics, artifacts=sorted(tags.get("images", [])))


def _table(values: Mapping[str, str]) -> str:
    """A Markdown table of key and value (TensorBoard's text tab renders it)."""
    rows = "\n".join(f"| {k} | {str(v).replace('|', '/')} |" for k, v in sorted(values.items()))
    return "| key | value |\n|---|---|\n" + rows


@hookimpl
def register_loggers(register):
    register("mlflow", MlflowLogger, options=MlflowOptions,
             description="MLflow through its client: TARGET is the tracking URI (sqlite:///mlruns.db, http://...)")
    register("tensorboard", TensorBoardLogger,
             description="TensorBoard event files through torch.utils.tensorboard: TARGET is the folder")
