"""A run's data and folder, wherever the command runs and wherever the workspace went (issue 19.1, 19.2):
data paths are recorded resolved, every reuse compares the data fingerprint, and the ledger keeps
run folders relative to its workspace."""

import shutil
import sqlite3

import numpy as np
import pytest
from conftest import tiny_overrides
from PIL import Image

from cpx.cli import main
from cpx.data import write_dataset
from cpx.eval.validate import validate_run
from cpx.kernel.errors import DataError
from cpx.kernel.workspace import Workspace
from cpx.runs.folder import run_folder
from cpx.runs.ledger import Ledger
from cpx.runs.migrations import MIGRATIONS, migrate
from cpx.train.run import TrainRequest, train


@pytest.fixture
def trained(cpx_workspace, cpx_host, tiny_model, one_thread):
    """A tiny run trained with ``--data data``, a folder inside the workspace given relative."""
    comp = cpx_host.competition("celebamask-mini")
    write_dataset(cpx_workspace.root / "data", comp, comp.synthesize(12, 32, 0), test_count=2)
    result = train(TrainRequest(recipe="msf-lmsa", overrides=tiny_overrides(**{"data.path": "data"})),
                   cpx_workspace, cpx_host)
    assert result.status == "completed"
    return result


def _edit_an_image(root):
    path = sorted((root / "train" / "images").iterdir())[0]
    pixels = np.asarray(Image.open(path)).copy()
    pixels[0, 0] = 255 - pixels[0, 0]
    Image.fromarray(pixels).save(path)


def test_data_recorded_resolved_and_another_folders_data_is_never_scored(trained, cpx_workspace, cpx_host,
                                                                         tmp_path, monkeypatch, capsys):
    info = run_folder({"id": trained.run_id}, cpx_workspace.runs_dir).read_data_info()
    assert info["path"] == str((cpx_workspace.root / "data").resolve()) and info["workspace_path"] == "data"
    here = validate_run(trained.run_id, cpx_workspace, cpx_host, record=False).score
    # another folder with a data/ of its own: the run's data is still the workspace's
    other = tmp_path / "elsewhere"
    comp = cpx_host.competition("celebamask-mini")
    write_dataset(other / "data", comp, comp.synthesize(12, 32, 7), test_count=2)
    monkeypatch.chdir(other)
    assert validate_run(trained.run_id, cpx_workspace, cpx_host, record=False).score == here
    # the data changed under the run: refused in one line, unless asked for
    _edit_an_image(cpx_workspace.root / "data")
    with pytest.raises(DataError, match="not what the run trained on .*--allow-changed-data"):
        validate_run(trained.run_id, cpx_workspace, cpx_host, record=False)
    capsys.readouterr()
    assert main(["validate", trained.run_id, "--no-record"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "fingerprint" in err
    assert main(["validate", trained.run_id, "--no-record", "--allow-changed-data", "--json"]) == 0


def test_a_copied_workspace_is_independent_and_a_moved_one_just_works(trained, cpx_workspace, cpx_host, tmp_path,
                                                                      monkeypatch):
    copy = Workspace(tmp_path / "copy")
    shutil.copytree(cpx_workspace.root, copy.root)
    with Ledger(copy.ledger_path) as ledger:
        row = ledger.get_run(trained.run_id)
    assert run_folder(row, copy.runs_dir).path == copy.runs_dir / trained.run_id
    raw = sqlite3.connect(copy.ledger_path).execute("SELECT run_dir FROM runs").fetchone()[0]
    assert raw == f"experiments/runs/{trained.run_id}"
    # moved: the original is gone, the run and its data are found where they are now
    moved = Workspace(tmp_path / "moved")
    shutil.move(str(cpx_workspace.root), moved.root)
    monkeypatch.chdir(moved.root)
    monkeypatch.setenv("CPX_WORKSPACE", str(moved.root))
    ev = validate_run(trained.run_id, moved, cpx_host, record=True)
    assert ev.score == ev.score and ev.validation_id
    assert main(["validate", trained.run_id, "--no-record"]) == 0


def test_m015_makes_old_absolute_run_folders_relative_to_the_workspace(tmp_path):
    ws = Workspace(tmp_path / "ws")
    ws.runs_dir.joinpath("r1").mkdir(parents=True)
    db = sqlite3.connect(ws.ledger_path, isolation_level=None)
    migrate(db, MIGRATIONS[:14])
    old = "/somewhere/else/experiments/runs"  # the workspace was copied or moved before m015
    for rid, run_dir in (("r1", f"{old}/r1"), ("r2", f"{ws.runs_dir}/r2"), ("r3", "/data/other-tool/out")):
        db.execute("INSERT INTO runs (id, created_at, run_dir) VALUES (?, 'now', ?)", (rid, run_dir))
    db.close()
    with Ledger(ws.ledger_path) as ledger:
        assert "m015_workspace_relative_paths" in ledger.applied_migrations
        assert ledger.get_run("r1")["run_dir"] == str(ws.root.resolve() / "experiments/runs/r1")
        assert ledger.get_run("r3")["run_dir"] == "/data/other-tool/out"  # outside: left as it is
    raw = dict(sqlite3.connect(ws.ledger_path).execute("SELECT id, run_dir FROM runs").fetchall())
    assert raw == {"r1": "experiments/runs/r1", "r2": "experiments/runs/r2", "r3": "/data/other-tool/out"}
