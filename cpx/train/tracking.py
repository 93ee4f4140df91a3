"""Live logging to experiment trackers while training (``cpx train --log-to NAME:TARGET``).

A :class:`TrackingCallback` hands each epoch's history entry to a worker thread that makes the
logger's calls (:mod:`cpx.track`), so a slow tracker (a remote server, a first-time database
migration) never holds up an epoch: the training thread only puts a small dict on a queue. A
tracker that fails becomes a problem in the run's :class:`TrackerReport`, never a failed run;
``cpx runs export`` can write the run again later.

The run starts and finishes in the tracker with records made from the ledger row and the run
folder (:func:`cpx.track.record.run_record`) at that moment, as an export would make them, so a
live-logged run and the same run exported later agree field for field.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from cpx.kernel.manager import PluginHost
from cpx.runs.folder import run_folder
from cpx.runs.ledger import Ledger
from cpx.track.logger import Logger, LoggerSpec, create_logger, epoch_metrics, parse_spec
from cpx.track.record import run_record
from cpx.train.loop import Callback, EpochRecord, Trainer


@dataclass
class TrackerReport:
    """How live logging to one tracker went: where the run is in it, the epochs handed over,
    the epochs the tracker took (``logged``), the seconds spent in the training thread (``loop_seconds``: the cost to training), the
    tracker's own seconds off it (``background``: by call, start / log_metrics / finish), the
    wall seconds of the epochs logged, and the problems met (then the record may be
    incomplete: ``cpx runs export`` writes it again)."""

    spec: str
    where: Optional[str] = None
    epochs: int = 0
    logged: int = 0  # the epochs the tracker took (fewer than ``epochs`` after a failure)
    loop_seconds: float = 0.0
    epoch_seconds: float = 0.0
    background: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def overhead(self) -> Optional[float]:
        """The share of the epochs' wall time spent in the training thread on logging."""
        return self.loop_seconds / self.epoch_seconds if self.epoch_seconds > 0 else None

    def describe(self) -> str:
        """One line: what was logged, and what it cost per epoch."""
        where = f" ({self.where})" if self.where else ""
        if self.problems and not self.logged:
            return f"{self.spec}: nothing logged{where}; " + "; ".join(self.problems)
        taken = f"{self.logged} of {self.epochs}" if self.logged != self.epochs else f"{self.epochs}"
        text = f"{self.spec}: {taken} epoch{'s' if self.epochs != 1 else ''} logged{where}"
        if self.epochs:
            per_epoch = self.loop_seconds / self.epochs
            share = f", {self.overhead:.3%} of an epoch" if self.overhead is not None else ""
            background = self.background.get("log_metrics", 0.0) / self.epochs
            text += (f"; {per_epoch * 1e3:.2f} ms per epoch in the training loop{share} "
                     f"(the tracker's {background * 1e3:.0f} ms per epoch ran beside it)")
        if self.problems:
            text += "; " + "; ".join(self.problems)
        return text

    def to_dict(self) -> dict:
        return {"spec": self.spec, "where": self.where, "epochs": self.epochs, "logged": self.logged,
                "loop_seconds": round(self.loop_seconds, 6), "epoch_seconds": round(self.epoch_seconds, 3),
                "overhead": self.overhead, "background": {k: round(v, 4) for k, v in self.background.items()},
                "problems": self.problems}


class TrackingCallback(Callback):
    """Logs a run to one tracker as it trains (rank 0 only): the run's params and tags at the
    start (and, for a resumed run, the epochs it had), every epoch's history entry, then after
    the run is recorded (:meth:`finish`) its final tags, summary values and artifacts."""

    # how long the end of training waits for a tracker to take what is queued
    finish_timeout = 120.0

    def __init__(self, spec: LoggerSpec, logger: Logger, ledger_path: Path, runs_dir: Path,
                 host: Optional[PluginHost] = None):
        self.spec, self.logger, self.host = spec, logger, host
        self.ledger_path, self.runs_dir = Path(ledger_path), Path(runs_dir)
        self.report = TrackerReport(str(spec))
        self.run_id: Optional[str] = None
        self._queue: queue.Queue = queue.Queue()
        self._thread: Optional[threading.Thread] = None
        self._failed = False
        self._last: Optional[float] = None

    # --- the worker -----------------------------------------------------------------

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            kind, fn, args = item
            if self._failed:
                continue  # after a failure the tracker's record is left as it was
            start = time.perf_counter()
            try:
                fn(*args)
                if kind == "log_metrics":
                    self.report.logged += 1
            except Exception as exc:  # a tracker problem must never end a training run
                self._failed = True
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                self.report.problems.append(f"{kind} failed: {type(exc).__name__}: {first}"[:500])
            finally:
                self.report.background[kind] = self.report.background.get(kind, 0.0) + time.perf_counter() - start

    def _submit(self, kind: str, fn: Callable, *args: Any) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, daemon=True, name=f"cpx-tracker-{self.spec.name}")
            self._thread.start()
        self._queue.put((kind, fn, args))

    def _record(self):
        with Ledger(self.ledger_path) as ledger:
            row = ledger.get_run(self.run_id)
            return run_record(ledger, row, run_folder(row, self.runs_dir), self.host)

    def _start(self, history: list[dict]) -> None:
        self.report.where = self.logger.start(self._record())
        for entry in history:  # a resumed run: the epochs it had (the logger skips those it holds)
            metrics = epoch_metrics(entry)
            if metrics:
                self.logger.log_metrics(int(entry["epoch"]), metrics)

    def _finish(self) -> None:
        self.logger.finish(self._record())

    # --- training events ------------------------------------------------------------

    def on_fit_start(self, trainer: Trainer) -> None:
        self.run_id = trainer.info["run_id"]
        self._submit("start", self._start, [dict(h) for h in trainer.history])
        self._last = time.perf_counter()

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        start = time.perf_counter()
        entry = trainer.history[-1]  # what history.json holds, validation scores included
        self._submit("log_metrics", self.logger.log_metrics, int(entry["epoch"]), epoch_metrics(entry))
        now = time.perf_counter()
        self.report.loop_seconds += now - start
        self.report.epoch_seconds += now - (self._last if self._last is not None else start)
        self.report.epochs += 1
        self._last = now

    def finish(self) -> TrackerReport:
        """Once the run is recorded (its final ledger row, curves and status written; or its
        failure recorded): send the final record and wait up to :attr:`finish_timeout` seconds
        for the tracker to take everything. Nothing to do when training never started."""
        if self._thread is None or self.run_id is None:
            return self.report
        self._submit("finish", self._finish)
        self._queue.put(None)
        self._thread.join(self.finish_timeout)
        if self._thread.is_alive():
            self.report.problems.append(f"the tracker took over {self.finish_timeout:.0f} s; what it had not written "
                                        f"by then is missing (write it again: cpx runs export --to {self.spec} "
                                        f"{self.run_id})")
        return self.report


def tracking_callbacks(specs: Sequence[str], host: PluginHost, ledger_path: Path,
                       runs_dir: Path) -> list[TrackingCallback]:
    """One :class:`TrackingCallback` per ``NAME:TARGET`` spec, each logger created now, so an
    unknown name or a missing package fails before any training.

    :raises UnknownComponent: no logger of that name.
    :raises MissingDependency: the tracker's package is not installed (the extra named).
    """
    out = []
    for text in specs:
        spec = parse_spec(text)
        out.append(TrackingCallback(spec, create_logger(spec, host), ledger_path, runs_dir, host))
    return out


__all__ = ["TrackerReport", "TrackingCallback", "tracking_callbacks"]
