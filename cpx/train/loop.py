"""A short, model-agnostic training loop with callbacks (after minGPT's trainer).

Data lives in memory as uint8 tensors and is augmented a whole batch at a time on the
training device, so no per-sample decoding or Python augmentation sits in the hot loop.
Randomness is reseeded from (seed, epoch) at the start of every epoch: a run resumed from an
epoch boundary replays exactly what an uninterrupted run would have done.

Data-parallel training: when a ``torch.distributed`` process group is up, every rank draws the
same epoch permutation, cuts each global batch into disjoint per-rank shards and trains a
DistributedDataParallel wrapper (gradients averaged); epoch losses and validation scores are
summed across ranks, so every rank sees the same numbers and takes the same decisions.
"""

from __future__ import annotations

import copy
import math
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import torch

from cpx.data.competition import Competition
from cpx.eval.metrics import Metric, ScoreAccumulator
from cpx.eval.predict import Member, Predictor
from cpx.eval.validate import Evaluation, Labelled, evaluate, in_batches
from cpx.kernel.device import autocast, keep_freed_memory
from cpx.kernel.errors import RunError
from cpx.train.collective import all_reduce, rank_world


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


@dataclass
class TrainerSettings:
    """The loop's settings, taken from an experiment config with a resolved precision."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    optimizer: str = "adamw"
    momentum: float = 0.9
    schedule: str = "cosine"
    warmup_epochs: int = 0
    min_lr: float = 0.0
    grad_clip: Optional[float] = 1.0
    patience: Optional[int] = None
    seed: int = 0
    val_every: int = 1
    precision: str = "fp32"  # resolved: fp32, bf16 or fp16
    channels_last: bool = False
    val_batch_size: int = 16
    ema: Optional[float] = None  # decay of the weights' exponential moving average; None: no EMA
    stop_after: Optional[int] = None  # end after this epoch, the schedule still planned for ``epochs``
    # the weights best.pt keeps when nothing is validated: "ema" or "raw" (default: ema when on)
    select_weights: Optional[str] = None


def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float, min_lr: float, schedule: str) -> float:
    """The learning rate at optimizer ``step``: linear warm-up over ``warmup_steps`` to
    ``base_lr``, then constant or cosine to ``min_lr`` at ``total_steps`` (SGDR's half cosine,
    Loshchilov & Hutter 2017, without restarts).
    """
    if warmup_steps and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * progress))


def ema_decay(decay: float, updates: int) -> float:
    """The EMA decay after ``updates`` optimizer steps: ``min(decay, (1 + n) / (10 + n))``.

    The warm-up is TensorFlow's ``tf.train.ExponentialMovingAverage(num_updates=...)``: early
    on the average follows the weights closely, so a short run's EMA is not stuck near its
    random initialisation (a constant 0.999 would keep 0.999**100 = 90% of it after 100 steps).
    """
    return min(decay, (1.0 + updates) / (10.0 + updates))


class Diverged(RunError):
    """The training loss became NaN or infinite."""


class StopTraining(Exception):
    """Raised by a callback to end training after the current epoch (e.g. a time budget)."""


class Trainer:
    """Trains ``model`` on in-memory uint8 data; events go to callbacks.

    Events: ``on_batch_end(trainer, batch, loss)``, ``on_epoch_end(trainer, record)``,
    ``on_train_end(trainer)``. A callback may raise :class:`StopTraining`.
    """

    def __init__(self, model: torch.nn.Module, loss_fn: Callable, augment: Optional[torch.nn.Module],
                 train_data: tuple[torch.Tensor, torch.Tensor], val_data: Optional[list[Labelled]],
                 settings: TrainerSettings, competition: Competition, metric: Metric, device: torch.device,
                 image_size: int):
        if device.type == "cpu":
            keep_freed_memory()
        self.model = model.to(device)
        self.loss_fn = loss_fn
        self.augment = augment
        self.train_images, self.train_masks = train_data
        self.val_data = val_data
        self.settings = settings
        self.competition = competition
        self.metric = metric
        self.num_classes = competition.num_classes
        self.image_size = image_size
        self.device = device
        if settings.channels_last:
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
        # the EMA copy follows the bare module's parameters after every step; buffers (batch-norm
        # statistics) are copied, not averaged, so they match the weights they were measured with
        self.ema_model: Optional[torch.nn.Module] = None
        if settings.ema is not None:
            self.ema_model = copy.deepcopy(self.model).eval()
            for p in self.ema_model.parameters():
                p.requires_grad_(False)
        self.optimizer = self._make_optimizer()
        self.scaler = torch.amp.GradScaler(device.type, enabled=settings.precision == "fp16")
        self.callbacks: dict[str, list[Callable]] = defaultdict(list)
        self.epoch = 0  # epochs completed
        self.step = 0
        self.best_score: Optional[float] = None
        self.best_epoch = 0
        self.stale = 0  # validations since the last improvement
        self.history: list[dict] = []
        self.stop_reason = ""
        # which weights scored best: "ema" or "raw" (best.pt says which)
        self.best_weights = settings.select_weights or ("ema" if self.ema_model is not None else "raw")
        # the best validation in full (``Evaluation.to_dict()``, with each image's score), for
        # the ledger's row of the run's best epoch
        self.best_scores: Optional[dict] = None

    # --- setup -----------------------------------------------------------------------

    def _make_optimizer(self) -> torch.optim.Optimizer:
        s = self.settings
        # no weight decay on norms and biases: decaying them only hurts small models
        decay, no_decay = [], []
        for p in self.model.parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 else decay).append(p)
        groups = [{"params": decay, "weight_decay": s.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        if s.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=s.lr, momentum=s.momentum)
        # the fused kernel updates every tensor in one pass instead of ~10 small ops per tensor
        return torch.optim.AdamW(groups, lr=s.lr, betas=s.betas, fused=self.device.type in ("cpu", "cuda"))

    def add_callback(self, event: str, fn: Callable) -> None:
        """Call ``fn(trainer, *args)`` on ``event``: ``on_batch_end`` (i, loss), ``on_epoch_end``
        (record) or ``on_train_end``.
        """
        self.callbacks[event].append(fn)

    def _fire(self, event: str, *args) -> None:
        for fn in self.callbacks[event]:
            fn(self, *args)

    @property
    def steps_per_epoch(self) -> int:
        n, b = len(self.train_images), self.settings.batch_size
        full, rest = divmod(n, b)
        # a 1-image tail batch would break batch statistics (and one with fewer images than
        # ranks would leave a rank empty-handed); fold it away instead
        return full + (1 if rest > max(1, self.world - 1) else 0) if full else 1

    def current_lr(self) -> float:
        """The learning rate of the next step."""
        s = self.settings
        total = s.epochs * self.steps_per_epoch
        return lr_at(self.step, total, s.warmup_epochs * self.steps_per_epoch, s.lr, s.min_lr, s.schedule)

    # --- loop ------------------------------------------------------------------------

    def fit(self) -> None:
        """Train until ``settings.epochs`` (or ``settings.stop_after``), early stopping
        (``patience`` validations without improvement) or a callback's :class:`StopTraining`.

        :raises Diverged: the training loss of an epoch is NaN or infinite.
        """
        s = self.settings
        try:
            while self.epoch < min(s.epochs, s.stop_after or s.epochs):
                record = self.train_epoch()
                if not math.isfinite(record.train_loss):
                    raise Diverged(f"epoch {record.epoch}: the training loss became {record.train_loss} "
                                   f"(learning rate {record.lr:.3g}); lower the learning rate or clip gradients "
                                   "(train.grad_clip); the checkpoints keep the last finite epoch")
                last = self.epoch in (s.epochs, s.stop_after)
                if self.val_data is not None and ((self.epoch % s.val_every == 0) or last):
                    raw = self.validate()
                    record.val_loss, record.val_score = raw.loss, raw.score
                    best, kind = raw, "raw"
                    if self.ema_model is not None:
                        ema = self.validate(self.ema_model)
                        record.val_loss_ema, record.val_score_ema = ema.loss, ema.score
                        if not self.metric.better(raw.score, ema.score):  # a tie goes to the EMA
                            best, kind = ema, "ema"
                    if self.metric.better(best.score, self.best_score):
                        self.best_score, self.best_epoch, self.stale, self.best_weights = best.score, self.epoch, 0, kind
                        record.improved = True
                        # the scores of the weights that won, which best.pt holds
                        self.best_scores = best.to_dict()
                    else:
                        self.stale += 1
                entry = asdict(record)
                if self.ema_model is None:
                    del entry["val_loss_ema"], entry["val_score_ema"]
                self.history.append(entry)
                self._fire("on_epoch_end", record)
                if s.patience and self.stale >= s.patience:
                    self.stop_reason = f"no improvement in {self.stale} validations (patience)"
                    break
        except StopTraining as exc:
            self.stop_reason = str(exc) or "stopped by a callback"
        self._fire("on_train_end")

    def train_epoch(self) -> EpochRecord:
        """One pass over the training images in shuffled batches (augmented on the device); returns
        its :class:`EpochRecord`.
        """
        s = self.settings
        self.model.train()
        # per-epoch seeding makes shuffling, augmentation and dropout replayable on resume
        torch.manual_seed(s.seed * 1_000_003 + self.epoch)
        n = len(self.train_images)
        order = torch.randperm(n)
        if self.world > 1:  # same permutation everywhere, but each rank its own augmentation draws
            torch.manual_seed((s.seed * 1_000_003 + self.epoch) * 1009 + self.rank)
        steps = self.steps_per_epoch
        bounds = [(i * s.batch_size, min(n, (i + 1) * s.batch_size)) for i in range(steps)]
        if bounds and bounds[-1][1] < n:  # fold a too-small tail into the last batch
            bounds[-1] = (bounds[-1][0], n)
        t0 = time.perf_counter()
        total_loss, seen = torch.zeros((), device=self.device), 0
        for i, (a, b) in enumerate(bounds):
            idx = order[a:b]
            if self.world > 1:
                idx = idx.tensor_split(self.world)[self.rank]
            x = self.train_images[idx].to(self.device, non_blocking=True).float().div_(255)
            y = self.train_masks[idx].to(self.device, non_blocking=True).long()
            if self.augment is not None:
                with torch.no_grad():
                    x, y = self.augment(x, y)
            if s.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            lr = self.current_lr()
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            with autocast(self.device, s.precision):
                logits = self.net(x)
            loss = self.loss_fn(logits.float(), y)
            self.optimizer.zero_grad(set_to_none=True)
            # DDP averages per-rank gradients; weighting by shard size keeps that equal to the
            # gradient of the global batch's mean loss when a tail batch splits unevenly
            weight = len(idx) * self.world / (b - a) if self.world > 1 else 1.0
            self.scaler.scale(loss * weight if weight != 1.0 else loss).backward()
            if s.grad_clip:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), s.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.step += 1
            if self.ema_model is not None:
                self._update_ema()
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

    @torch.no_grad()
    def _update_ema(self) -> None:
        """ema = d * ema + (1 - d) * weights for every parameter (d from :func:`ema_decay`);
        buffers copied."""
        d = ema_decay(self.settings.ema, self.step)
        ema_params = [p for p in self.ema_model.parameters()]
        params = [p.detach() for p in self.model.parameters()]
        torch._foreach_lerp_(ema_params, params, 1.0 - d)
        for ema_buf, buf in zip(self.ema_model.buffers(), self.model.buffers()):
            ema_buf.copy_(buf)

    @torch.no_grad()
    def validate(self, model: Optional[torch.nn.Module] = None) -> Evaluation:
        """The competition's metric and the validation loss of ``model`` (default: the trained
        weights; the EMA copy is validated through this too), through the one prediction-and-
        scoring loop (:func:`cpx.eval.validate.evaluate`) at each mask's own size.

        Under data parallelism each rank scores every world-th image, and the per-image counts
        of all ranks are gathered, so every rank sees the whole set's score.
        """
        model = model or self.model
        model.eval()
        items = self.val_data if self.world == 1 else self.val_data[self.rank::self.world]
        predictor = Predictor([Member(model, self.image_size)], self.competition, device=self.device,
                              precision=self.settings.precision, prepare=False)
        evaluation = evaluate(predictor, in_batches(items, self.settings.val_batch_size), self.metric,
                              loss_fn=self.loss_fn)
        if self.world > 1:
            evaluation = gather_evaluation(evaluation, self.metric, self.num_classes)
        return evaluation

    # --- checkpoints -----------------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything a resume needs, as tensors and plain types (loadable with
        ``weights_only=True``).
        """
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "stale": self.stale,
            "history": self.history,
            "best_scores": self.best_scores,
            "best_weights": self.best_weights,
            **({"ema": self.ema_model.state_dict()} if self.ema_model is not None else {}),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        for key in ("epoch", "step", "best_epoch", "stale", "history"):
            setattr(self, key, state[key])
        # checkpoints of older versions call it best_f, with -1 for "none yet"
        best = state.get("best_score", state.get("best_f"))
        self.best_score = None if best is None or best == -1.0 and "best_f" in state else best
        self.best_scores = state.get("best_scores")  # absent from checkpoints of older versions
        self.best_weights = state.get("best_weights", self.best_weights)
        if self.ema_model is not None:
            if "ema" not in state:
                raise RunError("the resume state holds no EMA weights (the run was started without train.ema)")
            self.ema_model.load_state_dict(state["ema"])


def gather_evaluation(evaluation: Evaluation, metric: Metric, num_classes: int) -> Evaluation:
    """One rank's :class:`Evaluation` of its share of the images, combined with every other
    rank's: their per-image counts gathered, the metric computed on all of them."""
    import torch.distributed as dist

    mine = (evaluation.names, evaluation.accumulator.counts(), evaluation.loss, len(evaluation.names))
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    acc = ScoreAccumulator(metric, num_classes)
    names: list[str] = []
    loss_sum, count = 0.0, 0
    for part_names, (tp, fp, fn), loss, n in everyone:
        acc.add_counts(tp, fp, fn)
        names.extend(part_names)
        if loss is not None:
            loss_sum, count = loss_sum + loss * n, count + n
    scores = acc.compute()
    evaluation.names, evaluation.scores = names, scores
    evaluation.per_image = dict(zip(names, scores.per_image))
    evaluation.loss = loss_sum / count if count else None
    return evaluation
