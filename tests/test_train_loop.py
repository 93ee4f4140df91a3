"""The trainer and its callbacks: the learning-rate schedule follows a changing plan, why a run
stopped is a value recorded in the ledger, and a callback's own state survives a resume."""

import math

import pytest
from conftest import CtrlCInEpoch2, tiny_overrides

from cpx.runs.checkpoint import load_file
from cpx.runs.ledger import Ledger
from cpx.train.loop import Callback, LRSchedule, StopReason, lr_at
from cpx.train.run import TrainRequest, train


def _lrs(schedule, steps):
    return [schedule.lr(s) for s in steps]


def test_without_a_replan_the_schedule_is_the_closed_formula():
    s = LRSchedule(1.0, 0.01, "cosine", warmup=10, total=100)
    for step in (0, 5, 9, 10, 50, 99, 100, 150):
        if step < 10:
            want = (step + 1) / 10
        else:
            want = 0.01 + 0.5 * 0.99 * (1 + math.cos(math.pi * min(1.0, (step - 10) / 90)))
        assert s.lr(step) == pytest.approx(want) == pytest.approx(lr_at(step, 100, 10, 1.0, 0.01, "cosine"))


@pytest.mark.parametrize("new_total", [60, 400])
def test_a_replanned_cosine_stays_continuous_and_ends_at_its_floor(new_total):
    s = LRSchedule(1.0, 0.0, "cosine", warmup=0, total=100)
    at = 40
    before = s.lr(at)
    s.replan(new_total, at)
    assert s.lr(at) == pytest.approx(before)  # no jump where the plan changed
    later = _lrs(s, range(at, new_total + 1))
    assert all(a >= b - 1e-12 for a, b in zip(later, later[1:]))  # still only going down
    assert s.lr(new_total) == pytest.approx(0.0, abs=1e-12)  # and ends at min_lr with the new plan


def test_a_plan_that_grows_late_does_not_restart_the_cosine():
    # issue: a budget planned 2 epochs, then 3; the cosine had reached its floor and stayed there
    s = LRSchedule(1.0, 1e-6, "cosine", warmup=0, total=20)
    s.replan(30, 20)  # the plan grows exactly when the old one ended
    assert s.lr(20) == pytest.approx(1e-6)
    s = LRSchedule(1.0, 1e-6, "cosine", warmup=0, total=20)
    s.replan(30, 10)  # grows half way: what is left of the cosine spreads over 20 more steps
    assert s.lr(10) == pytest.approx(0.5, abs=1e-5)
    assert s.lr(20) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.75)), abs=1e-5)


def test_a_short_plan_halves_a_warm_up_it_could_not_finish():
    s = LRSchedule(1.0, 0.0, "cosine", warmup=50, total=500)
    s.replan(40, 10)  # the budget allows 40 steps: warming up for 50 would never reach the peak
    assert s.warmup == 20 and s.lr(19) == pytest.approx(1.0) and s.lr(40) == pytest.approx(0.0, abs=1e-12)


class _Counting(Callback):
    """A third-party callback with state of its own, counting batches across sessions."""

    def __init__(self):
        self.batches = 0
        self.events = []

    def on_fit_start(self, trainer):
        self.events.append("start")

    def on_batch_end(self, trainer, batch, loss):
        self.batches += 1

    def on_epoch_end(self, trainer, record):
        self.events.append(("epoch", record.epoch, record.val_score is not None))

    def on_fit_end(self, trainer):
        self.events.append("end")

    def state_dict(self):
        return {"counted_batches": self.batches}

    def load_state_dict(self, state):
        self.batches = state.get("counted_batches", 0)


def test_callbacks_see_every_event_after_validation_and_their_state_is_saved(cpx_workspace, cpx_host, tiny_model):
    counting = _Counting()
    result = train(TrainRequest(recipe="msf-lmsa", overrides=tiny_overrides()), cpx_workspace, cpx_host,
                   callbacks=(counting,))
    steps = 3  # 22 training images (2 of 24 held out) in batches of 8, 8 and 6
    assert counting.events == ["start", ("epoch", 1, True), ("epoch", 2, True), "end"]
    assert counting.batches == 2 * steps
    assert load_file(result.run_dir / "last.pt")["counted_batches"] == 2 * steps
    assert result.stop_reason is StopReason.COMPLETED


def test_why_a_run_stopped_is_recorded_as_a_value(cpx_workspace, cpx_host, tiny_model):
    patient = train(TrainRequest(recipe="msf-lmsa", overrides=tiny_overrides(**{
        "train.epochs": 30, "train.patience": 1, "optimizer.lr": 1e-9, "schedule.min_lr": 0.0})), cpx_workspace,
        cpx_host)
    assert patient.stop_reason is StopReason.PATIENCE and patient.epochs < 30
    interrupted = train(TrainRequest(recipe="msf-lmsa", overrides=tiny_overrides(**{"train.epochs": 3})),
                        cpx_workspace, cpx_host, callbacks=(CtrlCInEpoch2(),))
    assert interrupted.stop_reason is StopReason.INTERRUPTED and interrupted.status == "stopped"
    with Ledger(cpx_workspace.ledger_path) as ledger:
        assert ledger.get_run(patient.run_id)["stop_reason"] == "patience"
        assert ledger.get_run(patient.run_id)["status"] == "completed"
        assert ledger.get_run(interrupted.run_id)["stop_reason"] == "interrupted"
    resumed = train(TrainRequest(resume=interrupted.run_id), cpx_workspace, cpx_host)
    assert resumed.stop_reason is StopReason.COMPLETED and resumed.epochs == 3


def test_the_training_cache_lives_on_a_gpu_when_a_quarter_of_its_free_memory_holds_it():
    from cpx.train.loop import cache_placement, place_data

    gib = 2**30
    # 900 images at 512 px: 0.9 GB of uint8, on an 80 GB card; 60 GB of 1024 px 4-band tiles do not fit
    assert cache_placement(int(0.9 * gib), 80 * gib) == "device"
    assert cache_placement(60 * gib, 80 * gib) == "pinned"
    # on a CPU the tensors stay as they are (no copy, no pinning)
    import torch

    data = (torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(2, 4, 4, dtype=torch.uint8))
    placed = place_data(data, torch.device("cpu"))
    assert placed[0] is data[0] and placed[1] is data[1]
