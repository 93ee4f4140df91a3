"""A short, model-agnostic training loop with typed callbacks (after minGPT's trainer and
Lightning's callbacks).

The :class:`Trainer` only optimises: it shuffles, augments, steps the optimizer on a learning
rate schedule and fires events. Everything else is a :class:`Callback` with its own state,
saved and restored with the run (:mod:`cpx.train.callbacks`: the EMA of the weights,
validation and the best epoch, early stopping; :mod:`cpx.train.budget`: the wall-clock
budget; :mod:`cpx.train.run`: the crash-safe checkpoint commit, whose order
:mod:`cpx.runs.commit` owns). Why training stopped is a :class:`StopReason`, never a phrase.

Events, in the order a run meets them (each callback in the order it was given)::

    on_fit_start(trainer)
    for each epoch:  on_batch_end(trainer, batch, loss) ...  on_epoch_end(trainer, record)
    on_fit_end(trainer)

A callback ends training after the current epoch with :meth:`Trainer.stop` (or by raising
:class:`StopTraining`). Data lives in memory as uint8 tensors and is augmented a whole batch at a
time on the training device. Randomness is reseeded from (seed, epoch) at the start of every
epoch: a run resumed from an epoch boundary replays exactly what an uninterrupted run would
have done.

Data-parallel training: when a ``torch.distributed`` process group is up, every rank draws the
same epoch permutation, cuts each global batch into disjoint per-rank shards and trains a
DistributedDataParallel wrapper (gradients averaged); epoch losses are summed across ranks, so
every rank takes the same decisions.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Callable, Optional, Sequence

import torch

from cpx.kernel.config import OptimizerConfig, ScheduleConfig, TrainConfig
from cpx.kernel.device import CompiledOrEager, autocast, keep_freed_memory, resolve_compile
from cpx.kernel.errors import RunError
from cpx.train.collective import all_reduce, rank_world


class StopReason(str, Enum):
    """Why training ended; the run's status follows from it (:attr:`status`)."""

    COMPLETED = "completed"  # every planned epoch trained
    STOP_AFTER = "stop_after"  # a refit ended where its parent's best epoch was (train.stop_after)
    PATIENCE = "patience"  # early stopping: no improvement in train.patience validations
    BUDGET = "budget"  # the wall-clock budget is spent
    PRUNED = "pruned"  # a sweep stopped a hopeless trial
    INTERRUPTED = "interrupted"  # Ctrl-C or SIGTERM

    @property
    def status(self) -> str:
        """The run's ledger status: ``stopped`` (interrupted: resumable), ``pruned`` or
        ``completed`` (a budget that ended the run early completed its own plan)."""
        return {StopReason.INTERRUPTED: "stopped", StopReason.PRUNED: "pruned"}.get(self, "completed")


@dataclass
class EpochRecord:
    """One epoch of history: mean training loss, last learning rate, seconds, images/s, and when
    validated the validation loss and the competition's metric (on its scale) of the raw
    weights, those of the EMA weights (``*_ema``, with ``train.ema``) and whether the better of
    the two improved on the best.
    """

    epoch: int
    train_loss: float
    lr: float
    seconds: float
    images_per_s: float
    val_loss: Optional[float] = None
    val_score: Optional[float] = None
    val_loss_ema: Optional[float] = None
    val_score_ema: Optional[float] = None
    improved: bool = False


class Callback:
    """Base of every training callback: each event does nothing unless overridden, and a
    callback with state (an EMA copy, the best epoch, a budget plan) saves it with
    :meth:`state_dict` into the run's ``last.pt`` (under the keys it returns) and restores it in
    :meth:`load_state_dict`, so a resumed run goes on exactly where it was."""

    def on_fit_start(self, trainer: "Trainer") -> None:
        """Before the first epoch of this session (a resumed run: after its state is restored)."""

    def on_batch_end(self, trainer: "Trainer", batch: int, loss: torch.Tensor) -> None:
        """After each optimizer step; ``batch`` counts from 0 within the epoch."""

    def on_epoch_end(self, trainer: "Trainer", record: EpochRecord) -> None:
        """After each epoch; earlier callbacks may have filled ``record`` (validation)."""

    def on_fit_end(self, trainer: "Trainer") -> None:
        """After the last epoch of this session, whatever the stop reason (not after an error)."""

    def state_dict(self) -> dict:
        """What a resume needs, as tensors and plain types (top-level keys of ``last.pt``)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` saved (``state`` is the whole ``last.pt``)."""


class Diverged(RunError):
    """The training loss became NaN or infinite."""


class StopTraining(Exception):
    """Raised by a callback to end training after the current epoch; ``reason`` says why."""

    def __init__(self, message: str = "", reason: StopReason = StopReason.COMPLETED):
        super().__init__(message)
        self.reason = reason


class LRSchedule:
    """The learning rate of each optimizer step: linear warm-up over ``warmup`` steps to
    ``base_lr``, then constant or a half cosine down to ``min_lr`` at ``total`` steps (SGDR's
    half cosine, Loshchilov & Hutter 2017, without restarts).

    The plan may change while training (a wall-clock budget re-plans the epochs):
    :meth:`replan` keeps the learning rate continuous by spreading what is left of the cosine
    over the new remaining steps, so a plan that grows late does not jump back up, and one
    that shrinks still ends at ``min_lr``. A plan shorter than twice the warm-up gets its
    warm-up halved to fit. Without re-plans the rate is exactly that of the closed formula.
    """

    def __init__(self, base_lr: float, min_lr: float, kind: str, warmup: int, total: int):
        self.base_lr, self.min_lr, self.kind = base_lr, min_lr, kind
        self.warmup, self.total = warmup, total
        # the cosine's position is anchored: progress p0 at step s0, rising linearly to 1 at total
        self.anchor_step, self.anchor_progress = warmup, 0.0

    def progress(self, step: int) -> float:
        """How far through the cosine ``step`` is, 0 (peak) to 1 (``min_lr``)."""
        if step <= self.anchor_step:
            return self.anchor_progress if step == self.anchor_step else 0.0
        span = max(1, self.total - self.anchor_step)
        return min(1.0, self.anchor_progress + (1.0 - self.anchor_progress) * (step - self.anchor_step) / span)

    def lr(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (from 0)."""
        if self.warmup and step < self.warmup:
            return self.base_lr * (step + 1) / self.warmup
        if self.kind == "constant":
            return self.base_lr
        return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1 + math.cos(math.pi * self.progress(step)))

    def replan(self, total: int, at_step: int) -> None:
        """A new plan of ``total`` steps, decided at step ``at_step`` (the next step to run)."""
        if total == self.total:
            return
        if at_step < self.warmup and total < 2 * self.warmup:
            self.warmup = max(at_step, total // 2)  # a short plan cannot spend most of itself warming up
            self.anchor_step = self.warmup
        if at_step > self.anchor_step:
            self.anchor_progress, self.anchor_step = self.progress(at_step), at_step
        self.total = total

    def state_dict(self) -> dict:
        return {"warmup": self.warmup, "total": self.total, "anchor_step": self.anchor_step,
                "anchor_progress": self.anchor_progress}

    def load_state_dict(self, state: dict) -> None:
        for key in ("warmup", "total", "anchor_step", "anchor_progress"):
            if key in state:
                setattr(self, key, state[key])


def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float, min_lr: float, schedule: str) -> float:
    """The learning rate at optimizer ``step`` of an unchanged plan (:class:`LRSchedule`)."""
    return LRSchedule(base_lr, min_lr, schedule, warmup_steps, total_steps).lr(step)


# the share of a GPU's free memory the uint8 training cache may take to live on the device
DEVICE_CACHE_SHARE = 0.25


def place_data(data: tuple[torch.Tensor, torch.Tensor], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the uint8 training tensors live while training on ``device``: on a GPU, on the
    device itself when they take at most :data:`DEVICE_CACHE_SHARE` of its free memory (no
    copy per batch at all), else in pinned host memory so each batch's copy is asynchronous;
    on a CPU, where they are. cuDNN's autotuner is switched on for a GPU (fixed input sizes)."""
    if device.type != "cuda":
        return data
    torch.backends.cudnn.benchmark = True
    where = cache_placement(sum(t.numel() * t.element_size() for t in data), torch.cuda.mem_get_info(device)[0])
    if where == "device":
        return tuple(t.to(device) for t in data)  # type: ignore[return-value]
    return tuple(t.pin_memory() for t in data)  # type: ignore[return-value]


def cache_placement(nbytes: int, free_bytes: int) -> str:
    """``device`` when a training cache of ``nbytes`` takes at most :data:`DEVICE_CACHE_SHARE`
    of a GPU's ``free_bytes``, else ``pinned`` (host memory, asynchronous copies)."""
    return "device" if nbytes <= DEVICE_CACHE_SHARE * free_bytes else "pinned"


class Trainer:
    """Trains ``model`` on in-memory uint8 data (images ``N x C x H x W``, masks ``N x H x W``)
    with the settings of a config's ``train``, ``optimizer`` and ``schedule`` sections and a
    resolved ``precision`` (fp32, bf16 or fp16); events go to ``callbacks`` (module docstring).

    ``epochs`` is the plan (``train.epochs`` unless a callback re-plans it with
    :meth:`set_epochs`); ``stop_reason`` says why :meth:`fit` ended.
    """

    def __init__(self, model: torch.nn.Module, loss_fn: Callable, augment: Optional[torch.nn.Module],
                 train_data: tuple[torch.Tensor, torch.Tensor], *, train: TrainConfig, optimizer: OptimizerConfig,
                 schedule: ScheduleConfig, precision: str, device: torch.device,
                 callbacks: Sequence[Callback] = ()):
        if device.type == "cpu":
            keep_freed_memory()
        self.model = model.to(device)
        self.loss_fn = loss_fn
        self.augment = augment
        self.train_images, self.train_masks = place_data(train_data, device)
        self.config, self.optimizer_config = train, optimizer
        self.precision = precision
        self.device = device
        if train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.rank, self.world = rank_world()
        # DDP broadcasts rank 0's weights on construction and averages gradients in backward;
        # ``self.model`` stays the bare module, so checkpoints and validation never see the wrapper
        self.net = self.model
        if self.world > 1:
            ids = [device.index if device.index is not None else torch.cuda.current_device()] \
                if device.type == "cuda" else None
            self.net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids,
                                                                 gradient_as_bucket_view=True)
        # train.compile: the training forward through torch.compile, eager again if compiling fails
        self.compiled = resolve_compile(train.compile, device)
        if self.compiled:
            self.net = CompiledOrEager(self.net)
        self.optimizer = self._make_optimizer()
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.callbacks = list(callbacks)
        self.epochs = train.epochs
        self.schedule = LRSchedule(optimizer.lr, schedule.min_lr, schedule.name,
                                   schedule.warmup_epochs * self.steps_per_epoch, self.epochs * self.steps_per_epoch)
        self.epoch = 0  # epochs completed
        self.step = 0
        self.history: list[dict] = []
        self.stop_reason: Optional[StopReason] = None
        self.stop_message = ""

    def _make_optimizer(self) -> torch.optim.Optimizer:
        o = self.optimizer_config
        # no weight decay on norms and biases: decaying them only hurts small models
        decay, no_decay = [], []
        for p in self.model.parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 else decay).append(p)
        groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        if o.name == "sgd":
            return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum)
        # the fused kernel updates every tensor in one pass instead of ~10 small ops per tensor
        return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), fused=self.device.type in ("cpu", "cuda"))

    def callback(self, kind: type) -> Optional[Callback]:
        """The first callback of type ``kind``, or None."""
        return next((cb for cb in self.callbacks if isinstance(cb, kind)), None)

    def _fire(self, event: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, event)(self, *args)

    @property
    def steps_per_epoch(self) -> int:
        n, b = len(self.train_images), self.config.batch_size
        full, rest = divmod(n, b)
        # a 1-image tail batch would break batch statistics (and one with fewer images than
        # ranks would leave a rank empty-handed); fold it away instead
        return full + (1 if rest > max(1, self.world - 1) else 0) if full else 1

    def set_epochs(self, epochs: int) -> None:
        """Re-plan the run to ``epochs`` epochs; the schedule follows (:meth:`LRSchedule.replan`)."""
        self.epochs = epochs
        self.schedule.replan(epochs * self.steps_per_epoch, self.step)

    def current_lr(self) -> float:
        """The learning rate of the next step."""
        return self.schedule.lr(self.step)

    def stop(self, reason: StopReason, message: str = "") -> None:
        """End training after the current epoch (the first request wins)."""
        if self.stop_reason is None:
            self.stop_reason, self.stop_message = reason, message

    # --- loop ------------------------------------------------------------------------

    def fit(self) -> StopReason:
        """Train until the planned epochs (or ``train.stop_after``) are done or a callback stops
        it; returns (and keeps in ``stop_reason``) why it ended.

        :raises Diverged: the training loss of an epoch is NaN or infinite.
        """
        self.stop_reason, self.stop_message = None, ""
        self._fire("on_fit_start")
        stop_after = self.config.stop_after
        try:
            while self.stop_reason is None:
                if self.epoch >= self.epochs:
                    self.stop(StopReason.COMPLETED)
                    break
                if stop_after and self.epoch >= stop_after:
                    self.stop(StopReason.STOP_AFTER, f"stopped after epoch {stop_after} (train.stop_after)")
                    break
                record = self.train_epoch()
                if not math.isfinite(record.train_loss):
                    raise Diverged(f"epoch {record.epoch}: the training loss became {record.train_loss} "
                                   f"(learning rate {record.lr:.3g}); lower the learning rate or clip gradients "
                                   "(train.grad_clip); the checkpoints keep the last finite epoch")
                self.history.append(self._entry(record))
                for cb in self.callbacks:
                    cb.on_epoch_end(self, record)
                    # the entry follows what callbacks add (validation scores) before the next one
                    # reads it (the checkpoint commit writes the history)
                    self.history[-1] = self._entry(record)
        except StopTraining as exc:
            self.stop(exc.reason, str(exc))
        self._fire("on_fit_end")
        return self.stop_reason

    def _entry(self, record: EpochRecord) -> dict:
        """The history entry of ``record``: its fields, without the EMA columns when no callback
        keeps an EMA."""
        entry = asdict(record)
        if not any(getattr(cb, "ema_model", None) is not None for cb in self.callbacks):
            del entry["val_loss_ema"], entry["val_score_ema"]
        return entry

    def train_epoch(self) -> EpochRecord:
        """One pass over the training images in shuffled batches (augmented on the device); returns
        its :class:`EpochRecord`.
        """
        c = self.config
        self.model.train()
        # per-epoch seeding makes shuffling, augmentation and dropout replayable on resume
        torch.manual_seed(c.seed * 1_000_003 + self.epoch)
        n = len(self.train_images)
        order = torch.randperm(n)
        if self.world > 1:  # same permutation everywhere, but each rank its own augmentation draws
            torch.manual_seed((c.seed * 1_000_003 + self.epoch) * 1009 + self.rank)
        steps = self.steps_per_epoch
        bounds = [(i * c.batch_size, min(n, (i + 1) * c.batch_size)) for i in range(steps)]
        if bounds and bounds[-1][1] < n:  # fold a too-small tail into the last batch
            bounds[-1] = (bounds[-1][0], n)
        t0 = time.perf_counter()
        total_loss, seen = torch.zeros((), device=self.device), 0
        for i, (a, b) in enumerate(bounds):
            idx = order[a:b]
            if self.world > 1:
                idx = idx.tensor_split(self.world)[self.rank]
            loss, lr = self._step(idx, weight=len(idx) * self.world / (b - a) if self.world > 1 else 1.0)
            total_loss += loss.detach() * len(idx)
            seen += len(idx)
            self._fire("on_batch_end", i, loss)
        if self.world > 1:
            totals = all_reduce(torch.stack([total_loss, torch.tensor(float(seen), device=self.device)]))
            total_loss, seen = totals[0], int(totals[1])
        train_loss = float(total_loss) / max(1, seen)  # waits for the device, so the time below is real
        seconds = time.perf_counter() - t0
        self.epoch += 1
        return EpochRecord(epoch=self.epoch, train_loss=train_loss, lr=lr,
                           seconds=round(seconds, 3), images_per_s=round(seen / max(seconds, 1e-9), 3))

    def _step(self, idx: torch.Tensor, weight: float = 1.0) -> tuple[torch.Tensor, float]:
        """One optimizer step on the images ``idx``: (the batch's loss, the learning rate used).
        ``weight`` scales the loss of a rank's uneven shard so DDP's average is the global mean."""
        c = self.config
        x = self.train_images[idx].to(self.device, non_blocking=True).float().div_(255)
        y = self.train_masks[idx].to(self.device, non_blocking=True).long()
        if self.augment is not None:
            with torch.no_grad():
                x, y = self.augment(x, y)
        if c.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        lr = self.current_lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss = self._backward(x, y, weight)
        if c.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        return loss, lr

    def _backward(self, x: torch.Tensor, y: torch.Tensor, weight: float) -> torch.Tensor:
        """Forward and backward the batch ``x``, ``y`` (whole, or in ``train.micro_batch``
        chunks whose losses are weighted by their share of the batch, so the summed gradient is
        the batch mean's where the loss is a per-pixel mean); returns the batch's loss. Under
        DDP only the last chunk's backward averages gradients across ranks."""
        size = self.config.micro_batch or len(x)
        starts = range(0, len(x), size)
        total = torch.zeros((), device=x.device)
        for start in starts:
            part = x[start:start + size], y[start:start + size]
            share = len(part[0]) / len(x)
            last = start == starts[-1]
            syncing = contextlib.nullcontext() if last or not hasattr(self.net, "no_sync") else self.net.no_sync()
            with syncing:
                with autocast(self.device, self.precision):
                    logits = self.net(part[0])
                loss = self.loss_fn(logits.float(), part[1])
                # the logits (a B x K x H x W float32 map, 171 MiB at 384px, batch 16) are not
                # needed by the backward pass: freed here, not after it
                del logits
                self.scaler.scale(loss * (weight * share) if weight * share != 1.0 else loss).backward()
            total += loss.detach() * share
        return total

    # --- checkpoints -----------------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything a resume needs, the callbacks' states included, as tensors and plain types
        (loadable with ``weights_only=True``)."""
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scaler": self.scaler.state_dict(), "epoch": self.epoch, "step": self.step,
                 "history": self.history, "epochs_planned": self.epochs, "schedule": self.schedule.state_dict()}
        for cb in self.callbacks:
            state.update(cb.state_dict())
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` saved (older checkpoints without a schedule state get
        the plan they recorded)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        for key in ("epoch", "step", "history"):
            setattr(self, key, state[key])
        if state.get("epochs_planned"):  # a budget's plan: the cosine goes on where it was
            self.epochs = int(state["epochs_planned"])
            self.schedule.total = self.epochs * self.steps_per_epoch
        self.schedule.load_state_dict(state.get("schedule") or {})
        for cb in self.callbacks:
            cb.load_state_dict(state)
