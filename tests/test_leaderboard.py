"""The ranking of runs and submissions, and the predicted test score."""

from __future__ import annotations

import json
import math

import pytest

from cpx.cli import main
from cpx.report.leaderboard import SINGLE_PAIR_SPREAD, build_leaderboard, fit_gap_model, short_config
from cpx.report.stats import t_quantile
from cpx.runs.ledger import Ledger

# ---------------------------------------------------------------- the gap model


def test_known_gaps_give_known_prediction_and_interval():
    # gaps 0.03, 0.04, 0.05: mean 0.04, sample sd 0.01
    model = fit_gap_model([("a", 0.66, 0.69), ("b", 0.68, 0.72), ("c", 0.70, 0.75)])
    assert model.n == 3
    assert model.mean_gap == pytest.approx(0.04)
    assert model.sd == pytest.approx(0.01)
    expected_hw = 4.302653 * 0.01 * math.sqrt(1 + 1 / 3)
    assert model.half_width == pytest.approx(expected_hw, rel=1e-5)

    p = model.predict(0.70)
    assert p.value == pytest.approx(0.74)
    assert (p.low, p.high) == (pytest.approx(0.74 - expected_hw), pytest.approx(0.74 + expected_hw))
    assert not p.rough and p.pairs == 3
    assert "mean gap of 3 pairs" in model.describe() and "+0.0400" in model.describe()


def test_no_pair_predicts_nothing():
    model = fit_gap_model([])
    assert model.predict(0.7) is None
    assert model.half_width is None and model.mean_gap is None
    assert "no test score is predicted" in model.describe()


def test_one_pair_is_widened_and_rough():
    model = fit_gap_model([("only", 0.69, 0.72)])
    p = model.predict(0.70)
    assert p.value == pytest.approx(0.73)
    assert p.half_width == SINGLE_PAIR_SPREAD == 0.05
    assert p.rough
    assert "1 pair: rough" in model.describe()


def test_identical_gaps_and_clipping():
    model = fit_gap_model([("a", 0.5, 0.6), ("b", 0.6, 0.7)])
    assert model.half_width == pytest.approx(0.0, abs=1e-12)
    p = fit_gap_model([("a", 0.9, 0.95), ("b", 0.9, 0.99)]).predict(0.98)
    assert p.value == 1.0 and p.high == 1.0 and p.low == pytest.approx(1.05 - p.half_width)


def test_pairs_without_both_scores_are_ignored():
    assert fit_gap_model([("a", 0.6, None), ("b", None, 0.7), ("c", 0.6, 0.65)]).n == 1


# ---------------------------------------------------------------- key config


def test_short_config():
    diff = {"model.name": "unet", "loss.options.dice": 1.5, "optimizer.lr": 0.0004,
            "train.batch_size": 16, "augmentation.options.flip": 0.0, "data.image_size": 256}
    assert short_config(diff) == "model=unet, dice=1.5, lr=0.0004, bs=16, flip=0, size=256"
    assert short_config({"loss.dice_weight": 1.5, "training.learning_rate": 1e-3}) == "dice=1.5, lr=0.001"
    # two keys that would read the same keep their section
    assert short_config({"loss.options.scale": 2, "augmentation.options.scale": [0.9, 1.1]}) == \
        "loss.scale=2, augmentation.scale=[0.9,1.1]"
    assert short_config({}) == "" and short_config(None) == ""
    assert short_config({"a.x": 1, "a.y": 2, "a.z": 3}, limit=2) == "x=1, y=2, +1"
    # a switched model's options are the new model's own: counted, not listed as changes
    switched = {"model.name": "msf-lmsa", "model.options.dropout": 0.15, "model.options.depths": [2, 2],
                "optimizer.lr": 8e-4}
    assert short_config(switched) == "model=msf-lmsa (+2 options), lr=0.0008"


# ---------------------------------------------------------------- the board


def build_ledger(ledger):
    """Three trained runs, one imported, one ensemble; two runs submitted and scored."""
    runs = {}
    runs["ref"] = ledger.add_run(name="ref", recipe="msf-lmsa", competition="celebamask-mini", status="completed",
                                 best_val_score=0.6889, best_epoch=120, config_diff={})
    runs["dice2"] = ledger.add_run(name="dice2", recipe="msf-lmsa", competition="celebamask-mini",
                                   status="completed", best_val_score=0.7000, best_epoch=98,
                                   config_diff={"loss.options.dice": 2.0})
    runs["unet"] = ledger.add_run(name="unet", recipe="unet", competition="celebamask-mini", status="completed",
                                  best_val_score=0.6500, best_epoch=60, config_diff={"model.name": "unet"})
    runs["old"] = ledger.add_run(name="old-script", kind="imported", competition="celebamask-mini",
                                 best_val_score=0.6950, best_epoch=150, checkpoints=["/x/best_model.pth"],
                                 config_diff={"loss.dice_weight": 1.5})
    runs["ens"] = ledger.add_run(name="ens", kind="ensemble", competition="celebamask-mini", status="completed",
                                 best_val_score=0.7100, members=["ref", "dice2"])
    runs["other"] = ledger.add_run(name="other-comp", competition="something-else", status="completed",
                                   best_val_score=0.99)
    # cpx validate with flip TTA scored the unet run higher than its training curve
    ledger.add_validation(runs["unet"]["id"], checkpoint="best", tta="flip", score=0.6600)
    ledger.add_validation(runs["unet"]["id"], checkpoint="best", tta="none", score=0.6400)
    ledger.add_submission("v1", run_id=runs["ref"]["id"], val_score=0.6889, checkpoint="best", tta="none")
    ledger.add_submission("v2", run_id=runs["dice2"]["id"], val_score=0.7050, checkpoint="best", tta="flip")
    ledger.record_score("v1", 0.7200)
    ledger.record_score("v2", 0.7400, column_key="fscore", source="codabench")
    return runs


def test_board_ranks_runs_and_submissions_with_predictions(ledger):
    runs = build_ledger(ledger)
    board = build_leaderboard(ledger, competition="celebamask-mini")

    labels = [r.label for r in board.rows]
    assert labels == ["ens", "v2", "old-script", "v1", "unet"]
    assert "other-comp" not in labels
    rows = {r.label: r for r in board.rows}
    assert [r.rank for r in board.rows] == [1, 2, 3, 4, 5]

    # observed scores and gaps
    assert rows["v1"].test_score == 0.72 and rows["v1"].gap == pytest.approx(0.0311)
    assert rows["v2"].test_score == 0.74 and rows["v2"].test_source == "codabench"
    assert rows["v2"].gap == pytest.approx(0.035)
    assert rows["v2"].key_config == "dice=2" and rows["v2"].run_id == runs["dice2"]["id"]

    # the model learnt from the two pairs
    assert board.model.n == 2 and board.model.mean_gap == pytest.approx((0.0311 + 0.035) / 2)
    p = rows["old-script"].predicted
    assert p.value == pytest.approx(0.6950 + board.model.mean_gap)
    assert p.half_width == pytest.approx(t_quantile(0.95, 1) * board.model.sd * math.sqrt(1.5))
    assert rows["v1"].predicted is None

    # a validation with TTA scored higher than training: shown, and said where from
    assert rows["unet"].val_score == 0.66 and rows["unet"].train_val_score == 0.65
    assert rows["unet"].val_source.startswith("validate #") and rows["unet"].checkpoint == "best+flip"
    assert rows["v2"].checkpoint == "best+flip" and rows["v1"].checkpoint == "best"
    assert rows["old-script"].checkpoint == "best_model.pth" and rows["old-script"].kind == "imported"
    assert rows["ens"].kind == "ensemble"


def test_runs_on_generated_faces_are_marked_synthetic(ledger):
    ledger.add_run(name="demo", recipe="msf-lmsa", competition="celebamask-mini", status="completed",
                   best_val_score=0.49, config={"data": {"path": None}}, config_diff={"train.epochs": 30})
    ledger.add_run(name="real", recipe="msf-lmsa", competition="celebamask-mini", status="completed",
                   best_val_score=0.70, config={"data": {"path": "/data/celebamask-mini"}}, config_diff={})
    rows = {r.label: r for r in build_leaderboard(ledger, competition="celebamask-mini").rows}
    assert rows["demo"].synthetic and rows["demo"].key_config == "synthetic data, epochs=30"
    assert not rows["real"].synthetic and rows["real"].key_config == ""


def test_sort_by_test_uses_observed_then_predicted(ledger):
    build_ledger(ledger)
    board = build_leaderboard(ledger, sort="test", competition="celebamask-mini")
    # ens and old-script by prediction (val + 0.0331), v2 and v1 by their scores
    assert [r.label for r in board.rows] == ["ens", "v2", "old-script", "v1", "unet"]
    values = [r.rank_value("test") for r in board.rows]
    assert values == sorted(values, reverse=True)
    assert values[0] == pytest.approx(0.71 + 0.03305)


def test_limit_and_empty_ledger(ledger):
    build_ledger(ledger)
    board = build_leaderboard(ledger, limit=2)
    assert len(board.rows) == 2 and board.total == 6  # no competition filter: all runs
    empty = build_leaderboard(Ledger(ledger.path.parent / "empty.db"))
    assert empty.rows == [] and empty.model.n == 0


def test_single_pair_marks_predictions_rough(ledger):
    build_ledger(ledger)
    ledger._db.execute("DELETE FROM scores WHERE column_key = 'fscore'")  # v2 unscored: one pair left
    board = build_leaderboard(ledger, competition="celebamask-mini")
    assert board.model.n == 1
    rough = [r for r in board.rows if r.predicted]
    assert rough and all(r.predicted.rough and r.predicted.half_width == 0.05 for r in rough)
    assert "1 pair: rough" in board.to_markdown()


# ---------------------------------------------------------------- CLI


def test_cli_table_json_and_markdown(ledger, capsys):
    build_ledger(ledger)

    assert main(["leaderboard", "--competition", "celebamask-mini"]) == 0
    out = capsys.readouterr().out
    # named by the competition's metric
    assert "leaderboard by val fscore" in out and "~0.72" in out
    assert "predicted test fscore = val fscore +0.0331 (mean gap of 2 pairs" in " ".join(out.split())
    assert "unet / best+flip (validate #1)" in out
    assert "old-script (imported)" in out

    assert main(["leaderboard", "--json", "--sort", "test", "--limit", "3"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["sort"] == "test" and len(data["rows"]) == 3 and data["total"] == 6
    assert data["prediction"]["n"] == 2 and len(data["prediction"]["pairs"]) == 2
    assert data["rows"][0]["label"] == "other-comp"  # 0.99 + gap, no filter
    first_pred = next(r for r in data["rows"] if r["predicted"])
    assert set(first_pred["predicted"]) >= {"value", "low", "high", "half_width", "pairs", "rough"}

    assert main(["leaderboard", "--markdown", "--competition", "celebamask-mini"]) == 0
    md = capsys.readouterr().out
    lines = md.splitlines()
    assert lines[0].startswith("| # | model | val fscore | test fscore | gap |")
    assert lines[1].startswith("|---|")
    v2 = next(line for line in lines if "| v2 |" in line)
    assert "0.7400" in v2 and "+0.0350" in v2 and "dice=2" in v2
    assert any("*predicted*" in line and "old-script" in line for line in lines)

    assert main(["leaderboard", "--sort", "best"]) == 2
    assert "--sort: choose val or test" in capsys.readouterr().err


def test_plain_leaderboard_follows_the_workspace_competition_not_the_latest_run(ledger, cpx_workspace, capsys):
    """cpx.yaml's ``competition:`` decides before the latest run's (the README's order), so a
    later run of another competition does not hide the workspace's submitted runs."""
    (cpx_workspace.root / "cpx.yaml").write_text("competition: celebamask-mini\n")
    mine = ledger.add_run(name="mine", recipe="msf-lmsa", competition="celebamask-mini", status="completed",
                          best_val_score=0.69, best_epoch=10)
    ledger.add_submission("s1", run_id=mine["id"], val_score=0.69, checkpoint="best", tta="none")
    ledger.record_score("s1", 0.71)
    ledger.add_run(name="elsewhere", recipe="unet", competition="drone-vegetation", status="completed",
                   best_val_score=0.5, best_epoch=3)

    for extra in ([], ["--sort", "test"]):
        assert main(["leaderboard", "--json", *extra]) == 0
        labels = [r["label"] for r in json.loads(capsys.readouterr().out)["rows"]]
        assert "s1" in labels and "elsewhere" not in labels, labels
    assert main(["leaderboard", "--json", "--competition", "drone-vegetation"]) == 0
    labels = [r["label"] for r in json.loads(capsys.readouterr().out)["rows"]]
    assert labels == ["elsewhere"]
