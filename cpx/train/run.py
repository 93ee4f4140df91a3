"""`cpx train` as a library call: recipe -> config -> data -> model -> trainer -> run folder + ledger."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from cpx.data.competition import Competition
from cpx.data.masks import IGNORE, class_frequencies
from cpx.eval.metrics import create_metric, metric_tag
from cpx.kernel.config import ExperimentConfig
from cpx.kernel.device import count_params, resolve_device, resolve_precision
from cpx.kernel.errors import ConfigError, DataError, LedgerBusy, RuleViolation, RunError
from cpx.kernel.files import DiskFull, atomic_write_text, check_writable, is_disk_full
from cpx.kernel.manager import PluginHost
from cpx.kernel.text import utc_now
from cpx.kernel.workspace import Workspace
from cpx.runs.checkpoint import load_file
from cpx.runs.folder import RunFolder
from cpx.runs.handle import build_model
from cpx.runs.ledger import Ledger
from cpx.runs.recovery import reconcile
from cpx.train.budget import BudgetCallback
from cpx.train.callbacks import EMA, CheckpointCommit, EarlyStopping, Validation
from cpx.train.collective import barrier, rank_world
from cpx.train.ledger_writes import LedgerWriter, waiting_for_the_ledger
from cpx.train.loop import Callback, EpochRecord, StopReason, Trainer
from cpx.train.prepare import PreparedData, prepare_data
from cpx.train.start import RunStart, TrainRequest, new_run, refit_run, resume_run
from cpx.train.tracking import tracking_callbacks


@dataclass
class TrainResult:
    """How a training call ended: the run, its status (``completed``, ``stopped`` or ``failed``),
    best validation score (the competition's metric, named by ``metric``) and epoch, epochs done,
    parameters, wall time and a message.
    """

    run_id: str
    run_dir: Path
    status: str  # completed, stopped (interrupted: resumable), pruned, failed (see StopReason.status)
    best_val_score: float
    best_epoch: int
    epochs: int
    params: int
    wall_seconds: float
    message: str = ""
    config_diff: dict = field(default_factory=dict)
    # a refit: the parent run's id; ``best_val_score`` is then the parent's, carried (not measured)
    refit_of: Optional[str] = None
    metric: str = ""  # the competition's metric that best_val_score is on (name, scale when not 1)
    stop_reason: Optional[StopReason] = None
    # how live logging to each ``log_to`` tracker went (cpx.train.tracking.TrackerReport)
    trackers: list = field(default_factory=list)


def git_commit(path: Path) -> Optional[str]:
    """The git commit of ``path``'s checkout, or None outside one."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None




def build_components(config: ExperimentConfig, host: PluginHost, competition: Competition,
                     class_frequencies: Optional[list[float]] = None):
    """The model, loss and augmentation of ``config`` (seeded by ``train.seed``).

    ``class_frequencies`` (pixel share of each class in the training masks) go to a loss
    factory that takes them, for data-derived class weights.

    :raises ConfigError: options that do not validate.
    """
    torch.manual_seed(config.train.seed)
    model = build_model(host, config.model.name, config.model.options, competition)
    entry = host.losses.get(config.loss.name)
    extra = {"class_frequencies": class_frequencies} if class_frequencies and entry.accepts("class_frequencies") else {}
    if entry.accepts("ignore_index"):  # padding of letterboxed images and the profile's ignore index
        extra["ignore_index"] = IGNORE
    loss = entry.create(config.loss.options, competition.num_classes, where="loss.options", **extra)
    augment = host.augmentations.get(config.augmentation.name).create(config.augmentation.options, competition,
                                                                      where="augmentation.options")
    return model, loss, augment


@contextlib.contextmanager
def sigterm_interrupts():
    """While training, SIGTERM (``kill``, ``docker stop``, a scheduler ending a job) stops the
    run as Ctrl-C does: the last finished epoch stays saved and ``cpx train --resume`` goes on
    from it. Only in the main thread, and only where nobody else handles SIGTERM (the
    data-parallel launcher has its own); a second SIGTERM ends the process at once.
    """
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise KeyboardInterrupt("SIGTERM")

    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

def train(request: TrainRequest, workspace: Workspace, host: PluginHost, callbacks: tuple = ()) -> TrainResult:
    """Train a recipe (or resume a run) and record it in the ledger.

    A new run gets its ledger row (status ``running``, with this process's PID) before any file
    of it exists; its folder is then created exclusively and locked for the training. Each
    epoch commits in a crash-safe order (see :mod:`cpx.runs.recovery`). A resume refuses a run
    another live process holds, and first rolls the run forward from its ``last.pt``.

    Inside a ``torch.distributed`` process group (see :mod:`cpx.train.distributed`) every rank
    calls this; rank 0 alone names the run, writes the run folder, checkpoints and ledger rows,
    and runs ``callbacks``; it also prepares (and caches) the data before the others load it.

    Each tracker of ``request.log_to`` gets the run live (:mod:`cpx.train.tracking`); how that
    went is in ``result.trackers``. A tracker's failure never fails the run.

    :raises ConfigError: a recipe or override that does not validate.
    :raises RuleViolation: a model over the competition's parameter limit (nothing is written).
    :raises DataError: unusable data.
    :raises RunError: a run that cannot be resumed, an unwritable folder, or a diverged loss
        (the run is then marked failed).
    :raises UnknownComponent: a ``log_to`` tracker no plugin registers.
    :raises MissingDependency: a ``log_to`` tracker whose package is not installed.
    """
    main = rank_world()[0] == 0
    if request.refit and (request.resume or request.recipe):
        raise ConfigError("--refit RUN retrains that run's own config; drop the recipe and --resume")
    # the trackers' loggers are made first, so a missing package fails before any work
    trackers = tracking_callbacks(request.log_to, host, workspace.ledger_path, workspace.runs_dir) \
        if main and request.log_to else []
    try:
        result = _train_or_resume(request, workspace, host, (*callbacks, *trackers))
    except BaseException:
        for tracker in trackers:  # the run's failure is recorded: the tracker gets it too
            tracker.finish()
        raise
    result.trackers = [tracker.finish() for tracker in trackers]
    return result


def _train_or_resume(request: TrainRequest, workspace: Workspace, host: PluginHost, callbacks: tuple) -> TrainResult:
    main = rank_world()[0] == 0
    with Ledger(workspace.ledger_path) as ledger:
        if request.refit:
            return _train(request, refit_run(request, workspace, host, ledger), workspace, host, ledger, callbacks)
        if request.resume:
            setup = resume_run(request, workspace, host, ledger)
            with setup.folder.lock() if main else contextlib.nullcontext():
                if main:
                    reconcile(setup.folder, ledger, setup.run_id)
                    setup.folder.clear_status()
                setup.resume_state = load_file(setup.folder.last_path, "resume state")
                return _train(request, setup, workspace, host, ledger, callbacks)
        setup = new_run(request, workspace, host, ledger)
        return _train(request, setup, workspace, host, ledger, callbacks)


def _train(request: TrainRequest, setup: RunStart, workspace: Workspace, host: PluginHost, ledger: Ledger,
           callbacks: tuple) -> TrainResult:
    main = rank_world()[0] == 0
    run_id, folder, config, diff, resume_state = (setup.run_id, setup.folder, setup.config, setup.diff,
                                                  setup.resume_state)
    competition: Competition = host.competition(config.competition)
    create_metric(competition, host)  # an unknown metric or bad options fail before any work
    device = resolve_device(config.train.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {config.train.device} asked for but CUDA is not available")
    precision = resolve_precision(config.train.precision, device)

    # the parameter check comes before any work
    params = count_params(build_model(host, config.model.name, config.model.options, competition))
    problem = competition.check_params(params)
    if problem:
        raise RuleViolation(problem)
    if main:
        check_writable(workspace.runs_dir, workspace.ledger_path)

    if not main:  # rank 0 generates or caches the data first; the others then read its cache
        barrier()
    data = prepare_data(config, competition, workspace)
    if main:
        barrier()
    # built again once the data is known: a loss may weight classes by the training masks' pixel shares
    frequencies = class_frequencies(data.train[1], competition.num_classes)
    model, loss_fn, augment = build_components(config, host, competition, frequencies)
    _check_same_data(request, setup, data)

    lock = contextlib.nullcontext()
    if main:
        folder, lock = _mark_running(request, setup, workspace, ledger, callbacks, competition, params, data,
                                     device)
    with lock:
        if main and resume_state is None:
            _write_run_files(folder, request, setup, data, frequencies, workspace)
        ctx = RunContext(run_id=run_id, folder=folder, config=config, diff=diff, competition=competition,
                         metric=create_metric(competition, host), device=device, precision=precision, model=model,
                         loss_fn=loss_fn, augment=augment, params=params, data=data, resume_state=resume_state,
                         ledger=ledger, callbacks=tuple(callbacks), select_weights=setup.select_weights,
                         budget_choice=setup.budget_choice)
        result = _fit(ctx)
    if setup.parent is not None:
        result.refit_of = setup.parent["id"]
        result.best_val_score = setup.parent.get("best_val_score")
        result.best_epoch = result.epochs
    return result


def _check_same_data(request: TrainRequest, setup: RunStart, data: PreparedData) -> None:
    """Refuse ``data`` that is not what the resumed run, or the run being refit, trained on.

    :raises RunError: a resumed run's data changed.
    :raises DataError: a refit's data changed and ``request.allow_changed_data`` is off.
    """
    resume_state, parent = setup.resume_state, setup.parent
    if resume_state is not None and resume_state.get("data_fingerprint") not in (None, data.fingerprint):
        raise RunError(f"run {setup.run_id}: the data in {data.root} changed since the run started; cannot resume")
    if parent is not None and resume_state is None and parent.get("data_fingerprint") not in (None, data.fingerprint) \
            and not request.allow_changed_data:
        raise DataError(f"run {parent['id']}: the labelled data in {data.root} is not what the run trained on "
                        f"(fingerprint {data.fingerprint}, recorded {parent['data_fingerprint']}), so its best epoch "
                        "says nothing about a refit on it; restore that data, or pass --allow-changed-data")


def _mark_running(request: TrainRequest, setup: RunStart, workspace: Workspace, ledger: Ledger, callbacks: tuple,
                  competition: Competition, params: int, data: PreparedData,
                  device: torch.device) -> tuple[RunFolder, contextlib.AbstractContextManager]:
    """On rank 0, record the run as running in the ledger and, for a new run, create its folder.

    Returns the run folder and the lock to hold while training (none for a resumed run, whose
    caller holds it).
    """
    world = rank_world()[1]
    run_id, folder, config, diff = setup.run_id, setup.folder, setup.config, setup.diff
    budget_seconds = config.train.budget_minutes * 60 if config.train.budget_minutes else None
    owner = {"pid": os.getpid(), "host": socket.gethostname()}
    if setup.resume_state is not None:
        waiting_for_the_ledger(ledger, callbacks, lambda: ledger.update_run(
            run_id, status="running", budget_seconds=budget_seconds, world_size=world, **owner))
        return folder, contextlib.nullcontext()
    parent = setup.parent
    carried = {}
    if parent is not None:  # nothing is held out, so the parent's val score stands for the refit's
        carried = dict(refit_of=parent["id"], best_val_score=parent.get("best_val_score"),
                       best_epoch=config.train.stop_after or config.train.epochs)
    name = request.name or (f"{parent.get('name') or parent['id']}-refit" if parent is not None else run_id)
    # the ledger knows the run before its first file exists, so no kill leaves an unknown folder
    waiting_for_the_ledger(
        ledger, callbacks, lambda: ledger.add_run(
            id=run_id, name=name, kind="train", recipe=config.recipe, **carried, competition=competition.name,
            status="running", config=config.model_dump(mode="json"), config_diff=diff, command=request.command,
            params=params, epochs_planned=config.train.epochs, data_fingerprint=data.fingerprint,
            git_commit=git_commit(workspace.root), run_dir=str(folder.path), budget_seconds=budget_seconds,
            world_size=world, device=str(device), **owner))
    try:
        folder = RunFolder.create(workspace.runs_dir, run_id)
    except RunError:
        ledger.update_run(run_id, status="failed", notes="its folder existed already", finished_at=utc_now())
        raise
    return folder, folder.lock()


def _write_run_files(folder: RunFolder, request: TrainRequest, setup: RunStart, data: PreparedData,
                     frequencies: list[float], workspace: Workspace) -> None:
    """Write a new run's config, validation names and data description into its ``folder``."""
    folder.write_config(setup.config.model_dump(mode="json"), diff=setup.diff, command=request.command)
    folder.write_val_names(data.val_names)
    info = {"path": str(data.root), "synthetic": data.synthetic, "fingerprint": data.fingerprint,
            "train": len(data.train_names), "val": len(data.val_names), "val_part": data.val_part,
            "class_pixel_share": [round(f, 8) for f in frequencies]}
    if data.label_policy is not None:
        info["label_suspects"] = data.label_policy
    folder.write_data_info(info, workspace.root)
    if setup.budget_choice is not None:
        from cpx.train.variants import CHOICE_FILE

        atomic_write_text(folder.path / CHOICE_FILE, json.dumps(setup.budget_choice.as_dict(), indent=2) + "\n")


@dataclass
class RunContext:
    """Everything one training session works with: the run, its resolved config and the
    competition it trains for, the device and resolved precision, the built model, loss and
    augmentation, the data in memory, the resume state (None for a new run), the ledger, the
    caller's callbacks and, for a refit, the kind of weights its best.pt keeps."""

    run_id: str
    folder: RunFolder
    config: ExperimentConfig
    diff: dict
    competition: Competition
    metric: Any
    device: torch.device
    precision: str
    model: torch.nn.Module
    loss_fn: Any
    augment: Any
    params: int
    data: PreparedData
    resume_state: Optional[dict]
    ledger: Ledger
    callbacks: tuple = ()
    select_weights: Optional[str] = None
    budget_choice: Optional[Any] = None  # the budget variant weighed (cpx.train.variants.BudgetChoice)

    @property
    def main(self) -> bool:
        """Whether this process writes (rank 0 of a data-parallel group, or the only one)."""
        return rank_world()[0] == 0


class _Adapted(Callback):
    """A callback object written against the events by name (``on_batch_end``,
    ``on_epoch_end``, ``on_train_end``; any it lacks do nothing), as a :class:`Callback`."""

    def __init__(self, target: Any):
        self.target = target

    def on_batch_end(self, trainer, batch, loss) -> None:
        if hasattr(self.target, "on_batch_end"):
            self.target.on_batch_end(trainer, batch, loss)

    def on_epoch_end(self, trainer, record) -> None:
        if hasattr(self.target, "on_epoch_end"):
            self.target.on_epoch_end(trainer, record)

    def on_fit_end(self, trainer) -> None:
        if hasattr(self.target, "on_train_end"):
            self.target.on_train_end(trainer)


def _training_callbacks(ctx: RunContext, trainer: Trainer, wall) -> tuple[Validation, CheckpointCommit,
                                                                          Optional[BudgetCallback]]:
    """The run's own callbacks, in order: EMA, validation, early stopping, the checkpoint
    commit (rank 0), the budget; then the caller's (rank 0)."""
    t = ctx.config.train
    ema = EMA(t.ema, trainer.model) if t.ema is not None else None
    validation = Validation(ctx.data.val, ctx.competition, ctx.metric,
                            int(ctx.config.data.image_size or ctx.competition.image_size), every=t.val_every,
                            ema=ema, select_weights=ctx.select_weights)
    writer = LedgerWriter(ctx.ledger, ctx.run_id)

    def extra() -> dict:
        return {"config": ctx.config.model_dump(mode="json"), "data_fingerprint": ctx.data.fingerprint,
                "wall_seconds": wall(), "run_id": ctx.run_id}

    def on_commit(tr: Trainer) -> None:
        # without validation images there is no best to record (a refit carries its parent's)
        scores = (dict(best_val_score=validation.best_score, best_epoch=validation.best_epoch or None)
                  if validation.val_data is not None else {})
        writer.update(last_epoch=tr.epoch, wall_seconds=round(wall(), 2), epochs_planned=tr.epochs, **scores)

    commit = CheckpointCommit(ctx.folder, validation, lambda tr, rec: best_payload(tr, ctx, validation, ema, rec),
                              extra, on_commit)
    commit.writer = writer
    budget = None
    if t.budget_minutes:
        # a resumed run goes on with what is left of its budget, not a fresh one
        budget = BudgetCallback(t.budget_minutes, trainer.epoch, used_seconds=wall(), max_epochs=t.epochs)
    own = [cb for cb in (ema, validation) if cb is not None]
    if t.patience:
        own.append(EarlyStopping(t.patience, validation))
    if ctx.main:
        own.append(commit)
    if budget is not None:
        own.append(budget)
    theirs = [cb if isinstance(cb, Callback) else _Adapted(cb) for cb in ctx.callbacks] if ctx.main else []
    trainer.callbacks.extend(own + theirs)
    return validation, commit, budget


def _fit(ctx: RunContext) -> TrainResult:
    """Train one session of a run (new or resumed) and record how it ended."""
    config, folder, run_id = ctx.config, ctx.folder, ctx.run_id
    trainer = Trainer(ctx.model, ctx.loss_fn, ctx.augment, ctx.data.train, train=config.train,
                      optimizer=config.optimizer, schedule=config.schedule, precision=ctx.precision,
                      device=ctx.device)
    started = time.perf_counter()
    if ctx.resume_state:
        before = float(ctx.resume_state.get("wall_seconds", 0.0))
    else:  # timing the machine to choose a budget variant spent some of the budget
        before = ctx.budget_choice.probe_seconds if ctx.budget_choice else 0.0

    def wall() -> float:
        return before + time.perf_counter() - started

    validation, commit, budget = _training_callbacks(ctx, trainer, wall)
    if ctx.resume_state is not None:
        trainer.load_state_dict(ctx.resume_state)
    trainer.info = dict(run_id=run_id, run_dir=folder.path, config=config, params=ctx.params, device=str(ctx.device),
                        precision=ctx.precision, train_images=len(ctx.data.train_names),
                        val_images=len(ctx.data.val_names), start_epoch=trainer.epoch,
                        steps_per_epoch=trainer.steps_per_epoch, metric=ctx.metric,
                        budget_choice=ctx.budget_choice.reason if ctx.budget_choice else None)
    for cb in ctx.callbacks if ctx.main else ():
        if hasattr(cb, "on_start"):
            cb.on_start(**trainer.info)
    try:
        with sigterm_interrupts():
            reason = trainer.fit()
    except KeyboardInterrupt:
        reason = StopReason.INTERRUPTED
    except BaseException as exc:
        resource = _resource_failure(ctx, trainer, commit, exc)
        if ctx.main:
            note = str(resource or exc).splitlines()[0] if str(resource or exc) else type(exc).__name__
            try:
                folder.write_status("failed", note, utc_now())
                commit.writer.update(status="failed", finished_at=utc_now(), notes=note)
                commit.writer.flush(tries=2)  # still locked: status.json has it, and `cpx runs` records it later
            except Exception:
                if resource is None:
                    raise
                # a full disk may refuse status.json and the ledger too: the one line below still says it all
        if resource is not None:
            raise resource from None
        raise
    return _finish(ctx, trainer, reason, validation, commit, budget, wall())


def _resource_failure(ctx: RunContext, trainer: Trainer, commit, exc: BaseException) -> Optional[RunError]:
    """A full disk or an exhausted accelerator as one line: what failed, that the epochs already
    committed are kept, and how to go on; None for any other failure."""
    saved = commit.committed
    kept = (f"nothing was lost: epoch {saved} is saved; " if saved else
            "no epoch had finished, so there is nothing to resume; ")
    again = f"cpx train --resume {ctx.run_id}" if saved else "train it again"
    if isinstance(exc, DiskFull) or is_disk_full(exc, ctx.folder.path):
        what = str(exc) if isinstance(exc, DiskFull) else f"{ctx.folder.path}: no space left on the device"
        return RunError(f"{what}; {kept}free some space, then {again}")
    if _out_of_memory(exc):
        t, d = ctx.config.train, ctx.config.data
        return RunError(f"out of memory on {ctx.device} at image size {d.image_size} with batch size {t.batch_size}: "
                        "train again with a lower --batch-size or --image-size (or train.precision bf16 on a GPU); "
                        f"{kept}" + (f"it resumes with {again} where more memory is free" if saved else "that is all"))
    return None


def _out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "DefaultCPUAllocator: can't allocate" in text
                                              or "MPS backend out of memory" in text)


def _stop_message(ctx: RunContext, trainer: Trainer, reason: StopReason, committed: int, budget) -> str:
    """What the run's status says about how it ended."""
    if reason is StopReason.INTERRUPTED:
        if committed:
            return (f"interrupted; progress saved at epoch {committed}. Resume with: cpx train --resume "
                    f"{ctx.run_id}")
        return "interrupted before the first epoch finished; nothing saved to resume (train it again)"
    message = trainer.stop_message if reason is not StopReason.BUDGET else ""
    if budget is not None:
        message = "; ".join(m for m in (message, budget.summary()) if m)
    return message


def _finish(ctx: RunContext, trainer: Trainer, reason: StopReason, validation: Validation, commit, budget,
            wall: float) -> TrainResult:
    """The run's result, and on rank 0 its curves, status, best validation row and ledger row."""
    message = _stop_message(ctx, trainer, reason, commit.committed, budget)
    result = TrainResult(run_id=ctx.run_id, run_dir=ctx.folder.path, status=reason.status,
                         best_val_score=validation.best_score, best_epoch=validation.best_epoch, epochs=trainer.epoch,
                         params=ctx.params, wall_seconds=round(wall, 2), message=message, config_diff=ctx.diff,
                         metric=metric_tag(ctx.metric.name, ctx.metric.scale), stop_reason=reason)
    if not ctx.main:
        return result
    if trainer.history:
        try:
            from cpx.draw.curves import plot_history

            plot_history([(ctx.run_id, trainer.history)], ctx.folder.curves_path, metric=result.metric,
                         greater_is_better=ctx.metric.greater_is_better)
        except Exception as exc:  # a plotting problem must not lose a finished run
            message += f" (curves.png not written: {exc})"
    finished = utc_now()
    ctx.folder.write_status(result.status, message, finished)
    if validation.best_scores and reason is not StopReason.INTERRUPTED:  # a resumed run records it when it ends
        try:
            record_best_validation(ctx.ledger, ctx.run_id, validation.best_scores)
        except LedgerBusy:  # the scores are in history.json; the row is a convenience for comparisons
            message += " (its best validation's per-image scores were not recorded: the ledger was locked)"
    commit.writer.update(status=result.status, stop_reason=reason.value, finished_at=finished,
                         wall_seconds=round(wall, 2), epochs_planned=trainer.epochs, notes=message or None)
    if not commit.writer.flush():
        message += (f" (the ledger {ctx.ledger.path} stayed locked by another program: the run's files are "
                    "complete; `cpx runs` records them once the lock is free)")
    result.message = message
    return result


def best_payload(tr: Trainer, ctx: RunContext, validation: Validation, ema: Optional[EMA],
                 record: EpochRecord) -> dict:
    """What best.pt holds: the weights that scored best under ``state_dict`` (the competition's
    key), ``weights`` saying which (``ema`` or ``raw``), plus how to rebuild the model."""
    use_ema = validation.best_weights == "ema" and ema is not None
    source = ema.ema_model if use_ema else tr.model
    state = {k: v.detach().clone() for k, v in source.state_dict().items()}
    return {
        "state_dict": state,
        "model": ctx.config.model.name,
        "model_options": ctx.config.model.options,
        "num_classes": ctx.competition.num_classes,
        "competition": ctx.competition.name,
        "image_size": ctx.config.data.image_size,
        "epoch": tr.epoch,
        "val_score": validation.best_score if record.improved else record.val_score,
        "metric": ctx.metric.name,
        "weights": "ema" if use_ema else "raw",
        "run_id": ctx.run_id,
    }


def record_best_validation(ledger: Ledger, run_id: str, scores: dict) -> dict:
    """The best epoch's validation (``Evaluation.to_dict()`` of the weights best.pt holds) as a
    ledger row (checkpoint ``best``, no TTA, the run's own validation list), with each image's
    score so runs can later be compared image by image."""
    from cpx.eval.validate import VAL_LIST

    return ledger.add_validation(run_id, checkpoint="best", tta="none", data=VAL_LIST, images=scores["images"],
                                 score=scores["score"], metric=metric_tag(scores["metric"], scores.get("scale", 1)),
                                 pixel_acc=scores["pixel_acc"], miou=scores["miou"], per_class=scores["per_class"],
                                 per_image=scores["per_image"])


def command_line() -> str:
    """This process's command line as ``cpx ...`` (shell-quoted)."""
    return shlex.join(["cpx", *sys.argv[1:]])
