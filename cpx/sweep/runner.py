"""`cpx sweep` as a library call: a worker that takes trials from an Optuna study and trains each
as a normal cpx run (own run folder, ledger row tagged with the sweep), until none is left.

Run it again after an interruption and it resumes: finished trials stay finished, a trial whose
process died is retried once (resuming its run from ``last.pt`` when the run is in this
workspace), and the remaining slots are trained. Several workers (processes or machines) can
run it on one storage at once; see :mod:`cpx.sweep.study`.

Progress goes to ``on_event(SweepEvent)``: the core renders nothing.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import optuna
from optuna.trial import TrialState

from cpx.kernel.config import build_config, flatten
from cpx.kernel.errors import ConfigError, RunError
from cpx.kernel.manager import PluginHost
from cpx.kernel.workspace import Workspace
from cpx.runs.folder import RunFolder, run_folder
from cpx.runs.ledger import Ledger
from cpx.sweep import study as studylib
from cpx.sweep.spec import SweepSpec
from cpx.train.loop import StopReason
from cpx.train.run import TrainRequest, train


@dataclass
class SweepRequest:
    spec: Optional[SweepSpec] = None  # None: join the study named ``study`` and read its spec
    storage: Optional[str] = None  # default: the workspace's SQLite study file
    study: Optional[str] = None  # default: the spec's own name
    command: str = ""
    max_trials: Optional[int] = None  # this worker trains at most this many trials
    heartbeat_seconds: int = studylib.HEARTBEAT_SECONDS


@dataclass
class SweepStatus:
    """A snapshot of the whole sweep (all workers)."""

    name: str
    total: int
    complete: int
    pruned: int
    failed: int
    running: int
    left: int
    best_value: Optional[float]
    best_run: Optional[str]
    best_params: dict
    eta_seconds: Optional[float]

    @property
    def done(self) -> int:
        return self.complete + self.pruned + self.failed


@dataclass
class SweepEvent:
    kind: str  # start, trial_start, epoch, trial_end, end
    status: SweepStatus
    trial: Optional[int] = None
    params: dict = field(default_factory=dict)
    run_id: Optional[str] = None
    state: Optional[str] = None  # trial_end: complete, pruned, failed, interrupted
    value: Optional[float] = None
    epoch: Optional[int] = None
    epochs: Optional[int] = None
    message: str = ""


@dataclass
class SweepOutcome:
    name: str
    storage: str
    spec: SweepSpec
    status: SweepStatus
    trained: list[str]  # run ids this worker trained
    interrupted: bool = False
    recovered: list[int] = field(default_factory=list)  # trials found dead and failed


EventHandler = Optional[Callable[[SweepEvent], None]]


def _status(name: str, study: optuna.Study, spec: SweepSpec) -> SweepStatus:
    t = studylib.tally(study, spec)
    best = t.best_trial
    return SweepStatus(name=name, total=t.total, complete=t.complete, pruned=t.pruned, failed=t.failed,
                       running=t.running, left=t.left, best_value=t.best_value,
                       best_run=best.user_attrs.get(studylib.RUN_ATTR) if best else None,
                       best_params=dict(best.params) if best else {}, eta_seconds=t.eta_seconds)


class _Heartbeat:
    """Beats for one trial in a background thread while it trains."""

    def __init__(self, study: optuna.Study, trial_id: int, seconds: int):
        self.study, self.trial_id, self.seconds = study, trial_id, seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="cpx-sweep-heartbeat")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                studylib.record_heartbeat(self.study, self.trial_id)
            except Exception:  # a missed beat must not kill training; the next one may get through
                pass
            self._stop.wait(self.seconds)

    def __enter__(self) -> "_Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class _TrialCallback:
    """Tags the run with its sweep, reports each epoch's validation score to Optuna (the better
    of the raw and the EMA weights', as the trial's objective is) and prunes."""

    def __init__(self, sweep: str, trial: optuna.Trial, ledger_path, emit: Callable[..., None], prune: bool):
        self.sweep, self.trial, self.ledger_path, self.emit, self.prune = sweep, trial, ledger_path, emit, prune
        self.run_id: Optional[str] = None
        self.pruned_at: Optional[int] = None

    def on_start(self, run_id, **info) -> None:
        self.run_id = run_id
        self.metric = info["metric"]
        self.trial.set_user_attr(studylib.RUN_ATTR, run_id)
        with Ledger(self.ledger_path) as ledger:
            ledger.update_run(run_id, sweep=self.sweep, sweep_trial=self.trial.number)
        # a resumed run already has epochs: the pruner should see them too
        history = RunFolder(info["run_dir"]).read_history() if info.get("start_epoch") else []
        for h in history:
            scores = [v for v in (h.get("val_score"), h.get("val_score_ema")) if v is not None]
            if scores:  # the better of raw and EMA, in the study's direction
                pick = max if self.trial.study.direction.name == "MAXIMIZE" else min
                self.trial.report(float(pick(scores)), int(h["epoch"]))
        self.emit("trial_start", run_id=run_id)

    def on_epoch_end(self, trainer, record) -> None:
        value = record.val_score
        if record.val_score_ema is not None and self.metric.better(record.val_score_ema, value):
            value = record.val_score_ema
        if value is not None:
            self.trial.report(float(value), record.epoch)
        self.emit("epoch", run_id=self.run_id, epoch=record.epoch, epochs=trainer.epochs, value=value)
        if self.prune and value is not None and self.trial.should_prune():
            self.pruned_at = record.epoch
            trainer.stop(StopReason.PRUNED, f"pruned by the sweep at epoch {record.epoch} ({self.metric.name} worse "
                                            "than the median of earlier trials at this epoch)")


def _suggest(trial: optuna.Trial, spec: SweepSpec) -> dict[str, Any]:
    if spec.mode == "grid":
        return {key: trial.suggest_categorical(key, values) for key, values in spec.grid().items()}
    out = {}
    for f in spec.factors:
        if f.values is not None:
            out[f.key] = trial.suggest_categorical(f.key, f.values)
        elif f.integer:
            out[f.key] = trial.suggest_int(f.key, int(f.low), int(f.high), log=f.log)
        else:
            out[f.key] = trial.suggest_float(f.key, f.low, f.high, log=f.log)
    return out


def _resumable(run_id: Optional[str], ledger_path) -> Optional[str]:
    """The earlier attempt's run, when it is in this workspace and can go on from last.pt."""
    if not run_id:
        return None
    with Ledger(ledger_path) as ledger:
        try:
            row = ledger.get_run(run_id)
        except RunError:
            return None
    if row.get("status") in ("completed", "pruned") or row["id"] != run_id:
        return None
    return run_id if run_folder(row, ledger_path.parent / "runs").last_path.is_file() else None


def _mark_dead_runs(trials, ledger_path) -> None:
    with Ledger(ledger_path) as ledger:
        for t in trials:
            run_id = t.user_attrs.get(studylib.RUN_ATTR)
            try:
                row = ledger.get_run(run_id) if run_id else None
            except RunError:
                row = None
            if row is not None and row["id"] == run_id and row.get("status") == "running":
                ledger.update_run(run_id, status="failed",
                                  notes=f"sweep trial {t.number}: its process died; the trial is retried once")


def _check_spec(spec: SweepSpec, workspace: Workspace, host: PluginHost) -> None:
    """Build one trial's config (every variant's, for an ablation), so a misspelt key fails before
    any training.

    :raises ConfigError: a bad key or value, or an ablation variant that changes nothing or trains
        the same config as another.
    """
    from cpx.eval.metrics import create_metric

    example = {f.key: f.values[0] if f.values is not None else f.low for f in spec.factors}
    config, _ = build_config(spec.recipe, spec.trial_overrides(example), workspace.experiments_dir, host)
    # what every trial starts from, as it is now: a study resumed after the recipe was edited is refused
    base, _ = build_config(spec.recipe, spec.overrides, workspace.experiments_dir, host)
    spec.base_config = flatten(base.model_dump(mode="json"))
    # the study optimises the competition's metric in its own direction
    metric = create_metric(host.competition(config.competition), host)
    spec.direction = "maximize" if metric.greater_is_better else "minimize"
    for f in spec.factors:
        if f.variants is None:
            continue
        seen: dict[str, str] = {}
        for level in f.values or []:
            config, _ = build_config(spec.recipe, spec.trial_overrides({**example, f.key: level}),
                                     workspace.experiments_dir, host)
            text = json.dumps(config.model_dump(mode="json", exclude={"recipe", "description"}), sort_keys=True)
            if text in seen:
                raise ConfigError(f"--ablate {level}: trains the same config as {seen[text]}")
            seen[text] = level


def run_sweep(request: SweepRequest, workspace: Workspace, host: PluginHost, on_event: EventHandler = None,
              callbacks: tuple = ()) -> SweepOutcome:
    """Work on a sweep until no trial is left to start (or ``max_trials`` are trained here).

    ``callbacks`` go to every trial's trainer (progress bars, tests).
    """
    if request.spec is not None:  # a misspelt factor or override fails here, not in every trial
        _check_spec(request.spec, workspace, host)
    url = request.storage or studylib.default_storage(workspace.experiments_dir)
    storage = studylib.open_storage(url, request.heartbeat_seconds)
    if request.spec is None and not request.study:
        raise RunError("name the study to join (--study NAME), or give a recipe and --grid/--search")
    name = request.study or request.spec.default_name()
    study, spec = studylib.open_study(storage, name, request.spec)
    with Ledger(workspace.ledger_path) as ledger:
        ledger.add_sweep(name, recipe=spec.recipe, mode=spec.mode,
                         factors=[f.model_dump(mode="json") for f in spec.factors], seeds=spec.seeds,
                         trials=spec.total, overrides=spec.overrides, storage=studylib.public_url(url), study=name)

    def emit(kind: str, **fields) -> None:
        if on_event is not None:
            on_event(SweepEvent(kind=kind, status=_status(name, study, spec), **fields))

    recovered: list[int] = []
    trained: list[str] = []
    interrupted = False
    emit("start", message=spec.describe())
    while request.max_trials is None or len(trained) < request.max_trials:
        newly = studylib.recover(study, request.heartbeat_seconds)
        _mark_dead_runs(newly, workspace.ledger_path)
        recovered += [t.number for t in newly]
        if studylib.tally(study, spec).left == 0:
            break
        trial = study.ask()
        found, surplus = studylib.slots(study.get_trials(deepcopy=False), spec)
        if trial.number in surplus:
            trial.set_user_attr(studylib.SURPLUS_ATTR, True)
            studylib.tell(study, trial, state=TrialState.FAIL)
            continue
        trial.set_user_attr(studylib.HOST_ATTR, socket.gethostname())
        trial.set_user_attr(studylib.PID_ATTR, os.getpid())
        params = _suggest(trial, spec)
        state, value, run_id, message = _run_trial(trial, spec, params, name, request, workspace, host, study,
                                                   emit, callbacks)
        if run_id:
            trained.append(run_id)
        emit("trial_end", trial=trial.number, params=params, run_id=run_id, state=state, value=value,
             message=message)
        if state == "interrupted":
            interrupted = True
            break
    emit("end")
    return SweepOutcome(name=name, storage=url, spec=spec, status=_status(name, study, spec), trained=trained,
                        interrupted=interrupted, recovered=recovered)


def _run_trial(trial: optuna.Trial, spec: SweepSpec, params: dict, name: str, request: SweepRequest,
               workspace: Workspace, host: PluginHost, study: optuna.Study, emit, callbacks):
    previous = _resumable(trial.user_attrs.get(studylib.RUN_ATTR), workspace.ledger_path)
    if previous:
        train_request = TrainRequest(resume=previous, command=request.command)
    else:
        # every trial trains the recipe as written: a budget variant chosen per trial from the
        # machine's momentary pace would differ between trials and confound the comparison
        train_request = TrainRequest(recipe=spec.recipe, overrides=spec.trial_overrides(params),
                                     name=f"{name}#{trial.number}", command=request.command, choose_variant=False)
    cb = _TrialCallback(name, trial, workspace.ledger_path,
                        lambda kind, **kw: emit(kind, trial=trial.number, params=params, **kw), spec.prune)
    try:
        with _Heartbeat(study, trial._trial_id, request.heartbeat_seconds):
            result = train(train_request, workspace, host, callbacks=(cb, *callbacks))
    except KeyboardInterrupt:
        studylib.fail_and_retry(study, study.get_trials(deepcopy=False)[trial.number], interrupted=True)
        return "interrupted", None, cb.run_id, "interrupted; run the same command again to resume"
    except Exception as exc:
        studylib.tell(study, trial, state=TrialState.FAIL)
        studylib.fail_and_retry(study, study.get_trials(deepcopy=False)[trial.number])
        return "failed", None, cb.run_id, f"{type(exc).__name__}: {exc}"
    if result.stop_reason is StopReason.INTERRUPTED:
        studylib.fail_and_retry(study, study.get_trials(deepcopy=False)[trial.number], interrupted=True)
        return "interrupted", None, result.run_id, result.message
    value = result.best_val_score
    if result.stop_reason is StopReason.PRUNED:  # the run is recorded "pruned" by training itself
        studylib.tell(study, trial, state=TrialState.PRUNED)
        return "pruned", value, result.run_id, result.message
    if value is None:
        studylib.tell(study, trial, state=TrialState.FAIL)
        return "failed", None, result.run_id, "no validation score (no validation images?)"
    studylib.tell(study, trial, values=value)
    return "complete", value, result.run_id, result.message
