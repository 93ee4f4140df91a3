"""Ensembles of recorded runs: weighted softmax averages, scored on shared validation images.

Members may differ in architecture and input size: each predicts at its own training size
and its probabilities are resized to the mask before averaging (see ``cpx.eval.predict``).

Which images are scored: only those every member held out (the intersection of the
validation lists, in the first member's order). Scoring on the first member's list instead
would count images that another member trained on, and an ensemble would look better than
it is; when the lists differ, the result carries a warning saying how many images were dropped.

An ensemble is recorded as a run of kind ``ensemble`` with its members in the ledger and a run
folder holding ``ensemble.json`` (members, weights, TTA), ``val_list.txt`` and ``data.json``,
so ``predictor_for_run`` (and packaging) accept it like a trained run.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from cpx.eval.metrics import Metric, ScoreAccumulator, class_ids, create_metric
from cpx.eval.predict import Member, Predictor, class_softmax, is_ensemble, parse_tta, tta_label
from cpx.eval.validate import VAL_LIST, Evaluation, Labelled, evaluate, labelled_files, read_labelled, record_validation
from cpx.kernel.device import count_params, resolve_device
from cpx.kernel.errors import ConfigError, RunError
from cpx.kernel.files import check_writable
from cpx.kernel.manager import PluginHost
from cpx.kernel.text import utc_now
from cpx.kernel.workspace import Workspace
from cpx.runs.folder import VAL_LIST as VAL_LIST_FILE
from cpx.runs.folder import RunFolder, new_run_id
from cpx.runs.ledger import Ledger

Progress = Optional[Callable[[str, int, int], None]]
# Cached search probabilities are kept at most this many pixels on a side, in float16 when
# shrunk (about 220 MB per member for 90 512 px face images), so the search's scores are
# approximate for large masks; the chosen ensemble is always re-scored exactly.
SEARCH_SIDE = 256


@dataclass
class MemberScore:
    """One member of an ensemble: its run, checkpoint, weight and score (the competition's
    metric) on the shared images."""

    run: str
    name: str
    weight: float
    checkpoint: str
    score: float  # alone, on the shared images, with the same TTA
    recorded_val_score: Optional[float] = None


@dataclass
class EnsembleResult:
    """What :func:`build_ensemble` measured: members with their weights, the ensemble's
    evaluation, the best single member and the gain over it, and the greedy search steps.
    """

    members: list[MemberScore]
    evaluation: Optional[Evaluation]  # the ensemble's exact score (None if no ensemble came out)
    names: list[str]
    data_root: Path
    tta: tuple
    best_single: MemberScore
    gain: Optional[float]  # the ensemble's score minus the best single member's
    run_id: Optional[str] = None
    warnings: list[str] = field(default_factory=list)
    search_steps: list[dict] = field(default_factory=list)
    message: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {
            "run_id": self.run_id, "tta": tta_label(self.tta), "images": len(self.names),
            "data": str(self.data_root),
            "members": [m.__dict__ for m in self.members],
            "score": self.evaluation.score if self.evaluation else None,
            "metric": self.evaluation.scores.metric if self.evaluation else None,
            "evaluation": self.evaluation.to_dict() if self.evaluation else None,
            "best_single": self.best_single.__dict__, "gain": self.gain,
            "search_steps": self.search_steps, "warnings": self.warnings, "message": self.message,
            "seconds": round(self.seconds, 3),
        }


def parse_weights(text: Optional[str], count: Optional[int] = None) -> Optional[list[float]]:
    """``"0.5,0.3,0.2"`` -> ``[0.5, 0.3, 0.2]`` (None for no text).

    :raises ConfigError: not numbers, negative, all zero, or not ``count`` of them.
    """
    if not text:
        return None
    try:
        weights = [float(w) for w in text.split(",") if w.strip()]
    except ValueError:
        raise ConfigError(f"--weights: cannot read {text!r}; give numbers such as 2,1,1") from None
    if count is not None and len(weights) != count:
        raise ConfigError(f"--weights: {len(weights)} weight(s) for {count} run(s)")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ConfigError("--weights: weights must be non-negative with a positive sum")
    return weights


def top_runs(ledger: Ledger, k: int) -> list[dict]:
    """The ``k`` completed trained runs with the best validation score (of the best run's
    competition; the ledger orders higher first, the metrics cpx ships all being higher-is-better)."""
    rows = [r for r in ledger.list_runs(status="completed", kind="train", order_by="best_val_score")
            if r.get("best_val_score") is not None]
    if not rows:
        raise RunError("no completed runs with a validation score in the ledger; name the runs to ensemble")
    comp = rows[0].get("competition")
    return [r for r in rows if r.get("competition") == comp][:k]


def _shared_images(handles, warnings: list[str], allow_changed: bool = False) -> tuple[Path, list[str], str]:
    lists = [h.folder.read_val_names() for h in handles]
    for h, names in zip(handles, lists):
        if not names:
            raise RunError(f"run {h.id} has no validation list ({h.folder.file(VAL_LIST_FILE)})")
    roots = [handles[0].checked_data_root(allow_changed=allow_changed)] + [h.data_root for h in handles[1:]]
    prints = {h.row.get("data_fingerprint") for h in handles}
    if len({str(r.resolve()) if r else None for r in roots}) > 1 or len(prints) > 1:
        warnings.append("members were trained on different data (" +
                        ", ".join(f"{h.id}: {r}" for h, r in zip(handles, roots)) +
                        f"); scoring on {roots[0]}")
    common = set(lists[0]).intersection(*map(set, lists[1:]))
    names = [n for n in lists[0] if n in common]
    if any(set(names) != set(other) for other in lists):
        sizes = ", ".join(f"{h.id}: {len(n)}" for h, n in zip(handles, lists))
        warnings.append(
            f"LEAKAGE RISK: the members' validation lists differ ({sizes} images). An image one member "
            "held out may be in another member's training set, and scoring on it would flatter the "
            f"ensemble, so only the {len(names)} images held out by every member are scored")
    if not names:
        raise RunError("the members share no validation image: no honest score is possible; "
                       "ensemble runs trained with the same split (data.split_seed, data.val_fraction)")
    part = (handles[0].folder.read_data_info() or {}).get("val_part", "train")
    return roots[0], names, part


def _downsized(p: torch.Tensor, side: int) -> torch.Tensor:
    h, w = p.shape[-2:]
    if max(h, w) <= side:
        # small enough to keep exactly, so the search scores what the final ensemble scores
        return p.clone()
    f = side / max(h, w)
    size = (max(1, round(h * f)), max(1, round(w * f)))
    return F.interpolate(p[None], size=size, mode="bilinear", align_corners=False)[0].to(torch.float16)


class _SearchCache:
    """Every member's validation probabilities, computed once, for the greedy search."""

    def __init__(self, count: int):
        self.probs: list[list[torch.Tensor]] = [[] for _ in range(count)]
        self.masks: list[torch.Tensor] = []

    def observer(self, k: int, views: int):
        """What :func:`evaluate` calls with member ``k``'s decision tensor: its probabilities,
        kept (downsized), and for the first member the masks."""
        def observe(batch: list[Labelled], decision: torch.Tensor, index: list[int]) -> None:
            probs = class_softmax(decision.float() / views)
            for j, i in enumerate(index):
                self.probs[k].append(_downsized(probs[j].cpu(), SEARCH_SIDE))
                if k == 0:
                    self.masks.append(batch[i].mask)
        return observe

    def score(self, counts: dict[int, int], metric: Metric, num_classes: int) -> float:
        """The metric of the mix weighted by ``counts`` (member -> count), signed so that
        larger is better."""
        total = sum(counts.values())
        acc = ScoreAccumulator(metric, num_classes)
        for i, gt in enumerate(self.masks):
            mix = None
            for m, c in counts.items():
                # out of place: ``float()`` of a float32 tensor is the cached tensor itself (and
                # one made under inference mode, which refuses in-place updates outside it)
                p = self.probs[m][i].float() * (c / total)
                mix = p if mix is None else mix.add_(p)
            if tuple(mix.shape[-2:]) != tuple(gt.shape):
                mix = F.interpolate(mix[None], size=tuple(gt.shape), mode="bilinear", align_corners=False)[0]
            acc.update(class_ids(mix, 0), gt)
        value = acc.compute().score
        return value if metric.greater_is_better else -value


def greedy_select(score: Callable[[dict[int, int]], float], n: int, max_rounds: int = 20,
                  on_step: Optional[Callable[[int], None]] = None) -> tuple[Counter, list[tuple[int, float]]]:
    """Forward selection with replacement (Caruana et al. 2004): start empty, add whichever of
    the ``n`` candidates raises ``score({candidate: count})`` most, stop when no addition helps.

    Returns the counts (the weights, once normalised) and the (candidate, score) of each step.
    Ties go to the lower index, so list candidates best first.
    """
    counts: Counter = Counter()
    steps: list[tuple[int, float]] = []
    current = float("-inf")
    for _ in range(max_rounds):
        trials = [(score({**counts, k: counts[k] + 1}), k) for k in range(n)]
        best, k = max(trials, key=lambda t: (t[0], -t[1]))
        if best <= current:
            break
        counts[k] += 1
        current = best
        steps.append((k, best))
        if on_step:
            on_step(len(steps))
    return counts, steps


def _score_members(members: list[Member], competition, metric: Metric, files, tta, device, precision,
                   batch_size: int, cache: Optional[_SearchCache], progress) -> list[Evaluation]:
    """Each member alone on the shared images, through the one scoring loop (the probabilities
    kept for the search when there is one)."""
    out = []
    for k, m in enumerate(members):
        single = Predictor([Member(m.model, m.image_size, 1.0, m.label, tile=m.tile)], competition, tta=tta,
                           device=device, precision=precision)
        observe = cache.observer(k, len(single.views)) if cache is not None else None
        out.append(evaluate(single, read_labelled(files, competition, batch_size), metric, total=len(files),
                            observe=observe,
                            progress=(lambda d, t, k=k: progress(f"scoring member {k + 1}", d, t)) if progress else None))
    return out


def build_ensemble(runs: Sequence[str], workspace: Workspace, host: PluginHost, *,
                   weights: Optional[Sequence[float]] = None, tta=(), top: int = 3, search: bool = False,
                   name: Optional[str] = None, checkpoint: str = "best", record: bool = True,
                   batch_size: int = 8, device: str = "auto", precision: str = "auto", max_rounds: int = 20,
                   command: str = "", progress: Progress = None, allow_changed_data: bool = False) -> EnsembleResult:
    """Average runs' softmax outputs, score the mix on their shared validation images and record it.

    With no ``runs``: the ``top`` completed runs by validation score. With ``search``: a greedy
    forward selection with replacement (Caruana et al. 2004) over those runs picks members and
    integer weights that best the competition's metric on validation (in its direction); each
    member's probabilities are computed once. The images are the first member's data folder,
    which must still hold the data it trained on (unless ``allow_changed_data``).
    """
    if record:
        check_writable(workspace.runs_dir, workspace.ledger_path)

    start = time.perf_counter()
    tta = parse_tta(tta)
    if top < 1:
        raise ConfigError(f"--top must be at least 1, not {top}")
    if checkpoint not in ("best", "last"):
        raise ConfigError(f"--checkpoint {checkpoint!r}: an ensemble takes best or last for every member")
    handles = _open_members(runs, top, workspace, host)
    weights = _member_weights(weights, search, len(handles))
    comps = {h.competition.name for h in handles}
    if len(comps) > 1:
        raise RunError(f"the runs belong to different competitions ({', '.join(sorted(comps))})")
    competition = handles[0].competition
    metric = create_metric(competition, host)
    warnings: list[str] = []
    root, names, part = _shared_images(handles, warnings, allow_changed_data)
    files = labelled_files(root, names, competition, part)

    dev = resolve_device(device)
    members = [Member(h.load_model(checkpoint, dev, host), h.image_size, w, h.row.get("name") or h.id, h.id,
                      checkpoint) for h, w in zip(handles, weights)]
    cache = _SearchCache(len(members)) if search else None
    singles = _score_members(members, competition, metric, files, tta, dev, precision, batch_size, cache, progress)
    member_scores = [MemberScore(h.id, h.row.get("name") or h.id, w, checkpoint, ev.score, h.row.get("best_val_score"))
                     for h, w, ev in zip(handles, weights, singles)]
    best_single = member_scores[0]
    for ms in member_scores[1:]:
        if metric.better(ms.score, best_single.score):
            best_single = ms

    steps: list[dict] = []
    message = ""
    chosen_members = [(k, m.weight) for k, m in enumerate(member_scores)]
    if search:
        member_scores, chosen_members, steps = _search_weights(member_scores, handles, cache, metric, competition,
                                                               max_rounds, progress)
        warnings.append("the weights were searched on these validation images, so the ensemble's score and its "
                        "gain over the best member are in-sample (optimistic); confirm on other labelled images "
                        "with `cpx validate RUN --data DIR`")
    evaluation: Optional[Evaluation] = None
    if len(chosen_members) < 2:
        message = (f"the search kept only {handles[chosen_members[0][0]].id}: no mix of these runs beats it on "
                   "validation; nothing recorded")
    else:
        mix = Predictor([Member(members[k].model, members[k].image_size, w, members[k].label, members[k].run_id,
                                checkpoint) for k, w in chosen_members],
                        competition, tta=tta, device=dev, precision=precision)
        evaluation = evaluate(mix, read_labelled(files, competition, batch_size), metric, total=len(files),
                              progress=(lambda d, t: progress("scoring the ensemble", d, t)) if progress else None)
    result = EnsembleResult(members=member_scores, evaluation=evaluation, names=names, data_root=root, tta=tta,
                            best_single=best_single, warnings=warnings, search_steps=steps, message=message,
                            gain=(evaluation.score - best_single.score) if evaluation else None)
    result.seconds = time.perf_counter() - start
    if evaluation is not None:
        _conclude(result, members, competition, workspace, record=record, name=name, command=command, part=part)
    return result


def _open_members(runs: Sequence[str], top: int, workspace: Workspace, host: PluginHost) -> list:
    """Handles on the named ``runs`` (or the ``top`` completed runs when none are named).

    :raises RunError: a run is itself an ensemble, or there are fewer than two.
    :raises ConfigError: a run is named twice.
    """
    from cpx.runs.handle import open_run

    with Ledger(workspace.ledger_path) as ledger:
        rows = [ledger.get_run(r) for r in runs] if runs else top_runs(ledger, top)
        for r in rows:
            if is_ensemble(r):
                raise RunError(f"run {r['id']} is itself an ensemble; name its members instead")
        ids = [r["id"] for r in rows]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ConfigError(f"run {dup[0]} is named twice; use --weights to weigh a run more")
        if len(rows) < 2:
            raise RunError(f"an ensemble needs at least 2 runs, found {len(rows)}"
                           + ("" if runs else " completed run(s) with a validation score"))
        return [open_run(r["id"], workspace, host, ledger) for r in rows]


def _member_weights(weights: Optional[Sequence[float]], search: bool, n: int) -> list[float]:
    """The ``n`` members' weights: those given, or 1 each.

    :raises ConfigError: weights given with ``search``, or not one per member.
    """
    if weights is not None:
        if search:
            raise ConfigError("--weights and --search both set the weights; choose one")
        if len(weights) != n:
            raise ConfigError(f"--weights: {len(weights)} weight(s) for {n} run(s)")
    return [float(w) for w in weights] if weights is not None else [1.0] * n


def _search_weights(member_scores: list[MemberScore], handles: list, cache: _SearchCache, metric: Metric,
                    competition, max_rounds: int,
                    progress: Progress) -> tuple[list[MemberScore], list[tuple[int, float]], list[dict]]:
    """Greedy selection over the cached probabilities: the member scores with the searched
    weights, the chosen (member index, weight) pairs, and the search's steps.
    """
    def on_step(step: int) -> None:
        if progress:
            progress("searching", step, max_rounds)

    counts, picks = greedy_select(lambda c: cache.score(c, metric, competition.num_classes), len(member_scores),
                                  max_rounds, on_step)
    steps = [{"add": handles[k].id, "score": score if metric.greater_is_better else -score} for k, score in picks]
    total = sum(counts.values())
    # every candidate stays listed (weight 0 if not picked) so the table shows what was passed over
    scores = [MemberScore(ms.run, ms.name, counts[k] / total, ms.checkpoint, ms.score,
                          ms.recorded_val_score) for k, ms in enumerate(member_scores)]
    chosen = [(k, counts[k] / total) for k in sorted(counts)]
    return scores, chosen, steps


def _conclude(result: EnsembleResult, members: list[Member], competition, workspace: Workspace, *,
              record: bool, name: Optional[str], command: str, part: str) -> None:
    """Complete a scored ``result``: its evaluation's details, the competition's warning when
    it forbids ensembles, and (with ``record``) the run recorded when two members weigh.
    """
    evaluation = result.evaluation
    evaluation.seconds = result.seconds
    evaluation.checkpoint = "members"
    evaluation.data = VAL_LIST
    evaluation.warnings = list(result.warnings)
    if not competition.rules.ensembles_allowed:
        result.warnings.append(f"{competition.name} forbids ensembles: this one is for validation only; "
                               "predicting or packaging it needs --allow-rule-break and it must not be submitted")
    if sum(1 for m in result.members if m.weight > 0) < 2:
        result.message = "only one member has a weight above zero: not an ensemble, nothing recorded"
    elif record:
        params = sum(count_params(members[k].model) for k, ms in enumerate(result.members) if ms.weight > 0)
        result.run_id = _record(workspace, competition, result, name, params, command, part)
        evaluation.run_id = result.run_id


def _record(workspace: Workspace, competition, result: EnsembleResult, name: Optional[str], params: int,
            command: str, part: str) -> str:
    run_id = new_run_id(name or "ensemble")
    folder = RunFolder.create(workspace.runs_dir, run_id)
    members = [{"run": m.run, "weight": m.weight, "checkpoint": m.checkpoint} for m in result.members if m.weight > 0]
    s = result.evaluation.scores
    spec = {"kind": "ensemble", "competition": competition.name, "members": members, "tta": list(result.tta),
            "score": s.score, "metric": s.metric, "images": len(result.names),
            "best_single": result.best_single.__dict__, "gain": result.gain, "search_steps": result.search_steps,
            "warnings": result.warnings}
    folder.write_ensemble(spec)
    folder.write_val_names(result.names)
    folder.write_data_info({"path": str(result.data_root), "val": len(result.names), "ensemble": True,
                            "val_part": part}, workspace.root)
    now = utc_now()
    with Ledger(workspace.ledger_path) as ledger:
        ledger.add_run(id=run_id, name=name or run_id, kind="ensemble", recipe="ensemble",
                       competition=competition.name, status="completed", created_at=now, finished_at=now,
                       command=command, params=params, best_val_score=s.score, metric=s.metric, members=members,
                       wall_seconds=round(result.seconds, 2), run_dir=str(folder.path),
                       notes="; ".join(result.warnings) or None)
        record_validation(ledger, run_id, result.evaluation, checkpoint="members", data=VAL_LIST)
    return run_id
