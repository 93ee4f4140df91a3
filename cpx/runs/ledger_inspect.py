"""A ledger file described without changing it, for ``cpx doctor``: SQLite's own checks, the
schema's migrations against this cpx's, and its runs."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from cpx.runs import ledger_file
from cpx.runs.ledger import decode_row
from cpx.runs.ledger_file import damaged, is_damage
from cpx.runs.migrations import MIGRATIONS, applied_migrations


@dataclass
class LedgerInspection:
    """What :func:`inspect_ledger` found in a ledger file, read without changing it."""

    path: Path
    #: whether the file exists (a workspace that never recorded anything has none)
    exists: bool = False
    #: SQLite's own verdict (``PRAGMA integrity_check`` and ``foreign_key_check``), one line each;
    #: empty when the file is sound
    damage: list[str] = field(default_factory=list)
    #: the recovery the one-line error for a damaged ledger suggests (see :func:`damaged`)
    recovery: str = ""
    #: why a sound file could not be read now (locked by another program past the busy timeout)
    unreadable: str = ""
    #: migrations the file records that this cpx does not know: a newer cpx wrote it
    newer: list[str] = field(default_factory=list)
    #: migrations this cpx would apply at the next open (a copy is kept first)
    pending: list[str] = field(default_factory=list)
    #: the runs table's rows, decoded as :meth:`Ledger.list_runs` hands them back (run folders
    #: absolute); empty when the file cannot be read
    runs: list[dict] = field(default_factory=list)


def inspect_ledger(path: Union[str, os.PathLike]) -> LedgerInspection:
    """Check the ledger at ``path`` without migrating or writing it: SQLite's integrity and
    foreign-key checks, the schema's migrations against this cpx's, and its runs.

    Opened read-only, so a damaged file, or one a newer cpx wrote, is described rather than
    raised; never raises for the file's content.
    """
    path = Path(path)
    found = LedgerInspection(path=path, exists=path.is_file())
    if not found.exists:
        return found
    root = path.resolve().parent.parent
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=ledger_file.DEFAULT_TIMEOUT)
    except sqlite3.Error as exc:
        if is_damage(exc):
            found.damage = [str(exc)]
            found.recovery = _recovery(path, exc)
        else:
            found.unreadable = str(exc)
        return found
    db.row_factory = sqlite3.Row
    try:
        found.damage = [r[0] for r in db.execute("PRAGMA integrity_check") if r[0] != "ok"]
        if not found.damage:
            found.damage = [f"row {r[1]} of table {r[0]} points at a missing row of {r[2]}"
                            for r in db.execute("PRAGMA foreign_key_check")]
        recorded = applied_migrations(db)
        known = [fn.__name__ for fn in MIGRATIONS]
        found.newer = [name for name in recorded if name not in known]
        found.pending = [name for name in known if name not in recorded]
        if not found.newer and _has_runs(db):
            found.runs = [decode_row("runs", r, root) for r in db.execute("SELECT * FROM runs ORDER BY created_at")]
    except sqlite3.DatabaseError as exc:
        if is_damage(exc):
            found.damage = found.damage or [str(exc)]
        else:
            found.unreadable = str(exc)
    finally:
        db.close()
    if found.damage:
        found.recovery = _recovery(path, sqlite3.DatabaseError(found.damage[0]))
    return found


def _has_runs(db: sqlite3.Connection) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'runs'").fetchone() is not None


def _recovery(path: Path, exc: BaseException) -> str:
    # the "how" of damaged()'s one line, the part after "to recover"
    return str(damaged(path, exc)).split("; to recover, ", 1)[-1]
