"""Training survives the faults real users meet: kills at any point, Ctrl-C, a second process
on the same run, a forced duplicate id, a busy ledger, a diverging loss.

Kills are real: a child process trains and ends itself with ``os._exit`` (no cleanup runs,
as with SIGKILL) at an exact point of the commit sequence; the slow test sends real SIGKILLs
at random moments.
"""

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch
from conftest import CtrlCInEpoch2, tiny_overrides

from cpx.cli import main
from cpx.kernel.errors import ConfigError, RunError
from cpx.runs.folder import RunFolder
from cpx.runs.ledger import Ledger
from cpx.runs.recovery import list_runs
from cpx.train.run import TrainRequest, train

UNET = {"model.name": "unet", "model.options": {"base_channels": 4, "depth": 2}, "data.image_size": 32,
        "data.synthetic_count": 24, "data.synthetic_size": 32, "train.batch_size": 8, "schedule.warmup_epochs": 1,
        "train.patience": None, "optimizer.lr": 3e-3}

CHILD = textwrap.dedent("""
    import os, sys, json
    from pathlib import Path
    import cpx.runs.commit as commit
    import cpx.train.run as run
    from cpx.kernel.manager import create_plugin_host
    from cpx.kernel.workspace import Workspace
    from cpx.train.run import TrainRequest, train

    die_at = sys.argv[1]          # where to die: a point of the commit sequence, or "never"
    nth = int(sys.argv[2])        # at its nth occurrence
    request = json.loads(sys.argv[3])
    seen = {"n": 0}

    def maybe_die(point):
        if point == die_at:
            seen["n"] += 1
            if seen["n"] == nth:
                os._exit(9)   # like SIGKILL: no handler, no finally, no atexit

    real_replace, real_save = commit.os.replace, commit.atomic_torch_save
    def replace(src, dst):
        real_replace(src, dst)
        maybe_die("after-best-rename" if Path(dst).name == "best.pt" else "after-replace")
    def save(obj, path):
        maybe_die("before-" + Path(path).name)
        real_save(obj, path)
        maybe_die("after-" + Path(path).name)
    commit.os.replace, commit.atomic_torch_save = replace, save
    real_create = run.RunFolder.create
    def create(runs_dir, run_id):
        maybe_die("before-folder")
        return real_create(runs_dir, run_id)
    run.RunFolder.create = staticmethod(create)

    ws = Workspace(Path(os.environ["CPX_WORKSPACE"]))
    result = train(TrainRequest(**request), ws, create_plugin_host(entry_points=False))
    print(json.dumps({"run_id": result.run_id, "status": result.status}))
""")


def child(ws, die_at, nth, **request):
    env = {**os.environ, "CPX_WORKSPACE": str(ws.root), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", CHILD, die_at, str(nth), json.dumps(request)], env=env,
                          capture_output=True, text=True, timeout=300)


def only_run(ws) -> dict:
    with Ledger(ws.ledger_path) as ledger:
        (row,) = ledger.list_runs()
    return row


def assert_consistent(ws, row: dict) -> None:
    """best.pt, history.json and the ledger describe the same best epoch."""
    folder = RunFolder(row["run_dir"])
    history = folder.read_history()
    scored = [h for h in history if h.get("val_score") is not None]
    if not scored:
        assert not row.get("best_epoch")
        return
    best = max(scored, key=lambda h: h["val_score"])
    # ties keep the earliest, as the trainer does
    best = next(h for h in scored if h["val_score"] == best["val_score"])
    assert row["best_epoch"] == best["epoch"], (row["best_epoch"], best)
    assert row["best_val_score"] == pytest.approx(best["val_score"])
    assert row["last_epoch"] == history[-1]["epoch"]
    saved = torch.load(folder.best_path, weights_only=True)
    assert saved["epoch"] == best["epoch"] and saved["val_score"] == pytest.approx(best["val_score"])
    assert not folder.pending_best_path.exists()


def test_a_kill_between_last_and_best_is_rolled_forward(cpx_workspace):
    # the kill that broke resume before: last.pt committed a new best epoch, best.pt not yet renamed
    out = child(cpx_workspace, "after-last.pt", 2, recipe="msf-lmsa", overrides={**UNET, "train.epochs": 4})
    assert out.returncode == 9, out.stderr[-2000:]
    row = only_run(cpx_workspace)
    assert row["status"] == "running"  # the ledger cannot know yet...
    rows = list_runs(cpx_workspace)  # ...until someone looks: the process is gone
    assert rows[0]["status"] == "interrupted" and "cpx train --resume" in rows[0]["notes"]
    assert_consistent(cpx_workspace, rows[0])
    result = train(TrainRequest(resume=row["id"]), cpx_workspace, _host())
    assert result.status == "completed" and result.epochs == 4
    assert_consistent(cpx_workspace, only_run(cpx_workspace))


def test_runs_says_when_a_run_folder_was_deleted_by_hand(cpx_workspace, unet_run, capsys):
    assert main(["runs", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["id"] == unet_run and row["folder_missing"] is False
    (cpx_workspace.runs_dir / unet_run).unlink()  # this workspace's link only: the shared folder stays
    assert main(["runs"]) == 0
    assert "folder gone" in capsys.readouterr().out
    assert main(["runs", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["status"] == "completed" and row["folder_missing"] is True


@pytest.mark.slow
@pytest.mark.parametrize("die_at,nth", [("before-.best.pt.next", 2), ("after-.best.pt.next", 2),
                                        ("before-last.pt", 2), ("after-best-rename", 2), ("after-last.pt", 3)])
def test_every_kill_point_leaves_a_consistent_run(cpx_workspace, die_at, nth):
    out = child(cpx_workspace, die_at, nth, recipe="msf-lmsa", overrides={**UNET, "train.epochs": 4})
    if out.returncode == 0:
        pytest.skip(f"the run never reached {die_at} #{nth} (no improvement that epoch)")
    assert out.returncode == 9, out.stderr[-2000:]
    (row,) = list_runs(cpx_workspace)
    assert row["status"] == "interrupted"
    assert_consistent(cpx_workspace, row)
    assert train(TrainRequest(resume=row["id"]), cpx_workspace, _host()).status == "completed"
    assert_consistent(cpx_workspace, only_run(cpx_workspace))


def test_a_kill_before_the_folder_exists_leaves_a_known_run_with_nothing_to_resume(cpx_workspace, capsys):
    out = child(cpx_workspace, "before-folder", 1, recipe="msf-lmsa", overrides={**UNET, "train.epochs": 2})
    assert out.returncode == 9, out.stderr[-2000:]
    (row,) = list_runs(cpx_workspace)
    assert row["status"] == "interrupted" and "nothing to resume" in row["notes"]
    assert not Path(row["run_dir"]).exists()
    assert main(["train", "--resume", row["id"]]) == 2
    err = capsys.readouterr().err
    assert "nothing to resume" in err and "Traceback" not in err


def test_ctrl_c_in_the_first_epoch_says_nothing_was_saved(cpx_workspace, cpx_host, tiny_model):
    class CtrlC:
        def on_batch_end(self, trainer, i, loss):
            raise KeyboardInterrupt

    result = train(TrainRequest(recipe="msf-lmsa", overrides=tiny_overrides()), cpx_workspace, cpx_host,
                   callbacks=(CtrlC(),))
    assert result.status == "stopped" and "nothing saved to resume" in result.message
    assert "progress saved" not in result.message
    with pytest.raises(RunError, match="nothing to resume"):
        train(TrainRequest(resume=result.run_id), cpx_workspace, cpx_host)


def test_ctrl_c_later_names_the_epoch_that_was_saved_and_resume_works(cpx_workspace, cpx_host, tiny_model):

    result = train(TrainRequest(recipe="msf-lmsa", overrides=tiny_overrides(**{"train.epochs": 3})),
                   cpx_workspace, cpx_host, callbacks=(CtrlCInEpoch2(),))
    assert f"progress saved at epoch 1. Resume with: cpx train --resume {result.run_id}" in result.message
    assert train(TrainRequest(resume=result.run_id), cpx_workspace, cpx_host).epochs == 3


def test_sigterm_stops_like_ctrl_c_and_the_run_resumes(cpx_workspace, cpx_host, tiny_model):
    class Terminated:  # `kill PID` (or a scheduler) in the second epoch, after epoch 1 is saved
        def on_batch_end(self, trainer, i, loss):
            if trainer.epoch == 1:
                os.kill(os.getpid(), signal.SIGTERM)

    result = train(TrainRequest(recipe="msf-lmsa", overrides=tiny_overrides(**{"train.epochs": 3})),
                   cpx_workspace, cpx_host, callbacks=(Terminated(),))
    assert result.status == "stopped" and "progress saved at epoch 1" in result.message
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler lives only while training
    assert only_run(cpx_workspace)["status"] == "stopped"
    assert train(TrainRequest(resume=result.run_id), cpx_workspace, cpx_host).epochs == 3


def test_resume_while_another_process_trains_the_run_is_refused(cpx_workspace, cpx_host, tiny_model):

    result = train(TrainRequest(recipe="msf-lmsa", overrides=tiny_overrides(**{"train.epochs": 3})),
                   cpx_workspace, cpx_host, callbacks=(CtrlCInEpoch2(),))
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = result.run_dir / ".lock"
        lock.write_text(json.dumps({"pid": other.pid, "host": os.uname().nodename, "since": "now"}))
        with pytest.raises(RunError, match=f"in use by process {other.pid}"):
            train(TrainRequest(resume=result.run_id), cpx_workspace, cpx_host)
    finally:
        other.kill()
        other.wait()
    # its owner is gone now: a stale lock is taken over, and temp files of killed writers cleaned
    (result.run_dir / ".last.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    assert train(TrainRequest(resume=result.run_id), cpx_workspace, cpx_host).status == "completed"
    assert not list(result.run_dir.glob(".*.tmp")) and not (result.run_dir / ".lock").exists()


def test_a_forced_duplicate_id_never_overwrites_the_first_run(cpx_workspace, cpx_host, tiny_model, monkeypatch):
    monkeypatch.setattr("cpx.train.start.new_run_id", lambda name: "20261201-120000-msf-lmsa-beef")
    first = train(TrainRequest(recipe="msf-lmsa", overrides=tiny_overrides()), cpx_workspace, cpx_host)
    config = (first.run_dir / "config.yaml").read_bytes()
    with pytest.raises(RunError, match="already exists"):
        train(TrainRequest(recipe="msf-lmsa", overrides=tiny_overrides(**{"optimizer.lr": 1e-2})),
              cpx_workspace, cpx_host)
    assert (first.run_dir / "config.yaml").read_bytes() == config
    assert only_run(cpx_workspace)["status"] == "completed"


def test_an_imported_run_is_never_resumed(cpx_workspace, cpx_host):
    with Ledger(cpx_workspace.ledger_path) as ledger:
        ledger.add_run(id="imp", kind="imported", run_dir=str(cpx_workspace.root / "elsewhere"))
    with pytest.raises(RunError, match="imported from another tool's folder"):
        train(TrainRequest(resume="imp"), cpx_workspace, cpx_host)


def test_a_busy_ledger_never_ends_training(cpx_workspace, cpx_host, tiny_model, monkeypatch):
    monkeypatch.setenv("CPX_LEDGER_TIMEOUT", "0.1")
    holder = {}

    class LockTheLedger:
        """Another program (a DB browser) opens a write transaction right after the run starts."""

        def on_start(self, **info):
            db = sqlite3.connect(cpx_workspace.ledger_path, isolation_level=None, check_same_thread=False)
            db.execute("BEGIN IMMEDIATE")
            holder["db"] = db
            threading.Timer(2.5, lambda: db.execute("ROLLBACK")).start()

    result = train(TrainRequest(recipe="msf-lmsa", overrides=tiny_overrides(**{"train.epochs": 3})),
                   cpx_workspace, cpx_host, callbacks=(LockTheLedger(),))
    holder["db"].close()
    assert result.status == "completed" and result.epochs == 3
    row = only_run(cpx_workspace)
    assert row["status"] == "completed" and row["last_epoch"] == 3
    assert row["best_val_score"] == pytest.approx(result.best_val_score)


def test_a_diverging_loss_fails_the_run_naming_the_epoch(cpx_workspace, cpx_host, tiny_model, monkeypatch):
    from cpx.train.loop import Trainer

    real = Trainer.train_epoch

    def nan_in_epoch_2(self):
        record = real(self)
        if record.epoch == 2:
            record.train_loss = float("nan")
        return record

    monkeypatch.setattr(Trainer, "train_epoch", nan_in_epoch_2)
    with pytest.raises(RunError, match="epoch 2: the training loss became nan"):
        train(TrainRequest(recipe="msf-lmsa", overrides=tiny_overrides(**{"train.epochs": 3})), cpx_workspace,
              cpx_host)
    row = only_run(cpx_workspace)
    assert row["status"] == "failed" and row["last_epoch"] == 1
    json.loads((Path(row["run_dir"]) / "history.json").read_text())  # strict JSON still


def test_inf_learning_rate_and_conflicting_overrides_are_refused(cpx_workspace, capsys):
    assert main(["train", "msf-lmsa", "--lr", "inf", "--epochs", "1"]) == 2
    assert "optimizer.lr: Input should be a finite number" in capsys.readouterr().err
    assert main(["train", "msf-lmsa", "--set", "train.epochs=abc", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "train.epochs: set twice" in err and "Traceback" not in err
    with pytest.raises(ConfigError):
        list_runs(cpx_workspace, status="bogus")
    assert main(["runs", "--status", "runing"]) == 2
    assert "did you mean running?" in capsys.readouterr().err


def _host():
    from cpx.kernel.manager import create_plugin_host

    return create_plugin_host(entry_points=False)


@pytest.mark.slow
def test_twenty_random_sigkills_lose_nothing(cpx_workspace):
    """At least 20 SIGKILLs at random moments of `cpx train` / resume; after each, the ledger
    knows every run, `cpx runs` reconciles, and best.pt, history and the ledger agree."""
    rng = random.Random(1234)
    env = {**os.environ, "CPX_WORKSPACE": str(cpx_workspace.root), "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "cpx", "train"]
    sets = [f"--set={k}={json.dumps(v)}" for k, v in {**UNET, "train.epochs": 6}.items()]
    kills, finished = 0, 0
    run_id = None
    while kills < 20:
        args = base + (["--resume", run_id] if run_id else ["msf-lmsa", "--quiet", *sets])
        proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            proc.wait(timeout=rng.uniform(0.3, 4.0))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
        rows = list_runs(cpx_workspace)
        for row in rows:
            if row["status"] != "running":
                assert_consistent(cpx_workspace, row)
            folder = RunFolder(row["run_dir"])
            assert not folder.path.exists() or folder.lock_owner() is None
        folders = {p.name for p in cpx_workspace.runs_dir.iterdir()} if cpx_workspace.runs_dir.exists() else set()
        assert folders <= {r["id"] for r in rows}  # no folder the ledger does not know
        if not rows:  # killed while starting (imports take seconds on a small CPU): nothing recorded yet
            continue
        latest = rows[0]
        resumable = latest["status"] in ("interrupted", "stopped", "failed") and \
            RunFolder(latest["run_dir"]).last_path.is_file()
        if latest["status"] == "completed":
            finished += 1
            run_id = None
        else:
            run_id = latest["id"] if resumable else None
    print(f"{kills} SIGKILLs, {finished} runs completed, {len(list_runs(cpx_workspace))} runs recorded")


@pytest.fixture
def read_only(tmp_path):
    """Make folders read-only for everyone, root included: a read-only bind mount onto itself
    (root writes through file modes, so chmod proves nothing here)."""
    mounted = []

    def make(path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        for cmd in (["mount", "--bind", str(path), str(path)], ["mount", "-o", "remount,ro,bind", str(path)]):
            if subprocess.run(cmd, capture_output=True).returncode:
                pytest.skip("cannot make a read-only mount here (needs root with mount rights)")
        mounted.append(path)
        return path

    yield make
    for path in reversed(mounted):
        subprocess.run(["umount", str(path)], capture_output=True)


def test_read_only_folders_are_refused_before_any_work(cpx_workspace, unet_run, trained_unet, read_only, capsys,
                                                       monkeypatch):
    read_only(cpx_workspace.runs_dir)
    loaded = []
    monkeypatch.setattr("cpx.train.run.prepare_data", lambda *a, **k: loaded.append(a))
    assert main(["train", "msf-lmsa", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert f"{cpx_workspace.runs_dir}: not writable" in err and "Traceback" not in err
    assert loaded == []  # refused before the data was read or generated
    out = read_only(cpx_workspace.root / "masks")
    assert main(["predict", unet_run, "--input", str(trained_unet[2] / "test" / "images"), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out}: not writable" in err and "Traceback" not in err
    assert not list(out.iterdir())


# ---------------------------------------------------------------- resources run out (issue 19.5, 19.12)


def test_a_full_disk_while_saving_a_checkpoint_is_one_line_and_loses_nothing(cpx_workspace, cpx_host, tiny_model,
                                                                              monkeypatch):
    import errno

    real = torch.save
    calls = []

    def full_from_epoch_2(obj, f, *args, **kwargs):
        calls.append(obj.get("epoch") if isinstance(obj, dict) else None)
        if isinstance(obj, dict) and obj.get("epoch") == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_from_epoch_2)
    with pytest.raises(RunError) as info:
        train(TrainRequest(recipe="msf-lmsa", overrides=tiny_overrides(**{"train.epochs": 3})), cpx_workspace,
              cpx_host)
    row = only_run(cpx_workspace)
    message = str(info.value)
    assert "\n" not in message and "no space left on the device" in message and ".pt" in message
    assert f"nothing was lost: epoch 1 is saved; free some space, then cpx train --resume {row['id']}" in message
    assert row["status"] == "failed" and row["notes"] == message
    assert json.loads((Path(row["run_dir"]) / "status.json").read_text())["message"] == message
    assert not list(Path(row["run_dir"]).glob(".*.tmp"))  # no half-written checkpoint
    monkeypatch.setattr(torch, "save", real)
    assert train(TrainRequest(resume=row["id"]), cpx_workspace, cpx_host).epochs == 3


def test_out_of_memory_names_the_size_and_batch_and_leaves_a_resumable_run(cpx_workspace, cpx_host, tiny_model,
                                                                           monkeypatch, capsys):
    from cpx.train.loop import Trainer

    real = Trainer.train_epoch

    def oom_in_epoch_2(self):
        if self.epoch == 1:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate "
                               "memory: you tried to allocate 68719476736 bytes. Error code 12")
        return real(self)

    monkeypatch.setattr(Trainer, "train_epoch", oom_in_epoch_2)
    capsys.readouterr()
    code = main(["train", "msf-lmsa", "--set", "model.name=tiny", "--set", "model.options={}", "--epochs", "3",
                 "--batch-size", "8", "--set", "data.synthetic_count=24", "--set", "data.synthetic_size=32",
                 "--set", "schedule.warmup_epochs=1", "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    row = only_run(cpx_workspace)
    assert "out of memory on cpu at image size 32 with batch size 8" in err and "--batch-size" in err
    assert f"cpx train --resume {row['id']}" in err and row["status"] == "failed"
    monkeypatch.setattr(Trainer, "train_epoch", real)
    assert train(TrainRequest(resume=row["id"]), cpx_workspace, cpx_host).epochs == 3


def test_shortcuts_validate_like_set_and_lr_below_min_lr_is_refused(cpx_workspace, capsys):
    # issue 19.16: --dice inf trained to a nan loss and config.yaml stored dice: null
    for argv in (["--dice", "inf"], ["--set", "loss.options.dice=.inf"], ["--ce", "-inf"]):
        assert main(["train", "msf-lmsa", *argv, "--epochs", "1"]) == 2
        err = capsys.readouterr().err
        assert "not a finite number" in err or "greater than or equal" in err, err
    assert main(["train", "msf-lmsa", "--lr", "1e-12", "--epochs", "1"]) == 2
    assert "optimizer.lr: 1e-12 is below schedule.min_lr 1e-06" in capsys.readouterr().err
    assert not cpx_workspace.runs_dir.is_dir()


def _lock_for(path, seconds):
    """Another program holds the ledger's write lock for ``seconds`` from now."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("BEGIN IMMEDIATE")
    timer = threading.Timer(seconds, lambda: db.execute("ROLLBACK"))
    timer.start()
    return db, timer


def test_a_ledger_busy_at_the_start_is_waited_for_saying_so(cpx_workspace, cpx_host, tiny_model, monkeypatch):
    # issue 19.14: a lock held at the start of training (longer than the busy timeout) cost the run
    monkeypatch.setenv("CPX_LEDGER_TIMEOUT", "0.2")
    with Ledger(cpx_workspace.ledger_path):
        pass
    heard = []
    # the other program lets go once training has said it waits (the timer only ends a failed test)
    db, timer = _lock_for(cpx_workspace.ledger_path, 60)

    class Notices:
        def on_notice(self, text):
            heard.append(text)
            if len(heard) == 1:
                timer.cancel()
                db.execute("ROLLBACK")

    try:
        result = train(TrainRequest(recipe="msf-lmsa", overrides=tiny_overrides()), cpx_workspace, cpx_host,
                       callbacks=(Notices(),))
    finally:
        timer.cancel()
        db.close()
    assert result.status == "completed"
    assert len(heard) == 1 and "locked by another program" in heard[0] and "CPX_LEDGER_START_WAIT" in heard[0]
    # past the documented limit: one line saying how long it waited and how to wait longer
    monkeypatch.setenv("CPX_LEDGER_START_WAIT", "0.01")
    db, timer = _lock_for(cpx_workspace.ledger_path, 30)
    try:
        with pytest.raises(RunError, match=r"waited 0.01 min .*CPX_LEDGER_START_WAIT"):
            train(TrainRequest(recipe="msf-lmsa", overrides=tiny_overrides()), cpx_workspace, cpx_host)
    finally:
        timer.cancel()
        db.execute("ROLLBACK")
        db.close()
