"""Trackers (cpx.track, cpx.train.tracking): the register_loggers hook, live logging while
training, export of recorded runs, through a logger that keeps everything in memory; the real
MLflow and TensorBoard loggers are tested in tests/plugins/test_loggers.py."""

import json
import subprocess
import sys
from dataclasses import dataclass, field

import pytest
from conftest import tiny_overrides

from cpx.cli import main
from cpx.kernel.errors import ConfigError, UnknownComponent
from cpx.kernel.hookspecs import hookimpl
from cpx.runs.folder import RunFolder
from cpx.runs.ledger import Ledger
from cpx.testing import check_logger
from cpx.track import Logger, TrackedRun, epoch_metrics, flatten_params, metric_key, parse_spec
from cpx.track.export import export_runs
from cpx.track.record import run_record
from cpx.train.run import TrainRequest, train


@dataclass
class _Held:
    started: int = 0
    finished: int = 0
    params: dict = field(default_factory=dict)
    tags: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)  # key -> list of (step, value), in the order written
    artifacts: dict = field(default_factory=dict)  # name -> bytes
    status: str = ""


STORES: dict[str, dict[str, _Held]] = {}  # target -> cpx run id -> what the "tracker" holds


class MemoryLogger(Logger):
    """An idempotent tracker in a dict: what a third-party logger does, minus the server."""

    def __init__(self, options, target):
        self.store = STORES.setdefault(target or "default", {})
        self.held = None

    def start(self, run):
        self.held = self.store.setdefault(run.id, _Held())
        self.held.started += 1
        self.held.params.update(run.params)
        self.held.tags.update(run.tags)
        return f"memory/{run.id}"

    def log_metrics(self, step, metrics):
        for key, value in metrics.items():
            values = self.held.metrics.setdefault(key, [])
            if step not in [s for s, _ in values]:
                values.append((step, value))

    def finish(self, run):
        self.held.finished += 1
        self.held.tags.update(run.tags)
        for key, value in run.summary.items():
            values = self.held.metrics.setdefault(key, [])
            if not values or values[-1] != (0, value):
                values.append((0, value))
        self.held.artifacts.update({name: path.read_bytes() for name, path in run.artifacts.items()})
        self.held.status = run.status

    def read(self, run_id):
        held = self.store.get(run_id)
        if held is None:
            return None
        return TrackedRun(params=dict(held.params), tags=dict(held.tags),
                          metrics={k: sorted(v, key=lambda sv: sv[0]) for k, v in held.metrics.items()},
                          artifacts=sorted(held.artifacts))


class DuplicatingLogger(MemoryLogger):
    """Writes a step again when asked twice: breaks the contract."""

    def log_metrics(self, step, metrics):
        for key, value in metrics.items():
            self.held.metrics.setdefault(key, []).append((step, value))


class FailingLogger(MemoryLogger):
    def log_metrics(self, step, metrics):
        raise ConnectionError("the tracking server went away\nsecond line")


class MemoryPlugin:
    @hookimpl
    def register_loggers(self, register):
        register("memory", MemoryLogger, description="a tracker in memory (tests)")
        register("duplicating", DuplicatingLogger, description="breaks the contract (tests)")
        register("failing", FailingLogger, description="fails on every epoch (tests)")


@pytest.fixture
def memory(cpx_host, tiny_model):
    STORES.clear()
    cpx_host.register(MemoryPlugin(), name="memory-loggers", origin="tests")
    yield STORES
    STORES.clear()


def _train(ws, host, log_to, **overrides):
    return train(TrainRequest(recipe="msf-lmsa", overrides=tiny_overrides(**overrides), log_to=log_to), ws, host)


def test_specs_params_and_epoch_values():
    assert parse_spec("mlflow:sqlite:///mlruns.db") == parse_spec(" mlflow:sqlite:///mlruns.db")
    spec = parse_spec("mlflow:sqlite:///mlruns.db")
    assert (spec.name, spec.target, str(spec)) == ("mlflow", "sqlite:///mlruns.db", "mlflow:sqlite:///mlruns.db")
    assert parse_spec("tensorboard").target is None
    with pytest.raises(ConfigError, match="NAME:TARGET"):
        parse_spec(":tb")
    assert flatten_params({"optimizer": {"lr": 0.001, "betas": [0.9, 0.99]}, "model": {"name": "unet", "options": {}},
                           "data": {"path": None, "cache": True}}) == {
        "optimizer.lr": "0.001", "optimizer.betas": "[0.9, 0.99]", "model.name": "unet", "model.options": "{}",
        "data.path": "null", "data.cache": "true"}
    assert epoch_metrics({"epoch": 3, "train_loss": 0.5, "val_score": None, "lr": 1e-3, "improved": True,
                          "val_loss": float("nan")}) == {"train_loss": 0.5, "lr": 1e-3}
    assert metric_key("submission", "v1", "test", "F1 (mean)") == "submission.v1.test.F1 _mean_"
    assert metric_key("submission", "a:b", "score") == "submission.a_b.score"


def test_register_loggers_adds_a_logger_the_contract_checks(memory, cpx_host):
    check_logger(cpx_host.loggers.get("memory"), "contract")
    with pytest.raises(AssertionError, match="train_loss is held at steps \\[1, 1, 2, 2, 3\\]"):
        check_logger(cpx_host.loggers.get("duplicating"), "contract-dup")
    assert cpx_host.loggers.get("memory").origin == "tests"
    assert {"mlflow", "tensorboard"} <= set(cpx_host.loggers.names())  # the built-ins, on the same hook


def test_live_logging_sends_each_epoch_and_the_recorded_run(memory, cpx_workspace, cpx_host):
    result = _train(cpx_workspace, cpx_host, ["memory:live"], **{"train.epochs": 3})
    held = memory["live"][result.run_id]
    folder = RunFolder(result.run_dir)
    history = folder.read_history()
    assert held.started == 1 and held.finished == 1 and held.status == "completed"
    assert held.params == flatten_params(folder.read_config())
    assert held.tags["cpx.run_id"] == result.run_id and held.tags["recipe"] == "msf-lmsa"
    assert held.tags["model"] == "tiny" and held.tags["competition"] == "celebamask-mini"
    assert held.tags["metric"] == "fscore" and held.tags["status"] == "completed"
    for key in ("train_loss", "val_score", "lr", "images_per_s"):
        assert held.metrics[key] == [(h["epoch"], h[key]) for h in history], key
    assert held.metrics["best_val_score"] == [(0, result.best_val_score)]
    assert held.metrics["epochs"] == [(0, 3.0)]
    assert sorted(held.artifacts) == ["config.yaml", "curves.png", "history.json"]
    assert json.loads(held.artifacts["history.json"]) == history  # the final one, written before the tracker got it
    (report,) = result.trackers
    assert report.spec == "memory:live" and report.epochs == 3 and not report.problems
    assert report.where == f"memory/{result.run_id}" and report.overhead is not None
    assert "3 epochs logged" in report.describe() and "of an epoch" in report.describe()


def test_export_writes_what_live_logging_wrote_and_updates_in_place(memory, cpx_workspace, cpx_host):
    result = _train(cpx_workspace, cpx_host, ["memory:live"])
    with Ledger(cpx_workspace.ledger_path) as ledger:
        ledger.add_submission("v1", run_id=result.run_id, val_score=0.5, tta="flip", checkpoint="best",
                              zip_path="/x/submissions/submission-v1_fscore0.5000.zip")
    done = export_runs("memory:exported", cpx_workspace, cpx_host)
    assert [r.run_id for r in done.runs] == [result.run_id] and done.runs[0].epochs == 2
    live, exported = memory["live"][result.run_id], memory["exported"][result.run_id]
    assert exported.params == live.params
    assert {k: v for k, v in exported.metrics.items() if not k.startswith("submission.")} == live.metrics
    assert exported.artifacts == live.artifacts
    # the submission went in, and its test score once recorded
    assert exported.metrics["submission.v1.val_score"] == [(0, 0.5)]
    assert exported.tags["submission.v1.zip"] == "submission-v1_fscore0.5000.zip"
    assert exported.tags["submission.v1.tta"] == "flip" and exported.tags["submission.v1.final"] == "false"
    with Ledger(cpx_workspace.ledger_path) as ledger:
        ledger.record_score("v1", 0.61)
        ledger.update_submission("v1", is_final=True)
    export_runs("memory:exported", cpx_workspace, cpx_host, [result.run_id])
    again = memory["exported"][result.run_id]
    assert again.started == 2 and again.metrics["submission.v1.test.score"] == [(0, 0.61)]
    assert again.tags["submission.v1.final"] == "true"
    assert again.metrics["train_loss"] == live.metrics["train_loss"]  # no epoch twice
    assert len(memory["exported"]) == 1


def test_run_record_of_a_sweep_trial_and_its_weights(memory, cpx_workspace, cpx_host):
    result = _train(cpx_workspace, cpx_host, [])
    with Ledger(cpx_workspace.ledger_path) as ledger:
        row = ledger.update_run(result.run_id, sweep="lr-sweep", sweep_trial=3, git_commit="abc123")
        record = run_record(ledger, row, RunFolder(result.run_dir), cpx_host, with_weights=True)
    assert record.tags["sweep"] == "lr-sweep" and record.tags["trial"] == "3" and record.tags["git_commit"] == "abc123"
    assert sorted(record.artifacts) == ["best.pt", "config.yaml", "curves.png", "history.json"]
    assert record.experiment == "celebamask-mini" and record.name == result.run_id
    assert record.started_at and record.finished_at >= record.started_at


def test_a_failing_tracker_never_fails_the_run(memory, cpx_workspace, cpx_host):
    result = _train(cpx_workspace, cpx_host, ["failing:x", "memory:ok"])
    assert result.status == "completed"
    failing, ok = result.trackers
    assert failing.problems == ["log_metrics failed: ConnectionError: the tracking server went away"]
    assert not ok.problems and memory["ok"][result.run_id].status == "completed"


def test_a_resumed_run_goes_on_in_the_same_tracked_run(memory, cpx_workspace, cpx_host):
    class StopAt2:
        def on_epoch_end(self, trainer, record):
            if trainer.epoch == 2:
                raise KeyboardInterrupt

    cut = train(TrainRequest(recipe="msf-lmsa", overrides=tiny_overrides(**{"train.epochs": 4}), log_to=["memory:r"]),
                cpx_workspace, cpx_host, callbacks=(StopAt2(),))
    assert cut.status == "stopped" and memory["r"][cut.run_id].status == "stopped"
    resumed = train(TrainRequest(resume=cut.run_id, log_to=["memory:r"]), cpx_workspace, cpx_host)
    held = memory["r"][cut.run_id]
    assert resumed.status == "completed" and held.started == 2 and held.status == "completed"
    assert [s for s, _ in held.metrics["train_loss"]] == [1, 2, 3, 4]


def test_an_unknown_tracker_fails_before_any_work(memory, cpx_workspace, cpx_host):
    with pytest.raises(UnknownComponent, match="unknown logger 'mlfow'; did you mean mlflow"):
        _train(cpx_workspace, cpx_host, ["mlfow:sqlite:///m.db"])
    assert not cpx_workspace.ledger_path.exists()


@pytest.mark.parametrize("extra,blocked", [("mlflow", ["mlflow"]), ("tensorboard", ["tensorboard"])])
def test_without_the_extra_log_to_names_it_in_one_line(extra, blocked, cpx_workspace, tiny_model, monkeypatch, capsys):
    for module in blocked:  # as if the package were not installed: importing it raises ImportError
        monkeypatch.setitem(sys.modules, module, None)
    code = main(["train", "msf-lmsa", "--quiet", "--set", "model.name=tiny", "--log-to", f"{extra}:somewhere"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"pip install 'cpx[{extra}]'" in err and "not installed" in err
    assert not cpx_workspace.ledger_path.exists()  # nothing trained


def test_cli_train_log_to_and_runs_export(memory, cpx_workspace, capsys):
    args = ["--quiet", "--epochs", "1", "--batch-size", "8", "--set", "model.name=tiny", "--set",
            "data.synthetic_count=24", "--set", "data.synthetic_size=32", "--set", "schedule.warmup_epochs=1"]
    assert main(["train", "msf-lmsa", *args, "--name", "cli", "--log-to", "memory:cli"]) == 0
    out = capsys.readouterr().out
    assert "memory:cli: 1 epoch logged (memory/" in out and "ms per epoch in the training loop" in out
    (run_id,) = memory["cli"]
    assert main(["runs", "export", "--to", "memory:cli", "cli", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["to"] == "memory:cli" and [r["run_id"] for r in shown["runs"]] == [run_id]
    assert memory["cli"][run_id].started == 2 and memory["cli"][run_id].metrics["train_loss"][0][0] == 1
    assert main(["runs", "export", "--to", "memory:cli", "--with-weights"]) == 0
    assert "best.pt" in memory["cli"][run_id].artifacts and "1 run written to memory:cli" in capsys.readouterr().out
    assert main(["runs", "export", "cli"]) == 2
    assert "give one of --mlflow URI or --to NAME:TARGET" in capsys.readouterr().err


def test_the_command_line_starts_without_the_trackers_packages():
    code = ("import sys; from cpx.cli import create_app; create_app(); "
            "print(sorted(m for m in ('mlflow', 'tensorboard', 'torch.utils.tensorboard') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_runs_export_counts_one_epoch_in_the_singular(memory, cpx_workspace, cpx_host, capsys):
    result = _train(cpx_workspace, cpx_host, [], **{"train.epochs": 1})
    capsys.readouterr()
    assert main(["runs", "export", "--to", "memory:one", result.run_id]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert ": 1 epoch, " in out and "1 epochs" not in out, out
