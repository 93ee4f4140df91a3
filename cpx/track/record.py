"""A recorded run as a tracker gets it: the one function that turns a ledger row and its run
folder into a :class:`~cpx.track.logger.RunRecord`, for live logging and export alike."""

from __future__ import annotations

import datetime as _dt
from typing import Optional

from cpx.eval.metrics import metric_tag
from cpx.kernel.errors import CpxError
from cpx.kernel.manager import PluginHost
from cpx.runs.folder import BEST, CONFIG, CURVES, HISTORY, RunFolder
from cpx.runs.ledger import Ledger
from cpx.track.logger import RunRecord, flatten_params, metric_key

# the ledger columns that become tags, under the tag's name
_TAG_COLUMNS = {"recipe": "recipe", "competition": "competition", "sweep": "sweep", "sweep_trial": "trial",
                "git_commit": "git_commit", "kind": "kind", "status": "status", "stop_reason": "stop_reason",
                "device": "device", "refit_of": "refit_of", "command": "command"}
# the ledger columns that become summary values
_SUMMARY_COLUMNS = {"best_val_score": "best_val_score", "best_epoch": "best_epoch", "last_epoch": "epochs",
                    "params": "param_count", "wall_seconds": "wall_seconds"}


def millis(stamp: Optional[str]) -> Optional[int]:
    """An ISO-8601 time from the ledger as milliseconds since the epoch (None stays None)."""
    if not stamp:
        return None
    try:
        when = _dt.datetime.fromisoformat(str(stamp))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    return int(when.timestamp() * 1000)


def _metric(row: dict, config: dict, host: Optional[PluginHost]) -> Optional[str]:
    """The run's metric tag (``fscore``, ``class-iou x100``): the ledger's, else its competition's."""
    if row.get("metric"):
        return str(row["metric"])
    name = row.get("competition") or config.get("competition")
    if not name or host is None:
        return None
    try:
        spec = host.competition(name).metric
    except CpxError:  # a profile no longer registered: the run is still worth exporting
        return None
    return metric_tag(spec.name, spec.scale)


def run_record(ledger: Ledger, row: dict, folder: RunFolder, host: Optional[PluginHost] = None,
               with_weights: bool = False) -> RunRecord:
    """The :class:`RunRecord` of the run ``row`` (a ledger row) with files in ``folder``: the
    resolved config (``config.yaml``, else the ledger's copy) flattened as params; tags from the
    ledger; summary values, and each of the run's submissions with its validation score and
    every recorded leaderboard score; the run's files as artifacts (``best.pt`` only
    ``with_weights``)."""
    config = folder.read_config() or row.get("config") or {}
    tags = {"cpx.run_id": row["id"]}
    for column, tag in _TAG_COLUMNS.items():
        if row.get(column) is not None and row.get(column) != "":
            tags[tag] = str(row[column])
    model = (config.get("model") or {}).get("name") if isinstance(config.get("model"), dict) else None
    if model:
        tags["model"] = str(model)
    metric = _metric(row, config, host)
    if metric:
        tags["metric"] = metric
    summary = {name: float(row[column]) for column, name in _SUMMARY_COLUMNS.items() if row.get(column) is not None}
    for sub in ledger.list_submissions():
        if sub.get("run_id") != row["id"]:
            continue
        name = sub["name"]
        if sub.get("val_score") is not None:
            summary[metric_key("submission", name, "val_score")] = float(sub["val_score"])
        for score in ledger.scores_for(name):
            summary[metric_key("submission", name, score["phase"], score["column_key"])] = float(score["score"])
        for key in ("checkpoint", "tta"):
            if sub.get(key):
                tags[metric_key("submission", name, key)] = str(sub[key])
        if sub.get("zip_path"):
            tags[metric_key("submission", name, "zip")] = str(sub["zip_path"]).replace("\\", "/").rsplit("/", 1)[-1]
        tags[metric_key("submission", name, "final")] = "true" if sub.get("is_final") else "false"
    names = (CONFIG, HISTORY, CURVES) + ((BEST,) if with_weights else ())
    artifacts = {name: folder.path / name for name in names if (folder.path / name).is_file()}
    return RunRecord(id=row["id"], name=row.get("name") or row["id"],
                     experiment=str(row.get("competition") or config.get("competition") or "cpx"),
                     status=str(row.get("status") or "running"), params=flatten_params(config), tags=tags,
                     summary=summary, artifacts=artifacts, started_at=millis(row.get("created_at")),
                     finished_at=millis(row.get("finished_at")))


__all__ = ["millis", "run_record"]
