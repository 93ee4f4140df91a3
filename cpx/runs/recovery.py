"""After a crash: make a run's files and its ledger row agree again, and tell runs whose
process is gone from runs that are training.

Training commits an epoch in the order :mod:`cpx.runs.commit` owns: a new best checkpoint to
``.best.pt.next``, then ``last.pt`` (the commit point), then the rename to ``best.pt``, then
``history.json``, ``status.json`` at the end, then the ledger. :func:`reconcile` rolls a run
forward from whatever ``last.pt`` committed, so after any kill ``best.pt``, ``history.json``
and the ledger describe the same epoch.
"""

from __future__ import annotations

import difflib
import os
import socket
from typing import Optional

from cpx.kernel.errors import ConfigError, RunError
from cpx.runs.folder import RunFolder, pid_alive, run_folder
from cpx.runs.ledger import RUN_STATUSES, Ledger


def reconcile(folder: RunFolder, ledger: Ledger, run_id: str) -> dict:
    """Bring ``best.pt``, ``history.json`` and the ledger row of ``run_id`` in line with the
    epoch ``last.pt`` committed (and with ``status.json`` when the run finished).

    Call it holding the folder's lock (or knowing its process is gone). Returns the ledger
    fields it set.

    :raises RunError: ``last.pt`` exists but cannot be read.
    """
    fields: dict = {}
    pending = folder.pending_best_path
    if folder.last_path.is_file():
        # torch reads the checkpoint: imported here, so listing runs does not wait for it
        from cpx.runs.checkpoint import load_file

        state = load_file(folder.last_path, "resume state")
        best_epoch = int(state.get("best_epoch") or 0)
        if pending.is_file():
            try:
                pending_epoch = load_file(pending).get("epoch")
            except RunError:
                pending_epoch = None
            if pending_epoch is not None and pending_epoch == best_epoch:
                os.replace(pending, folder.best_path)  # the commit got this far: finish it
            else:
                pending.unlink(missing_ok=True)  # written for an epoch that never committed
        history = state.get("history") or []
        folder.write_history(history)
        # states of older versions call it best_f, with -1 for "none yet"
        best = state.get("best_score", None if state.get("best_f", -1.0) == -1.0 else state.get("best_f"))
        fields["last_epoch"] = int(state.get("epoch") or 0)
        # a run that never validated (a refit carries its parent's score) keeps what its row says
        if best is not None:
            fields.update(best_epoch=best_epoch or None, best_val_score=float(best))
        if state.get("wall_seconds") is not None:
            fields["wall_seconds"] = round(float(state["wall_seconds"]), 2)
    else:
        pending.unlink(missing_ok=True)
    final = folder.read_status()
    if final:
        fields.update(status=final["status"], finished_at=final.get("finished_at"), notes=final.get("message") or None)
    if fields:
        ledger.update_run(run_id, **fields)
    return fields


def resume_hint(row: dict, folder: Optional[RunFolder] = None) -> str:
    """What a user can do with a stopped run: the command that resumes it, or why not."""
    folder = folder or RunFolder(row["run_dir"]) if row.get("run_dir") else folder
    if row.get("kind") != "train":
        return "nothing to resume (not a training run)"
    if folder is None or not folder.last_path.is_file():
        return "nothing to resume (it stopped before its first epoch finished)"
    return f"resume with: cpx train --resume {row['id']}"


def process_gone(row: dict) -> bool:
    """True for a ``running`` row whose training process is known to be gone (same host, dead
    PID). A row from another host, or without a recorded PID, cannot be judged: False."""
    if row.get("status") != "running" or not row.get("pid") or row.get("host") != socket.gethostname():
        return False
    return not pid_alive(int(row["pid"]))


def mark_interrupted(ledger: Ledger, runs_dir: os.PathLike) -> list[str]:
    """Mark every ``running`` run whose process is gone as ``interrupted``, after reconciling
    its files; returns their ids. Cheap when nothing is running (one query)."""
    marked = []
    for row in ledger.list_runs(status="running"):
        if not process_gone(row):
            continue
        folder = run_folder(row, runs_dir)
        try:
            if folder.path.is_dir() and folder.lock_owner() is None:
                reconcile(folder, ledger, row["id"])
        except RunError:
            pass  # an unreadable last.pt: the row is still marked, the resume will say why
        current = ledger.get_run(row["id"])
        if current.get("status") == "running":
            ledger.update_run(row["id"], status="interrupted", notes=resume_hint(current, folder))
        marked.append(row["id"])
    return marked


def list_runs(workspace, status: Optional[str] = None, limit: Optional[int] = None) -> list[dict]:
    """The workspace's runs, newest first, after marking those whose process is gone as
    ``interrupted``; ``status`` filters (one of the ledger's run statuses). Each row with a
    recorded folder also says whether that folder is gone (``folder_missing``: deleted or moved
    by hand, so its checkpoints cannot be validated, predicted or packaged).

    :raises ConfigError: an unknown status (naming the known ones, and the closest).
    """
    if status is not None and status not in RUN_STATUSES:
        close = difflib.get_close_matches(status, RUN_STATUSES, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise ConfigError(f"--status: unknown status {status!r} (one of {', '.join(RUN_STATUSES)}){hint}")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit: must be 1 or more, not {limit}")
    with Ledger(workspace.ledger_path) as ledger:
        mark_interrupted(ledger, workspace.runs_dir)
        rows = ledger.list_runs(status=status, limit=limit)
    for row in rows:
        if row.get("run_dir"):
            row["folder_missing"] = not run_folder(row, workspace.runs_dir).path.is_dir()
    return rows
