"""Statistics on scipy: intervals, the paired per-image test and `cpx compare --stats`, factor effects."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats as sps

from cpx.cli import main
from cpx.report import stats
from cpx.report.paired import compare_recorded
from cpx.runs.ledger import Ledger

A = {"img01": 0.50, "img02": 0.62, "img03": 0.71, "img04": 0.44, "img05": 0.58, "img06": 0.66}
GAIN = {"img01": 0.04, "img02": 0.05, "img03": 0.03, "img04": 0.06, "img05": 0.05, "img06": 0.04}
B = {k: A[k] + GAIN[k] for k in A}


@pytest.mark.parametrize("level, dof, expected", [(0.95, 1, 12.7062), (0.95, 2, 4.3027), (0.95, 3, 3.1824),
                                                  (0.95, 4, 2.7764), (0.95, 9, 2.2622), (0.95, 30, 2.0423),
                                                  (0.95, 200, 1.9719), (0.90, 5, 2.0150), (0.99, 10, 3.1693)])
def test_t_quantile_matches_the_printed_table(level, dof, expected):
    assert stats.t_quantile(level, dof) == pytest.approx(expected, abs=1e-4)


def test_t_quantile_refuses_a_level_of_one():
    with pytest.raises(ValueError):
        stats.t_quantile(1.0, 3)


def test_mean_interval():
    m = stats.mean_interval([0.5, 0.6, 0.7])
    assert m.mean == pytest.approx(0.6) and m.sd == pytest.approx(0.1)
    hw = 4.302653 * 0.1 / math.sqrt(3)
    assert (m.low, m.high) == (pytest.approx(0.6 - hw, rel=1e-6), pytest.approx(0.6 + hw, rel=1e-6))
    one = stats.mean_interval([0.4])
    assert one.sd is None and one.low is None and stats.words(one.low, one.high).startswith("noise unknown")


def test_paired_test_on_known_scores():
    t = stats.paired_test(A, {**B, "only-b": 0.9})
    d = np.array([GAIN[k] for k in sorted(A)])
    assert t.n == 6 and t.only_b == 1 and t.only_a == 0
    assert t.diff == pytest.approx(d.mean()) == pytest.approx(0.045)
    assert t.mean_b - t.mean_a == pytest.approx(0.045)
    # every image improved by 0.03..0.06: the interval sits inside that range and excludes 0
    assert 0.03 <= t.low < 0.045 < t.high <= 0.06
    se = d.std(ddof=1) / math.sqrt(6)
    assert t.t_p == pytest.approx(2 * sps.t.sf(0.045 / se, 5), rel=1e-9)
    assert t.wilcoxon_p == pytest.approx(0.03125)  # all 6 signs positive: 2 / 2**6 exactly
    assert t.significant and t.verdict == "significant"
    # no difference at all
    same = stats.paired_test(A, A)
    assert same.diff == 0 and (same.low, same.high) == (0, 0) and not same.significant
    with pytest.raises(ValueError, match="share 1"):
        stats.paired_test({"x": 0.1}, {"x": 0.2})


def test_noisy_differences_are_not_significant():
    rng = np.random.default_rng(3)
    a = {f"i{k}": float(v) for k, v in enumerate(rng.uniform(0.4, 0.8, 40))}
    b = {k: v + float(rng.normal(0.0, 0.05)) for k, v in a.items()}
    t = stats.paired_test(a, b)
    assert t.low < 0 < t.high and t.verdict == stats.NOT_SIGNIFICANT and t.t_p > 0.05


def test_factor_effects_with_seed_noise():
    # dice 1 vs 2 over two lr levels and two seeds; dice 2 is better by 0.05, seeds differ by 0.01
    obs = []
    for dice, base in ((1.0, 0.50), (2.0, 0.55)):
        for lr, shift in ((0.001, 0.0), (0.003, 0.002)):
            for seed, noise in ((0, -0.005), (1, 0.005)):
                obs.append(({"dice": dice, "lr": lr}, base + shift + noise))
    effects, nz = stats.factor_effects(obs, ["dice", "lr"])
    assert nz.source == "seeds" and nz.dof == 4
    assert nz.sd == pytest.approx(math.sqrt(4 * 2 * 0.005 ** 2 / 4))
    dice, lr = effects
    assert (dice.factor, dice.level, dice.reference) == ("dice", 2.0, 1.0)
    assert dice.estimate == pytest.approx(0.05)
    hw = sps.t.ppf(0.975, 4) * nz.sd * math.sqrt(1 / 4 + 1 / 4)
    assert (dice.low, dice.high) == (pytest.approx(0.05 - hw), pytest.approx(0.05 + hw))
    assert dice.significant and dice.verdict == "significant"
    assert lr.estimate == pytest.approx(0.002) and not lr.significant and "within the noise" in lr.verdict
    # one run per cell: the noise comes from an additive model instead
    single = [o for o in obs if o[1] in {v for (_, v) in obs[::2]}]
    _, nz1 = stats.factor_effects(single, ["dice", "lr"])
    assert nz1.source == "residual" and nz1.dof == 1
    assert stats.seeds_needed(0.01, 0.005) == 63


# ---------------------------------------------------------------- cpx compare --stats


@pytest.fixture
def two_runs(cpx_workspace):
    with Ledger(cpx_workspace.ledger_path) as ledger:
        a = ledger.add_run(name="base", status="completed", best_val_score=0.585, data_fingerprint="fp")
        b = ledger.add_run(name="dice2", status="completed", best_val_score=0.63, data_fingerprint="fp")
        ledger.add_validation(a["id"], checkpoint="best", tta="none", data="val_list", images=6,
                              score=float(np.mean(list(A.values()))), per_image=A)
        ledger.add_validation(b["id"], checkpoint="best", tta="none", data="val_list", images=6,
                              score=float(np.mean(list(B.values()))), per_image=B)
        # a TTA validation and one on another folder are not what --stats compares by default
        ledger.add_validation(b["id"], checkpoint="best", tta="flip", data="val_list", images=6,
                              score=0.9, per_image={k: 0.9 for k in A})
        ledger.add_validation(b["id"], checkpoint="best", tta="none", data="/elsewhere", images=6,
                              score=0.1, per_image={k: 0.1 for k in A})
    return a, b


def test_compare_stats_from_the_ledger(two_runs, capsys):
    assert main(["compare", "base", "dice2", "--stats", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    p = out["paired"]
    assert p["n"] == 6 and p["diff"] == pytest.approx(0.045) and p["verdict"] == "significant"
    assert p["wilcoxon_p"] == pytest.approx(0.03125)
    assert out["a"]["label"] == "base" and out["b"]["images"] == 6
    assert main(["compare", "base", "dice2", "--stats"]) == 0
    text = capsys.readouterr().out
    assert "+0.0450" in text and "bootstrap CI" in text and "significant" in text and "0.0312" in text
    # with TTA: B has a flip validation, A has none
    assert main(["compare", "base", "dice2", "--stats", "--tta", "flip"]) == 2
    assert "no recorded per-image scores" in capsys.readouterr().err


def test_compare_stats_refuses_runs_on_other_data(cpx_workspace, two_runs):
    from cpx.kernel.errors import RunError

    with Ledger(cpx_workspace.ledger_path) as ledger:
        other = ledger.add_run(name="other", status="completed", data_fingerprint="different")
        with pytest.raises(RunError, match="different data"):
            compare_recorded(ledger, "base", other["id"])
        with pytest.raises(RunError, match="same run"):
            compare_recorded(ledger, "base", "base")


@pytest.mark.parametrize("dof", [1, 1.5, 2, 3, 4, 7, 12.5, 30, 100, 1000, 1e5])
def test_t_quantile_is_scipys(dof):
    # computed without scipy (cpx leaderboard starts without it), held to scipy.stats.t
    for level in (0.5, 0.8, 0.9, 0.95, 0.99, 0.999):
        assert stats.t_quantile(level, dof) == pytest.approx(sps.t.ppf(0.5 + level / 2, dof), rel=1e-9)
