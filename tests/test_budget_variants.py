"""Budgets that choose (issue 20.4): a ``--budget`` run weighs its recipe's ``budget_variants``
by this machine's pace and their recorded curves, and records the choice and why."""

import json
import math

import pytest

from cpx.cli import main
from cpx.kernel.config import build_config
from cpx.kernel.errors import ConfigError
from cpx.runs.ledger import Ledger
from cpx.train.variants import CHOICE_FILE, TRAINING_SHARE, choose_budget_variant, predict_score

RECIPE = """\
base: msf-lmsa
model: {name: tiny}
train: {epochs: 2, batch_size: 8}
data: {synthetic_count: 24, synthetic_size: 32, image_size: 32}
schedule: {warmup_epochs: 1}
budget_variants:
  - name: big
    set: {data.image_size: 32}
    curve: [[1000, 0.5], [100000, 0.9]]
  - name: small
    set: {data.image_size: 16}
    curve: [[1000, 0.6], [10000, 0.7]]
"""
# images/s a machine trains each resolution at, for the tests that choose without timing
PACE = {32: 10.0, 16: 40.0}


def fake_pace(config, host):
    return PACE[config.data.image_size]


@pytest.fixture
def recipe(cpx_workspace, tiny_model):
    cpx_workspace.experiments_dir.mkdir(parents=True, exist_ok=True)
    (cpx_workspace.experiments_dir / "mine.yaml").write_text(RECIPE)
    return "mine"


def test_the_score_is_linear_in_log_images_between_points_and_capped_beyond():
    curve = [[1000, 0.5], [100000, 0.9]]
    assert predict_score(curve, 10000) == pytest.approx(0.7)  # half-way in log10
    assert predict_score(curve, 1000) == pytest.approx(0.5)
    assert predict_score(curve, 100) == pytest.approx(0.3)  # the first segment's line, below the first point
    assert predict_score(curve, 10 ** 7) == pytest.approx(0.9)  # never above the best recorded
    assert predict_score([[5000, 0.75]], 10) == 0.75  # one point: its score
    assert predict_score([[1000, 0.3], [10000, 0.8]], 10) == 0.0  # never below zero
    # lower is better: never better (lower) than the best recorded
    assert predict_score([[1000, 0.9], [100000, 0.5]], 10 ** 7, greater_is_better=False) == pytest.approx(0.5)
    three = [[10, 0.1], [100, 0.5], [1000, 0.6]]
    assert predict_score(three, 10 ** 2.5) == pytest.approx(0.55)
    with pytest.raises(ValueError):
        predict_score(curve, 0)


def _choose(recipe, workspace, host, overrides=None, minutes=1.0):
    overrides = {"train.budget_minutes": minutes, **(overrides or {})}
    config, _ = build_config(recipe, overrides, workspace.experiments_dir, host)
    return choose_budget_variant(recipe, overrides, config, workspace.experiments_dir, host, pace=fake_pace)


def test_a_short_budget_picks_the_resolution_that_sees_enough_images(recipe, cpx_workspace, cpx_host):
    config, diff, choice = _choose(recipe, cpx_workspace, cpx_host, minutes=1.0)
    assert choice.chosen == "small" and config.data.image_size == 16
    assert diff["train.budget_variant"] == "small" and diff["data.image_size"] == 16
    small, big = sorted(choice.estimates, key=lambda e: e.name != "small")
    assert small.images == int(40 * (60 - choice.probe_seconds) * TRAINING_SHARE)
    assert big.images == int(10 * (60 - choice.probe_seconds) * TRAINING_SHARE)
    assert small.predicted == pytest.approx(0.6 + 0.1 * math.log10(small.images / 1000), abs=1e-4)
    assert small.predicted > big.predicted
    assert choice.reason.startswith("small (40.0 images/s here") and "big 10.0 images/s" in choice.reason
    assert "not on synthetic images" in choice.reason  # the recipe trains on synthetic data


def test_a_long_budget_picks_the_resolution_whose_curve_goes_higher(recipe, cpx_workspace, cpx_host):
    config, _, choice = _choose(recipe, cpx_workspace, cpx_host, minutes=10000)
    assert choice.chosen == "big" and config.data.image_size == 32


def test_a_lower_is_better_metric_picks_the_lowest_prediction(recipe, cpx_workspace, cpx_host):
    overrides = {"train.budget_minutes": 1.0}
    config, _ = build_config(recipe, overrides, cpx_workspace.experiments_dir, cpx_host)
    _, _, choice = choose_budget_variant(recipe, overrides, config, cpx_workspace.experiments_dir, cpx_host,
                                         greater_is_better=False, pace=fake_pace)
    assert choice.chosen == "big"


def test_a_key_the_user_set_is_kept_and_nothing_is_chosen(recipe, cpx_workspace, cpx_host):
    config, diff, choice = _choose(recipe, cpx_workspace, cpx_host, {"data.image_size": 24})
    assert config.data.image_size == 24 and diff is None
    assert choice.chosen is None and choice.reason == "none chosen: data.image_size set, so the recipe trains as asked"


def test_a_pinned_variant_is_trained_without_timing_and_an_unknown_one_is_named(recipe, cpx_workspace, cpx_host):
    def no_timing(config, host):
        raise AssertionError("a pinned variant needs no timing")

    overrides = {"train.budget_variant": "big", "train.budget_minutes": 1.0}
    config, _ = build_config(recipe, overrides, cpx_workspace.experiments_dir, cpx_host)
    config, _, choice = choose_budget_variant(recipe, overrides, config, cpx_workspace.experiments_dir, cpx_host,
                                              pace=no_timing)
    assert choice.chosen == "big" and config.data.image_size == 32
    overrides["train.budget_variant"] = "huge"
    config, _ = build_config(recipe, overrides, cpx_workspace.experiments_dir, cpx_host)
    with pytest.raises(ConfigError, match=r"train.budget_variant: no variant 'huge' \(known: big, small\)"):
        choose_budget_variant(recipe, overrides, config, cpx_workspace.experiments_dir, cpx_host, pace=no_timing)


def test_without_a_budget_the_recipe_trains_as_written(recipe, cpx_workspace, cpx_host):
    config, _ = build_config(recipe, {}, cpx_workspace.experiments_dir, cpx_host)
    assert choose_budget_variant(recipe, {}, config, cpx_workspace.experiments_dir, cpx_host,
                                 pace=fake_pace) == (config, None, None)


@pytest.mark.parametrize("curve, problem", [([[100, 0.5], [10, 0.7]], "strictly increasing"),
                                            ([], "at least 1 item")])
def test_a_bad_curve_is_one_line_naming_the_field(curve, problem, cpx_workspace, cpx_host, tiny_model, capsys):
    cpx_workspace.experiments_dir.mkdir(parents=True, exist_ok=True)
    text = RECIPE.replace("[[1000, 0.6], [10000, 0.7]]", json.dumps(curve))
    (cpx_workspace.experiments_dir / "mine.yaml").write_text(text)
    code = main(["train", "mine", "--budget", "1m"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "budget_variants.1.curve" in lines[0] and problem in lines[0], err


def test_a_budget_run_times_the_machine_and_records_its_choice(recipe, cpx_workspace, capsys):
    """The real probe: each variant timed on this machine, the choice printed, written beside
    the run and recorded in the ledger's config diff; the probe's seconds count in the budget."""
    code = main(["train", "mine", "--budget", "10m", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0, out
    with Ledger(cpx_workspace.ledger_path) as ledger:
        (run,) = ledger.list_runs()
    diff = run["config_diff"] if isinstance(run["config_diff"], dict) else json.loads(run["config_diff"])
    choice = json.loads((cpx_workspace.runs_dir / run["id"] / CHOICE_FILE).read_text())
    assert diff["train.budget_variant"] == choice["chosen"] in ("big", "small")
    assert {e["name"] for e in choice["estimates"]} == {"big", "small"}
    assert all(e["images_per_s"] > 0 and e["images"] > 0 for e in choice["estimates"])
    assert 0 < choice["probe_seconds"] <= run["wall_seconds"]
    assert f"budget variant: {choice['chosen']} (" in out


def test_a_sweep_trains_every_trial_on_the_recipe_as_written(recipe, cpx_workspace, capsys):
    """A variant chosen per trial from the machine's momentary pace would differ between trials:
    a sweep's trials are not weighed (a pinned variant still applies)."""
    code = main(["sweep", "mine", "--grid", "optimizer.lr=1e-3,2e-3", "--budget", "10m", "--json"])
    assert code == 0, capsys.readouterr().err
    with Ledger(cpx_workspace.ledger_path) as ledger:
        runs = ledger.list_runs()
    assert len(runs) == 2
    for run in runs:
        diff = run["config_diff"] if isinstance(run["config_diff"], dict) else json.loads(run["config_diff"])
        assert "train.budget_variant" not in diff and "data.image_size" not in diff
        assert not (cpx_workspace.runs_dir / run["id"] / CHOICE_FILE).exists()
