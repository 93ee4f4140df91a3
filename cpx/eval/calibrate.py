"""Per-class logit offsets fitted for the competition's metric (``cpx calibrate``).

Adding an offset ``b_c`` to class c's logits before the argmax trades that class's precision
for recall, and a metric rarely weighs both as plain pixel accuracy does: the CelebAMask F
averages, per image, the F of the classes present in its ground truth, so a small class that
is missed costs a whole term while its false positives elsewhere cost little; a pooled IoU of
one class weighs its false positives and negatives alike. The offsets are fitted for whatever
metric the competition ranks by (calibrate what is scored). ``b_0 = 0`` is fixed: one
constant added to every class changes no argmax.

Fitting is coordinate ascent over the classes on cached logits at each mask's own size (the
model's mean view logits, stored as float16): for class c every candidate shift ``d`` of a
grid is scored at once. With ``m`` = the pixel's class-c logit minus the best other class's
and ``k*`` that other class, the pixel is predicted c exactly when ``m + d > 0``, else ``k*``;
counting pixels by (ground truth, ``k*``, first grid index where they turn to c) gives every
candidate's per-image confusion matrix, hence its per-image counts and the metric (per-image
mean or pooled), in one pass over the pixels. The best shift is kept when it improves the
metric by more than ``MIN_GAIN`` (on 0..1); rounds repeat until nothing changes (at most
``MAX_ROUNDS``), each offset within +-``MAX_OFFSET``.

The gain is measured honestly by 2-fold cross-fitting: the validation images are split in two
halves (a seeded permutation), offsets fitted on one half are scored on the other, both ways;
only then are the stored offsets fitted on all of them. Scores are exact (the scorer's metric
on the argmax of the cached logits plus offsets). Predictions through
:class:`cpx.eval.predict.Predictor` apply the stored offsets to the same logits (their sum
over TTA views plus ``n_views x offsets``).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from cpx.eval.metrics import Metric, ScoreAccumulator, class_ids, counts_of, create_metric, metric_tag
from cpx.eval.predict import is_ensemble, parse_tta, predictor_for_run, tta_label
from cpx.eval.validate import labelled_files, read_labelled
from cpx.kernel.errors import ConfigError, DataError, RunError
from cpx.kernel.files import check_writable, sha256_file
from cpx.kernel.manager import PluginHost
from cpx.kernel.text import utc_now
from cpx.kernel.workspace import Workspace
from cpx.runs.handle import open_run

GRID = tuple(round(-2.0 + 0.1 * i, 4) for i in range(41))  # candidate shifts per class step
MAX_OFFSET = 3.0
MAX_ROUNDS = 4
MIN_GAIN = 1e-5  # a shift must improve the metric (on 0..1) by more than this to be kept

Progress = Optional[Callable[[str, int, int], None]]


@dataclass
class CachedLogits:
    """One image's logits, ``C x P`` float16 (P = its mask's pixels), and its ground truth
    (``P`` uint8 class ids)."""

    logits: torch.Tensor
    truth: torch.Tensor


def _accumulate(cache: Sequence[CachedLogits], offsets: Sequence[float], metric: Metric,
                num_classes: int) -> ScoreAccumulator:
    b = torch.tensor([float(v) for v in offsets], dtype=torch.float32).view(-1, 1)
    acc = ScoreAccumulator(metric, num_classes)
    for item in cache:
        pred = class_ids((item.logits.float() + b).unsqueeze(0))
        acc.update(pred, item.truth.unsqueeze(0))
    return acc


def per_image_scores(cache: Sequence[CachedLogits], offsets: Sequence[float], metric: Metric,
                     num_classes: int) -> list[float]:
    """Each image's value of ``metric`` (on its scale, in ``cache`` order) for the argmax of its
    cached logits plus ``offsets`` (one per class)."""
    return list(_accumulate(cache, offsets, metric, num_classes).compute().per_image)


def set_score(cache: Sequence[CachedLogits], offsets: Sequence[float], metric: Metric, num_classes: int) -> float:
    """``metric`` over the cached images (on its scale) of the argmax of their logits plus
    ``offsets``, exactly as the scorer computes it."""
    return _accumulate(cache, offsets, metric, num_classes).compute().score if cache else 0.0


class _Top2:
    """Per image, the two largest of ``logits + b`` per pixel (values and classes), kept up to
    date as single offsets change."""

    def __init__(self, cache: Sequence[CachedLogits], b: torch.Tensor):
        self.cache, self.b = cache, b
        self.v1, self.i1, self.v2, self.i2 = [], [], [], []
        for item in cache:
            v, i = (item.logits.float() + b.view(-1, 1)).topk(2, dim=0)
            self.v1.append(v[0])
            self.i1.append(i[0])
            self.v2.append(v[1])
            self.i2.append(i[1])

    def shift(self, c: int, d: float) -> None:
        """Class c's offset grows by ``d``."""
        self.b[c] += d
        for k, item in enumerate(self.cache):
            v1, i1, v2, i2 = self.v1[k], self.i1[k], self.v2[k], self.i2[k]
            if d > 0:  # c can only climb: exact from the two values known
                new = item.logits[c].float() + self.b[c]
                top = i1 == c
                v1[top] = new[top]
                second = i2 == c
                v2[second] = new[second]
                enters = ~top & ~second & (new > v2)
                v2[enters], i2[enters] = new[enters], c
                swap = v2 > v1
                v1[swap], v2[swap] = v2[swap], v1[swap].clone()
                i1[swap], i2[swap] = i2[swap], i1[swap].clone()
            else:  # c falls: where it was among the two, a third class may come up; recompute there
                where = ((i1 == c) | (i2 == c)).nonzero().squeeze(1)
                if where.numel():
                    v, i = (item.logits[:, where].float() + self.b.view(-1, 1)).topk(2, dim=0)
                    v1[where], i1[where], v2[where], i2[where] = v[0], i[0], v[1], i[1]


def _candidate_scores(cache: Sequence[CachedLogits], top: _Top2, c: int, grid: torch.Tensor,
                      metric: Metric, num_classes: int) -> torch.Tensor:
    """``metric`` (on 0..1, signed so larger is better) for every shift in ``grid`` of class c's
    offset."""
    C, J = num_classes, len(grid)
    tps, fps, fns = [], [], []
    for k, item in enumerate(cache):
        own = item.logits[c].float() + top.b[c]
        is_top = top.i1[k] == c
        other = torch.where(is_top, top.v2[k], top.v1[k])
        runner_up = torch.where(is_top, top.i2[k], top.i1[k])
        # the first grid index at which the pixel turns to c (J: never within the grid)
        turn = torch.searchsorted(grid, (other - own).contiguous(), right=True)
        truth = item.truth.long()
        keep = truth < C  # ignored pixels (the profile's ignore index, letterbox padding) are not scored
        index = ((truth * C + runner_up) * (J + 1) + turn)[keep]
        counts = torch.bincount(index, minlength=C * C * (J + 1)).view(C, C, J + 1)
        to_c = counts.cumsum(-1)[..., :J].permute(2, 0, 1)  # J x truth x runner-up
        conf = counts.sum(-1).unsqueeze(0) - to_c
        conf[:, :, c] += to_c.sum(-1)
        tp, fp, fn = counts_of(conf)
        tps.append(tp)
        fps.append(fp)
        fns.append(fn)
    tp, fp, fn = torch.stack(tps, 1), torch.stack(fps, 1), torch.stack(fns, 1)  # J x N x C
    values = torch.tensor([metric.value(tp[j], fp[j], fn[j]) for j in range(J)], dtype=torch.float64)
    return values if metric.greater_is_better else -values


def fit_offsets(cache: Sequence[CachedLogits], metric: Metric, num_classes: int, *, grid: Sequence[float] = GRID,
                max_rounds: int = MAX_ROUNDS, max_offset: float = MAX_OFFSET, min_gain: float = MIN_GAIN,
                fixed: Sequence[int] = (0,)) -> list[float]:
    """Per-class logit offsets (``num_classes`` floats, ``fixed`` classes at 0) that improve
    ``metric`` on the cached images, by coordinate ascent (module docstring).

    :raises DataError: no images.
    """
    if not cache:
        raise DataError("no images to calibrate on")
    grid_t = torch.tensor(sorted(float(g) for g in grid), dtype=torch.float32)
    zero = int(torch.argmin(grid_t.abs()))
    if float(grid_t[zero]) != 0.0:
        raise ConfigError("the calibration grid must hold 0 (no change)")
    b = torch.zeros(num_classes, dtype=torch.float32)
    top = _Top2(cache, b)
    order = [c for c in range(num_classes) if c not in set(fixed)]
    for _ in range(max_rounds):
        changed = False
        for c in order:
            scores = _candidate_scores(cache, top, c, grid_t, metric, num_classes)
            allowed = (top.b[c] + grid_t).abs() <= max_offset + 1e-6
            scores[~allowed] = -np.inf
            # the best shift, the smallest on a tie
            best = max(range(len(grid_t)), key=lambda j: (float(scores[j]), -abs(float(grid_t[j]))))
            if best != zero and float(scores[best] - scores[zero]) > min_gain:
                top.shift(c, float(grid_t[best]))
                changed = True
        if not changed:
            break
    return [round(float(v), 6) for v in top.b]


@dataclass
class Fold:
    """One half of the 2-fold check: offsets fitted on ``fit_on`` images, scored on the other
    ``scored_on``: the metric before and after, and the gain."""

    fit_on: int
    scored_on: int
    before: float
    after: float

    @property
    def gain(self) -> float:
        return self.after - self.before


@dataclass
class CalibrationResult:
    """What ``cpx calibrate`` measured and fitted: the offsets (fitted on every validation
    image), the two held-out folds and their mean gain, the in-sample score before and after (an
    optimistic number), and whether and where the offsets were stored; scores on the
    competition metric's scale."""

    run_id: str
    checkpoint: str
    tta: tuple
    classes: tuple[str, ...]
    offsets: list[float]
    folds: list[Fold]
    before: float
    after: float
    images: int
    seconds: float
    # image name -> [score without offsets, with the offsets fitted on the other half]: the
    # cross-fitted per-image scores behind the folds, for paired comparisons
    heldout_per_image: dict[str, list[float]] = field(default_factory=dict)
    metric: str = ""
    stored: bool = False
    path: str = ""
    message: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def mean_gain(self) -> float:
        """The mean held-out change of the score; for a lower-is-better metric negative is good."""
        return float(np.mean([f.gain for f in self.folds])) if self.folds else 0.0

    def to_dict(self) -> dict:
        """JSON-ready form."""
        out = asdict(self)
        out["tta"] = tta_label(self.tta)
        out["folds"] = [{**asdict(f), "gain": f.gain} for f in self.folds]
        out["mean_heldout_gain"] = self.mean_gain
        return out


def cache_logits(predictor, root, names: Sequence[str], competition, *, part: str = "train", batch_size: int = 8,
                 progress: Progress = None) -> list[CachedLogits]:
    """The predictor's mean view logits for the named labelled images of ``root`` (``part``: the
    training or the organisers' validation folders), at each mask's own size, with the ground
    truth: what :func:`fit_offsets` works on."""
    files = labelled_files(root, list(names), competition, part)
    cache = []
    for batch in read_labelled(files, competition, batch_size):
        logits = predictor.logits([item.image for item in batch], sizes=[tuple(item.mask.shape) for item in batch])
        for lg, item in zip(logits, batch):
            cache.append(CachedLogits(lg.reshape(lg.shape[0], -1).to(torch.float16), item.mask.reshape(-1).clone()))
        if progress:
            progress("logits", len(cache), len(files))
    return cache


def calibrate_run(ref: str, workspace: Workspace, host: PluginHost, *, checkpoint: str = "best", tta=(),
                  device: str = "auto", precision: str = "auto", batch_size: int = 8, store: bool = True,
                  force: bool = False, seed: int = 0, progress: Progress = None,
                  allow_changed_data: bool = False) -> CalibrationResult:
    """``cpx calibrate``: fit per-class logit offsets on a run's validation images, measure the
    gain by 2-fold cross-fitting, and (with ``store``) write the offsets fitted on all images to
    the run's ``calibration.json``, which validate, predict and package then apply. Offsets
    whose mean held-out gain is not positive are only stored with ``force``.

    :raises RunError: an ensemble, a run without validation images (a refit) or data.
    :raises DataError: the run's data folder no longer holds what it trained on (unless
        ``allow_changed_data``).
    :raises NotWritable: ``store`` with a read-only run folder (checked before any work).
    """
    start = time.perf_counter()
    run = open_run(ref, workspace, host)
    if is_ensemble(run.row):
        raise RunError(f"run {run.id} is an ensemble; calibration fits one model's logits")
    names = run.val_names
    if not names:
        why = (f"it is a refit of {run.row['refit_of']} (every labelled image trained); calibrate that run"
               if run.row.get("refit_of") else "it has no validation list")
        raise RunError(f"run {run.id} has no held-out images to calibrate on: {why}")
    root = run.checked_data_root(allow_changed=allow_changed_data)
    if len(names) < 4:
        raise RunError(f"run {run.id} holds {len(names)} validation images; calibration needs at least 4")
    if store:
        check_writable(run.folder.calibration_path)
    competition = run.competition
    predictor = predictor_for_run(run.id, workspace, host, checkpoint=checkpoint, tta=parse_tta(tta),
                                  device=device, precision=precision, calibration=False)
    part = (run.folder.read_data_info() or {}).get("val_part", "train")
    cache = cache_logits(predictor, root, names, competition, part=part, batch_size=batch_size, progress=progress)
    metric = create_metric(competition, host)
    k = competition.num_classes
    zero = [0.0] * k

    order = np.random.RandomState(seed).permutation(len(cache))
    halves = [order[: len(cache) // 2].tolist(), order[len(cache) // 2:].tolist()]
    folds = []
    heldout: dict[str, list[float]] = {}
    for i, (fit_idx, score_idx) in enumerate((halves, halves[::-1])):
        fitted = fit_offsets([cache[j] for j in fit_idx], metric, k)
        held = [cache[j] for j in score_idx]
        before, after = per_image_scores(held, zero, metric, k), per_image_scores(held, fitted, metric, k)
        heldout.update({names[j]: [b, a] for j, b, a in zip(score_idx, before, after)})
        folds.append(Fold(len(fit_idx), len(score_idx), set_score(held, zero, metric, k),
                          set_score(held, fitted, metric, k)))
        if progress:
            progress("folds", i + 1, 3)
    offsets = fit_offsets(cache, metric, k)
    if progress:
        progress("folds", 3, 3)
    result = CalibrationResult(run_id=run.id, checkpoint=checkpoint, tta=predictor.tta,
                               classes=tuple(competition.classes), offsets=offsets, folds=folds,
                               before=set_score(cache, zero, metric, k), after=set_score(cache, offsets, metric, k),
                               images=len(cache), seconds=0.0, heldout_per_image=heldout,
                               metric=metric_tag(metric.name, metric.scale))
    if not store:
        result.message = "not stored (--no-store)"
    elif (result.mean_gain <= 0 if metric.greater_is_better else result.mean_gain >= 0) and not force:
        result.message = (f"not stored: the mean held-out gain is {result.mean_gain:+.4f}, so the offsets would not "
                          "help on unseen images (--force stores them anyway)")
    else:
        path = run.checkpoint_path(checkpoint)
        run.folder.write_calibration({
            "offsets": offsets, "classes": list(competition.classes), "checkpoint": checkpoint,
            "checkpoint_sha256": sha256_file(path), "tta": list(predictor.tta), "images": len(cache),
            "data": "val_list", "folds": [{**asdict(f), "gain": f.gain} for f in folds],
            "mean_heldout_gain": result.mean_gain, "heldout_per_image": heldout, "in_sample": {"before": result.before, "after": result.after},
            "grid": [min(GRID), max(GRID), len(GRID)], "max_offset": MAX_OFFSET, "split_seed": seed,
            "created_at": utc_now(),
        })
        result.stored, result.path = True, str(run.folder.calibration_path)
    result.seconds = time.perf_counter() - start
    return result
