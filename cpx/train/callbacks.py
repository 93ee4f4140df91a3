"""The training callbacks every run uses (:class:`cpx.train.loop.Callback`), in the order a run
lists them: the EMA of the weights, validation with the best epoch, early stopping, and the
crash-safe checkpoint commit. The wall-clock budget is :class:`cpx.train.budget.BudgetCallback`;
progress bars and sweeps bring their own.

Each keeps its own state and saves it with the run (``state_dict``: top-level keys of
``last.pt``, the names older checkpoints used, so they resume too).
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Optional

import torch

from cpx.data.competition import Competition
from cpx.eval.metrics import Metric, ScoreAccumulator
from cpx.eval.predict import Member, Predictor
from cpx.eval.validate import Evaluation, Labelled, evaluate, in_batches
from cpx.kernel.errors import RunError
from cpx.runs.commit import commit_epoch
from cpx.train.loop import Callback, EpochRecord, StopReason, Trainer

# validation batch size: images of one size per forward pass (memory, not speed, bounds it)
VAL_BATCH_SIZE = 16


def ema_decay(decay: float, updates: int) -> float:
    """The EMA decay after ``updates`` optimizer steps: ``min(decay, (1 + n) / (10 + n))``.

    The warm-up is TensorFlow's ``tf.train.ExponentialMovingAverage(num_updates=...)``: early
    on the average follows the weights closely, so a short run's EMA is not stuck near its
    random initialisation (a constant 0.999 would keep 0.999**100 = 90% of it after 100 steps).
    """
    return min(decay, (1.0 + updates) / (10.0 + updates))


class EMA(Callback):
    """An exponential moving average of the weights (``train.ema``): after every optimizer step
    ``ema = d * ema + (1 - d) * weights`` with ``d`` from :func:`ema_decay`; buffers (batch-norm
    statistics) are copied, not averaged, so they match the weights they were measured with.
    The copy is made from the trainer's model as prepared (device, memory format)."""

    def __init__(self, decay: float, model: torch.nn.Module):
        self.decay = decay
        self.ema_model = copy.deepcopy(model).eval()
        for p in self.ema_model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def on_batch_end(self, trainer: Trainer, batch: int, loss: torch.Tensor) -> None:
        d = ema_decay(self.decay, trainer.step)
        torch._foreach_lerp_(list(self.ema_model.parameters()), [p.detach() for p in trainer.model.parameters()],
                             1.0 - d)
        for ema_buf, buf in zip(self.ema_model.buffers(), trainer.model.buffers()):
            ema_buf.copy_(buf)

    def state_dict(self) -> dict:
        return {"ema": self.ema_model.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if "ema" not in state:
            raise RunError("the resume state holds no EMA weights (the run was started without train.ema)")
        self.ema_model.load_state_dict(state["ema"])


class Validation(Callback):
    """Scores the weights (and the EMA's, with an :class:`EMA`) with the competition's metric
    every ``every`` epochs and at the last planned one, through the one prediction-and-scoring
    loop (:func:`cpx.eval.validate.evaluate`) at each mask's own size; keeps the best epoch (in
    the metric's direction; a tie between raw and EMA goes to the EMA), which weights it was
    (``best_weights``: the kind best.pt holds) and its full scores (``best_scores``:
    ``Evaluation.to_dict()``, with each image's score). ``stale`` counts validations since the
    last improvement. Without ``val_data`` nothing is scored (a refit): ``best_weights`` is then
    ``select_weights`` (the parent's kind), else the EMA's when there is one.
    """

    def __init__(self, val_data: Optional[list[Labelled]], competition: Competition, metric: Metric,
                 image_size: int, every: int = 1, ema: Optional[EMA] = None, select_weights: Optional[str] = None):
        self.val_data, self.competition, self.metric = val_data, competition, metric
        self.image_size, self.every, self.ema = image_size, every, ema
        self.best_score: Optional[float] = None
        self.best_epoch = 0
        self.stale = 0
        self.best_weights = select_weights or ("ema" if ema is not None else "raw")
        self.best_scores: Optional[dict] = None

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        last = trainer.epoch in (trainer.epochs, trainer.config.stop_after)
        if self.val_data is None or not (trainer.epoch % self.every == 0 or last):
            return
        raw = self.validate(trainer, trainer.model)
        record.val_loss, record.val_score = raw.loss, raw.score
        best, kind = raw, "raw"
        if self.ema is not None:
            ema = self.validate(trainer, self.ema.ema_model)
            record.val_loss_ema, record.val_score_ema = ema.loss, ema.score
            if not self.metric.better(raw.score, ema.score):  # a tie goes to the EMA
                best, kind = ema, "ema"
        if self.metric.better(best.score, self.best_score):
            self.best_score, self.best_epoch, self.stale, self.best_weights = best.score, trainer.epoch, 0, kind
            record.improved = True
            self.best_scores = best.to_dict()  # the scores of the weights that won, which best.pt holds
        else:
            self.stale += 1

    @torch.no_grad()
    def validate(self, trainer: Trainer, model: torch.nn.Module) -> Evaluation:
        """The metric and the validation loss of ``model``. Under data parallelism each rank
        scores every world-th image and the per-image counts of all ranks are gathered, so every
        rank sees the whole set's score."""
        model.eval()
        items = self.val_data if trainer.world == 1 else self.val_data[trainer.rank::trainer.world]
        predictor = Predictor([Member(model, self.image_size)], self.competition, device=trainer.device,
                              precision=trainer.precision, prepare=False)
        evaluation = evaluate(predictor, in_batches(items, VAL_BATCH_SIZE), self.metric, loss_fn=trainer.loss_fn)
        if trainer.world > 1:
            evaluation = gather_evaluation(evaluation, self.metric, self.competition.num_classes)
        return evaluation

    def state_dict(self) -> dict:
        return {"best_score": self.best_score, "best_epoch": self.best_epoch, "stale": self.stale,
                "best_scores": self.best_scores, "best_weights": self.best_weights}

    def load_state_dict(self, state: dict) -> None:
        # checkpoints of older versions call the best score best_f, with -1 for "none yet"
        best = state.get("best_score", state.get("best_f"))
        self.best_score = None if best is None or (best == -1.0 and "best_score" not in state) else best
        self.best_epoch, self.stale = state.get("best_epoch", 0), state.get("stale", 0)
        self.best_scores = state.get("best_scores")
        self.best_weights = state.get("best_weights", self.best_weights)


class EarlyStopping(Callback):
    """Stops training once ``patience`` validations in a row did not improve on the best
    (:attr:`Validation.stale`), with :attr:`StopReason.PATIENCE`."""

    def __init__(self, patience: int, validation: Validation):
        self.patience, self.validation = patience, validation

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        if self.validation.stale >= self.patience:
            trainer.stop(StopReason.PATIENCE, f"no improvement in {self.validation.stale} validations (patience)")


class CheckpointCommit(Callback):
    """Commits every epoch in the crash-safe order :func:`cpx.runs.commit.commit_epoch` owns
    (a new best to ``.best.pt.next``, ``last.pt``, the rename to ``best.pt``, ``history.json``),
    then the ledger row: after any kill, :func:`cpx.runs.recovery.reconcile` rolls the run
    forward from ``last.pt``.

    ``best_payload(trainer, record)`` builds ``best.pt``; ``extra()`` adds the run's own keys to
    ``last.pt`` (config, data fingerprint, wall time, run id); ``on_commit(trainer, wall)``
    writes the ledger (it must never raise for a busy ledger). ``committed`` is the last epoch
    committed.
    """

    def __init__(self, folder, validation: Validation, best_payload: Callable[[Trainer, EpochRecord], dict],
                 extra: Callable[[], dict], on_commit: Callable[[Trainer], Any]):
        self.folder, self.validation = folder, validation
        self.best_payload, self.extra, self.on_commit = best_payload, extra, on_commit
        self.committed = 0

    def on_fit_start(self, trainer: Trainer) -> None:
        self.committed = trainer.epoch

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        improved = record.improved or self.validation.val_data is None
        state = trainer.state_dict()
        state.update(self.extra())
        commit_epoch(self.folder, state, self.best_payload(trainer, record) if improved else None, trainer.history)
        self.committed = trainer.epoch
        self.on_commit(trainer)


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


__all__ = ["CheckpointCommit", "EMA", "EarlyStopping", "Validation", "ema_decay", "gather_evaluation"]
