"""The ledger's schema, as named migrations applied in order (after llm's ``migrations.py``).

Each migration is a function ``mNNN_what(db)`` appended to ``MIGRATIONS`` by the
``@migration`` decorator, applied once in its own ``BEGIN IMMEDIATE`` transaction and
recorded by name in the ``_migrations`` table. Never edit or reorder a migration that has
shipped; add a new one at the end. Migrations receive a connection already inside a
transaction: they must not commit, and must not use ``executescript()``, which would commit
behind the runner's back.
"""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

from cpx.kernel.text import utc_now

Migration = Callable[[sqlite3.Connection], None]


MIGRATIONS: list[Migration] = []


def migration(fn: Migration) -> Migration:
    """Register ``fn`` as the next migration; its function name is its record."""
    MIGRATIONS.append(fn)
    return fn


@migration
def m001_runs(db: sqlite3.Connection) -> None:
    """The runs table: one row per training run, ensemble or imported run."""
    db.execute(
        """
        CREATE TABLE runs (
            id TEXT PRIMARY KEY,
            name TEXT,
            kind TEXT NOT NULL DEFAULT 'train',
            recipe TEXT,
            competition TEXT,
            status TEXT NOT NULL DEFAULT 'running',
            created_at TEXT NOT NULL,
            finished_at TEXT,
            config TEXT,
            config_diff TEXT,
            command TEXT,
            params INTEGER,
            best_val_f REAL,
            best_epoch INTEGER,
            last_epoch INTEGER,
            epochs_planned INTEGER,
            wall_seconds REAL,
            data_fingerprint TEXT,
            git_commit TEXT,
            git_dirty INTEGER,
            seed INTEGER,
            device TEXT,
            run_dir TEXT,
            members TEXT,
            error TEXT,
            notes TEXT
        )
        """
    )
    db.execute("CREATE INDEX runs_name ON runs (name)")
    db.execute("CREATE INDEX runs_created_at ON runs (created_at)")


@migration
def m002_validations(db: sqlite3.Connection) -> None:
    """The validations table: every scoring of a run (checkpoint, TTA, data, scores)."""
    db.execute(
        """
        CREATE TABLE validations (
            id INTEGER PRIMARY KEY,
            run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
            checkpoint TEXT,
            tta TEXT,
            data TEXT,
            images INTEGER,
            score REAL,
            pooled_score REAL,
            pixel_acc REAL,
            miou REAL,
            per_class TEXT,
            wall_seconds REAL,
            created_at TEXT NOT NULL
        )
        """
    )
    db.execute("CREATE INDEX validations_run_id ON validations (run_id)")


@migration
def m003_submissions(db: sqlite3.Connection) -> None:
    """The submissions table: packaged or registered zips and their upload state."""
    db.execute(
        """
        CREATE TABLE submissions (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            run_id TEXT REFERENCES runs (id) ON DELETE SET NULL,
            checkpoint TEXT,
            tta TEXT,
            zip_path TEXT,
            zip_sha256 TEXT,
            size_bytes INTEGER,
            created_at TEXT NOT NULL,
            phase TEXT,
            uploaded INTEGER NOT NULL DEFAULT 0,
            uploaded_at TEXT,
            codabench_id TEXT,
            status TEXT,
            val_score REAL,
            note TEXT,
            is_final INTEGER NOT NULL DEFAULT 0
        )
        """
    )
    db.execute("CREATE INDEX submissions_run_id ON submissions (run_id)")


@migration
def m004_scores(db: sqlite3.Connection) -> None:
    """The scores table: leaderboard scores of submissions, manual or from Codabench."""
    db.execute(
        """
        CREATE TABLE scores (
            id INTEGER PRIMARY KEY,
            submission_id INTEGER NOT NULL REFERENCES submissions (id) ON DELETE CASCADE,
            phase TEXT NOT NULL,
            column_key TEXT NOT NULL,
            score REAL NOT NULL,
            source TEXT NOT NULL DEFAULT 'manual',
            recorded_at TEXT NOT NULL
        )
        """
    )
    # One score per submission, phase and column even for writers that bypass the API.
    db.execute(
        "CREATE UNIQUE INDEX scores_unique ON scores (submission_id, phase, column_key)"
    )


@contextmanager
def immediate(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A ``BEGIN IMMEDIATE`` transaction on ``db`` (autocommit mode): the write lock is taken up
    front, committed on success and rolled back on any exception."""
    # IMMEDIATE takes the write lock at BEGIN, waiting under the busy timeout. A
    # deferred transaction that reads first and writes later fails at once with
    # "database is locked" when another writer got in between.
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    try:
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def applied_migrations(db: sqlite3.Connection) -> list[str]:
    """Names of the migrations recorded in ``db``, in the order they were applied."""
    if not _has_table(db, "_migrations"):
        return []
    return [r[0] for r in db.execute("SELECT name FROM _migrations ORDER BY rowid")]


def migrate(db: sqlite3.Connection, migrations: Optional[Iterable[Migration]] = None) -> list[str]:
    """Apply every migration not yet recorded in ``db``; return the names applied now.

    ``migrations`` defaults to all of ``MIGRATIONS``; passing a leading slice builds an
    older schema, which is how upgrades are tested. ``db`` must be in autocommit mode.
    """
    migrations = MIGRATIONS if migrations is None else list(migrations)
    known = {fn.__name__ for fn in MIGRATIONS}
    unknown = [name for name in applied_migrations(db) if name not in known]
    if unknown:  # before any work: this cpx does not know what the newer one changed
        raise NewerSchema(unknown)
    if not _has_table(db, "_migrations"):
        with immediate(db):
            db.execute(
                "CREATE TABLE IF NOT EXISTS _migrations"
                " (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"
            )
    done = set(applied_migrations(db))
    pending = [fn.__name__ for fn in migrations if fn.__name__ not in done]
    if pending and done:
        keep_copy(db, pending[0])
    applied: list[str] = []
    for fn in migrations:
        name = fn.__name__
        if name in done:
            continue
        with immediate(db):
            # Another process may have applied it while we waited for the lock.
            if db.execute("SELECT 1 FROM _migrations WHERE name = ?", (name,)).fetchone():
                continue
            fn(db)
            db.execute(
                "INSERT INTO _migrations (name, applied_at) VALUES (?, ?)", (name, utc_now())
            )
        applied.append(name)
    return applied


class NewerSchema(Exception):
    """The file records migrations this cpx does not have (``names``): a newer cpx wrote it."""

    def __init__(self, names: list[str]):
        super().__init__(", ".join(names))
        self.names = names


def database_file(db: sqlite3.Connection) -> Optional[Path]:
    """The file of ``db``'s main database; None in memory."""
    row = db.execute("PRAGMA database_list").fetchone()
    return Path(row[2]) if row and row[2] else None


BACKUP_SUFFIX = ".before-"


def keep_copy(db: sqlite3.Connection, migration_name: str) -> Optional[Path]:
    """Copy the database beside its file as ``<file>.before-<migration>`` (SQLite's backup API:
    consistent, WAL included) before that migration changes it; a copy already there is kept.
    Returns the copy's path (None in memory)."""
    source = database_file(db)
    if source is None:
        return None
    target = source.with_name(f"{source.name}{BACKUP_SUFFIX}{migration_name}")
    if target.exists():
        return target
    tmp = target.with_name(target.name + ".tmp")
    copy = sqlite3.connect(str(tmp))
    try:
        db.backup(copy)
    finally:
        copy.close()
    tmp.replace(target)
    return target


def _has_table(db: sqlite3.Connection, table: str) -> bool:
    row = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
    ).fetchone()
    return row is not None


@migration
def m005_codabench_and_import_fields(db: sqlite3.Connection) -> None:
    # Where an upload went (a submission id alone does not say which competition or
    # phase to ask about later), why Codabench failed it, and the checkpoint files of
    # runs imported from other training scripts, which have no run folder layout.
    """Codabench competition and phase of an upload, why it failed, and imported checkpoints."""
    for column in ("codabench_competition INTEGER", "codabench_phase INTEGER", "status_detail TEXT"):
        db.execute(f"ALTER TABLE submissions ADD COLUMN {column}")
    db.execute("ALTER TABLE runs ADD COLUMN checkpoints TEXT")


@migration
def m006_run_budget_and_world_size(db: sqlite3.Connection) -> None:
    # A time-budgeted run records the wall-clock time it was given next to wall_seconds (the
    # time it took), so planned and actual cost compare without parsing notes; world_size is
    # the number of data-parallel processes that trained it (1 for a single process).
    """The wall-clock budget a run was given and its number of data-parallel processes."""
    db.execute("ALTER TABLE runs ADD COLUMN budget_seconds REAL")
    db.execute("ALTER TABLE runs ADD COLUMN world_size INTEGER")



@migration
def m007_validation_per_image(db: sqlite3.Connection) -> None:
    # Each validated image's F ({image stem: F}, JSON), so two runs scored on the same images can
    # be compared image by image (a paired test) without evaluating them again.
    db.execute("ALTER TABLE validations ADD COLUMN per_image TEXT")


@migration
def m008_sweeps(db: sqlite3.Connection) -> None:
    # A sweep is a set of runs that differ in a few named factors (and seeds); each run names its
    # sweep and its trial number in the sweep's Optuna study.
    db.execute(
        """
        CREATE TABLE sweeps (
            name TEXT PRIMARY KEY,
            recipe TEXT,
            mode TEXT NOT NULL,
            factors TEXT,
            seeds INTEGER,
            trials INTEGER,
            overrides TEXT,
            storage TEXT,
            study TEXT,
            created_at TEXT NOT NULL
        )
        """
    )
    db.execute("ALTER TABLE runs ADD COLUMN sweep TEXT")
    db.execute("ALTER TABLE runs ADD COLUMN sweep_trial INTEGER")
    db.execute("CREATE INDEX runs_sweep ON runs (sweep)")


@migration
def m009_run_owner_process(db: sqlite3.Connection) -> None:
    # The process training a run (PID and host name), recorded with the row before any file of
    # the run exists: a "running" run whose process is gone shows as interrupted.
    """The PID and host of the process training a run."""
    db.execute("ALTER TABLE runs ADD COLUMN pid INTEGER")
    db.execute("ALTER TABLE runs ADD COLUMN host TEXT")


@migration
def m010_run_refit_of(db: sqlite3.Connection) -> None:
    # A refit retrains a validated run's config on every labelled image for the epochs that run
    # chose; it has nothing left to validate on, so its val F is the parent's, carried and marked.
    """The run a refit retrained (``refit_of``, the parent's id)."""
    db.execute("ALTER TABLE runs ADD COLUMN refit_of TEXT")


@migration
def m011_validation_calibration_and_post(db: sqlite3.Connection) -> None:
    # A validation may shift the logits by the run's calibrated offsets and clean the masks with
    # post-processors; the score means something else then, so the row says which.
    """Whether a validation applied the run's logit offsets, and its post-processing steps."""
    db.execute("ALTER TABLE validations ADD COLUMN calibrated INTEGER")
    db.execute("ALTER TABLE validations ADD COLUMN post TEXT")


@migration
def m012_metric_not_only_f(db: sqlite3.Connection) -> None:
    # A competition ranks by its own metric (IoU, Dice, ...), not always an F-score: the run's
    # best validation score loses its F in the name, and runs and validations say which metric
    # (and on which scale) their numbers are.
    """``runs.best_val_f`` becomes ``best_val_score``; runs and validations record their metric."""
    db.execute("ALTER TABLE runs RENAME COLUMN best_val_f TO best_val_score")
    db.execute("ALTER TABLE runs ADD COLUMN metric TEXT")
    db.execute("ALTER TABLE validations ADD COLUMN metric TEXT")


@migration
def m013_validation_official_score(db: sqlite3.Connection) -> None:
    # `cpx validate --official` runs the organisers' own scoring program on the same predictions:
    # its ranked column's value sits beside cpx's score, with the column's key and the folder that
    # keeps the program's input, output and logs.
    """The organisers' scoring program's score of a validation, its column and its output folder."""
    db.execute("ALTER TABLE validations ADD COLUMN official_score REAL")
    db.execute("ALTER TABLE validations ADD COLUMN official_column TEXT")
    db.execute("ALTER TABLE validations ADD COLUMN official_dir TEXT")


@migration
def m014_run_stop_reason(db: sqlite3.Connection) -> None:
    # Why a run stopped is a value (cpx.train.loop.StopReason), never a phrase searched for in
    # its notes; runs of older versions keep NULL and their notes.
    """Why a run's training ended: completed, stop_after, patience, budget, pruned, interrupted."""
    db.execute("ALTER TABLE runs ADD COLUMN stop_reason TEXT")


def workspace_relative(value: str, root: Path, guess: bool = True) -> str:
    """``value``, a path, relative to the workspace ``root`` (POSIX form) when it lies inside it;
    else, with ``guess``, the tail from its last ``experiments`` or ``submissions`` part when
    ``root`` holds that (a workspace copied or moved before paths were stored relative); else
    ``value`` unchanged (a folder outside the workspace, an imported run's)."""
    path = Path(value)
    if not path.is_absolute():
        return value
    try:
        return path.resolve().relative_to(root).as_posix()
    except ValueError:
        pass
    if guess:
        parts = path.parts
        for i in range(len(parts) - 1, 0, -1):
            if parts[i] in ("experiments", "submissions") and (root / Path(*parts[i:])).exists():
                return Path(*parts[i:]).as_posix()
    return value


@migration
def m015_workspace_relative_paths(db: sqlite3.Connection) -> None:
    # The ledger stored absolute run folders: in a copied workspace `cpx show` wrote into the
    # original's run folder and validate used its checkpoints; after a move, nothing was found.
    # Paths inside the workspace (the ledger's folder's parent) are now stored relative to it.
    """Run folders, submission zips and official output folders stored relative to the workspace."""
    file = database_file(db)
    if file is None:
        return  # an in-memory ledger has no workspace
    root = file.resolve().parent.parent
    for table, column in (("runs", "run_dir"), ("submissions", "zip_path"), ("validations", "official_dir")):
        for key, value in db.execute(f"SELECT rowid, {column} FROM {table} WHERE {column} IS NOT NULL").fetchall():
            new = workspace_relative(value, root)
            if new != value:
                db.execute(f"UPDATE {table} SET {column} = ? WHERE rowid = ?", (new, key))


@migration
def m016_submission_upload_attempt(db: sqlite3.Connection) -> None:
    # An upload is recorded before the submission's POST: the phase, the time and the ids of your
    # submissions there before it. When the server created the submission but its reply was lost,
    # the next upload of that zip finds it on the server instead of spending a second submission.
    """A submission's pending Codabench upload (JSON: competition, phase, started_at, ids before)."""
    db.execute("ALTER TABLE submissions ADD COLUMN upload_attempt TEXT")


@migration
def m017_cpx_version(db: sqlite3.Connection) -> None:
    # Which cpx last wrote the file: a ledger from a newer cpx is refused before any work (its
    # migrations are unknown here), and the refusal names both versions.
    """A key-value table ``_cpx``; ``written_by`` is the version of the cpx that last opened it."""
    db.execute("CREATE TABLE _cpx (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
