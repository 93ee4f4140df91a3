"""cpx.train.budget: planning the epochs of a wall-clock budget from the pace of the first ones,
and a budgeted run's records."""

from types import SimpleNamespace

import pytest
from conftest import tiny_overrides

from cpx.runs.ledger import Ledger
from cpx.train.budget import BudgetCallback
from cpx.train.run import TrainRequest, train


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class _Planned(SimpleNamespace):
    """What a budget reads and re-plans of a trainer: its epoch, its plan and how to change it."""

    def set_epochs(self, epochs):
        self.epochs = epochs

    def stop(self, reason, message=""):
        self.stopped = reason


def test_budget_plans_from_the_second_epoch_follows_the_pace_then_only_shortens(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr("cpx.train.budget.time.perf_counter", clock)
    budget = BudgetCallback(minutes=10, start_epoch=0)  # 600 s, planned into 588 s
    trainer = _Planned(epoch=0, epochs=300)

    def epoch(seconds):
        clock.now += seconds
        trainer.epoch += 1
        budget.on_epoch_end(trainer, None)
        return trainer.epochs

    assert epoch(100) == 1 + 488 // 100  # the first epoch pays warm-up costs: a cautious plan
    assert epoch(50) == 2 + 438 // 50  # re-planned from the second epoch alone: 10
    assert epoch(20) == 3 + 418 // 35  # faster while in the plan's first half: it grows to 14
    assert epoch(100) == 4 + int(318 // (170 / 3))  # slower: the cosine is shortened to 9
    assert epoch(10) == 9  # faster again, but past half of the plan: it never grows back
    assert epoch(200) == 6 + int(108 // (380 / 5))  # much slower: shortening is always allowed, to 7
    assert budget.first_plan == 5 and "planned 7 epochs (first plan 5)" in budget.summary()


def test_budgeted_run_records_its_budget_and_world_size(cpx_workspace, cpx_host, tiny_model):
    result = train(TrainRequest(recipe="msf-lmsa", overrides=tiny_overrides(**{
        "train.epochs": 1000, "train.budget_minutes": 0.05,
        "train.patience": None})),  # early stopping would end it before the budget does
                   cpx_workspace, cpx_host)
    with Ledger(cpx_workspace.ledger_path) as ledger:
        row = ledger.get_run(result.run_id)
    assert row["budget_seconds"] == pytest.approx(3.0) and row["world_size"] == 1
    assert row["status"] == "completed" and row["epochs_planned"] == result.epochs < 1000
    assert row["wall_seconds"] > 0 and "budget 0.05 min" in row["notes"]


def test_a_resumed_budget_counts_the_time_already_spent(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr("cpx.train.budget.time.perf_counter", clock)
    budget = BudgetCallback(minutes=10, start_epoch=5, used_seconds=400)  # 200 s left of 600
    trainer = _Planned(epoch=5, epochs=300)
    clock.now += 50
    trainer.epoch += 1
    budget.on_epoch_end(trainer, None)
    assert trainer.epochs == 6 + int((588 - 450) // 50)  # 50 s an epoch in the 138 s left
    assert budget.elapsed() == pytest.approx(450)
    # a resumed run whose machine got quieter may grow its earlier plan, up to train.epochs
    budget = BudgetCallback(minutes=10, start_epoch=5, used_seconds=300, max_epochs=40)
    trainer = _Planned(epoch=5, epochs=12)  # planned 12 before
    clock.now += 20
    trainer.epoch += 1
    budget.on_epoch_end(trainer, None)
    assert trainer.epochs == 6 + int((588 - 320) // 20) == 19
