"""Refits (cpx train --refit RUN): the parent's config on every labelled image, for the epochs the
parent chose, recorded as a refit with the parent's validation score carried and marked."""

import json

import pytest
from conftest import tiny_overrides

from cpx.cli import main
from cpx.eval.validate import validate_run
from cpx.kernel.errors import ConfigError, RunError
from cpx.runs.checkpoint import load_file
from cpx.runs.ledger import Ledger
from cpx.train.run import TrainRequest, train
from cpx.train.start import refit_overrides


def _parent(ws, host, **overrides):
    request = TrainRequest(recipe="msf-lmsa", overrides=tiny_overrides(**{"train.epochs": 3, **overrides}),
                           name="parent")
    return train(request, ws, host)


def test_overrides_keep_the_parents_schedule_and_stop_at_its_best_epoch():
    row = {"id": "p", "best_epoch": 4, "best_val_score": 0.5, "epochs_planned": 10, "config": {}}
    assert refit_overrides(row) == {"data.val_fraction": 0.0, "train.budget_minutes": None, "train.patience": None,
                                    "train.epochs": 10, "train.stop_after": 4}
    assert refit_overrides({**row, "best_epoch": 10})["train.epochs"] == 10
    assert refit_overrides({**row, "best_epoch": 10})["train.stop_after"] is None
    with pytest.raises(RunError, match="no validated best epoch"):
        refit_overrides({**row, "best_epoch": None, "best_val_score": None})


def test_stop_after_keeps_the_schedule_of_the_full_run(cpx_workspace, cpx_host, tiny_model):
    full = train(TrainRequest(recipe="msf-lmsa", overrides=tiny_overrides(**{"train.epochs": 4})),
                 cpx_workspace, cpx_host)
    cut = train(TrainRequest(recipe="msf-lmsa", overrides=tiny_overrides(**{"train.epochs": 4,
                                                                            "train.stop_after": 2})),
                cpx_workspace, cpx_host)
    a = json.loads((full.run_dir / "history.json").read_text())
    b = json.loads((cut.run_dir / "history.json").read_text())
    assert cut.epochs == 2 and [h["lr"] for h in b] == [h["lr"] for h in a[:2]]
    assert b[-1]["val_score"] is not None  # the stopping epoch is validated


def test_refit_trains_on_every_image_and_carries_the_parents_val_score(cpx_workspace, cpx_host, tiny_model):
    parent = _parent(cpx_workspace, cpx_host, **{"train.ema": 0.9})
    refit = train(TrainRequest(refit="parent"), cpx_workspace, cpx_host)
    assert refit.status == "completed" and refit.refit_of == parent.run_id
    assert refit.epochs == parent.best_epoch and refit.best_val_score == pytest.approx(parent.best_val_score)
    with Ledger(cpx_workspace.ledger_path) as ledger:
        row = ledger.get_run(refit.run_id)
    assert row["refit_of"] == parent.run_id and row["name"] == "parent-refit" and row["kind"] == "train"
    assert row["best_val_score"] == pytest.approx(parent.best_val_score) and row["last_epoch"] == parent.best_epoch
    assert row["config"]["data"]["val_fraction"] == 0 and row["config_diff"]["data.val_fraction"] == 0
    info = json.loads((refit.run_dir / "data.json").read_text())
    assert info["train"] == 24 and info["val"] == 0
    history = json.loads((refit.run_dir / "history.json").read_text())
    assert all(h.get("val_score") is None for h in history)
    best_parent = load_file(parent.run_dir / "best.pt")
    assert load_file(refit.run_dir / "best.pt")["weights"] == best_parent["weights"]
    with pytest.raises(RunError, match="no validation images"):
        validate_run(refit.run_id, cpx_workspace, cpx_host, record=False)


def test_refits_are_refused_for_what_cannot_be_refitted(cpx_workspace, cpx_host, tiny_model):
    _parent(cpx_workspace, cpx_host, **{"train.epochs": 1})
    refit = train(TrainRequest(refit="parent"), cpx_workspace, cpx_host)
    with pytest.raises(RunError, match="itself a refit"):
        train(TrainRequest(refit=refit.run_id), cpx_workspace, cpx_host)
    with pytest.raises(ConfigError, match="drop the recipe"):
        train(TrainRequest(refit="parent", recipe="msf-lmsa"), cpx_workspace, cpx_host)
    with Ledger(cpx_workspace.ledger_path) as ledger:
        ledger.add_run(id="ens", name="ens", kind="ensemble", status="completed")
    with pytest.raises(RunError, match="ensemble run"):
        train(TrainRequest(refit="ens"), cpx_workspace, cpx_host)


def test_an_interrupted_refit_resumes_and_keeps_the_carried_val_score(cpx_workspace, cpx_host, tiny_model):
    parent = _parent(cpx_workspace, cpx_host)

    class InterruptAt1:
        def on_epoch_end(self, trainer, record):
            if trainer.epoch == 1:
                raise KeyboardInterrupt

    if parent.best_epoch < 2:
        pytest.skip("the parent's best epoch is its first: nothing to interrupt")
    cut = train(TrainRequest(refit="parent"), cpx_workspace, cpx_host, callbacks=(InterruptAt1(),))
    assert cut.status == "stopped"
    resumed = train(TrainRequest(resume=cut.run_id), cpx_workspace, cpx_host)
    assert resumed.status == "completed" and resumed.epochs == parent.best_epoch
    assert resumed.refit_of == parent.run_id and resumed.best_val_score == pytest.approx(parent.best_val_score)
    with Ledger(cpx_workspace.ledger_path) as ledger:
        assert ledger.get_run(cut.run_id)["best_val_score"] == pytest.approx(parent.best_val_score)


def test_cli_refit_shows_in_runs_and_leaderboard(cpx_workspace, cpx_host, tiny_model, capsys):
    _parent(cpx_workspace, cpx_host, **{"train.epochs": 1})
    assert main(["train", "--refit", "parent", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "carried from" in out and "not measurable" in out
    assert main(["runs"]) == 0
    assert "refit of" in capsys.readouterr().out
    assert main(["leaderboard", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    refit = next(r for r in rows if r["label"] == "parent-refit")
    assert refit["val_source"].startswith("refit of") and refit["val_score"] is not None
