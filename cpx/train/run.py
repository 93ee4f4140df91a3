"""`cpx train` as a library call: recipe -> config -> data -> model -> trainer -> run folder + ledger."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from cpx import data as datalib
from cpx.data.competition import Competition
from cpx.kernel.config import ExperimentConfig, build_config, resolve, validate
from cpx.kernel.errors import ConfigError, DataError, RuleViolation, RunError
from cpx.runs.ledger import Ledger
from cpx.kernel.manager import PluginHost
from cpx.train.loop import Trainer, TrainerSettings, dist_rank_world
from cpx.kernel.device import resolve_device, resolve_precision
from cpx.kernel.files import atomic_torch_save
from cpx.kernel.device import count_params
from cpx.kernel.workspace import Workspace
from cpx.kernel.text import utc_now
from cpx.runs.folder import RunFolder, new_run_id


@dataclass
class TrainRequest:
    recipe: Optional[str] = None
    overrides: dict[str, Any] = field(default_factory=dict)
    name: Optional[str] = None
    resume: Optional[str] = None
    command: str = ""


@dataclass
class TrainResult:
    run_id: str
    run_dir: Path
    status: str  # completed, stopped (interrupted or budget), failed
    best_val_f: float
    best_epoch: int
    epochs: int
    params: int
    wall_seconds: float
    message: str = ""
    config_diff: dict = field(default_factory=dict)


@dataclass
class PreparedData:
    root: Path
    fingerprint: str
    train_names: list[str]
    val_names: list[str]
    train: tuple[torch.Tensor, torch.Tensor]
    val: Optional[tuple[torch.Tensor, list[torch.Tensor]]]
    synthetic: bool


def synthetic_root(workspace: Workspace, competition: Competition, count: int, size: int, seed: int) -> Path:
    """Generate (once) the competition's synthetic data set into the workspace cache."""
    if competition.synthesize is None:
        raise DataError(f"competition {competition.name} has no synthetic data; pass --data DIR")
    # a tenth more unlabelled images, so predict and package work on synthetic data too
    tests = max(2, count // 10)
    root = workspace.cache_dir / "synthetic" / f"{competition.name}-n{count}-t{tests}-s{size}-seed{seed}"
    if not root.is_dir():
        tmp = root.with_name(root.name + f".tmp{os.getpid()}")
        datalib.write_dataset(tmp, competition, competition.synthesize(count + tests, size, seed), test_count=tests)
        os.replace(tmp, root)
    return root


def prepare_data(config: ExperimentConfig, competition: Competition, workspace: Workspace) -> PreparedData:
    d = config.data
    if d.path:
        root = Path(d.path).expanduser()
        if not root.is_dir():
            raise DataError(f"data folder {root} does not exist")
        synthetic = False
    else:
        root = synthetic_root(workspace, competition, d.synthetic_count, d.synthetic_size, d.synthetic_seed)
        synthetic = True
    names = datalib.train_names(root, competition)
    if len(names) < 2:
        raise DataError(f"{root}: need at least 2 labelled images, found {len(names)}")
    train_names, val_names = datalib.split_names(names, d.val_fraction, d.split_seed)
    fp = datalib.fingerprint(root, competition)
    cache = workspace.cache_dir if d.cache else None
    train = datalib.load_dataset(root, competition, train_names, d.image_size, cache_dir=cache)
    val = None
    if val_names:
        val_images, _ = datalib.load_dataset(root, competition, val_names, d.image_size, cache_dir=cache)
        # score against masks at their own size, as the scorer does
        masks = datalib.scan(root, competition).masks
        val_masks = [torch.from_numpy(datalib.read_mask(masks[n], competition.num_classes).copy()) for n in val_names]
        val = (val_images, val_masks)
    return PreparedData(root, fp, train_names, val_names, train, val, synthetic)


def git_commit(path: Path) -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None




def build_components(config: ExperimentConfig, host: PluginHost, competition: Competition):
    torch.manual_seed(config.train.seed)
    model = host.models.get(config.model.name).create(config.model.options, competition.num_classes,
                                                      where="model.options")
    loss = host.losses.get(config.loss.name).create(config.loss.options, competition.num_classes,
                                                    where="loss.options")
    augment = host.augmentations.get(config.augmentation.name).create(config.augmentation.options, competition,
                                                                      where="augmentation.options")
    return model, loss, augment


def settings_from(config: ExperimentConfig, precision: str) -> TrainerSettings:
    t, o, s = config.train, config.optimizer, config.schedule
    return TrainerSettings(
        epochs=t.epochs, batch_size=t.batch_size, lr=o.lr, weight_decay=o.weight_decay, betas=tuple(o.betas),
        optimizer=o.name, momentum=o.momentum, schedule=s.name, warmup_epochs=s.warmup_epochs, min_lr=s.min_lr,
        grad_clip=t.grad_clip, patience=t.patience, seed=t.seed, val_every=t.val_every, precision=precision,
        channels_last=t.channels_last,
    )


class BudgetCallback:
    """Fits the epoch count (and so the cosine length) to a wall-clock budget.

    After the first epoch it plans the epochs that fit; after the second it plans once more
    from the second alone, as the first pays one-off costs (allocations, kernel selection).
    Later it only ever shortens the plan, when epochs run slower than planned, so the cosine
    still ends inside the budget instead of being cut off at a high learning rate. The time
    includes validation and checkpoints. Under data parallelism rank 0's clock decides, so
    every rank plans the same epochs.
    """

    margin = 0.98  # plan into 98% of the budget: later epochs wobble by a percent or two

    def __init__(self, minutes: float, start_epoch: int):
        self.budget = minutes * 60
        self.start_epoch = start_epoch
        self.started = time.perf_counter()
        self.planned: Optional[int] = None
        self.first_plan: Optional[int] = None
        self.durations: list[float] = []
        self._cap: Optional[int] = None
        self._seen = 0.0

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def on_epoch_end(self, trainer: Trainer, record) -> None:
        elapsed = _rank0_float(self.elapsed())
        self.durations.append(elapsed - self._seen)
        self._seen = elapsed
        if self._cap is None:
            self._cap = trainer.settings.epochs
        recent = self.durations[1:] or self.durations
        per_epoch = sum(recent) / len(recent)
        fit = trainer.epoch + int(max(0.0, self.budget * self.margin - elapsed) // max(per_epoch, 1e-9))
        ceiling = self._cap if len(self.durations) <= 2 else trainer.settings.epochs
        self.planned = max(trainer.epoch, min(ceiling, fit))
        if self.first_plan is None:
            self.first_plan = self.planned
        trainer.settings.epochs = self.planned

    def summary(self) -> str:
        return (f"budget {self.budget / 60:g} min: planned {self.planned} epochs "
                f"(first plan {self.first_plan}), used {self.elapsed() / 60:.2f} min")


def _rank0_float(value: float) -> float:
    """``value`` as rank 0 has it (itself without a process group)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return value
    device = "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"
    t = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.broadcast(t, 0)
    return float(t)


def _rank0_object(value):
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, 0)
    return box[0]


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def train(request: TrainRequest, workspace: Workspace, host: PluginHost, callbacks: tuple = ()) -> TrainResult:
    """Train a recipe (or resume a run) and record it in the ledger.

    Inside a ``torch.distributed`` process group (see :mod:`cpx.train.distributed`) every rank calls
    this; rank 0 alone names the run, writes the run folder, checkpoints and ledger rows, and
    runs ``callbacks``; it also prepares (and caches) the data before the others load it.
    """
    rank, world = dist_rank_world()
    main = rank == 0
    ledger = Ledger(workspace.ledger_path)
    resume_state = None
    if request.resume:
        row = ledger.get_run(request.resume)
        run_id, folder = row["id"], RunFolder(row["run_dir"])
        last = folder.last_path
        if not last.is_file():
            raise RunError(f"run {run_id} has no {last.name} to resume from ({last})")
        config = validate(folder.read_config() or row.get("config") or {})
        config = resolve(config, host)
        diff = row.get("config_diff") or {}
        resume_state = torch.load(last, map_location="cpu", weights_only=False)
        if row.get("status") == "completed":
            raise RunError(f"run {run_id} already completed {resume_state.get('epoch')} epochs; "
                           f"nothing to resume (train a new run to go further)")
    else:
        if not request.recipe:
            raise ConfigError("name a recipe (or a YAML file), or --resume RUN")
        config, diff = build_config(request.recipe, request.overrides, workspace.experiments_dir, host)
        run_id = _rank0_object(new_run_id(config.recipe))
        folder = RunFolder(workspace.runs_dir / run_id)
    run_dir = folder.path

    competition: Competition = host.competition(config.competition)
    device = resolve_device(config.train.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {config.train.device} asked for but CUDA is not available")
    precision = resolve_precision(config.train.precision, device)

    model, loss_fn, augment = build_components(config, host, competition)
    params = count_params(model)
    problem = competition.check_params(params)
    if problem:
        raise RuleViolation(problem)

    if not main:  # rank 0 generates or caches the data first; the others then read its cache
        _barrier()
    data = prepare_data(config, competition, workspace)
    if main:
        _barrier()
    if resume_state is not None and resume_state.get("data_fingerprint") not in (None, data.fingerprint):
        raise RunError(f"run {run_id}: the data in {data.root} changed since the run started; cannot resume")

    budget_seconds = config.train.budget_minutes * 60 if config.train.budget_minutes else None
    if main and resume_state is None:
        folder = RunFolder.create(workspace.runs_dir, run_id)
        folder.write_config(config.model_dump(mode="json"), diff=diff, command=request.command)
        folder.write_val_names(data.val_names)
        folder.write_data_info({"path": str(data.root), "synthetic": data.synthetic, "fingerprint": data.fingerprint,
                                "train": len(data.train_names), "val": len(data.val_names)})
        ledger.add_run(id=run_id, name=request.name or run_id, kind="train", recipe=config.recipe,
                       competition=competition.name, status="running", config=config.model_dump(mode="json"),
                       config_diff=diff, command=request.command, params=params,
                       epochs_planned=config.train.epochs, data_fingerprint=data.fingerprint,
                       git_commit=git_commit(workspace.root), run_dir=str(run_dir),
                       budget_seconds=budget_seconds, world_size=world, device=str(device))
    elif main:
        ledger.update_run(run_id, status="running", budget_seconds=budget_seconds, world_size=world)

    trainer = Trainer(model, loss_fn, augment, data.train, data.val, settings_from(config, precision),
                      competition.num_classes, device)
    if resume_state is not None:
        trainer.load_state_dict(resume_state)
    started = time.perf_counter()
    wall_before = float(resume_state.get("wall_seconds", 0.0)) if resume_state else 0.0

    def checkpoint(tr: Trainer, record) -> None:
        wall = wall_before + time.perf_counter() - started
        state = tr.state_dict()
        state.update(config=config.model_dump(mode="json"), data_fingerprint=data.fingerprint, wall_seconds=wall,
                     run_id=run_id)
        atomic_torch_save(state, folder.last_path)
        if record.improved or (tr.val_data is None):
            atomic_torch_save(best_payload(tr, config, competition, record, run_id), folder.best_path)
        folder.write_history(tr.history)
        ledger.update_run(run_id, last_epoch=tr.epoch, best_val_f=tr.best_f if tr.best_f >= 0 else None,
                          best_epoch=tr.best_epoch or None, wall_seconds=round(wall, 2),
                          epochs_planned=tr.settings.epochs)

    if main:
        trainer.add_callback("on_epoch_end", checkpoint)
    budget = None
    if config.train.budget_minutes:
        budget = BudgetCallback(config.train.budget_minutes, trainer.epoch)
        trainer.add_callback("on_epoch_end", budget.on_epoch_end)
    for cb in callbacks if main else ():
        for event in ("on_batch_end", "on_epoch_end", "on_train_end"):
            if hasattr(cb, event):
                trainer.add_callback(event, getattr(cb, event))
        if hasattr(cb, "on_start"):
            cb.on_start(run_id=run_id, run_dir=run_dir, config=config, params=params, device=str(device),
                        precision=precision, train_images=len(data.train_names), val_images=len(data.val_names),
                        start_epoch=trainer.epoch, steps_per_epoch=trainer.steps_per_epoch)

    status, message = "completed", ""
    try:
        trainer.fit()
        if trainer.stop_reason:
            message = trainer.stop_reason
            status = "stopped" if "budget" in message else "completed"
        if budget is not None:
            message = "; ".join(m for m in (message, budget.summary()) if m)
    except KeyboardInterrupt:
        status = "stopped"
        message = (f"interrupted; progress saved at epoch {trainer.epoch}. "
                   f"Resume with: cpx train --resume {run_id}")
    except BaseException:
        if main:
            ledger.update_run(run_id, status="failed", finished_at=utc_now())
        raise
    wall = wall_before + time.perf_counter() - started
    if not main:
        ledger.close()
        return TrainResult(run_id=run_id, run_dir=run_dir, status=status, best_val_f=trainer.best_f,
                           best_epoch=trainer.best_epoch, epochs=trainer.epoch, params=params,
                           wall_seconds=round(wall, 2), message=message, config_diff=diff)
    if trainer.history:
        try:
            from cpx.train.curves import plot_history

            plot_history([(run_id, trainer.history)], folder.curves_path)
        except Exception as exc:  # a plotting problem must not lose a finished run
            message += f" (curves.png not written: {exc})"
    if trainer.best_scores and "interrupted" not in message:  # a resumed run records it when it ends
        record_best_validation(ledger, run_id, trainer.best_scores, data.val_names, competition)
    ledger.update_run(run_id, status=status,
                      finished_at=utc_now(), wall_seconds=round(wall, 2),
                      epochs_planned=trainer.settings.epochs, notes=message or None)
    return TrainResult(run_id=run_id, run_dir=run_dir, status=status, best_val_f=trainer.best_f,
                       best_epoch=trainer.best_epoch, epochs=trainer.epoch, params=params,
                       wall_seconds=round(wall, 2), message=message, config_diff=diff)


def best_payload(tr: Trainer, config: ExperimentConfig, competition: Competition, record, run_id: str) -> dict:
    """What best.pt holds: weights under ``state_dict`` (the competition's key) plus how to rebuild."""
    state = {k: v.detach().clone() for k, v in tr.model.state_dict().items()}
    return {
        "state_dict": state,
        "model": config.model.name,
        "model_options": config.model.options,
        "num_classes": competition.num_classes,
        "competition": competition.name,
        "image_size": config.data.image_size,
        "epoch": tr.epoch,
        "val_f": record.val_f,
        "run_id": run_id,
    }




def record_best_validation(ledger: Ledger, run_id: str, scores: dict, val_names: list[str],
                           competition: Competition) -> dict:
    """The best epoch's validation as a ledger row (checkpoint ``best``, no TTA, the run's own
    validation list), with each image's F so runs can later be compared image by image."""
    from cpx.eval.validate import VAL_LIST

    per_class = {str(name): {"f": f, "images": n}
                 for name, f, n in zip(competition.classes, scores["per_class_f"], scores["class_images"])}
    return ledger.add_validation(run_id, checkpoint="best", tta="none", data=VAL_LIST, images=len(val_names),
                                 score=scores["fscore"], pooled_score=scores["pooled_fscore"],
                                 pixel_acc=scores["pixel_acc"], miou=scores["miou"], per_class=per_class,
                                 per_image=dict(zip(val_names, scores["per_image"])))


def command_line() -> str:
    return shlex.join(["cpx", *sys.argv[1:]])
