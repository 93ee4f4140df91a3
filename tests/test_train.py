import json

import pytest
import torch
from conftest import tiny_overrides
from PIL import Image

from cpx.cli import main
from cpx.kernel.errors import DataError, RuleViolation
from cpx.runs.ledger import Ledger
from cpx.train.run import TrainRequest, train


def _train(ws, host, **kw):
    overrides = tiny_overrides(**kw.pop("overrides", {}))
    return train(TrainRequest(recipe="msf-lmsa", overrides=overrides, **kw), ws, host)


def test_train_writes_run_folder_and_ledger_row(cpx_workspace, cpx_host, tiny_model):
    result = _train(cpx_workspace, cpx_host, name="first")
    assert result.status == "completed" and result.epochs == 2
    run = result.run_dir
    for name in ("config.yaml", "config_diff.json", "command.txt", "val_list.txt", "data.json",
                 "history.json", "best.pt", "last.pt", "curves.png"):
        assert (run / name).is_file(), name
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(0 <= h["val_score"] <= 1 and h["train_loss"] > 0 and h["lr"] > 0 for h in history)
    assert len((run / "val_list.txt").read_text().split()) == 2  # 10% of 24
    best = torch.load(run / "best.pt", weights_only=False)
    assert set(best["state_dict"]) and best["model"] == "tiny"
    assert Image.open(run / "curves.png").size[0] > 500
    with Ledger(cpx_workspace.ledger_path) as ledger:
        row = ledger.get_run("first")
    assert row["status"] == "completed" and row["last_epoch"] == 2
    assert row["best_val_score"] == pytest.approx(max(h["val_score"] for h in history))
    assert row["config_diff"]["model.name"] == "tiny" and row["params"] == result.params
    assert row["data_fingerprint"] and row["config"]["loss"]["options"]["dice"] == 1.5


def test_resume_after_interrupt_matches_an_uninterrupted_run(cpx_workspace, cpx_host, tiny_model):
    full = _train(cpx_workspace, cpx_host, overrides={"train.epochs": 4})

    class InterruptAt2:
        def on_epoch_end(self, trainer, record):
            if trainer.epoch == 2:
                raise KeyboardInterrupt

    cut = train(TrainRequest(recipe="msf-lmsa", overrides=tiny_overrides(**{"train.epochs": 4})),
                cpx_workspace, cpx_host, callbacks=(InterruptAt2(),))
    assert cut.status == "stopped" and f"--resume {cut.run_id}" in cut.message and cut.epochs == 2
    with Ledger(cpx_workspace.ledger_path) as ledger:
        assert ledger.get_run(cut.run_id)["status"] == "stopped"
    resumed = train(TrainRequest(resume=cut.run_id), cpx_workspace, cpx_host)
    assert resumed.status == "completed" and resumed.epochs == 4 and resumed.run_id == cut.run_id
    a = torch.load(full.run_dir / "last.pt", weights_only=False)
    b = torch.load(cut.run_dir / "last.pt", weights_only=False)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]


def test_parameter_limit_is_checked_before_training(cpx_workspace, cpx_host, tiny_model):
    from cpx.kernel.hookspecs import hookimpl

    comp = cpx_host.competitions.get("celebamask-mini").target.model_copy(update={"name": "tight", "max_params": 100})

    class Tight:
        @hookimpl
        def register_competitions(self, register):
            register("tight", comp)

    cpx_host.register(Tight(), name="tight")
    with pytest.raises(RuleViolation, match="requires fewer than 100"):
        _train(cpx_workspace, cpx_host, overrides={"competition": "tight"})
    assert not cpx_workspace.runs_dir.exists() or not any(cpx_workspace.runs_dir.iterdir())


def test_bad_data_folder_is_a_clear_error(cpx_workspace, cpx_host, tiny_model, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        _train(cpx_workspace, cpx_host, overrides={"data.path": str(tmp_path / "nowhere")})


def test_budget_fits_the_epoch_count(cpx_workspace, cpx_host, tiny_model):
    result = _train(cpx_workspace, cpx_host, overrides={"train.epochs": 1000, "train.budget_minutes": 0.05})
    assert "budget 0.05 min: planned" in result.message
    assert 1 <= result.epochs < 1000
    with Ledger(cpx_workspace.ledger_path) as ledger:
        row = ledger.get_run(result.run_id)
    assert row["epochs_planned"] < 1000


def test_cli_bad_values_are_one_line_per_field_and_exit_2(cpx_workspace, capsys):
    code = main(["train", "msf-lmsa", "--epochs", "0", "--set", "optimizer.lr=fast", "--set", "model.options.nope=1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert any("train.epochs" in line for line in lines) and any("optimizer.lr" in line for line in lines)


def test_cli_unknown_recipe_and_missing_run(cpx_workspace, capsys):
    assert main(["train", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown recipe 'nope'" in err and "Traceback" not in err
    assert main(["train", "--resume", "nope"]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "Traceback" not in err


def test_class_weights_from_the_training_masks(cpx_workspace, cpx_host, tiny_model):
    result = train(TrainRequest(recipe="msf-lmsa", overrides=tiny_overrides(**{
        "loss.options": {"ce": 0.3, "dice": 0.7, "class_weights": "sqrt-inverse-frequency"}})), cpx_workspace, cpx_host)
    assert result.status == "completed"
    shares = json.loads((result.run_dir / "data.json").read_text())["class_pixel_share"]
    assert len(shares) == 19 and abs(sum(shares) - 1) < 1e-6 and shares[0] > shares[16]
