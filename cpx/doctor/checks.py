"""Each check of :func:`check_workspace`, in the order it reports them.

A finding is a :class:`~cpx.kernel.errors.Problem`: ``path`` is the file or folder it is about
(relative to the workspace when inside it), ``kind`` a short machine name, ``message`` one line
saying what is wrong and what to do. The wording of a damaged ledger's recovery, of a changed
data folder and of readable credentials comes from the modules that own those facts (the
ledger, :func:`cpx.runs.handle.checked_data_root`, the credentials module), so ``doctor`` says
what the failing command would say.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from cpx.kernel.errors import CpxError, Problem
from cpx.kernel.workspace import Workspace
from cpx.runs.folder import RunFolder, damage_advice, run_folder
from cpx.runs.ledger_inspect import LedgerInspection, inspect_ledger
from cpx.runs.recovery import process_gone, resume_hint

#: less free space than this (bytes) on the workspace's file system is reported: a checkpoint
#: save that runs out of space stops training
MIN_FREE_BYTES = 1 << 30

# Finding kinds, one per check.
LEDGER_DAMAGED = "ledger-damaged"
LEDGER_NEWER = "ledger-newer"
LEDGER_UNREADABLE = "ledger-unreadable"
RUN_FOLDER_MISSING = "run-folder-missing"
FOLDER_NOT_RECORDED = "folder-not-recorded"
FILE_DAMAGED = "file-damaged"
PROCESS_GONE = "process-gone"
DATA = "data"
CREDENTIALS = "credentials"
DISK_SPACE = "disk-space"


@dataclass
class DoctorReport:
    """What :func:`check_workspace` found: ``problems`` in the order found, and ``checked``, one
    short line per check that ran (what it looked at), so an empty report says what was sound."""

    workspace: Path
    problems: list[Problem] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_workspace(workspace: Workspace, host, *, min_free: int = MIN_FREE_BYTES,
                    credentials: Optional[Path] = None) -> DoctorReport:
    """Check ``workspace`` (reading only) and report every problem found.

    ``host`` is the plugin host (the competitions the data checks need); ``min_free`` the free
    bytes below which the disk is reported; ``credentials`` the stored Codabench login to check
    (default: where ``cpx codabench login`` keeps it).

    Never raises for what it finds; a file it cannot read is a finding.
    """
    report = DoctorReport(workspace=workspace.root)
    ledger = inspect_ledger(workspace.ledger_path)
    _check_ledger(report, workspace, ledger)
    if ledger.exists and not (ledger.damage or ledger.newer or ledger.unreadable):
        _check_runs(report, workspace, host, ledger.runs)
    _check_credentials(report, workspace, credentials)
    _check_disk(report, workspace, min_free)
    return report


def _shown(workspace: Workspace, path: os.PathLike) -> str:
    path = Path(path)
    try:
        return path.relative_to(workspace.root).as_posix()
    except ValueError:
        return str(path)


def _check_ledger(report: DoctorReport, workspace: Workspace, ledger: LedgerInspection) -> None:
    where = _shown(workspace, ledger.path)
    if not ledger.exists:
        report.checked.append(f"ledger: none yet at {where} (nothing recorded)")
        return
    if ledger.damage:
        extra = f" (and {len(ledger.damage) - 1} more)" if len(ledger.damage) > 1 else ""
        report.problems.append(Problem(where, LEDGER_DAMAGED, f"damaged: {ledger.damage[0]}{extra}; every command "
                                                              f"that reads it will refuse; to recover, {ledger.recovery}"))
        return
    if ledger.unreadable:
        report.problems.append(Problem(where, LEDGER_UNREADABLE, f"could not be read now ({ledger.unreadable}): "
                                                                 "another program holds it; run cpx doctor again "
                                                                 "when it is done"))
        return
    if ledger.newer:
        report.problems.append(Problem(where, LEDGER_NEWER, f"written by a newer cpx (its schema has "
                                                            f"{', '.join(ledger.newer)}); upgrade cpx to use it"))
        return
    pending = f"; {len(ledger.pending)} migration(s) to apply at the next command, a copy kept first" \
        if ledger.pending else ""
    report.checked.append(f"ledger: {where} intact, {len(ledger.runs)} run(s){pending}")


def _check_runs(report: DoctorReport, workspace: Workspace, host, runs: list[dict]) -> None:
    recorded: set[Path] = set()
    data_checked = 0
    for row in runs:
        folder = run_folder(row, workspace.runs_dir)
        recorded.add(_key(folder.path))
        if not folder.path.is_dir():
            report.problems.append(Problem(_shown(workspace, folder.path), RUN_FOLDER_MISSING,
                                           f"the folder of run {row['id']} is gone (the ledger records it); "
                                           "restore it from a backup or the workspace it was copied from: "
                                           "commands naming this run will fail until then"))
            continue
        for path, what in folder.damage():
            report.problems.append(Problem(_shown(workspace, path), FILE_DAMAGED,
                                           f"{what}; {damage_advice(row['id'], folder, path)}"))
        if process_gone(row):
            report.problems.append(Problem(_shown(workspace, folder.path), PROCESS_GONE,
                                           f"run {row['id']} is marked running but its process is gone; `cpx runs` "
                                           f"marks it interrupted; {resume_hint(row, folder)}"))
        data_checked += _check_data(report, workspace, host, row, folder)
    unrecorded = sorted(p for p in (workspace.runs_dir.iterdir() if workspace.runs_dir.is_dir() else ())
                        if p.is_dir() and _key(p) not in recorded)
    for path in unrecorded:
        report.problems.append(Problem(_shown(workspace, path), FOLDER_NOT_RECORDED,
                                       f"a run folder the ledger does not record; record it with `cpx runs import "
                                       f"{_shown(workspace, path)}`, or delete it if it is not needed"))
    report.checked.append(f"run folders: {len(runs)} recorded, {len(unrecorded)} not recorded")
    report.checked.append(f"data: {data_checked} run(s)' data folders compared with what they trained on")


def _key(path: Path) -> Path:
    # a folder's identity without resolving the folder itself (a run folder may be a symlink)
    return Path(path).parent.resolve() / Path(path).name


def _check_data(report: DoctorReport, workspace: Workspace, host, row: dict, folder: RunFolder) -> int:
    """1 when the run's data folder was compared (whatever the outcome), else 0."""
    from cpx.runs.handle import checked_data_root

    try:
        info = folder.read_data_info()
    except CpxError:
        return 0  # reported as a damaged file
    if not info or info.get("synthetic") or row.get("kind") != "train" or not row.get("competition"):
        return 0
    try:
        competition = host.competition(row["competition"])
        checked_data_root(row, folder, competition, workspace.root,
                          hint="restore it, or pass --data to the commands that reuse it")
    except CpxError as exc:
        report.problems.append(Problem(_shown(workspace, folder.path), DATA, str(exc)))
    return 1


def _check_credentials(report: DoctorReport, workspace: Workspace, path: Optional[Path]) -> None:
    from cpx.submit.codabench.credentials import config_path, load_credentials

    try:
        path = path or config_path()
        stored = load_credentials(path)
    except CpxError as exc:  # readable by others, unreadable, or nowhere to keep one
        report.problems.append(Problem("", CREDENTIALS, str(exc)))
        return
    report.checked.append(f"Codabench login: {'stored, private' if stored else 'none stored'} ({path})")


def _check_disk(report: DoctorReport, workspace: Workspace, min_free: int) -> None:
    free = shutil.disk_usage(workspace.root).free
    gib = 1 << 30
    if free >= min_free:
        report.checked.append(f"disk: {free / gib:.1f} GiB free")
        return
    cache = workspace.cache_dir
    size = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file()) if cache.is_dir() else 0
    hint = f"; {_shown(workspace, cache)} holds {size / gib:.2f} GiB cpx rebuilds when needed" if size else ""
    report.problems.append(Problem("", DISK_SPACE,
                                   f"only {free / gib:.2f} GiB free where the workspace is (less than "
                                   f"{min_free / gib:.1f} GiB): a checkpoint save may fail mid-run; free some "
                                   f"space{hint}"))
