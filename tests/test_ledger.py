import datetime as dt
import multiprocessing
import sqlite3
import traceback

import pytest

from cpx.kernel.errors import CpxError, RunError, SubmissionError
from cpx.runs import ledger_file
from cpx.runs.ledger import Ledger
from cpx.runs.migrations import MIGRATIONS, _has_table, applied_migrations, migrate

ALL_NAMES = [fn.__name__ for fn in MIGRATIONS]


@pytest.fixture
def led(tmp_path):
    with Ledger(tmp_path / "ledger.db") as ledger:
        yield ledger


def tables(path):
    db = sqlite3.connect(path)
    try:
        return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        db.close()


def recorded(path):
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT name, applied_at FROM _migrations ORDER BY rowid").fetchall()
    finally:
        db.close()


# -- migrations -----------------------------------------------------------------------


def test_blank_database_gets_every_table_and_migration(tmp_path):
    path = tmp_path / "deep" / "folder" / "ledger.db"
    with Ledger(path) as ledger:
        assert ledger.applied_migrations == ALL_NAMES
        mode = ledger._db.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    assert {"_migrations", "runs", "validations", "submissions", "scores"} <= tables(path)
    rows = recorded(path)
    assert [name for name, _ in rows] == ALL_NAMES
    assert ALL_NAMES[:4] == ["m001_runs", "m002_validations", "m003_submissions", "m004_scores"]
    for _, applied_at in rows:
        assert dt.datetime.fromisoformat(applied_at).utcoffset() == dt.timedelta(0)


def test_reopening_applies_nothing_again(tmp_path):
    path = tmp_path / "ledger.db"
    Ledger(path).close()
    first = recorded(path)
    with Ledger(path) as ledger:
        assert ledger.applied_migrations == []
    assert recorded(path) == first


def test_old_schema_upgrades_and_keeps_rows(tmp_path):
    path = tmp_path / "ledger.db"
    db = ledger_file.connect(path)
    assert migrate(db, MIGRATIONS[:1]) == ["m001_runs"]
    db.execute(
        "INSERT INTO runs (id, name, kind, status, created_at, config)"
        " VALUES ('20250101-000000-old-abcd', 'old', 'train', 'completed',"
        " '2025-01-01T00:00:00+00:00', '{\"lr\": 0.01}')"
    )
    db.close()
    assert tables(path) >= {"runs"} and "validations" not in tables(path)

    with Ledger(path) as ledger:
        assert ledger.applied_migrations == ALL_NAMES[1:]
        run = ledger.get_run("old")
        assert run["config"] == {"lr": 0.01} and run["status"] == "completed"
        ledger.add_validation(run["id"], score=0.5)
        ledger.add_submission("s1", run_id=run["id"])
    assert [n for n, _ in recorded(path)] == ALL_NAMES


def test_failed_migration_leaves_nothing_behind(tmp_path):
    def m900_broken(db):
        db.execute("CREATE TABLE half_done (x INTEGER)")
        raise RuntimeError("boom")

    db = ledger_file.connect(tmp_path / "ledger.db")
    with pytest.raises(RuntimeError):
        migrate(db, [*MIGRATIONS[:1], m900_broken])
    assert applied_migrations(db) == ["m001_runs"]
    assert not _has_table(db, "half_done")
    assert not db.in_transaction
    db.close()


def test_not_a_database_is_a_cpx_error(tmp_path):
    path = tmp_path / "ledger.db"
    path.write_bytes(b"this is no sqlite file" * 100)
    with pytest.raises(CpxError, match="cannot open the ledger"):
        Ledger(path)


# -- runs -----------------------------------------------------------------------------


def test_run_crud(led):
    run = led.add_run(name="msf-lmsa", recipe="msf", competition="celebamask", params=1_234_567)
    assert run["kind"] == "train" and run["status"] == "running"
    assert run["id"].split("-")[2:4] == ["msf", "lmsa"]
    assert dt.datetime.fromisoformat(run["created_at"]).utcoffset() == dt.timedelta(0)
    assert run["finished_at"] is None

    done = led.update_run(
        run["id"], status="completed", best_val_score=0.81, best_epoch=40,
        finished_at=dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc),
    )
    assert done["status"] == "completed" and done["best_val_score"] == 0.81
    assert done["finished_at"] == "2026-01-02T03:04:05+00:00"
    assert done["params"] == 1_234_567

    with pytest.raises(ValueError, match="bogus"):
        led.update_run(run["id"], bogus=1)
    with pytest.raises(ValueError):
        led.update_run(run["id"], id="other")
    with pytest.raises(ValueError, match="status"):
        led.update_run(run["id"], status="exploded")
    with pytest.raises(ValueError, match="kind"):
        led.add_run(name="x", kind="weird")
    with pytest.raises(RunError, match="no run"):
        led.update_run("nope", status="failed")
    with pytest.raises(RunError, match="already exists"):
        led.add_run(id=run["id"])
    assert led.add_run(name="imp", kind="imported")["status"] == "imported"


def test_get_run_by_id_prefix_and_name(led):
    a = led.add_run(id="20261124-130501-msf-3f2a", name="msf", created_at="2026-11-24T13:05:01+00:00")
    b = led.add_run(id="20261124-140000-msf-9c1d", name="msf", created_at="2026-11-24T14:00:00+00:00")
    c = led.add_run(id="20261125-090000-unet-0000", name="unet", created_at="2026-11-25T09:00:00+00:00")

    assert led.get_run(a["id"])["id"] == a["id"]
    assert led.get_run("20261124-1305")["id"] == a["id"]
    assert led.get_run("20261125")["id"] == c["id"]
    assert led.get_run("msf")["id"] == b["id"]  # latest of that name
    assert led.get_run("unet")["id"] == c["id"]

    with pytest.raises(RunError) as err:
        led.get_run("20261124")
    assert a["id"] in str(err.value) and b["id"] in str(err.value)
    assert "matches 2 runs" in str(err.value)
    with pytest.raises(RunError, match="no run matches 'zzz'"):
        led.get_run("zzz")
    with pytest.raises(RunError):
        led.get_run("  ")
    # prefix matching is exact, not LIKE: no case folding, no wildcards
    with pytest.raises(RunError):
        led.get_run("2026112_")


def test_json_round_trip(led):
    np = pytest.importorskip("numpy")
    config = {"model": {"name": "msf", "width": 32}, "loss": {"options": {"dice": 1.5}}, "tags": ["a", "b"]}
    diff = {"loss.options.dice": 1.5, "train.epochs": 80}
    members = [{"run": "r1", "weight": 0.6}, {"run": "r2", "weight": 0.4}]
    run = led.add_run(
        name="ens", kind="ensemble", config=config, config_diff=diff, members=members,
        best_val_score=np.float32(0.5), params=np.int64(12), git_dirty=True,
    )
    again = led.get_run(run["id"])
    assert again["config"] == config
    assert again["config_diff"] == diff
    assert again["members"] == members
    assert again["best_val_score"] == 0.5 and again["params"] == 12 and again["git_dirty"] is True
    assert led.update_run(run["id"], config_diff={})["config_diff"] == {}
    assert led.update_run(run["id"], config=None)["config"] is None


def test_list_runs_filters_and_order(led):
    led.add_run(id="r1", name="one", created_at="2026-01-01T00:00:00+00:00", best_val_score=0.7, status="completed")
    led.add_run(id="r2", name="two", created_at="2026-01-02T00:00:00+00:00", status="failed")
    led.add_run(id="r3", name="three", created_at="2026-01-03T00:00:00+00:00", best_val_score=0.8, status="completed")
    led.add_run(id="r4", name="four", kind="ensemble", created_at="2026-01-04T00:00:00+00:00", best_val_score=0.75)

    assert [r["id"] for r in led.list_runs()] == ["r4", "r3", "r2", "r1"]
    assert [r["id"] for r in led.list_runs(order_by="best_val_score")] == ["r3", "r4", "r1", "r2"]
    assert [r["id"] for r in led.list_runs(status="completed")] == ["r3", "r1"]
    assert [r["id"] for r in led.list_runs(status=["completed", "failed"], limit=2)] == ["r3", "r2"]
    assert [r["id"] for r in led.list_runs(kind="ensemble")] == ["r4"]
    with pytest.raises(ValueError):
        led.list_runs(order_by="name; DROP TABLE runs")


# -- validations ------------------------------------------------------------------------


def test_validations(led, tmp_path):
    run = led.add_run(name="v")
    assert led.best_validation(run["id"]) is None
    led.add_validation(run["id"], checkpoint="best.pth", tta=False, data=tmp_path, images=100,
                       score=0.70, per_class={"skin": 0.9, "hair": 0.8})
    led.add_validation(run["id"], checkpoint="best.pth", tta="hflip", score=0.74, miou=0.6)
    led.add_validation(run["id"], checkpoint="last.pth", tta="hflip", score=0.72)
    rows = led.list_validations(run["id"])
    assert [v["score"] for v in rows] == [0.70, 0.74, 0.72]
    assert rows[0]["per_class"] == {"skin": 0.9, "hair": 0.8}
    assert rows[0]["data"] == str(tmp_path) and rows[0]["tta"] == "none"
    best = led.best_validation(run["id"])
    assert best["score"] == 0.74 and best["tta"] == "hflip"
    with pytest.raises(RunError):
        led.add_validation("missing", score=0.5)
    with pytest.raises(ValueError):
        led.add_validation(run["id"], nonsense=1)


def test_per_class_values_recorded_as_f_read_as_score(led):
    # validations of runs before scores were any competition's metric named a class's value "f"
    run = led.add_run(name="old")
    led.add_validation(run["id"], score=0.7, per_class={"skin": {"f": 0.9, "images": 3}, "hat": {"f": None, "images": 0},
                                                        "nose": {"score": 0.5, "images": 2}})
    (row,) = led.list_validations(run["id"])
    assert row["per_class"] == {"skin": {"score": 0.9, "images": 3}, "hat": {"score": None, "images": 0},
                                "nose": {"score": 0.5, "images": 2}}
    assert led.best_validation(run["id"])["per_class"] == row["per_class"]


# -- submissions and scores -----------------------------------------------------------


def test_submissions(led):
    run = led.add_run(name="m", best_val_score=0.8)
    sub = led.add_submission("sub-01", run_id=run["id"], zip_path="submissions/sub-01.zip", val_score=0.79)
    assert sub["uploaded"] is False and sub["is_final"] is False and sub["run_id"] == run["id"]
    with pytest.raises(SubmissionError, match="already exists"):
        led.add_submission("sub-01")
    with pytest.raises(SubmissionError, match="no submission"):
        led.get_submission("sub-99")
    with pytest.raises(RunError):
        led.add_submission("sub-02", run_id="missing")
    led.add_submission("sub-02")  # no run: fine

    up = led.update_submission("sub-01", uploaded=True, codabench_id="12345", status="Finished")
    assert up["uploaded"] is True and up["codabench_id"] == "12345"
    with pytest.raises(ValueError):
        led.update_submission("sub-01", wrong=1)
    with pytest.raises(SubmissionError):
        led.update_submission("sub-01", name="sub-02")
    assert led.update_submission("sub-02", name="sub-03")["name"] == "sub-03"

    listed = {s["name"]: s for s in led.list_submissions()}
    assert set(listed) == {"sub-01", "sub-03"}
    assert listed["sub-01"]["run_best_val_score"] == 0.8 and listed["sub-01"]["run_name"] == "m"
    assert listed["sub-01"]["latest_score"] is None
    assert listed["sub-03"]["run_best_val_score"] is None


def test_score_rules(led):
    led.add_submission("s")
    for bad in (-0.1, 1.01, float("nan"), "high"):
        with pytest.raises(SubmissionError):
            led.record_score("s", bad)
    with pytest.raises(SubmissionError, match="no submission"):
        led.record_score("ghost", 0.5)
    with pytest.raises(ValueError):
        led.record_score("s", 0.5, source="rumour")

    first = led.record_score("s", 0.61)
    assert first["phase"] == "test" and first["column_key"] == "score" and first["source"] == "manual"
    with pytest.raises(SubmissionError, match="--replace"):
        led.record_score("s", 0.65)
    led.record_score("s", 0.9, column_key="pixel_acc")  # another column is fine
    led.record_score("s", 0.55, phase="final", source="codabench")
    replaced = led.record_score("s", 0.65, replace=True)
    assert replaced["id"] == first["id"] and replaced["score"] == 0.65

    got = led.scores_for("s")
    assert [(x["phase"], x["column_key"], x["score"]) for x in got] == [
        ("final", "score", 0.55), ("test", "pixel_acc", 0.9), ("test", "score", 0.65),
    ]
    assert led.record_score("s", 1, column_key="edge")["score"] == 1.0  # bounds inclusive

    latest = led.list_submissions()[0]
    assert (latest["latest_score"], latest["latest_score_column"]) == (1.0, "edge")
    assert led.list_submissions(phase="final")[0]["latest_score"] == 0.55
    assert led.list_submissions(phase="dev")[0]["latest_score"] is None


# -- concurrency ----------------------------------------------------------------------------


def _writer(path, tag, barrier, errors):
    try:
        barrier.wait(timeout=20)
        # both processes open (and migrate) the fresh file at the same moment
        with Ledger(path) as ledger:
            for i in range(50):
                ledger.add_run(id=f"{tag}-{i:03d}", name=tag)
    except BaseException:
        errors.put(traceback.format_exc())
        raise


def test_two_processes_write_concurrently(tmp_path):
    path = tmp_path / "ledger.db"
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    errors = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(path, tag, barrier, errors)) for tag in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    problems = []
    while not errors.empty():
        problems.append(errors.get())
    assert not problems, "\n".join(problems)
    assert [p.exitcode for p in procs] == [0, 0]
    with Ledger(path) as ledger:
        runs = ledger.list_runs()
        assert len(runs) == 100
        assert len(ledger.list_runs(limit=5)) == 5
    assert [n for n, _ in recorded(path)] == ALL_NAMES


# -- a damaged ledger, a newer cpx's ledger (issue 19.6, 19.7) --------------------------


def _filled(ws):
    with Ledger(ws.ledger_path) as ledger:
        for i in range(200):
            ledger.add_run(id=f"run-{i:03d}", name=f"r{i}", notes="x" * 300, status="completed")
    return ws.ledger_path


def _damage(path):
    # pages after the schema page turn to junk, as after a disk fault or a copy cut short
    with open(path, "r+b") as fh:
        fh.seek(4096 * 3)
        fh.write(b"\xa5" * 4096 * 6)


@pytest.mark.parametrize("argv", [["runs"], ["leaderboard"], ["validate", "run-001"],
                                  ["train", "msf-lmsa", "--epochs", "1"]], ids=lambda a: a[0])
def test_a_damaged_ledger_is_one_line_naming_it_and_how_to_recover(cpx_workspace, capsys, argv):
    from cpx.cli import main

    _damage(_filled(cpx_workspace))
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert str(cpx_workspace.ledger_path) in err and "damaged" in err and "recover" in err
    assert not cpx_workspace.runs_dir.is_dir() or not any(cpx_workspace.runs_dir.iterdir())


def test_a_copy_is_kept_before_each_migration(tmp_path):
    path = tmp_path / "ledger.db"
    db = sqlite3.connect(path, isolation_level=None)
    migrate(db, MIGRATIONS[:14])
    db.execute("INSERT INTO runs (id, created_at) VALUES ('old', 'then')")
    db.close()
    with Ledger(path):
        pass
    (copy,) = tmp_path.glob("ledger.db.before-*")
    assert copy.name == "ledger.db.before-m015_workspace_relative_paths"
    assert sqlite3.connect(copy).execute("SELECT id FROM runs").fetchall() == [("old",)]
    assert len(recorded(copy)) == 14
    # a damaged ledger then points at that copy
    _damage_after_filling = Ledger(path)
    _damage_after_filling.close()
    err = ledger_file.damaged(path, sqlite3.DatabaseError("database disk image is malformed"))
    assert copy.name in str(err)
    # a new ledger has nothing to keep
    with Ledger(tmp_path / "new" / "ledger.db"):
        pass
    assert not list((tmp_path / "new").glob("*.before-*"))


def test_a_ledger_from_a_newer_cpx_is_refused_before_any_work(cpx_workspace, capsys):
    from cpx import __version__
    from cpx.cli import main
    from cpx.kernel.errors import LedgerDamaged

    with Ledger(cpx_workspace.ledger_path):
        pass
    db = sqlite3.connect(cpx_workspace.ledger_path, isolation_level=None)
    db.execute("INSERT INTO _migrations (name, applied_at) VALUES ('m099_from_the_future', 'later')")
    db.execute("UPDATE _cpx SET value = '9.9.9' WHERE key = 'written_by'")
    db.close()
    with pytest.raises(LedgerDamaged, match=rf"written by cpx 9\.9\.9 .*m099_from_the_future.*this is cpx "
                                            rf"{__version__}, whose schema ends at {ALL_NAMES[-1]}"):
        Ledger(cpx_workspace.ledger_path)
    capsys.readouterr()
    assert main(["train", "msf-lmsa", "--epochs", "1"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not cpx_workspace.runs_dir.is_dir()
    assert sqlite3.connect(cpx_workspace.ledger_path).execute("SELECT value FROM _cpx").fetchone() == ("9.9.9",)
