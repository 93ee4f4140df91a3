"""`cpx runs import`: runs made by other training scripts, read without touching the folder."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import pytest
import torch
import yaml

from cpx.cli import main
from cpx.kernel.errors import RunError
from cpx.runs.importer import import_run, key_config
from cpx.runs.ledger import Ledger


def snapshot(folder: Path) -> dict:
    """Every file and folder under ``folder`` with its hash, size, mode and mtime."""
    out = {}
    for path in sorted(folder.rglob("*")):
        st = path.stat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        out[str(path.relative_to(folder))] = (digest, st.st_size, st.st_mode, st.st_mtime_ns)
    return out


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.bn = torch.nn.BatchNorm2d(8)
        self.head = torch.nn.Conv2d(8, 19, 1)


def old_script_run(folder: Path) -> Path:
    """A folder shaped like the old training scripts' output."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({
        "model": {"name": "microsegformer", "embed_dims": [32, 64, 128, 192], "dropout": 0.15},
        "loss": {"ce_weight": 1.0, "dice_weight": 1.5},
        "training": {"lr": 8e-4, "weight_decay": 1e-4, "epochs": 6, "batch_size": 32, "seed": 42},
        "data": {"root": "/home/me/data/celebamask", "image_size": 512, "val_split": 0.1},
        "output_dir": "checkpoints/run7",
    }, sort_keys=False))
    (folder / "history.json").write_text(json.dumps({
        "train_loss": [1.9, 1.2, 0.9, 0.8, 0.75, 0.7],
        "val_loss": [1.5, 1.0, 0.85, 0.8, 0.82, 0.83],
        "val_f_score": [0.41, 0.55, 0.63, 0.6712, 0.6690, 0.6650],
        "lr": [8e-4, 7e-4, 5e-4, 3e-4, 1e-4, 1e-5],
    }))
    net = _Net()
    torch.save(net.state_dict(), folder / "best_model.pth")
    (folder / "ckpts").mkdir()
    torch.save({"epoch": 6, "model_state_dict": net.state_dict(), "best_f": 0.6712},
               folder / "ckpts" / "last_epoch6.pt")
    return folder


class Opaque:
    """Pickled by reference, so loading with weights_only refuses it."""


NET_PARAMS = 3 * 8 * 9 + 8 + 8 + 8 + 8 * 19 + 19  # convs and BN affine; not its running stats


def test_import_old_script_run_records_what_it_reads_and_touches_nothing(tmp_path, cpx_workspace, cpx_host):
    folder = old_script_run(tmp_path / "run7")
    before = snapshot(folder)

    with Ledger(cpx_workspace.ledger_path) as ledger:
        result = import_run(folder, ledger, competition="celebamask-mini", host=cpx_host)

    assert snapshot(folder) == before
    run = result.run
    assert run["kind"] == "imported" and run["status"] == "imported"
    assert run["name"] == "run7" and run["run_dir"] == str(folder.resolve())
    assert run["competition"] == "celebamask-mini"
    assert run["best_val_score"] == pytest.approx(0.6712)
    assert (run["best_epoch"], run["last_epoch"], run["epochs_planned"]) == (4, 6, 6)
    assert run["params"] == NET_PARAMS
    assert run["config"] == yaml.safe_load((folder / "config.yaml").read_text())
    assert run["config_diff"] == {
        "model.name": "microsegformer", "model.embed_dims": [32, 64, 128, 192], "model.dropout": 0.15,
        "loss.ce_weight": 1.0, "loss.dice_weight": 1.5, "training.lr": 8e-4,
        "training.weight_decay": 1e-4, "training.epochs": 6, "training.batch_size": 32,
        "training.seed": 42, "data.image_size": 512, "data.val_split": 0.1}
    assert run["checkpoints"] == [str(folder / "best_model.pth"), str(folder / "ckpts" / "last_epoch6.pt")]
    assert run["created_at"] <= run["finished_at"]
    assert any("best 0.6712 at epoch 4 of 6" in line for line in result.read)
    assert result.unread == ["no validation list (val_list.txt): its F may come from another split than yours"]

    with Ledger(cpx_workspace.ledger_path) as ledger:
        assert ledger.get_run("run7")["id"] == run["id"]
        with pytest.raises(RunError, match="already imported"):
            import_run(folder, ledger)


def test_read_only_folder_list_history_and_json_config(tmp_path, cpx_workspace):
    folder = tmp_path / "other"
    folder.mkdir()
    (folder / "args.json").write_text(json.dumps({"arch": "unet", "learning_rate": 0.001, "bs": 8,
                                                  "competition": "celebamask-mini"}))
    (folder / "metrics.json").write_text(json.dumps([
        {"epoch": 2, "train": {"loss": 1.0}, "val_fscore": None},
        {"epoch": 4, "train": {"loss": 0.8}, "val_fscore": 64.5},
        {"epoch": 6, "train": {"loss": 0.7}, "val_fscore": 66.0},
    ]))
    torch.save({"state_dict": _Net().state_dict()}, folder / "model.pt")
    val_list = folder / "val_list.txt"
    val_list.write_text("0001\n0002\n")
    before = snapshot(folder)
    for path in [*folder.iterdir(), folder]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        with Ledger(cpx_workspace.ledger_path) as ledger:
            result = import_run(folder, ledger, name="unet-old")
    finally:
        for path in [folder, *folder.iterdir()]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
    after = snapshot(folder)
    assert {k: v[:2] for k, v in after.items()} == {k: v[:2] for k, v in before.items()}

    run = result.run
    assert run["name"] == "unet-old" and run["competition"] == "celebamask-mini"
    assert run["best_val_score"] == pytest.approx(0.66) and run["best_epoch"] == 6 and run["last_epoch"] == 6
    assert run["config_diff"] == {"arch": "unet", "learning_rate": 0.001, "bs": 8}
    assert run["params"] == NET_PARAMS
    assert any("(given in percent)" in line for line in result.read)
    assert result.unread == []


def test_what_cannot_be_read_is_said_one_line_each(tmp_path, cpx_workspace):
    folder = tmp_path / "bare"
    folder.mkdir()
    (folder / "history.json").write_text(json.dumps({"train_loss": [1.0, 0.5], "val_loss": [1.1, 0.9]}))

    torch.save({"model": Opaque()}, folder / "weird.pth")
    with Ledger(cpx_workspace.ledger_path) as ledger:
        result = import_run(folder, ledger)

    run = result.run
    assert run["best_val_score"] is None and run["last_epoch"] == 2
    assert run["config"] is None and run["params"] is None
    assert run["checkpoints"] == [str(folder / "weird.pth")]
    unread = result.unread
    assert len(unread) == 4 and all("\n" not in line for line in unread)
    assert unread[0].startswith("no config file")
    assert unread[1] == "history.json: no validation F series (found: train_loss, val_loss)"
    assert unread[2].startswith("weird.pth: refused: it holds pickled Python objects") and "parameter count unknown" in unread[2]
    assert unread[3].startswith("no validation list")


def test_key_config_skips_paths_and_long_lists():
    config = {"data": {"root": "/a/b", "image_size": 256}, "model": {"name": "x", "dims": list(range(10))},
              "optim": {"lr": 0.01, "betas": [0.9, 0.99]}, "notes": "free text"}
    assert key_config(config) == {"model.name": "x", "optim.lr": 0.01, "data.image_size": 256}


def test_cli_import_reports_and_refuses_twice(tmp_path, cpx_workspace, capsys):
    folder = old_script_run(tmp_path / "run7")
    (folder / "checkpoint_epoch3.pth").write_bytes(b"not a torch file")
    before = snapshot(folder)

    assert main(["runs", "import", str(folder), "--name", "msf-old"]) == 0
    out, err = capsys.readouterr()
    assert "imported msf-old as run" in out
    assert "read: validation F from 'val_f_score' in history.json: best 0.6712 at epoch 4 of 6" in out
    assert "not read: no validation list (val_list.txt)" in err
    assert snapshot(folder) == before

    assert main(["runs", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["name"] == "msf-old" and row["kind"] == "imported"

    assert main(["runs", "import", str(folder)]) == 2
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.strip()] == [
        f"error: {folder.resolve()} was already imported as run {row['id']}"]

    assert main(["runs", "import", str(tmp_path / "nope")]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert not cpx_workspace.runs_dir.exists(), "an import copies nothing into the workspace"


def test_validate_an_imported_run(tmp_path, cpx_workspace, cpx_host, cpx_synthetic, capsys):
    # issue 19.19: "error: epochs: unknown field / image_size ..." (the other tool's config taken for cpx's)
    from cpx.runs.handle import build_model

    comp = cpx_host.competition("celebamask-mini")
    folder = tmp_path / "their-run"
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump({
        "model": {"name": "unet", "base_channels": 4, "depth": 2, "pretrained": False},
        "training": {"epochs": 3, "lr": 1e-3}, "data": {"image_size": 32}, "competition": "celebamask-mini"}))
    model = build_model(cpx_host, "unet", {"base_channels": 4, "depth": 2}, comp)
    torch.save({"state_dict": model.state_dict()}, folder / "best_model.pth")
    assert main(["runs", "import", str(folder), "--name", "theirs"]) == 0
    capsys.readouterr()
    assert main(["validate", "theirs", "--data", str(cpx_synthetic), "--json"]) == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["images"] > 0
    # a model cpx does not have: one line saying what to do instead
    other = old_script_run(tmp_path / "old")
    assert main(["runs", "import", str(other), "--name", "old", "--competition", "celebamask-mini"]) == 0
    capsys.readouterr()
    assert main(["validate", "old", "--data", str(cpx_synthetic)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cpx score" in err and "unknown field" not in err
