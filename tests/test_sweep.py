"""Sweeps on Optuna: real tiny trainings on synthetic data, a real SQLite ledger and real study
storage (SQLite and Optuna's journal file)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections import Counter

import optuna
import pytest
from conftest import tiny_overrides
from optuna.trial import TrialState

from cpx.cli import main
from cpx.kernel.errors import ConfigError, RunError
from cpx.runs.ledger import Ledger
from cpx.sweep import study as studylib
from cpx.sweep.runner import SweepRequest, run_sweep
from cpx.sweep.spec import Factor, SweepSpec, parse_ablate, parse_grid, parse_search

DICE, LR = "loss.options.dice", "optimizer.lr"


def grid_spec(**kw) -> SweepSpec:
    fields = dict(recipe="msf-lmsa", mode="grid", seeds=2, overrides=tiny_overrides(),
                  factors=[Factor(key=DICE, values=[1.0, 2.0]), Factor(key=LR, values=[0.001, 0.003])])
    fields.update(kw)
    return SweepSpec(**fields)


def sweep_runs(ws, name):
    with Ledger(ws.ledger_path) as ledger:
        return [r for r in ledger.list_runs() if r.get("sweep") == name]


def cell(run):
    flat = run["config"]
    return (flat["loss"]["options"]["dice"], flat["optimizer"]["lr"], flat["train"]["seed"])


# ---------------------------------------------------------------- parsing


def test_factors_parse_from_the_command_line():
    assert parse_grid("dice=1.0,1.5,2", {"dice": DICE}) == Factor(key=DICE, values=[1.0, 1.5, 2])
    assert parse_grid("augmentation.options.rotation=10,15").values == [10, 15]
    lr = parse_search("lr=1e-4..3e-3:log", {"lr": LR})
    assert (lr.key, lr.low, lr.high, lr.log, lr.integer) == (LR, 1e-4, 3e-3, True, False)
    assert parse_search("epochs=10..40").integer and not parse_search("dice=0.5..3").integer
    assert parse_search("augmentation.name=baseline,strong").values == ["baseline", "strong"]
    for bad in ("dice", "dice=", "dice=1,1"):
        with pytest.raises(ConfigError):
            parse_grid(bad)
    for bad in ("lr=3..1", "lr=0..1:log", "lr=a..b", "lr=1..2:cube"):
        with pytest.raises(ConfigError):
            parse_search(bad)


def test_ablation_variants_parse_into_one_factor_with_the_baseline_first():
    f = parse_ablate(["plain-flip:augmentation.options.flip_swap=false", "msf:model.name=msf-lmsa",
                      "msf:lr=8e-4", "crops:augmentation.options.crop_scale=[0.5, 1.5]"], {"lr": LR})
    assert f.key == "variant" and f.values == ["baseline", "plain-flip", "msf", "crops"]
    assert f.variants["msf"] == {"model.name": "msf-lmsa", LR: 8e-4}
    assert f.variants["crops"] == {"augmentation.options.crop_scale": [0.5, 1.5]}
    spec = SweepSpec(recipe="msf-lmsa", mode="grid", factors=[f], seeds=2, overrides={"train.epochs": 3},
                     budget_minutes=5)
    assert spec.total == 8 and "ablation plain-flip: augmentation.options.flip_swap=false" in spec.describe()
    # a trial's overrides hold the variant's keys, never the word "variant"
    assert spec.trial_overrides({"variant": "msf", "train.seed": 1}) == {
        "train.epochs": 3, "model.name": "msf-lmsa", LR: 8e-4, "train.seed": 1, "train.budget_minutes": 5}
    assert spec.trial_overrides({"variant": "baseline", "train.seed": 0}) == {
        "train.epochs": 3, "train.seed": 0, "train.budget_minutes": 5}
    for bad in ("noname", ":dice=1", "x:dice", "baseline:dice=2", "a b:dice=2", "x:scale=[1,"):
        with pytest.raises(ConfigError):
            parse_ablate([bad])
    with pytest.raises(ConfigError, match="a: optimizer.lr is set twice"):
        parse_ablate(["a:lr=1e-3", "a:lr=2e-3"], {"lr": LR})
    with pytest.raises(ValueError, match="not --search"):
        SweepSpec(recipe="r", mode="search", trials=3, factors=[f])


def test_an_ablation_trains_each_variant_and_scores_it_against_the_recipe(cpx_workspace, cpx_host, tiny_model):
    from cpx.report.sweeps import sweep_results

    variants = parse_ablate(["no-flip:augmentation.options.flip=0", "lr:optimizer.lr=3e-3",
                             "lr:loss.options.dice=2"])
    spec = SweepSpec(recipe="msf-lmsa", mode="grid", factors=[variants], seeds=2,
                     overrides=tiny_overrides(**{"train.epochs": 1}))
    out = run_sweep(SweepRequest(spec=spec), cpx_workspace, cpx_host)
    assert out.status.complete == 6 and out.name.startswith("msf-lmsa-variant-")
    runs = {r["id"]: r["config"] for r in sweep_runs(cpx_workspace, out.name)}
    with Ledger(cpx_workspace.ledger_path) as ledger:
        results = sweep_results(ledger, out.name)
    by_variant = Counter(r.params["variant"] for r in results.runs)
    assert by_variant == {"baseline": 2, "no-flip": 2, "lr": 2}
    for r in results.runs:  # each run is recognised from its own config
        config = runs[r.run_id]
        flip, lr = config["augmentation"]["options"]["flip"], config["optimizer"]["lr"]
        assert r.params["variant"] == ("no-flip" if flip == 0 else "lr" if lr == 3e-3 else "baseline")
    assert {(e.level, e.reference) for e in results.effects} == {("no-flip", "baseline"), ("lr", "baseline")}
    assert results.noise.source == "seeds" and results.noise.dof == 3 and results.kind == "ablation"


def test_an_ablation_variant_that_changes_nothing_is_refused_before_training(cpx_workspace, monkeypatch, capsys):
    monkeypatch.setenv("CPX_WORKSPACE", str(cpx_workspace.root))
    # msf-lmsa already flips with probability 0.5
    assert main(["sweep", "msf-lmsa", "--ablate", "same:augmentation.options.flip=0.5"]) == 2
    assert "same: trains the same config as baseline" in capsys.readouterr().err
    assert main(["sweep", "msf-lmsa", "--ablate", "a:dice=2", "--ablate", "b:loss.options.dice=2"]) == 2
    assert "b: trains the same config as a" in capsys.readouterr().err
    assert main(["sweep", "msf-lmsa", "--ablate", "x:nonsense.key=1"]) == 2
    assert "nonsense" in capsys.readouterr().err
    with Ledger(cpx_workspace.ledger_path) as ledger:
        assert ledger.list_sweeps() == [] and ledger.list_runs() == []


def test_spec_counts_trials_and_names_itself_from_what_it_varies():
    spec = grid_spec()
    assert spec.total == 8 and spec.grid()["train.seed"] == [0, 1]
    assert spec.default_name().startswith("msf-lmsa-dice-lr-") and spec.default_name() == grid_spec().default_name()
    # trials and pruning do not change the study; what is trained does
    search = SweepSpec(recipe="msf-lmsa", mode="search", factors=[parse_search("lr=1e-4..1e-2:log")], trials=5)
    assert search.identity() == search.model_copy(update={"trials": 9, "prune": True}).identity()
    assert grid_spec(seeds=3).identity() != spec.identity()
    # where the study lives is recorded in the ledger, but never a database password
    assert studylib.public_url("postgresql://me:secret@db:5432/optuna") == "postgresql://me:***@db:5432/optuna"
    with pytest.raises(ValueError, match="--trials"):
        SweepSpec(recipe="r", mode="search", factors=[parse_search("lr=1e-4..1e-2:log")])
    with pytest.raises(ValueError, match="ranges need --search"):
        SweepSpec(recipe="r", mode="grid", factors=[parse_search("lr=1e-4..1e-2:log")])


def test_later_trials_on_a_taken_cell_are_surplus():
    spec = grid_spec(seeds=1)  # 4 cells

    def trial(number, grid_id, state=TrialState.COMPLETE, **system):
        t = optuna.trial.create_trial(state=state, value=0.5 if state == TrialState.COMPLETE else None,
                                      system_attrs={"grid_id": grid_id, **system})
        t.number = number
        return t

    trials = [trial(0, 0), trial(1, 1, TrialState.FAIL), trial(2, 1, TrialState.COMPLETE, failed_trial=1),
              trial(3, 2, TrialState.RUNNING), trial(4, 2, TrialState.RUNNING), trial(5, 3, TrialState.WAITING,
                                                                                      failed_trial=9)]
    found, surplus = studylib.slots(trials, spec)
    assert surplus == {4}  # cell 2 is trial 3's: trial 4 raced for it and must not train
    assert {k: s.state for k, s in found.items()} == {0: "complete", 1: "complete", 2: "running"}


def test_journal_trials_without_a_recent_heartbeat_are_stale(tmp_path):
    spec = grid_spec(seeds=1)
    storage = studylib.open_storage(f"journal:{tmp_path / 'j.log'}", heartbeat=1)
    study, _ = studylib.open_study(storage, "j", spec)
    quiet, beating = study.ask(), study.ask()
    quiet.set_user_attr(studylib.BEAT_ATTR, 0.0)  # last beat long ago, on another machine
    quiet.set_user_attr(studylib.HOST_ATTR, "elsewhere")
    studylib.record_heartbeat(study, beating._trial_id)
    assert [t.number for t in studylib.stale_trials(study, heartbeat=1)] == [quiet.number]
    assert [t.number for t in studylib.recover(study, heartbeat=1)] == [quiet.number]
    trials = study.get_trials()
    assert trials[quiet.number].state == TrialState.FAIL
    retry = trials[-1]
    assert retry.state == TrialState.WAITING and retry.system_attrs["failed_trial"] == quiet.number
    # the retry is the last one: a second failure is final
    assert studylib.fail_and_retry(study, trials[beating.number]) and len(study.get_trials()) == 4
    retried = study.ask()
    assert retried.number == retry.number
    studylib.fail_and_retry(study, study.get_trials()[retried.number])
    assert [t.state for t in study.get_trials()].count(TrialState.WAITING) == 1  # only beating's retry


# ---------------------------------------------------------------- a sweep, interrupted and resumed


class InterruptAtEpochCall:
    def __init__(self, call):
        self.call, self.calls = call, 0

    def on_epoch_end(self, trainer, record):
        self.calls += 1
        if self.calls == self.call:
            raise KeyboardInterrupt


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture(scope="module")
def resumed_sweep(tmp_path_factory):
    """A 2 x 2 grid over 2 seeds, interrupted in its third trial, then holding a trial whose worker
    died, then run again: shared by the tests below (it trains 8 tiny runs)."""
    from conftest import _TinyPlugin

    from cpx.kernel.manager import create_plugin_host, set_host
    from cpx.kernel.workspace import Workspace

    ws = Workspace(tmp_path_factory.mktemp("sweep-ws"))
    host = create_plugin_host(entry_points=False)
    host.register(_TinyPlugin(), name="tiny-test-plugin", origin="tests")
    previous = set_host(host)
    try:
        request = SweepRequest(spec=grid_spec())
        events = []
        # epochs=2: the fifth epoch is the first of the third trial
        first = run_sweep(request, ws, host, on_event=events.append, callbacks=(InterruptAtEpochCall(5),))
        after_first = sweep_runs(ws, first.name)
        # a worker that was killed holding a trial: the trial is RUNNING, its process gone
        storage = studylib.open_storage(first.storage)
        study = optuna.load_study(study_name=first.name, storage=storage, sampler=studylib.create_sampler(request.spec))
        dead = study.ask()
        dead.set_user_attr(studylib.HOST_ATTR, socket.gethostname())
        dead.set_user_attr(studylib.PID_ATTR, _dead_pid())
        second = run_sweep(request, ws, host)
        third = run_sweep(request, ws, host)
    finally:
        set_host(previous)
    return dict(ws=ws, events=events, first=first, after_first=after_first, dead=dead, second=second, third=third,
                storage=storage)


@pytest.mark.slow
def test_grid_sweep_interrupted_killed_and_resumed(resumed_sweep):
    r = resumed_sweep
    first, second, dead, ws = r["first"], r["second"], r["dead"], r["ws"]
    assert first.interrupted and len(first.trained) == 3
    assert first.status.complete == 2 and first.status.left == 6
    assert {"start", "trial_start", "epoch", "trial_end", "end"} <= {e.kind for e in r["events"]}
    stopped = r["after_first"]
    assert sorted(row["status"] for row in stopped) == ["completed", "completed", "stopped"]

    # the same command again resumes: the dead trial fails and is retried once, the interrupted
    # run goes on from its last.pt, and every cell x seed is trained exactly once
    assert not second.interrupted and second.recovered == [dead.number]
    s = second.status
    assert (s.complete, s.failed, s.running, s.left) == (8, 0, 0, 0)
    runs = sweep_runs(ws, first.name)
    assert len(runs) == 8 and all(row["status"] == "completed" for row in runs)
    assert sorted(Counter(cell(row) for row in runs).values()) == [1] * 8
    resumed = next(row for row in stopped if row["status"] == "stopped")["id"]
    assert resumed in second.trained and resumed in {row["id"] for row in runs}
    assert all(row["sweep_trial"] is not None for row in runs)

    trials = optuna.load_study(study_name=first.name, storage=r["storage"]).get_trials()
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert {t.number for t in failed} == {2, dead.number}  # the interrupted and the killed trial
    # the simulated death hit the queued copy of the interrupted trial (asked first); its one retry
    # finished the interrupted run, and the interruption did not use up that retry
    assert dead.number == 3 and dead.user_attrs[studylib.INTERRUPTED_ATTR] == 2
    retry = next(t for t in trials if dead.number in t.system_attrs.get("retry_history", []))
    assert retry.state == TrialState.COMPLETE and retry.system_attrs["grid_id"] == trials[dead.number].system_attrs["grid_id"]
    assert retry.user_attrs[studylib.RUN_ATTR] == resumed

    # running it once more trains nothing
    assert r["third"].trained == [] and r["third"].status.complete == 8
    # every trial's best validation is in the ledger with its per-image F
    with Ledger(ws.ledger_path) as ledger:
        for row in runs:
            (v,) = ledger.list_validations(row["id"])
            assert v["score"] == pytest.approx(row["best_val_score"]) and len(v["per_image"]) == 2


def test_search_with_pruning_records_pruned_trials(cpx_workspace, cpx_host, tiny_model, monkeypatch):
    # a pruner that stops every trial after its second epoch, so the pruned path is certain
    monkeypatch.setattr(studylib, "create_pruner",
                        lambda spec: optuna.pruners.ThresholdPruner(lower=2.0, n_warmup_steps=1))
    spec = SweepSpec(recipe="msf-lmsa", mode="search", factors=[parse_search(f"{LR}=1e-4..3e-3:log")], trials=2,
                     prune=True, overrides=tiny_overrides(**{"train.epochs": 3}))
    events = []
    out = run_sweep(SweepRequest(spec=spec, storage=f"journal:{cpx_workspace.root / 'study.log'}"),
                    cpx_workspace, cpx_host, on_event=events.append)
    assert [e.message for e in events if e.kind == "trial_end" and e.state == "failed"] == []
    assert (out.status.pruned, out.status.failed, out.status.left) == (2, 0, 0)
    runs = sweep_runs(cpx_workspace, out.name)
    assert [r["status"] for r in runs] == ["pruned", "pruned"] and all(r["last_epoch"] < 3 for r in runs)


# ---------------------------------------------------------------- workers in separate processes


PLUGIN = '''
import torch
from cpx.kernel.hookspecs import hookimpl


@hookimpl
def register_models(register):
    register("tiny", lambda options, num_classes: torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, num_classes, 1)),
        description="test model")
'''


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite"])  # the default storage; journal files: in-process tests above
def test_two_workers_share_one_study(cpx_workspace, kind, tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "tiny_sweep.py").write_text(PLUGIN)
    storage = f"sqlite:///{tmp_path / 'shared.db'}" if kind == "sqlite" else f"journal:{tmp_path / 'shared.log'}"
    sets = [a for k, v in tiny_overrides().items() for a in ("--set", f"{k}={json.dumps(v)}")]
    args = [sys.executable, "-m", "cpx", "sweep", "msf-lmsa", "--grid", "dice=1,1.5,2", "--seeds", "2",
            "--storage", storage, "--study", "shared", "--quiet", *sets]
    env = {**os.environ, "CPX_PLUGIN_DIRS": str(plugins), "OMP_NUM_THREADS": "1"}
    args[args.index("dice=1,1.5,2")] = "dice=1,2"
    procs = [subprocess.Popen(args + (["--worker"] if i else []), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    runs = sweep_runs(cpx_workspace, "shared")
    assert len(runs) == 4 and all(r["status"] == "completed" for r in runs)
    assert sorted(Counter((r["config"]["loss"]["options"]["dice"], r["config"]["train"]["seed"])
                          for r in runs).values()) == [1] * 4
    study = optuna.load_study(study_name="shared", storage=studylib.open_storage(storage))
    complete = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert len(complete) == 4 and len({t.user_attrs[studylib.RUN_ATTR] for t in complete}) == 4
    trained = [out.count("complete:") for out, _ in outs]
    assert sum(trained) == 4


@pytest.mark.slow
def test_cli_sweep_show_and_errors(resumed_sweep, monkeypatch, capsys):
    out = resumed_sweep["first"]
    monkeypatch.setenv("CPX_WORKSPACE", str(resumed_sweep["ws"].root))
    assert main(["sweep", "show", out.name, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["cells"]) == 4 and all(c["n"] == 2 for c in data["cells"])
    assert [e["factor"] for e in data["effects"]] == [DICE, LR]
    assert all(e["verdict"] in ("significant", "not significant: within the noise") for e in data["effects"])
    assert data["noise"]["source"] == "seeds" and data["noise"]["dof"] == 4
    assert os.path.isfile(data["figure"])
    assert main(["sweep", "show", out.name]) == 0
    text = capsys.readouterr().out
    assert "vs 1" in text and "95% CI" in text and "seed-to-seed sd" in text
    assert main(["sweep", "show"]) == 0 and out.name in capsys.readouterr().out
    assert main(["sweep", "show", "nope"]) == 2
    assert main(["sweep", "msf-lmsa", "--grid", "dice=1,2", "--search", "lr=1e-4..1e-3"]) == 2
    assert main(["sweep", "--worker"]) == 2
    # a factor that is no config field is refused before any study or run exists
    assert main(["sweep", "msf-lmsa", "--grid", "nonsense=1,2", "--storage", "journal:bad.log"]) == 2
    assert "nonsense" in capsys.readouterr().err and not os.path.exists("bad.log")
    # a worker that names only the study reads the sweep's definition from it (nothing is left here)
    joined = run_sweep(SweepRequest(study=out.name, storage=out.storage), resumed_sweep["ws"], None)
    assert joined.spec == out.spec and joined.trained == [] and joined.status.complete == 8
    with pytest.raises(RunError):
        run_sweep(SweepRequest(study="missing", storage=f"journal:{resumed_sweep['ws'].root / 'x.log'}"),
                  resumed_sweep["ws"], None)


def test_a_sweep_resumed_after_its_recipe_was_edited_is_refused_naming_the_change(cpx_workspace, cpx_host):
    # issue 19.9: the study's name hashes the recipe's name, so an edited recipe joined the old study
    from cpx.sweep.runner import _check_spec

    exp = cpx_workspace.experiments_dir
    exp.mkdir(parents=True, exist_ok=True)
    (exp / "mine.yaml").write_text("base: msf-lmsa\ntrain:\n  epochs: 1\n")

    def spec():
        s = SweepSpec(recipe="mine", mode="grid", factors=[parse_grid("loss.options.dice=1,2")])
        _check_spec(s, cpx_workspace, cpx_host)
        return s

    storage = studylib.open_storage(studylib.default_storage(exp), 60)
    first = spec()
    studylib.open_study(storage, first.default_name(), first)
    studylib.open_study(storage, first.default_name(), spec())  # unchanged: the same study resumes
    (exp / "mine.yaml").write_text("base: msf-lmsa\ntrain:\n  epochs: 3\n")
    edited = spec()
    assert edited.default_name() == first.default_name()
    with pytest.raises(RunError, match=r"recipe mine .* changed since \(train.epochs: 1 -> 3\).*--study NEW"):
        studylib.open_study(storage, edited.default_name(), edited)
