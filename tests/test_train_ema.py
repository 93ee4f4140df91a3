"""The weights' exponential moving average (train.ema): updated each step, validated beside the
raw weights, checkpointed, resumed bit-exactly."""

import pytest
import torch
from conftest import tiny_overrides

from cpx.kernel.config import OptimizerConfig, ScheduleConfig, TrainConfig
from cpx.runs.checkpoint import load_file
from cpx.runs.ledger import Ledger
from cpx.train.callbacks import EMA, ema_decay
from cpx.train.loop import Trainer
from cpx.train.run import TrainRequest, train


def _train(ws, host, callbacks=(), **overrides):
    return train(TrainRequest(recipe="msf-lmsa", overrides=tiny_overrides(**{"train.ema": 0.9, **overrides})),
                 ws, host, callbacks=callbacks)


def test_decay_warms_up_then_holds():
    assert ema_decay(0.999, 0) == pytest.approx(0.1)
    assert ema_decay(0.999, 10) == pytest.approx(11 / 20)
    assert ema_decay(0.999, 10**6) == 0.999


def test_update_averages_parameters_and_copies_buffers(cpx_host):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    images, masks = torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.zeros(4, 8, 8, dtype=torch.uint8)
    trainer = Trainer(model, lambda x, y: x.sum(), None, (images, masks), train=TrainConfig(epochs=1, batch_size=2),
                      optimizer=OptimizerConfig(lr=0.1), schedule=ScheduleConfig(), precision="fp32",
                      device=torch.device("cpu"))
    ema = EMA(0.5, trainer.model)
    before = [p.clone() for p in ema.ema_model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model[1].running_mean.fill_(3.0)
    trainer.step = 100  # past the warm-up: decay 0.5
    ema.on_batch_end(trainer, 0, torch.zeros(()))
    for old, new, raw in zip(before, ema.ema_model.parameters(), model.parameters()):
        assert torch.allclose(new, 0.5 * old + 0.5 * raw)
    assert torch.equal(ema.ema_model[1].running_mean, torch.full((4,), 3.0))
    assert all(not p.requires_grad for p in ema.ema_model.parameters())


def test_history_checkpoints_and_ledger_hold_both(cpx_workspace, cpx_host, tiny_model):
    result = _train(cpx_workspace, cpx_host, **{"train.epochs": 3})
    history = result.run_dir / "history.json"
    import json

    records = json.loads(history.read_text())
    assert all(0 <= r["val_score"] <= 1 and 0 <= r["val_score_ema"] <= 1 and r["val_loss_ema"] > 0 for r in records)
    best_score = max(max(r["val_score"], r["val_score_ema"]) for r in records)
    with Ledger(cpx_workspace.ledger_path) as ledger:
        assert ledger.get_run(result.run_id)["best_val_score"] == pytest.approx(best_score)
        # the recorded best validation is that of the weights that won, raw or EMA
        assert ledger.best_validation(result.run_id)["score"] == pytest.approx(best_score)
    # both checkpoints hold tensors and plain values only
    best, last = load_file(result.run_dir / "best.pt"), load_file(result.run_dir / "last.pt")
    record = records[best["epoch"] - 1]
    assert best["weights"] == ("ema" if record["val_score_ema"] >= record["val_score"] else "raw")
    assert best["val_score"] == pytest.approx(best_score)
    assert set(last["ema"]) == set(last["model"])
    if best["epoch"] == 3:  # the best is the last epoch: best.pt holds exactly the weights it names
        source = last["ema"] if best["weights"] == "ema" else last["model"]
        assert all(torch.equal(best["state_dict"][k], v) for k, v in source.items())


def test_resume_with_ema_is_bit_exact(cpx_workspace, cpx_host, tiny_model):
    full = _train(cpx_workspace, cpx_host, **{"train.epochs": 4})

    class InterruptAt2:
        def on_epoch_end(self, trainer, record):
            if trainer.epoch == 2:
                raise KeyboardInterrupt

    cut = _train(cpx_workspace, cpx_host, callbacks=(InterruptAt2(),), **{"train.epochs": 4})
    assert cut.status == "stopped"
    resumed = train(TrainRequest(resume=cut.run_id), cpx_workspace, cpx_host)
    assert resumed.status == "completed" and resumed.epochs == 4
    a, b = load_file(full.run_dir / "last.pt"), load_file(cut.run_dir / "last.pt")
    for part in ("model", "ema"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), (part, key)
    assert [h["val_score_ema"] for h in a["history"]] == [h["val_score_ema"] for h in b["history"]]
    assert a["best_weights"] == b["best_weights"]


def test_without_ema_nothing_changes(cpx_workspace, cpx_host, tiny_model):
    result = _train(cpx_workspace, cpx_host, **{"train.ema": None})
    last = load_file(result.run_dir / "last.pt")
    assert "ema" not in last and last["best_weights"] == "raw"
    assert load_file(result.run_dir / "best.pt")["weights"] == "raw"
    assert all("val_score_ema" not in h for h in last["history"])
