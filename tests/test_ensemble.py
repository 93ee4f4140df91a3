import json

import pytest
from conftest import tiny_overrides

from cpx.cli import main
from cpx.eval.ensemble import build_ensemble, greedy_select, parse_weights, top_runs
from cpx.eval.predict import check_ensemble_allowed, predictor_for_run
from cpx.eval.predict_folder import predict_run
from cpx.eval.validate import validate_run
from cpx.kernel.errors import ConfigError, RuleViolation, RunError
from cpx.runs.ledger import Ledger
from cpx.train.run import TrainRequest, train


def _runs(ws, host, n=2):
    out = []
    for i in range(n):
        over = tiny_overrides(**{"data.image_size": 32, "train.epochs": 1, "train.seed": i,
                                 "data.val_fraction": 0.25})
        out.append(train(TrainRequest(recipe="msf-lmsa", overrides=over, name=f"m{i}"), ws, host))
    return out


def test_greedy_selection_with_replacement():
    # scores that reward the mix 2 x candidate 1 + 1 x candidate 2
    def score(counts):
        total = sum(counts.values())
        w = [counts.get(k, 0) / total for k in range(3)]
        return 1 - (w[0] - 0) ** 2 - (w[1] - 2 / 3) ** 2 - (w[2] - 1 / 3) ** 2

    counts, steps = greedy_select(score, 3, max_rounds=10)
    assert dict(counts) == {1: 2, 2: 1}
    assert [k for k, _ in steps] == [1, 2, 1]
    assert steps[-1][1] == pytest.approx(1.0)
    counts, steps = greedy_select(lambda c: 0.5, 3)  # nothing improves on the first pick
    assert dict(counts) == {0: 1} and len(steps) == 1


def test_parse_weights():
    assert parse_weights("2, 1", 2) == [2.0, 1.0]
    with pytest.raises(ConfigError, match="2 weight"):
        parse_weights("2,1", 3)
    with pytest.raises(ConfigError, match="numbers"):
        parse_weights("a,b", 2)


def test_ensemble_is_scored_recorded_and_reusable(cpx_workspace, cpx_host, tiny_model, cpx_synthetic, tmp_path):
    a, b = _runs(cpx_workspace, cpx_host)
    result = build_ensemble(["m0", "m1"], cpx_workspace, cpx_host, weights=[2, 1], name="duo")
    assert result.run_id and result.warnings[-1].startswith("celebamask-mini forbids ensembles")
    singles = {m.run: m.score for m in result.members}
    # alone, each member scores what its own validation says (same list, same metric)
    for run in (a, b):
        assert singles[run.run_id] == pytest.approx(run.best_val_score, abs=1e-9)
    assert all(m.recorded_val_score == pytest.approx(m.score, abs=1e-9) for m in result.members)
    score = result.evaluation.scores.score
    assert result.gain == pytest.approx(score - max(singles.values()))
    with Ledger(cpx_workspace.ledger_path) as ledger:
        row = ledger.get_run("duo")
        val = ledger.best_validation(row["id"])
    assert row["kind"] == "ensemble" and row["status"] == "completed" and row["best_val_score"] == pytest.approx(score)
    assert row["members"] == [{"run": a.run_id, "weight": 2.0, "checkpoint": "best"},
                              {"run": b.run_id, "weight": 1.0, "checkpoint": "best"}]
    assert val["score"] == pytest.approx(score) and val["checkpoint"] == "members"
    spec = json.loads((cpx_workspace.runs_dir / row["id"] / "ensemble.json").read_text())
    assert spec["members"] == row["members"] and spec["tta"] == []

    # the recorded ensemble reopens as a predictor and re-validates to the same number
    pred = predictor_for_run("duo", cpx_workspace, cpx_host)
    assert [m.run_id for m in pred.members] == [a.run_id, b.run_id] and pred.weights == pytest.approx([2 / 3, 1 / 3])
    again = validate_run("duo", cpx_workspace, cpx_host, record=False)
    assert again.scores.score == pytest.approx(score, abs=1e-9) and again.checkpoint == "members"

    # a zero weight is the other member alone
    solo = build_ensemble(["m0", "m1"], cpx_workspace, cpx_host, weights=[1, 0], record=False)
    assert solo.evaluation.scores.score == pytest.approx(singles[a.run_id], abs=1e-9) and solo.run_id is None

    # predicting from it is a rule break for this competition
    with pytest.raises(RuleViolation):
        predict_run("duo", cpx_workspace, cpx_host, cpx_synthetic / "test" / "images", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(RuleViolation):
        check_ensemble_allowed(row, cpx_host.competition("celebamask-mini"), False)
    report = predict_run("duo", cpx_workspace, cpx_host, cpx_synthetic / "test" / "images", tmp_path / "out",
                         allow_rule_break=True)
    assert len(report.written) == 4 and report.warnings


def test_differing_validation_lists_warn_and_use_the_intersection(cpx_workspace, cpx_host, tiny_model):
    a, b = _runs(cpx_workspace, cpx_host)
    names = (b.run_dir / "val_list.txt").read_text().split()
    (b.run_dir / "val_list.txt").write_text("\n".join(names[2:]) + "\n")
    result = build_ensemble(["m0", "m1"], cpx_workspace, cpx_host, record=False)
    assert any(w.startswith("LEAKAGE RISK") for w in result.warnings)
    assert result.names == names[2:]
    (b.run_dir / "val_list.txt").write_text("nothing_shared\n")
    with pytest.raises(RunError, match="share no validation image"):
        build_ensemble(["m0", "m1"], cpx_workspace, cpx_host, record=False)
    with pytest.raises(ConfigError, match="named twice"):
        build_ensemble(["m0", "m0"], cpx_workspace, cpx_host, record=False)


def test_cli_top_k_and_search(cpx_workspace, cpx_host, tiny_model, capsys):
    runs = _runs(cpx_workspace, cpx_host, n=3)
    with Ledger(cpx_workspace.ledger_path) as ledger:
        top = [r["id"] for r in top_runs(ledger, 2)]
    f = {r.run_id: r.best_val_score for r in runs}
    assert [f[t] for t in top] == sorted(f.values(), reverse=True)[:2]
    left_out = next(r for r in f if r not in top)

    code = main(["ensemble", "--top", "2", "--tta", "flip", "--no-record"])
    text = capsys.readouterr()
    assert code == 0 and "tta flip" in text.out and "forbids ensembles" in text.err
    assert text.out.index(top[0]) < text.out.index(top[1]) and left_out not in text.out
    assert "gain over the best single member" in text.out and "recorded as" not in text.out

    code = main(["ensemble", "m0", "m1", "m2", "--search", "--name", "picked", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    alone = {m["run"]: m["score"] for m in out["members"]}
    steps = out["search_steps"]
    # the first pick is the best member alone; each later pick raised the score
    assert steps[0]["add"] == max(alone, key=alone.get) and steps[0]["score"] == pytest.approx(max(alone.values()))
    assert all(x["score"] < y["score"] for x, y in zip(steps, steps[1:]))
    picked = {m["run"]: m["weight"] for m in out["members"] if m["weight"] > 0}
    assert sum(picked.values()) == pytest.approx(1.0)
    with Ledger(cpx_workspace.ledger_path) as ledger:
        if len(picked) > 1:
            row = ledger.get_run("picked")
            # 32 px images are cached at full size, so the search's score is the exact one
            assert row["best_val_score"] == pytest.approx(steps[-1]["score"], abs=1e-9) == out["score"]
            assert {m["run"]: m["weight"] for m in row["members"]} == pytest.approx(picked)
            assert out["gain"] == pytest.approx(out["score"] - max(alone.values()))
        else:
            assert "nothing recorded" in out["message"] and out["run_id"] is None
    code = main(["ensemble", "m0", "--json"])
    assert code == 2 and "at least 2 runs" in capsys.readouterr().err
