"""The leaderboard competitors keep by hand: every run and submission ranked, with the
validation score, the test score read off Codabench, the gap between them, and for everything
not yet submitted a *predicted* test score; all on the competition metric's scale (0..1, or
0..100 for organisers who print percent), ranked in its direction.

Predicting the test score
-------------------------
Each scored submission whose validation score is known gives a pair (val, test) and a gap
``g = test - val``. The gap is what carries over from one model to the next (the
validation split is easier or harder than the test set by a roughly constant amount),
so with n pairs and gaps g_1..g_n:

* prediction: ``test ≈ val + mean(g)``;
* interval (n >= 2): the 95% *prediction* interval for one new gap,
  ``mean(g) ± t(0.975, n-1) · s · sqrt(1 + 1/n)``, where ``s`` is the sample standard
  deviation of the gaps and ``t`` the Student-t quantile with n-1 degrees of freedom
  (:func:`cpx.report.student_t.t_quantile`, equal to ``scipy.stats.t``'s).
  The ``1`` under the root is the new model's own scatter around the mean gap, the
  ``1/n`` the uncertainty of the mean itself. With two or three pairs ``t`` is large
  (12.7 and 4.3), and the interval is honestly wide;
* one pair: ``s`` cannot be estimated, so the interval is a fixed ±0.05 of the scale
  (:data:`SINGLE_PAIR_SPREAD`, about what separates the validation and test F-scores of
  CelebAMask on a 100-image test set) and the prediction is flagged "1 pair: rough";
* no pair: nothing is predicted.

The prediction and its bounds are clipped to [0, scale]. The model assumes the gap does not depend on the model;
an overfitted validation score (tuned on the split) breaks that, which is one reason to
keep the split fixed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Optional

from cpx.kernel.text import format_f, format_signed
from cpx.report.student_t import t_quantile
from cpx.runs.ledger import Ledger
from cpx.submit.submissions import main_score

DEFAULT_LEVEL = 0.95
# Half-width used when only one (val, test) pair exists; see the module docstring.
SINGLE_PAIR_SPREAD = 0.05
SORTS = ("val", "test", "official")
# the table shows this many changed fields; --json carries all of config_diff
KEY_CONFIG_ITEMS = 8


# ---------------------------------------------------------------- gap model


@dataclass(frozen=True)
class Prediction:
    value: float
    low: float
    high: float
    half_width: float
    pairs: int
    rough: bool

    def text(self) -> str:
        return f"~{self.value:.4f} ±{self.half_width:.4f}"


@dataclass
class GapModel:
    """test = val + mean gap, with a prediction interval from the spread of the gaps."""

    pairs: list[tuple[str, float, float]] = field(default_factory=list)  # (label, val, test)
    level: float = DEFAULT_LEVEL
    single_spread: float = SINGLE_PAIR_SPREAD
    scale: float = 1.0  # scores lie in 0..scale
    metric: str = "score"

    @property
    def n(self) -> int:
        return len(self.pairs)

    @property
    def gaps(self) -> list[float]:
        return [test - val for _, val, test in self.pairs]

    @property
    def mean_gap(self) -> Optional[float]:
        return sum(self.gaps) / self.n if self.n else None

    @property
    def sd(self) -> Optional[float]:
        if self.n < 2:
            return None
        mean = self.mean_gap
        return math.sqrt(sum((g - mean) ** 2 for g in self.gaps) / (self.n - 1))

    @property
    def half_width(self) -> Optional[float]:
        if self.n == 0:
            return None
        if self.n == 1:
            return self.single_spread * self.scale
        return t_quantile(self.level, self.n - 1) * self.sd * math.sqrt(1.0 + 1.0 / self.n)

    @property
    def rough(self) -> bool:
        return self.n == 1

    def predict(self, val: Optional[float]) -> Optional[Prediction]:
        if val is None or self.n == 0:
            return None
        value = val + self.mean_gap
        hw = self.half_width
        top = self.scale
        return Prediction(value=min(top, max(0.0, value)), low=max(0.0, value - hw), high=min(top, value + hw),
                          half_width=hw, pairs=self.n, rough=self.rough)

    def describe(self) -> str:
        m = self.metric
        if self.n == 0:
            return f"no (val, test) pair recorded yet: no test {m} is predicted"
        pct = f"{self.level * 100:g}%"
        if self.n == 1:
            return (f"predicted test {m} = val {m} {self.mean_gap:+.4f} (1 pair: rough, "
                    f"±{self.single_spread * self.scale:g} assumed)")
        return (f"predicted test {m} = val {m} {self.mean_gap:+.4f} (mean gap of {self.n} pairs; "
                f"{pct} interval ±{self.half_width:.4f}, gap sd {self.sd:.4f})")

    def to_dict(self) -> dict:
        return {"pairs": [{"label": label, "val": val, "test": test, "gap": test - val}
                          for label, val, test in self.pairs],
                "n": self.n, "mean_gap": self.mean_gap, "sd": self.sd, "half_width": self.half_width,
                "level": self.level, "rough": self.rough, "method": self.describe()}


def fit_gap_model(pairs: Iterable[tuple[str, float, float]], level: float = DEFAULT_LEVEL,
                  single_spread: float = SINGLE_PAIR_SPREAD, scale: float = 1.0, metric: str = "score") -> GapModel:
    """A :class:`GapModel` from (label, val score, test score) triples, scores in 0..``scale``;
    see the module docstring."""
    kept = [(str(label), float(val), float(test)) for label, val, test in pairs
            if val is not None and test is not None]
    return GapModel(kept, level, single_spread, scale, metric)


# ---------------------------------------------------------------- key config


_ALIASES = {"learning_rate": "lr", "weight_decay": "wd", "batch_size": "bs", "image_size": "size",
            "img_size": "size", "num_epochs": "epochs", "max_epochs": "epochs"}
_SUFFIXES = ("_weight", "_w")


def _short_key(path: str) -> str:
    parts = [p for p in path.split(".") if p != "options"]
    if not parts:
        return path
    last = parts[-1]
    if last in ("name", "type", "arch") and len(parts) > 1:
        last = parts[-2]
    last = _ALIASES.get(last, last)
    for suffix in _SUFFIXES:
        if last.endswith(suffix) and len(last) > len(suffix):
            last = last[: -len(suffix)]
    return last


def _short_value(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_short_value(v) for v in value) + "]"
    if value is None:
        return "none"
    return str(value)


def collapse_switches(diff: dict) -> dict:
    """A config diff with the options of every switched component (``model.name`` changed)
    folded into one entry: ``{"model.name": "unet", "model.options.depth": 4, ...}`` ->
    ``{"model.name": "unet (+3 options)"}``; the new component's options are its own, not
    changes to the old one's."""
    out = dict(diff)
    for key in diff:
        section, _, leaf = key.partition(".")
        if leaf != "name":
            continue
        options = [k for k in out if k.startswith(f"{section}.options.")]
        for k in options:
            del out[k]
        if options:
            out[key] = f"{diff[key]} (+{len(options)} options)"
    return out


def short_config(diff: Optional[dict], limit: Optional[int] = None) -> str:
    """``{"loss.options.dice": 1.5, "model.name": "unet"}`` -> ``"dice=1.5, model=unet"``.
    Keys that would shorten to the same word keep their section (``loss.ce``, ``aug.ce``); a
    switched component's options are counted, not listed (:func:`collapse_switches`)."""
    if not diff or not isinstance(diff, dict):
        return ""
    diff = collapse_switches(diff)
    shorts = {key: _short_key(key) for key in diff}
    counts: dict[str, int] = {}
    for s in shorts.values():
        counts[s] = counts.get(s, 0) + 1
    items = []
    for key, value in diff.items():
        label = shorts[key]
        if counts[label] > 1:
            section = key.split(".")[0]
            label = f"{section}.{label}"
        items.append(f"{label}={_short_value(value)}")
    if limit is not None and len(items) > limit:
        items = items[:limit] + [f"+{len(items) - limit}"]
    return ", ".join(items)


def _synthetic(run: dict) -> bool:
    """Whether a cpx-trained run had no data folder, so trained on generated faces."""
    config = run.get("config")
    return run.get("kind") == "train" and isinstance(config, dict) and not (config.get("data") or {}).get("path")


# ---------------------------------------------------------------- leaderboard


@dataclass
class Row:
    label: str
    run_id: Optional[str] = None
    run_name: Optional[str] = None
    kind: Optional[str] = None
    submission: Optional[str] = None
    checkpoint: Optional[str] = None
    val_score: Optional[float] = None
    val_source: str = ""
    train_val_score: Optional[float] = None
    test_score: Optional[float] = None
    test_source: Optional[str] = None
    predicted: Optional[Prediction] = None
    best_epoch: Optional[int] = None
    config_diff: dict = field(default_factory=dict)
    rank: int = 0
    # trained on the competition profile's generated faces (no data.path): a demo, not a result
    synthetic: bool = False
    # the organisers' scoring program's score of the run's validation (`cpx validate --official`)
    official_score: Optional[float] = None

    @property
    def gap(self) -> Optional[float]:
        if self.test_score is None or self.val_score is None:
            return None
        return self.test_score - self.val_score

    @property
    def key_config(self) -> str:
        text = short_config(self.config_diff, limit=KEY_CONFIG_ITEMS)
        return ", ".join(t for t in ("synthetic data" if self.synthetic else "", text) if t)

    def rank_value(self, sort: str) -> Optional[float]:
        if sort == "official":
            return self.official_score
        if sort == "test":
            if self.test_score is not None:
                return self.test_score
            return self.predicted.value if self.predicted else None
        return self.val_score

    def to_dict(self) -> dict:
        out = asdict(self)
        out["predicted"] = asdict(self.predicted) if self.predicted else None
        out["gap"] = self.gap
        out["key_config"] = self.key_config
        return out


@dataclass
class Leaderboard:
    rows: list[Row]
    model: GapModel
    sort: str = "val"
    phase: str = "test"
    total: int = 0
    metric: str = "score"  # the competition's metric (with its scale when not 1) the scores are on
    official_column: str = "score"  # the organisers' ranked column the official scores are of

    def to_dict(self) -> dict:
        return {"phase": self.phase, "sort": self.sort, "total": self.total, "metric": self.metric,
                "official_column": self.official_column,
                "prediction": self.model.to_dict(), "rows": [r.to_dict() for r in self.rows]}

    def to_markdown(self) -> str:
        m = self.metric
        head = ["#", "model", f"val {m}", f"test {m}", "gap", "run / checkpoint", "best ep", "key config"]
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        for r in self.rows:
            lines.append("| " + " | ".join([
                str(r.rank), r.label, format_f(r.val_score), format_test_score(r, markdown=True), format_signed(r.gap),
                run_checkpoint(r),
                str(r.best_epoch or "-"), r.key_config.replace("|", "/") or "-"]) + " |")
        lines.append("")
        lines.append(self.model.describe())
        return "\n".join(lines) + "\n"


def format_test_score(row: Row, markdown: bool = False) -> str:
    """The observed test score, else the prediction marked as such, else ``-``."""
    if row.test_score is not None:
        return format_f(row.test_score)
    if row.predicted is not None:
        mark = "predicted, 1 pair: rough" if row.predicted.rough else "predicted"
        return row.predicted.text() + (f" *{mark}*" if markdown else f" ({mark})")
    return "-"


def run_checkpoint(row: Row) -> str:
    """``run / checkpoint``, naming the ``cpx validate`` record when the validation score comes from one."""
    run = row.run_name or row.run_id or "-"
    text = f"{run} / {row.checkpoint}" if row.checkpoint else run
    if row.val_source.startswith(("validate", "refit")):
        text += f" ({row.val_source})"
    return text


def _run_val(ledger: Ledger, run: dict, better=None) -> tuple[Optional[float], str, Optional[str]]:
    """The run's best validation score, where it comes from, and its checkpoint: the training
    curve's best, unless a later ``cpx validate`` scored better (with TTA, say); ``better(a,
    b)`` says whether score a beats b (default: higher)."""
    better = better or (lambda a, b: a > b)
    val, source, checkpoint = run.get("best_val_score"), "", None
    if val is not None:
        source = f"train ep {run['best_epoch']}" if run.get("best_epoch") else "train"
        checkpoint = "best" if run.get("kind") == "train" else None
    if run.get("refit_of") and val is not None:
        source = f"refit of {run['refit_of']}: its validation score, not measurable"
    if run.get("kind") == "ensemble":
        source, checkpoint = ("ensemble" if val is not None else ""), "members"
    if run.get("kind") == "imported":
        ckpts = run.get("checkpoints") or []
        checkpoint = _basename(ckpts[0]) if ckpts else None
        if val is not None:
            source = f"imported ep {run['best_epoch']}" if run.get("best_epoch") else "imported"
    # a calibrated score on the images the offsets were fitted on is in-sample: never the validation score
    honest = [v for v in ledger.list_validations(run["id"]) if v.get("score") is not None
              and not (v.get("calibrated") and v.get("data") == "val_list")
              and (not v.get("metric") or not run.get("metric") or v["metric"] == run["metric"])]
    best = None
    for v in sorted(honest, key=lambda v: (v["created_at"], v["id"])):
        if best is None or better(v["score"], best["score"]) or v["score"] == best["score"]:
            best = v
    if best is not None and best.get("score") is not None and (val is None or better(best["score"], val)):
        val = best["score"]
        source = f"validate #{best['id']}"
        checkpoint = _with_tta(best.get("checkpoint") or checkpoint, best.get("tta"))
        # calibrated offsets and post-processing change what was scored: say so beside the TTA
        marks = ("+calibrated" if best.get("calibrated") else "") + (f"+post:{best['post']}" if best.get("post") else "")
        if marks:
            checkpoint = (checkpoint or "?") + marks
    return val, source, checkpoint


def _with_tta(checkpoint: Optional[str], tta: Optional[str]) -> Optional[str]:
    if not tta or tta == "none":
        return checkpoint
    return f"{checkpoint or '?'}+{tta.replace(',', '+')}"


def _basename(path: str) -> str:
    return str(path).replace("\\", "/").rsplit("/", 1)[-1]


def _submission_val(ledger: Ledger, sub: dict, run: Optional[dict]) -> tuple[Optional[float], str]:
    if sub.get("val_score") is not None:
        return float(sub["val_score"]), "package"
    if run is None:
        return None, ""
    # the validation of exactly what was packaged, when cpx validate recorded one
    for v in reversed(ledger.list_validations(run["id"])):
        if v.get("score") is not None and v.get("checkpoint") == sub.get("checkpoint") \
                and (v.get("tta") or "none") == (sub.get("tta") or "none"):
            return float(v["score"]), f"validate #{v['id']}"
    if run.get("best_val_score") is not None:
        return float(run["best_val_score"]), "train"
    return None, ""


def _official(ledger: Ledger, run: dict, sign: float) -> Optional[float]:
    """The best score the organisers' program gave the run's validations (``sign`` 1: larger is
    better), or None."""
    scores = [v["official_score"] for v in ledger.list_validations(run["id"]) if v.get("official_score") is not None]
    return max(scores, key=lambda x: sign * x) if scores else None


def build_leaderboard(ledger: Ledger, *, phase: str = "test", sort: str = "val",
                      limit: Optional[int] = None, competition: Optional[str] = None,
                      metric: str = "", scale: float = 1.0, greater_is_better: bool = True,
                      level: float = DEFAULT_LEVEL, official: Any = None) -> Leaderboard:
    """Rank every run (train, ensemble, imported) and every submission by the competition's
    ``metric`` (its scores in 0..``scale``, better when greater unless ``greater_is_better`` is
    off).

    A run with submissions gives one row per submission; a run without, one row of its
    own. ``sort='test'`` ranks by the observed test score, else the predicted one;
    ``sort='official'`` by the organisers' program's validation score, in the direction of the
    profile's ranked column ``official`` (a :class:`cpx.data.competition.RankedColumn`; else the
    metric's). Rows of runs from another competition than ``competition`` are left out.
    """
    if sort not in SORTS:
        raise ValueError(f"sort must be one of {', '.join(SORTS)}, not {sort!r}")
    runs = ledger.list_runs()
    if competition is not None:
        runs = [r for r in runs if r.get("competition") in (None, competition)]
    run_by_id = {r["id"]: r for r in runs}
    subs_by_run: dict[Optional[str], list[dict]] = {}
    for sub in ledger.list_submissions(phase):
        if sub.get("run_id") is not None and sub["run_id"] not in run_by_id:
            continue  # another competition's run
        subs_by_run.setdefault(sub.get("run_id"), []).append(sub)

    rows: list[Row] = []
    sign = 1.0 if greater_is_better else -1.0
    official_sign = sign if official is None else (1.0 if official.greater_is_better else -1.0)
    for run in runs:
        val, source, checkpoint = _run_val(ledger, run, lambda a, b: sign * a > sign * b)
        common = dict(run_id=run["id"], run_name=run.get("name") or run["id"], kind=run.get("kind"),
                      best_epoch=run.get("best_epoch"), config_diff=run.get("config_diff") or {},
                      train_val_score=run.get("best_val_score"), synthetic=_synthetic(run),
                      official_score=_official(ledger, run, official_sign))
        subs = subs_by_run.get(run["id"], [])
        if not subs:
            rows.append(Row(label=run.get("name") or run["id"], checkpoint=checkpoint, val_score=val,
                            val_source=source, **common))
        for sub in subs:
            sval, ssource = _submission_val(ledger, sub, run)
            score = main_score(ledger.scores_for(sub["name"]), phase, metric)
            rows.append(Row(label=sub["name"], submission=sub["name"],
                            checkpoint=_with_tta(sub.get("checkpoint"), sub.get("tta")),
                            val_score=sval, val_source=ssource,
                            test_score=score["score"] if score else None,
                            test_source=score["source"] if score else None, **common))
    for sub in subs_by_run.get(None, []):
        score = main_score(ledger.scores_for(sub["name"]), phase, metric)
        rows.append(Row(label=sub["name"], submission=sub["name"], checkpoint=sub.get("checkpoint"),
                        val_score=sub.get("val_score"), val_source="package" if sub.get("val_score") is not None else "",
                        test_score=score["score"] if score else None,
                        test_source=score["source"] if score else None))

    label = metric + (f" x{scale:g}" if scale != 1 else "") if metric else "score"
    model = fit_gap_model(((r.label, r.val_score, r.test_score) for r in rows), level=level, scale=scale,
                          metric=label)
    for r in rows:
        if r.test_score is None:
            r.predicted = model.predict(r.val_score)

    def key(r: Row):
        value = r.rank_value(sort)
        first = official_sign if sort == "official" else sign
        return (value is None, -first * (value or 0.0), -sign * (r.val_score or 0.0), r.label)

    rows.sort(key=key)
    for i, r in enumerate(rows, 1):
        r.rank = i
    total = len(rows)
    if limit is not None:
        rows = rows[: max(0, limit)]
    return Leaderboard(rows=rows, model=model, sort=sort, phase=phase, total=total, metric=label,
                       official_column=official.column if official is not None else "score")


def workspace_leaderboard(workspace, host, *, competition: Optional[str] = None, phase: Optional[str] = None,
                          sort: str = "val", limit: Optional[int] = None) -> Leaderboard:
    """``cpx leaderboard``: the workspace's runs and submissions ranked by its competition's
    metric (the named competition, else the workspace's by
    :func:`~cpx.runs.competition.default_competition`, starting with ``cpx.yaml``'s, else the
    latest run's), in its current
    phase unless ``phase`` is given.

    :raises ConfigError: an unknown ``sort`` or a ``limit`` below 1.
    :raises UnknownComponent: ``competition`` names no registered competition.
    """
    from cpx.eval.metrics import create_metric
    from cpx.kernel.errors import ConfigError
    from cpx.runs.competition import default_competition
    from cpx.submit.submissions import default_phase
    from cpx.submit.submit import cpx_competition

    if sort not in SORTS:
        raise ConfigError(f"--sort: choose {' or '.join(SORTS)}, not {sort!r}")
    if limit is not None and limit < 1:
        raise ConfigError("--limit: at least 1")
    # the README's order: --competition, else the workspace's (cpx.yaml, the ledger's one
    # competition, ...: default_competition), and only when that leaves a choice the latest run's
    chosen = competition or default_competition(workspace, host)
    if chosen and not competition and chosen not in host.competitions.names():
        chosen = None  # cpx.yaml names a competition no plugin registers
    with Ledger(workspace.ledger_path) as ledger:
        latest = next(iter(ledger.list_runs()), None)
        # ranking needs the metric only: the submission formats (numpy, Pillow) stay unimported
        comp = cpx_competition(host, workspace, chosen, run=None if chosen else latest, parts=("metric",))
        metric = create_metric(comp, host) if comp else None
        return build_leaderboard(ledger, phase=phase or default_phase(comp), sort=sort, limit=limit,
                                 competition=comp.name if comp else None,
                                 metric=comp.metric.name if comp else "", scale=metric.scale if metric else 1.0,
                                 greater_is_better=metric.greater_is_better if metric else True,
                                 official=comp.leaderboard if comp else None)
