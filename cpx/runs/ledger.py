"""The ledger: one SQLite file per workspace recording runs, validations, submissions
and leaderboard scores.

A training run, a validation and the CLI may all write to it at once, so the file is
kept in WAL mode (readers never block the writer) with a busy timeout, and every write
takes the write lock up front with ``BEGIN IMMEDIATE``.

The schema lives in :mod:`cpx.runs.migrations`; opening a ledger applies the ones a file
has not seen yet.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import json
import math
import os
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Union

from cpx import __version__
from cpx.kernel.errors import CpxError, LedgerBusy, LedgerDamaged, RunError, SubmissionError
from cpx.kernel.text import utc_now
from cpx.runs import ledger_file
from cpx.runs.folder import new_run_id
from cpx.runs.ledger_file import connect, damaged, is_damage
from cpx.runs.migrations import (
    MIGRATIONS,
    NewerSchema,
    immediate,
    migrate,
    workspace_relative,
)

RUN_KINDS = ("train", "ensemble", "imported")
RUN_STATUSES = ("running", "completed", "stopped", "interrupted", "failed", "imported", "pruned")
SCORE_SOURCES = ("manual", "codabench")
RUN_ORDERS = ("created_at", "best_val_score")

# Stored as JSON text, handed back decoded.
_JSON_COLUMNS = {
    "runs": frozenset({"config", "config_diff", "members", "checkpoints"}),
    "validations": frozenset({"per_class", "per_image"}),
    "submissions": frozenset({"upload_attempt"}),
    "sweeps": frozenset({"factors", "overrides"}),
}
# Stored as 0/1 because SQLite has no boolean type, handed back as bool.
_BOOL_COLUMNS = {
    "runs": frozenset({"git_dirty"}),
    "submissions": frozenset({"uploaded", "is_final"}),
    "validations": frozenset({"calibrated"}),
}
# Enumerated values are checked here rather than with CHECK constraints, because
# widening a CHECK in SQLite means rebuilding the table.
_CHOICES = {
    ("runs", "kind"): RUN_KINDS,
    ("runs", "status"): RUN_STATUSES,
    ("scores", "source"): SCORE_SOURCES,
}
_TABLES = ("runs", "validations", "submissions", "scores", "sweeps")
# Paths of files the workspace holds, stored relative to it when inside it (see
# :func:`cpx.runs.migrations.workspace_relative`) and handed back absolute: a copied workspace
# then reads and writes its own run folders, and a moved one finds them where they are now.
_PATH_COLUMNS = {
    "runs": frozenset({"run_dir"}),
    "submissions": frozenset({"zip_path"}),
    "validations": frozenset({"official_dir"}),
}


def _plain(value: Any) -> Any:
    # Training code hands over numpy/torch scalars, which sqlite3 cannot bind.
    if isinstance(value, (str, bytes, int, float)) or value is None:
        return value
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.astimezone()  # a naive datetime is taken as local time
        return value.astimezone(_dt.timezone.utc).isoformat(timespec="seconds")
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item"):
        return value.item()
    return value


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    plain = _plain(value)
    return str(value) if plain is value else plain


def _renamed_per_class(per_class: Any) -> Any:
    # validations recorded before scores were any competition's metric call a class's value "f"
    if not isinstance(per_class, dict):
        return per_class
    return {name: ({"score" if k == "f" else k: v for k, v in entry.items()}
                   if isinstance(entry, dict) and "f" in entry and "score" not in entry else entry)
            for name, entry in per_class.items()}


def decode_row(table: str, row: Optional[sqlite3.Row], root: Optional[Path] = None) -> Optional[dict]:
    """A row of ``table`` as the ledger hands it back: JSON columns decoded, 0/1 columns as bool,
    workspace paths made absolute under ``root`` (left as stored when ``root`` is None); None
    for None."""
    if row is None:
        return None
    out = dict(row)
    if root is not None:
        for key in _PATH_COLUMNS.get(table, ()):
            value = out.get(key)
            if isinstance(value, str) and value and not Path(value).is_absolute():
                out[key] = str(root / value)
    for key in _JSON_COLUMNS.get(table, ()):
        if isinstance(out.get(key), str):
            try:
                out[key] = json.loads(out[key])
            except ValueError:
                pass  # hand-edited junk: show it as it is rather than fail a listing
    if table == "validations" and "per_class" in out:
        out["per_class"] = _renamed_per_class(out["per_class"])
    for key in _BOOL_COLUMNS.get(table, ()):
        if out.get(key) is not None:
            out[key] = bool(out[key])
    return out


class Ledger:
    """The workspace's record of runs, validations, submissions and scores.

    Opening migrates the file to the current schema. Rows come back as dicts with
    JSON columns decoded and 0/1 flags as bools. Use as a context manager, or call
    :meth:`close`.
    """

    def __init__(self, path: Union[str, os.PathLike], timeout: Optional[float] = None):
        self.path = Path(path)
        #: the workspace the ledger belongs to (it lives at ``<workspace>/experiments/ledger.db``):
        #: the paths of its run folders, zips and output folders are stored relative to it
        self.root: Optional[Path] = None if str(path) == ":memory:" else self.path.resolve().parent.parent
        # seconds a write waits for another process's lock; CPX_LEDGER_TIMEOUT overrides
        timeout = float(os.environ.get("CPX_LEDGER_TIMEOUT") or ledger_file.DEFAULT_TIMEOUT) if timeout is None else timeout
        self.timeout = timeout
        try:
            self._db = connect(self.path, timeout)
        except sqlite3.DatabaseError as exc:
            raise (damaged(self.path, exc) if is_damage(exc) else
                   CpxError(f"{self.path}: cannot open the ledger ({exc})")) from None
        try:
            #: names of the migrations this open applied (empty when already current)
            self.applied_migrations: list[str] = migrate(self._db)
            self._stamp_version()
        except NewerSchema as exc:
            message = self._newer_message(exc.names)
            self._db.close()
            raise LedgerDamaged(message) from None
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise (damaged(self.path, exc) if is_damage(exc) else
                   CpxError(f"{self.path}: cannot open the ledger ({exc})")) from None
        except BaseException:
            self._db.close()
            raise
        # Read from the file rather than hard-coded so later migrations' columns
        # are accepted without touching the API.
        self._columns = {
            t: [r["name"] for r in self._db.execute(f"PRAGMA table_info({t})")]
            for t in _TABLES
        }

    def _stamp_version(self) -> None:
        # which cpx last wrote the file, for the refusal a still older cpx gives (see m017)
        row = self._db.execute("SELECT value FROM _cpx WHERE key = 'written_by'").fetchone()
        if row is None or row[0] != __version__:
            try:
                with immediate(self._db):
                    self._db.execute("INSERT OR REPLACE INTO _cpx (key, value) VALUES ('written_by', ?)",
                                     (__version__,))
            except sqlite3.OperationalError:
                pass  # locked by another writer: the stamp can wait for the next open

    def _newer_message(self, unknown: list[str]) -> str:
        try:
            row = self._db.execute("SELECT value FROM _cpx WHERE key = 'written_by'").fetchone()
        except sqlite3.DatabaseError:
            row = None
        newer = f"cpx {row[0]}" if row else "a newer cpx"
        return (f"{self.path} was written by {newer} (its schema goes up to {unknown[-1]}); this is cpx "
                f"{__version__}, whose schema ends at {MIGRATIONS[-1].__name__}: upgrade cpx to use this "
                "workspace (nothing was changed)")

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Ledger({str(self.path)!r})"

    def close(self) -> None:
        """Close the connection; closing twice is harmless."""
        self._db.close()

    # -- helpers -------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction; a lock held elsewhere past the busy timeout is LedgerBusy."""
        try:
            with immediate(self._db) as db:
                yield db
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise LedgerBusy(f"{self.path}: the ledger is locked by another program (a database browser with an "
                                 f"open transaction, a backup?) for over {self.timeout:g} s") from None
            raise

    def _row(self, table: str, row: Optional[sqlite3.Row]) -> Optional[dict]:
        return decode_row(table, row, self.root)

    def _encode(self, table: str, fields: dict[str, Any], *, allow_id: bool) -> dict[str, Any]:
        columns = self._columns[table]
        allowed = set(columns) if allow_id else set(columns) - {"id"}
        unknown = sorted(set(fields) - allowed)
        if unknown:
            raise ValueError(
                f"unknown {table} field(s): {', '.join(unknown)}"
                f" (known: {', '.join(c for c in columns if c in allowed)})"
            )
        out: dict[str, Any] = {}
        for key, value in fields.items():
            choices = _CHOICES.get((table, key))
            if choices is not None and value not in choices:
                raise ValueError(f"{table}.{key} must be one of {', '.join(choices)}, not {value!r}")
            if key in _JSON_COLUMNS.get(table, ()):
                value = None if value is None else json.dumps(value, default=_json_default)
            elif key in _BOOL_COLUMNS.get(table, ()):
                value = None if value is None else int(bool(value))
            elif key == "tta" and isinstance(value, bool):
                value = "on" if value else "none"
            else:
                value = _plain(value)
                if isinstance(value, str) and not _utf8(value):
                    raise CpxError(f"{table}.{key}: {value.encode('utf-8', 'surrogateescape')!r} is not valid "
                                   "UTF-8 text, which the ledger stores; use another")
                if key in _PATH_COLUMNS.get(table, ()) and value and self.root is not None:
                    value = workspace_relative(value, self.root, guess=False)
            out[key] = value
        return out

    def _insert(self, table: str, values: dict[str, Any]) -> int:
        names = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        cur = self._db.execute(
            f"INSERT INTO {table} ({names}) VALUES ({marks})", tuple(values.values())
        )
        return cur.lastrowid

    def _update(self, table: str, key: str, key_value: Any, values: dict[str, Any]) -> None:
        if not values:
            return
        sets = ", ".join(f"{k} = ?" for k in values)
        self._db.execute(
            f"UPDATE {table} SET {sets} WHERE {key} = ?", (*values.values(), key_value)
        )

    def _run_row(self, run_id: str) -> Optional[dict]:
        return self._row("runs", self._db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone())

    def _require_run(self, run_id: str) -> None:
        if self._db.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is None:
            raise RunError(f"no run with id '{run_id}'")

    def _submission_row(self, name: str) -> Optional[dict]:
        row = self._db.execute("SELECT * FROM submissions WHERE name = ?", (name,)).fetchone()
        return self._row("submissions", row)

    def _require_submission(self, name: str) -> dict:
        row = self._submission_row(name)
        if row is None:
            raise SubmissionError(f"no submission named '{name}'")
        return row

    # -- runs ----------------------------------------------------------------------

    def add_run(self, **fields: Any) -> dict:
        """Record a run and return it.

        Any runs column may be given. Defaults: ``kind='train'``; ``status='running'``
        (``'imported'`` for imported runs); ``created_at`` now; ``id`` a fresh
        :func:`new_run_id` from ``name``. Unknown fields or bad kind/status raise
        ValueError; an id already taken raises RunError.
        """
        fields.setdefault("kind", "train")
        fields.setdefault("status", "imported" if fields["kind"] == "imported" else "running")
        fields.setdefault("created_at", utc_now())
        if not fields.get("id"):
            fields["id"] = new_run_id(fields.get("name") or fields["kind"])
        values = self._encode("runs", fields, allow_id=True)
        with self._write():
            if self._db.execute("SELECT 1 FROM runs WHERE id = ?", (values["id"],)).fetchone():
                raise RunError(f"a run with id '{values['id']}' already exists")
            self._insert("runs", values)
        return self._run_row(values["id"])

    def update_run(self, run_id: str, **fields: Any) -> dict:
        """Set fields of the run with exactly this id and return it.

        Unknown field names (``id`` included) raise ValueError; an unknown id, RunError.
        """
        values = self._encode("runs", fields, allow_id=False)
        with self._write():
            self._require_run(run_id)
            self._update("runs", "id", run_id, values)
        return self._run_row(run_id)

    def get_run(self, ref: str) -> dict:
        """The run that ``ref`` names: an exact id, else a run name (the latest run
        with it), else a unique id prefix. Raises RunError if none or several match.
        """
        ref = str(ref).strip()
        if not ref:
            raise RunError("no run given")
        row = self._run_row(ref)
        if row is not None:
            return row
        row = self._db.execute(
            "SELECT * FROM runs WHERE name = ? ORDER BY created_at DESC, rowid DESC LIMIT 1",
            (ref,),
        ).fetchone()
        if row is not None:
            return self._row("runs", row)
        # substr rather than LIKE: LIKE ignores case and treats _ and % as wildcards.
        ids = [
            r[0]
            for r in self._db.execute(
                "SELECT id FROM runs WHERE substr(id, 1, ?) = ?"
                " ORDER BY created_at DESC, rowid DESC",
                (len(ref), ref),
            )
        ]
        if len(ids) == 1:
            return self._run_row(ids[0])
        if ids:
            shown = ", ".join(ids[:5])
            more = f" and {len(ids) - 5} more" if len(ids) > 5 else ""
            raise RunError(
                f"'{ref}' matches {len(ids)} runs ({shown}{more}); give more of the id"
            )
        known = [name for r in self._db.execute("SELECT id, name FROM runs") for name in (r[0], r[1]) if name]
        close = difflib.get_close_matches(ref, known, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(dict.fromkeys(close))}?" if close else ""
        raise RunError(f"no run matches '{ref}' in {self.path} (tried id, name and id prefix){hint}")

    def list_runs(
        self,
        status: Union[str, Iterable[str], None] = None,
        kind: Union[str, Iterable[str], None] = None,
        order_by: str = "created_at",
        limit: Optional[int] = None,
        competition: Optional[str] = None,
    ) -> list[dict]:
        """Runs, newest first (``order_by='created_at'``) or highest validation score first
        (``'best_val_score'``, runs without one last). ``status`` and ``kind`` take one
        value or several.
        """
        if order_by not in RUN_ORDERS:
            raise ValueError(f"order_by must be one of {', '.join(RUN_ORDERS)}, not {order_by!r}")
        where: list[str] = []
        args: list[Any] = []
        for column, wanted in (("status", status), ("kind", kind)):
            if wanted is None:
                continue
            wanted = [wanted] if isinstance(wanted, str) else list(wanted)
            where.append(f"{column} IN ({', '.join('?' for _ in wanted)})")
            args += wanted
        if competition is not None:
            where.append("competition = ?")
            args.append(competition)
        sql = "SELECT * FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        if order_by == "best_val_score":
            sql += " ORDER BY best_val_score IS NULL, best_val_score DESC, created_at DESC, rowid DESC"
        else:
            sql += " ORDER BY created_at DESC, rowid DESC"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        return [self._row("runs", r) for r in self._db.execute(sql, args)]

    def competitions(self) -> list[str]:
        """The competitions the runs belong to, sorted (runs without one left out)."""
        rows = self._db.execute("SELECT DISTINCT competition FROM runs WHERE competition IS NOT NULL "
                                "AND competition != '' ORDER BY competition")
        return [r[0] for r in rows]

    # -- validations ---------------------------------------------------------------

    def add_validation(self, run_id: str, **fields: Any) -> dict:
        """Record a validation of the run with exactly this id and return it.

        ``per_class`` is stored as JSON; ``tta`` names the test-time augmentation
        (a bool is stored as ``'on'``/``'none'``). Unknown run: RunError.
        """
        fields.setdefault("created_at", utc_now())
        values = self._encode("validations", {**fields, "run_id": run_id}, allow_id=False)
        with self._write():
            self._require_run(run_id)
            row_id = self._insert("validations", values)
        return self._row(
            "validations",
            self._db.execute("SELECT * FROM validations WHERE id = ?", (row_id,)).fetchone(),
        )

    def list_validations(self, run_id: str) -> list[dict]:
        """The run's validations, oldest first. Unknown run: RunError."""
        self._require_run(run_id)
        rows = self._db.execute(
            "SELECT * FROM validations WHERE run_id = ? ORDER BY created_at, id", (run_id,)
        )
        return [self._row("validations", r) for r in rows]

    def best_validation(self, run_id: str) -> Optional[dict]:
        """The run's highest-scoring validation (the latest on a tie), or None."""
        self._require_run(run_id)
        row = self._db.execute(
            "SELECT * FROM validations WHERE run_id = ? AND score IS NOT NULL"
            " ORDER BY score DESC, created_at DESC, id DESC LIMIT 1",
            (run_id,),
        ).fetchone()
        return self._row("validations", row)

    # -- submissions ---------------------------------------------------------------

    def add_submission(self, name: str, **fields: Any) -> dict:
        """Record a packaged submission and return it.

        A name already used raises SubmissionError; a ``run_id`` that names no run,
        RunError. ``created_at`` defaults to now.
        """
        name = str(name).strip()
        if not name:
            raise SubmissionError("a submission needs a name")
        fields.setdefault("created_at", utc_now())
        values = self._encode("submissions", {**fields, "name": name}, allow_id=False)
        with self._write():
            if self._submission_row(name) is not None:
                raise SubmissionError(f"a submission named '{name}' already exists")
            if values.get("run_id") is not None:
                self._require_run(values["run_id"])
            self._insert("submissions", values)
        return self._submission_row(name)

    def get_submission(self, name: str) -> dict:
        """The submission with this name; SubmissionError if there is none."""
        return self._require_submission(name)

    def update_submission(self, name: str, /, **fields: Any) -> dict:
        """Set fields of a submission and return it; ``name=`` among the fields renames it.

        Unknown field names raise ValueError; an unknown or clashing name,
        SubmissionError.
        """
        values = self._encode("submissions", fields, allow_id=False)
        with self._write():
            self._require_submission(name)
            new_name = values.get("name", name)
            if new_name != name and self._submission_row(new_name) is not None:
                raise SubmissionError(f"a submission named '{new_name}' already exists")
            if values.get("run_id") is not None:
                self._require_run(values["run_id"])
            self._update("submissions", "name", name, values)
        return self._submission_row(values.get("name", name))

    def list_submissions(self, phase: str = "test") -> list[dict]:
        """Submissions, newest first, each with its run's ``run_name`` and
        ``run_best_val_score`` and its latest score in ``phase``: ``latest_score``,
        ``latest_score_column`` and ``latest_score_at`` (None when unscored).
        """
        rows = self._db.execute(
            """
            SELECT s.*,
                   r.name AS run_name,
                   r.best_val_score AS run_best_val_score,
                   sc.score AS latest_score,
                   sc.column_key AS latest_score_column,
                   sc.recorded_at AS latest_score_at
            FROM submissions s
            LEFT JOIN runs r ON r.id = s.run_id
            LEFT JOIN scores sc ON sc.id = (
                SELECT id FROM scores
                WHERE submission_id = s.id AND phase = ?
                ORDER BY recorded_at DESC, id DESC LIMIT 1
            )
            ORDER BY s.created_at DESC, s.id DESC
            """,
            (phase,),
        )
        return [self._row("submissions", r) for r in rows]

    # -- scores --------------------------------------------------------------------

    def record_score(
        self,
        submission_name: str,
        score: float,
        phase: str = "test",
        column_key: str = "score",
        source: str = "manual",
        replace: bool = False,
        scale: float = 1.0,
    ) -> dict:
        """Record a leaderboard score for a submission and return the score row.

        The score must lie in [0, ``scale``] (the metric's scale: 100 for percent). A
        submission has at most one score per phase and column: recording another raises
        SubmissionError unless ``replace``.
        """
        try:
            value = float(_plain(score))
        except (TypeError, ValueError):
            raise SubmissionError(f"score must be a number, not {score!r}") from None
        if math.isnan(value) or not 0.0 <= value <= scale:
            raise SubmissionError(f"score must lie between 0 and {scale:g}, not {score!r}")
        if source not in SCORE_SOURCES:
            raise ValueError(f"source must be one of {', '.join(SCORE_SOURCES)}, not {source!r}")
        with self._write():
            sub = self._require_submission(submission_name)
            old = self._db.execute(
                "SELECT id, score FROM scores"
                " WHERE submission_id = ? AND phase = ? AND column_key = ?",
                (sub["id"], phase, column_key),
            ).fetchone()
            values = {"score": value, "source": source, "recorded_at": utc_now()}
            if old is None:
                row_id = self._insert(
                    "scores",
                    {"submission_id": sub["id"], "phase": phase, "column_key": column_key, **values},
                )
            elif replace:
                row_id = old["id"]
                self._update("scores", "id", row_id, values)
            else:
                raise SubmissionError(
                    f"'{submission_name}' already has a {phase} score for '{column_key}'"
                    f" ({old['score']}); use --replace to overwrite it"
                )
        return self._row("scores", self._db.execute("SELECT * FROM scores WHERE id = ?", (row_id,)).fetchone())

    def scores_for(self, submission_name: str) -> list[dict]:
        """A submission's scores by phase and column. Unknown name: SubmissionError."""
        sub = self._require_submission(submission_name)
        rows = self._db.execute(
            "SELECT * FROM scores WHERE submission_id = ? ORDER BY phase, column_key, recorded_at",
            (sub["id"],),
        )
        return [self._row("scores", r) for r in rows]

    # -- sweeps --------------------------------------------------------------------

    def add_sweep(self, name: str, **fields: Any) -> dict:
        """Record a sweep (its factors and where its study lives) and return it; a sweep of
        that name already recorded is returned unchanged."""
        fields.setdefault("created_at", utc_now())
        values = self._encode("sweeps", {**fields, "name": name}, allow_id=True)
        with immediate(self._db):
            if self._db.execute("SELECT 1 FROM sweeps WHERE name = ?", (name,)).fetchone() is None:
                self._insert("sweeps", values)
        return self.get_sweep(name)

    def get_sweep(self, name: str) -> dict:
        """The sweep of this name; RunError if none."""
        row = self._db.execute("SELECT * FROM sweeps WHERE name = ?", (name,)).fetchone()
        if row is None:
            known = ", ".join(s["name"] for s in self.list_sweeps()) or "none recorded"
            raise RunError(f"no sweep named '{name}' (known: {known})")
        return self._row("sweeps", row)

    def list_sweeps(self) -> list[dict]:
        """Every sweep, oldest first."""
        rows = self._db.execute("SELECT * FROM sweeps ORDER BY created_at, rowid")
        return [self._row("sweeps", r) for r in rows]
