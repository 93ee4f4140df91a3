"""The built-in loggers against the real thing: an MLflow tracking store (its SQLite backend and
a file artifact store in the test's folder, no server, no mock) read back through the mlflow
client, and TensorBoard event files read back with TensorBoard's EventAccumulator. Each test
skips when its optional extra is not installed."""

import pytest
from conftest import tiny_overrides

from cpx.cli import main
from cpx.runs.folder import RunFolder
from cpx.runs.ledger import Ledger
from cpx.track import EPOCH_METRICS, flatten_params
from cpx.track.export import export_runs
from cpx.train.run import TrainRequest, train

EXPERIMENT = "celebamask-mini"  # the runs' competition: where the mlflow logger puts them
# tags that name or date one run: an export of another run differs in them
RUN_SPECIFIC_TAGS = {"cpx.run_id", "mlflow.runName"}


def _store(tmp_path, name):
    """A fresh MLflow tracking store: SQLite backend, artifacts in a folder of their own."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / name}.db"
    MlflowClient(uri).create_experiment(EXPERIMENT, artifact_location=(tmp_path / f"{name}-artifacts").as_uri())
    return uri


def _runs(uri, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return mlflow.search_runs(experiment_names=[EXPERIMENT], output_format="list")


def _fields(uri, run):
    """Everything of an MLflow run a person looks at: params, tags, every metric's history
    as (step, value), artifacts with their bytes, status and times."""
    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts

    client = MlflowClient(uri)
    history = {key: [(m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, key),
                                                       key=lambda m: (m.step, m.timestamp))]
               for key in run.data.metrics}
    files = {}
    for info in client.list_artifacts(run.info.run_id):
        local = download_artifacts(run_id=run.info.run_id, artifact_path=info.path, tracking_uri=uri)
        files[info.path] = open(local, "rb").read()
    return {"params": run.data.params, "tags": run.data.tags, "metrics": history, "artifacts": files,
            "status": run.info.status, "name": run.info.run_name, "start_time": run.info.start_time,
            "end_time": run.info.end_time}


# the tiny recipe as command-line options: three epochs of the tiny model on synthetic data
TINY_ARGS = ["--quiet", "--epochs", "3", "--batch-size", "8", "--set", "model.name=tiny", "--set",
             "data.synthetic_count=24", "--set", "data.synthetic_size=32", "--set", "schedule.warmup_epochs=1"]


def test_mlflow_live_run_reads_back_and_an_export_matches_it_field_for_field(cpx_workspace, tiny_model,
                                                                              monkeypatch, capsys):
    """Issue 22's 'done when', as a user types it: `cpx train --log-to mlflow:sqlite:///mlruns.db`
    in the workspace (the store and its ./mlruns artifacts made by mlflow itself), then
    `cpx runs export` of the recorded run into a second store, then again with a submission."""
    pytest.importorskip("mlflow")
    live, exported = "sqlite:///mlruns.db", "sqlite:///exported.db"
    assert main(["train", "msf-lmsa", *TINY_ARGS, "--name", "tracked", "--log-to", f"mlflow:{live}"]) == 0
    out = capsys.readouterr().out
    assert f"mlflow:{live}: 3 epochs logged" in out and "ms per epoch in the training loop" in out
    assert (cpx_workspace.root / "mlruns.db").is_file()
    with Ledger(cpx_workspace.ledger_path) as ledger:
        row = ledger.get_run("tracked")
    folder = RunFolder(cpx_workspace.root / row["run_dir"])
    history = folder.read_history()
    assert row["status"] == "completed" and [h["epoch"] for h in history] == [1, 2, 3]

    (run,) = _runs(live, monkeypatch)
    got = _fields(live, run)
    assert got["params"] == flatten_params(folder.read_config()) and got["params"]["train.epochs"] == "3"
    assert got["tags"]["cpx.run_id"] == row["id"] and got["name"] == "tracked"
    assert {got["tags"][k] for k in ("recipe", "competition", "model", "metric")} == \
        {"msf-lmsa", "celebamask-mini", "tiny", "fscore"}
    for key in ("train_loss", "val_score", "lr", "images_per_s"):
        assert got["metrics"][key] == [(h["epoch"], h[key]) for h in history], key
    assert set(got["metrics"]) - {"best_val_score", "best_epoch", "epochs", "param_count", "wall_seconds"} <= \
        set(EPOCH_METRICS)
    assert got["metrics"]["best_val_score"] == [(0, row["best_val_score"])]
    assert got["artifacts"]["config.yaml"] == (folder.path / "config.yaml").read_bytes()
    assert sorted(got["artifacts"]) == ["config.yaml", "curves.png", "history.json"]
    assert got["status"] == "FINISHED"

    # the same run exported afterwards, to another store: field for field what live logging wrote
    assert main(["runs", "export", "--mlflow", exported, "tracked"]) == 0
    (copy,) = _runs(exported, monkeypatch)
    assert _fields(exported, copy) == got

    # a second export updates the run in place: one run, one value per epoch, the new fields in
    with Ledger(cpx_workspace.ledger_path) as ledger:
        ledger.add_submission("v1", run_id=row["id"], val_score=0.25, tta="flip", checkpoint="best")
        ledger.record_score("v1", 0.5)
    assert main(["runs", "export", "--mlflow", exported, "tracked", "--with-weights"]) == 0
    assert "tracked (" in capsys.readouterr().out
    (again,) = _runs(exported, monkeypatch)
    fields = _fields(exported, again)
    assert again.info.run_id == copy.info.run_id
    assert fields["metrics"]["train_loss"] == got["metrics"]["train_loss"]
    assert fields["metrics"]["submission.v1.test.score"] == [(0, 0.5)]
    assert fields["metrics"]["submission.v1.val_score"] == [(0, 0.25)] and fields["tags"]["submission.v1.tta"] == "flip"
    assert fields["artifacts"]["best.pt"] == (folder.path / "best.pt").read_bytes()


def test_mlflow_export_of_an_older_run_matches_a_live_logged_one(cpx_workspace, cpx_host, tiny_model, tmp_path,
                                                                 monkeypatch):
    """A run trained without a tracker, exported later, holds what the same training logged live
    holds: the same keys, steps, params (but the run's name) and files; only the values that
    depend on the run (its id, times, losses) differ."""
    pytest.importorskip("mlflow")
    live, later = _store(tmp_path, "live"), _store(tmp_path, "later")
    logged = train(TrainRequest(recipe="msf-lmsa", overrides=tiny_overrides(), name="live", log_to=[f"mlflow:{live}"]),
                   cpx_workspace, cpx_host)
    older = train(TrainRequest(recipe="msf-lmsa", overrides=tiny_overrides(), name="older"), cpx_workspace, cpx_host)
    export_runs(f"mlflow:{later}", cpx_workspace, cpx_host, [older.run_id])
    (a,), (b,) = _runs(live, monkeypatch), _runs(later, monkeypatch)
    a, b = _fields(live, a), _fields(later, b)
    assert a["params"] == b["params"] and a["status"] == b["status"] == "FINISHED"
    assert set(a["tags"]) == set(b["tags"]) and b["tags"]["cpx.run_id"] == older.run_id
    assert {k: v for k, v in a["tags"].items() if k not in RUN_SPECIFIC_TAGS} == \
        {k: v for k, v in b["tags"].items() if k not in RUN_SPECIFIC_TAGS}
    assert {k: [s for s, _ in v] for k, v in a["metrics"].items()} == \
        {k: [s for s, _ in v] for k, v in b["metrics"].items()}
    assert sorted(a["artifacts"]) == sorted(b["artifacts"]) == ["config.yaml", "curves.png", "history.json"]
    assert b["start_time"] <= b["end_time"] and logged.run_id != older.run_id  # the ledger keeps whole seconds


def test_mlflow_resumed_run_goes_on_in_the_same_mlflow_run(cpx_workspace, cpx_host, tiny_model, tmp_path,
                                                           monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    uri = _store(tmp_path, "resume")

    class StopAt2:
        def on_epoch_end(self, trainer, record):
            if trainer.epoch == 2:
                raise KeyboardInterrupt

    cut = train(TrainRequest(recipe="msf-lmsa", overrides=tiny_overrides(**{"train.epochs": 3}),
                             log_to=[f"mlflow:{uri}"]), cpx_workspace, cpx_host, callbacks=(StopAt2(),))
    (run,) = _runs(uri, monkeypatch)
    assert cut.status == "stopped" and run.info.status == "KILLED"
    train(TrainRequest(resume=cut.run_id, log_to=[f"mlflow:{uri}"]), cpx_workspace, cpx_host)
    (run,) = _runs(uri, monkeypatch)
    steps = [m.step for m in MlflowClient(uri).get_metric_history(run.info.run_id, "train_loss")]
    assert sorted(steps) == [1, 2, 3] and run.info.status == "FINISHED"


def test_tensorboard_scalars_and_curves_read_back_from_the_event_files(cpx_workspace, cpx_host, tiny_model, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = tmp_path / "tb"
    result = train(TrainRequest(recipe="msf-lmsa", overrides=tiny_overrides(), log_to=[f"tensorboard:{tb}"]),
                   cpx_workspace, cpx_host)
    assert not result.trackers[0].problems and result.trackers[0].where == str(tb / result.run_id)
    history = RunFolder(result.run_dir).read_history()

    def read():
        acc = EventAccumulator(str(tb / result.run_id), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
        acc.Reload()
        return acc

    acc = read()
    for key in ("train_loss", "val_score", "lr"):
        events = acc.Scalars(key)
        assert [e.step for e in events] == [1, 2]
        assert [e.value for e in events] == pytest.approx([h[key] for h in history], rel=1e-6)
    assert acc.Scalars("best_val_score")[0].value == pytest.approx(result.best_val_score, rel=1e-6)
    (curves,) = acc.Images("curves")
    assert curves.step == 2 and curves.width > 500
    assert {"params/text_summary", "tags/text_summary"} <= set(acc.Tags()["tensors"])
    # an export to the same folder adds nothing it already holds
    export_runs(f"tensorboard:{tb}", cpx_workspace, cpx_host)
    acc = read()
    assert [e.step for e in acc.Scalars("train_loss")] == [1, 2] and len(acc.Images("curves")) == 1
    assert len(acc.Scalars("best_val_score")) == 1


@pytest.mark.parametrize("uri", ["notascheme://x", "/nonexistent/dir/mlruns"])
def test_mlflow_export_to_an_unusable_uri_is_one_line_naming_it(uri, cpx_workspace, cpx_host, tiny_model, capsys):
    """A tracking URI MLflow cannot use (an unknown scheme, a file store it refuses) is one line
    naming the URI and a non-zero exit, not mlflow's traceback."""
    pytest.importorskip("mlflow")
    train(TrainRequest(recipe="msf-lmsa", overrides=tiny_overrides(), name="r"), cpx_workspace, cpx_host)
    capsys.readouterr()
    assert main(["runs", "export", "--mlflow", uri]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and uri in err and "Traceback" not in captured.out + captured.err, err


def test_mlflow_live_logging_that_never_started_says_nothing_was_logged(cpx_workspace, tiny_model, capsys):
    """A tracker whose start failed took no epoch: the report says nothing was logged rather
    than counting the epochs handed to it."""
    pytest.importorskip("mlflow")
    args = ["--epochs", "1", *TINY_ARGS[3:]]
    assert main(["train", "msf-lmsa", "--quiet", *args, "--log-to", "mlflow:notascheme://x"]) == 0
    captured = capsys.readouterr()
    text = " ".join((captured.out + captured.err).split())
    assert "mlflow:notascheme://x: nothing logged" in text and "epoch logged" not in text, text
    assert "notascheme://x" in text.split("start failed:")[1]
