"""``cpx runs export``: recorded runs written to a tracker after the fact, through the same
logger calls live logging makes (so the two agree field for field)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

from cpx.kernel.manager import PluginHost
from cpx.kernel.workspace import Workspace
from cpx.runs.folder import run_folder
from cpx.runs.ledger import Ledger
from cpx.track.logger import Logger, LoggerSpec, create_logger, epoch_metrics, parse_spec
from cpx.track.record import run_record


@dataclass
class Exported:
    """One run written to a tracker: the cpx run, where the tracker keeps it, the epochs and
    artifact names sent."""

    run_id: str
    name: str
    where: Optional[str]
    epochs: int
    artifacts: list[str] = field(default_factory=list)


@dataclass
class ExportResult:
    """Every run written, the tracker (``spec``) and the seconds it took."""

    spec: str
    runs: list[Exported] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"to": self.spec, "seconds": round(self.seconds, 3),
                "runs": [vars(r) for r in self.runs]}


def log_run(logger: Logger, ledger: Ledger, row: dict, workspace: Workspace, host: Optional[PluginHost] = None,
            with_weights: bool = False) -> Exported:
    """Write one recorded run through ``logger``: ``start``, each epoch of ``history.json``,
    ``finish``."""
    folder = run_folder(row, workspace.runs_dir)
    record = run_record(ledger, row, folder, host, with_weights=with_weights)
    where = logger.start(record)
    history = folder.read_history()
    for entry in history:
        metrics = epoch_metrics(entry)
        if metrics and entry.get("epoch") is not None:
            logger.log_metrics(int(entry["epoch"]), metrics)
    logger.finish(record)
    return Exported(record.id, record.name, where, len(history), sorted(record.artifacts))


def export_runs(spec: str | LoggerSpec, workspace: Workspace, host: PluginHost, runs: Sequence[str] = (),
                with_weights: bool = False) -> ExportResult:
    """Write the named runs (ids, id prefixes or names; every run of the ledger when none)
    to the tracker of ``spec`` (``mlflow:sqlite:///mlruns.db``, ``tensorboard:tb``, ...),
    with their submissions and recorded scores; ``best.pt`` goes too ``with_weights``. Running
    it again updates each run in place (the loggers are idempotent).

    :raises UnknownComponent: no logger of that name.
    :raises MissingDependency: the tracker's package is not installed.
    :raises RunError: a run that the ledger does not know.
    """
    start = time.perf_counter()
    spec = spec if isinstance(spec, LoggerSpec) else parse_spec(spec)
    logger = create_logger(spec, host)
    result = ExportResult(str(spec))
    with Ledger(workspace.ledger_path) as ledger:
        rows = [ledger.get_run(ref) for ref in runs] if runs else list(reversed(ledger.list_runs()))
        seen = set()
        for row in rows:
            if row["id"] in seen:
                continue
            seen.add(row["id"])
            result.runs.append(log_run(logger, ledger, row, workspace, host, with_weights))
    result.seconds = time.perf_counter() - start
    return result


__all__ = ["ExportResult", "Exported", "export_runs", "log_run"]
