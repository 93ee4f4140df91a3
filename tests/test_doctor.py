"""`cpx doctor` on real workspaces damaged the ways people report: a run folder gone, a folder
the ledger does not record, a checkpoint cut short, a file that does not parse, the data changed
under a run, a training process gone, a damaged ledger, a newer cpx's ledger, a login file others
can read, a full disk. Each is one line with what to do, exit 1, and the check changes nothing."""

import hashlib
import shutil
import socket
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
from conftest import tiny_overrides
from PIL import Image

from cpx.cli import main
from cpx.data import write_dataset
from cpx.doctor import check_workspace
from cpx.runs.ledger import Ledger
from cpx.train.run import TrainRequest, train


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _kinds(report) -> dict:
    return {(p.kind, p.path) for p in report.problems}


def _doctor(capsys, *argv) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = main(["doctor", *argv])
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    return code, [line.strip() for line in out.out.splitlines() if line.strip().startswith("problem")]


@pytest.fixture(scope="module")
def trained_base(tmp_path_factory):
    """A workspace with two tiny runs trained on a data folder inside it, made once: (its root,
    the run ids). Tests damage copies of it."""
    import torch
    from conftest import _TinyPlugin

    from cpx.kernel.manager import create_plugin_host
    from cpx.kernel.workspace import Workspace

    host = create_plugin_host(entry_points=False)
    host.register(_TinyPlugin(), name="tiny-test-plugin", origin="tests")
    base = Workspace(tmp_path_factory.mktemp("doctor") / "workspace")
    base.root.mkdir()
    comp = host.competition("celebamask-mini")
    write_dataset(base.root / "data", comp, comp.synthesize(12, 32, 0), test_count=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    ids = []
    try:
        for name in ("first", "second"):
            result = train(TrainRequest(recipe="msf-lmsa", name=name,
                                        overrides=tiny_overrides(**{"data.path": str(base.root / "data"),
                                                                    "train.epochs": 1})), base, host)
            assert result.status == "completed"
            ids.append(result.run_id)
    finally:
        torch.set_num_threads(threads)
    return base.root, ids


@pytest.fixture
def two_runs(trained_base, cpx_workspace, cpx_host, tiny_model):
    """A copy of the trained workspace as this test's own (the ledger keeps paths relative to
    it, so the copy is independent): the run ids."""
    root, ids = trained_base
    shutil.copytree(root, cpx_workspace.root, dirs_exist_ok=True)
    return ids


def test_a_sound_workspace_has_no_problems(two_runs, cpx_workspace, cpx_host, capsys):
    code, problems = _doctor(capsys, "--min-free", "0")
    assert code == 0 and problems == []
    report = check_workspace(cpx_workspace, cpx_host, min_free=0)
    assert report.ok and any("2 run(s)" in line for line in report.checked)
    assert any("2 run(s)' data folders compared" in line for line in report.checked)


def test_run_folders_checkpoints_files_data_and_processes(two_runs, cpx_workspace, cpx_host, capsys):
    first, second = two_runs
    runs = cpx_workspace.runs_dir
    # the first run's folder moved away under another name: gone for the ledger, unknown to it
    (runs / first).rename(runs / "copied-by-hand")
    # the second run: a checkpoint cut short, another with a flipped byte, a history that does not parse
    last = runs / second / "last.pt"
    half = last.stat().st_size // 2
    last.write_bytes(last.read_bytes()[:half])
    best = runs / second / "best.pt"
    data = bytearray(best.read_bytes())
    data[200] ^= 0xFF
    best.write_bytes(bytes(data))
    (runs / second / "history.json").write_text('[{"epoch": 1, "loss":')
    # and the data changed under it
    image = sorted((cpx_workspace.root / "data" / "train" / "images").iterdir())[0]
    pixels = np.asarray(Image.open(image)).copy()
    pixels[0, 0] = 255 - pixels[0, 0]
    Image.fromarray(pixels).save(image)
    # and it is marked running, by a process that has ended
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with Ledger(cpx_workspace.ledger_path) as ledger:
        ledger.update_run(second, status="running", pid=gone.pid, host=socket.gethostname())
    ledger_before = _digest(cpx_workspace.ledger_path)

    report = check_workspace(cpx_workspace, cpx_host, min_free=0)
    assert _kinds(report) == {
        ("run-folder-missing", f"experiments/runs/{first}"),
        ("folder-not-recorded", "experiments/runs/copied-by-hand"),
        ("file-damaged", f"experiments/runs/{second}/last.pt"),
        ("file-damaged", f"experiments/runs/{second}/best.pt"),
        ("file-damaged", f"experiments/runs/{second}/history.json"),
        ("data", f"experiments/runs/{second}"),
        ("process-gone", f"experiments/runs/{second}"),
    }
    said = {(p.kind, p.path.rsplit("/", 1)[-1]): p.message for p in report.problems}
    assert first in said["run-folder-missing", first] and "restore it" in said["run-folder-missing", first]
    assert "cpx runs import experiments/runs/copied-by-hand" in said["folder-not-recorded", "copied-by-hand"]
    assert "cut short" in said["file-damaged", "last.pt"] and "cannot be resumed" in said["file-damaged", "last.pt"]
    assert "checksum" in said["file-damaged", "best.pt"] and "--checkpoint last" in said["file-damaged", "best.pt"]
    assert "not valid JSON" in said["file-damaged", "history.json"]
    assert "fingerprint" in said["data", second] and "restore" in said["data", second]
    assert f"cpx train --resume {second}" in said["process-gone", second]

    code, lines = _doctor(capsys, "--min-free", "0")
    assert code == 1 and len(lines) == 7
    # a check only reads: the ledger, the run's status and the damaged files stay as they were
    assert _digest(cpx_workspace.ledger_path) == ledger_before
    with Ledger(cpx_workspace.ledger_path) as ledger:
        assert ledger.get_run(second)["status"] == "running"
    assert last.stat().st_size == half and best.read_bytes() == bytes(data)


def _filled_and_damaged(ws):
    with Ledger(ws.ledger_path) as ledger:
        for i in range(200):
            ledger.add_run(id=f"run-{i:03d}", name=f"r{i}", notes="x" * 300, status="completed")
    with open(ws.ledger_path, "r+b") as fh:  # pages after the schema page turn to junk
        fh.seek(4096 * 3)
        fh.write(b"\xa5" * 4096 * 6)


def test_a_damaged_ledger_is_one_line_with_the_recovery_and_left_as_it_is(cpx_workspace, capsys):
    _filled_and_damaged(cpx_workspace)
    before = _digest(cpx_workspace.ledger_path)
    code, lines = _doctor(capsys, "--min-free", "0")
    assert code == 1 and len(lines) == 1
    assert "experiments/ledger.db" in lines[0] and "damaged" in lines[0] and ".recover" in lines[0]
    assert _digest(cpx_workspace.ledger_path) == before


def test_a_file_that_is_not_a_database_is_damage_too(cpx_workspace, cpx_host):
    cpx_workspace.experiments_dir.mkdir()
    cpx_workspace.ledger_path.write_bytes(b"not a database at all" * 50)
    (problem,) = check_workspace(cpx_workspace, cpx_host, min_free=0).problems
    assert problem.kind == "ledger-damaged" and "not a database" in problem.message


def test_a_newer_cpx_ledger_says_upgrade(cpx_workspace, cpx_host):
    with Ledger(cpx_workspace.ledger_path):
        pass
    db = sqlite3.connect(cpx_workspace.ledger_path, isolation_level=None)
    db.execute("INSERT INTO _migrations (name, applied_at) VALUES ('m099_from_the_future', 'later')")
    db.close()
    (problem,) = check_workspace(cpx_workspace, cpx_host, min_free=0).problems
    assert problem.kind == "ledger-newer" and "m099_from_the_future" in problem.message and "upgrade" in problem.message


def test_a_login_file_others_can_read_is_reported_with_the_chmod(cpx_workspace, cpx_host, tmp_path):
    stored = tmp_path / "config" / "codabench.json"
    stored.parent.mkdir(exist_ok=True)
    stored.write_text('{"url": "https://www.codabench.org", "token": "t"}')
    stored.chmod(0o644)
    (problem,) = check_workspace(cpx_workspace, cpx_host, min_free=0).problems
    assert problem.kind == "credentials" and f"chmod 600 {stored}" in problem.message
    stored.chmod(0o600)
    assert check_workspace(cpx_workspace, cpx_host, min_free=0).ok


def test_too_little_free_space_is_reported(cpx_workspace, cpx_host, capsys):
    free = shutil.disk_usage(cpx_workspace.root).free
    (problem,) = check_workspace(cpx_workspace, cpx_host, min_free=free * 2).problems
    assert problem.kind == "disk-space" and "free some space" in problem.message
    code, lines = _doctor(capsys, "--min-free", str(free * 2 / (1 << 30)))
    assert code == 1 and len(lines) == 1 and "GiB free" in lines[0]


def test_a_ledger_locked_by_another_program_is_not_called_damaged(cpx_workspace, cpx_host, monkeypatch):
    # a rollback-journal ledger (as on a file system without WAL) under another program's exclusive lock
    with Ledger(cpx_workspace.ledger_path):
        pass
    other = sqlite3.connect(cpx_workspace.ledger_path, isolation_level=None)
    other.execute("PRAGMA journal_mode = DELETE")
    other.execute("BEGIN EXCLUSIVE")
    monkeypatch.setattr("cpx.runs.ledger_file.DEFAULT_TIMEOUT", 0.1)
    try:
        (problem,) = check_workspace(cpx_workspace, cpx_host, min_free=0).problems
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert problem.kind == "ledger-unreadable" and "locked" in problem.message and "again" in problem.message
