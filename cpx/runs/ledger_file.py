"""The ledger's SQLite file: connections in WAL mode with a busy timeout, and damage told apart
from other errors (one line naming the file and how to recover, not a traceback).

:class:`cpx.runs.ledger.Ledger` opens its file here; :mod:`cpx.runs.ledger_inspect` reads one
read-only.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Any, Union

from cpx.kernel.errors import LedgerDamaged
from cpx.runs.migrations import BACKUP_SUFFIX

#: seconds a statement waits for another process's write lock (``CPX_LEDGER_TIMEOUT`` overrides it)
DEFAULT_TIMEOUT = 10.0

def connect(path: Union[str, os.PathLike], timeout: float = DEFAULT_TIMEOUT) -> sqlite3.Connection:
    """Open the SQLite file at ``path`` the way the ledger needs it; no migrations.

    The connection is in autocommit mode: callers open transactions themselves.
    """
    path = Path(path)
    if str(path) != ":memory:":
        path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(str(path), timeout=timeout, isolation_level=None, factory=_Connection)
    db.path = path
    db.row_factory = sqlite3.Row
    try:
        _enable_wal(db, timeout)
        db.execute("PRAGMA foreign_keys = ON")
    except BaseException:
        db.close()
        raise
    return db


class _Connection(sqlite3.Connection):
    """A connection whose every statement turns a damaged file's error into
    :class:`LedgerDamaged`: one line naming the file and how to recover, not a traceback."""

    path: Path

    def execute(self, sql: str, parameters: Any = ()) -> sqlite3.Cursor:  # type: ignore[override]
        try:
            return super().execute(sql, parameters)
        except sqlite3.DatabaseError as exc:
            if is_damage(exc):
                raise damaged(self.path, exc) from None
            raise


def is_damage(exc: BaseException) -> bool:
    """Whether an sqlite3 error says the file is damaged (rather than busy, say)."""
    text = str(exc).casefold()
    return isinstance(exc, sqlite3.DatabaseError) and any(
        word in text for word in ("malformed", "not a database", "corrupt", "disk i/o error", "encrypted"))


def damaged(path: Path, exc: BaseException) -> LedgerDamaged:
    """The one-line error for a damaged ledger at ``path``: what SQLite said, and how to recover
    (the copy kept before the latest migration, else SQLite's ``.recover``)."""
    path = Path(path)
    copies = [c for c in sorted(path.parent.glob(f"{path.name}{BACKUP_SUFFIX}*")) if not c.name.endswith(".tmp")]
    if copies:  # names sort by migration, so the last is the newest copy
        how = (f"mv {path.name} {path.name}.damaged && cp {copies[-1].name} {path.name} (the copy kept before the "
               "last migration: rows recorded since are lost)")
    else:
        how = (f"sqlite3 {path.name} .recover | sqlite3 recovered.db && mv {path.name} {path.name}.damaged && "
               f"mv recovered.db {path.name}")
    return LedgerDamaged(f"{path}: cannot open the ledger: it is damaged ({exc}); to recover, in {path.parent}: {how}")


def _enable_wal(db: sqlite3.Connection, timeout: float) -> None:
    if db.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
        return
    # Switching to WAL needs an exclusive lock, and the busy handler does not cover
    # every path to it, so two processes creating the ledger at once retry here.
    deadline = time.monotonic() + timeout
    while True:
        try:
            # A file system without WAL support answers with the old mode; we then
            # carry on in rollback-journal mode, where the busy timeout still applies.
            db.execute("PRAGMA journal_mode = WAL").fetchone()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)
