"""`cpx report`: the results summary competitors write by hand, written from the ledger.

Sections: ranking, submission history, factor effects (sweeps, then single-run one-factor
comparisons flagged as single-seed evidence), convergence, generalisation (val -> test), next
experiments, figures. Every number is a :class:`~cpx.report.document.Fact` traced to ledger
cells (and, for training curves and waits between improvements, to the runs' history.json).
The output folder gets ``report.md``, ``report.html`` (figures inlined) and ``figures/*.png``.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from cpx.draw.curves import plot_history
from cpx.draw.figures import plot_per_class_runs
from cpx.kernel.errors import ConfigError
from cpx.kernel.files import atomic_write_text
from cpx.kernel.text import format_f, utc_now
from cpx.kernel.workspace import Workspace
from cpx.report import TOP, gains, stats
from cpx.report.document import Document, Figure, Ref, Table
from cpx.report.effects import RANKED_STATUSES, EffectSections, config_diff_vs
from cpx.report.facts import fact_f, fact_int, fact_signed, p_text
from cpx.report.leaderboard import short_config
from cpx.report.paired import recorded_validation
from cpx.runs.folder import run_folder
from cpx.runs.ledger import Ledger
from cpx.submit.submissions import main_score

CURVES = 4
MAX_GAIN_ROWS = 24  # rows of the evaluation-time table


@dataclass
class ReportResult:
    markdown: Path
    html: Path
    figures: list[Path]
    document: Document


class _Builder(EffectSections):
    def __init__(self, ledger: Ledger, workspace: Workspace, host, out: Path, top: int, level: float):
        self.ledger, self.workspace, self.host, self.out, self.top, self.level = ledger, workspace, host, out, top, level
        self.doc = Document("Training results")
        self.figures: list[Path] = []
        self.runs = ledger.list_runs(order_by="best_val_score")
        self.by_id = {r["id"]: r for r in self.runs}
        self.subs = ledger.list_submissions()
        self.competition = self._competition()
        # the name the numbers go by: the competition's metric (e.g. "val fscore"), else "score"
        self.metric = self.competition.metric.name if self.competition else "score"
        self.scale = float(self.competition.metric.scale) if self.competition else 1.0
        self.scores = {s["name"]: main_score(ledger.scores_for(s["name"]), "test",
                                             self.competition.metric.name if self.competition else "")
                       for s in self.subs}
        self.pairs = self._pairs()

    # ------------------------------------------------------------------ helpers

    def _competition(self):
        names = Counter(r.get("competition") for r in self.runs if r.get("competition"))
        if not names or self.host is None:
            return None
        try:
            return self.host.competition(names.most_common(1)[0][0])
        except Exception:
            return None

    def _label(self, run: dict) -> str:
        return run.get("name") or run["id"]

    def _sub_val(self, sub: dict) -> tuple[Optional[float], Optional[Ref]]:
        if sub.get("val_score") is not None:
            return float(sub["val_score"]), Ref("submissions", sub["name"], "val_score", sub["val_score"])
        run = self.by_id.get(sub.get("run_id"))
        if run is not None and run.get("best_val_score") is not None:
            return float(run["best_val_score"]), Ref("runs", run["id"], "best_val_score", run["best_val_score"])
        return None, None

    def _pairs(self) -> list[tuple[dict, float, Ref, float, Ref]]:
        """(submission, val score, its ref, test score, its ref) of every scored submission with a
        validation score."""
        out = []
        for sub in reversed(self.subs):  # oldest first
            score = self.scores.get(sub["name"])
            val, vref = self._sub_val(sub)
            if score is not None and val is not None:
                out.append((sub, val, vref, float(score["score"]), Ref("scores", score["id"], "score", score["score"])))
        return out

    def _gap_model(self):
        gaps = [test - val for _, val, _, test, _ in self.pairs]
        n = len(gaps)
        if n == 0:
            return None
        mean = sum(gaps) / n
        if n == 1:
            from cpx.report.leaderboard import SINGLE_PAIR_SPREAD

            return mean, None, SINGLE_PAIR_SPREAD, n
        sd = math.sqrt(sum((g - mean) ** 2 for g in gaps) / (n - 1))
        return mean, sd, stats.t_quantile(self.level, n - 1) * sd * math.sqrt(1 + 1 / n), n

    def _pair_refs(self) -> list[Ref]:
        return [r for _, _, vref, _, tref in self.pairs for r in (vref, tref)]

    def _tta_best(self, run: dict) -> Optional[dict]:
        best = None
        for v in self.ledger.list_validations(run["id"]):
            in_sample = v.get("calibrated") and (v.get("data") or "val_list") == "val_list"
            if (v.get("tta") or "none") != "none" and v.get("score") is not None and not in_sample:
                if best is None or v["score"] > best["score"]:
                    best = v
        return best

    def _run_test(self, run: dict):
        """The run's best scored submission: (submission, score row)."""
        best = None
        for sub in self.subs:
            score = self.scores.get(sub["name"])
            if sub.get("run_id") == run["id"] and score is not None:
                if best is None or score["score"] > best[1]["score"]:
                    best = (sub, score)
        return best

    # ------------------------------------------------------------------ sections

    def header(self) -> None:
        d = self.doc
        n_runs = d.fact(len(self.runs), str(len(self.runs)), [Ref("runs", r["id"], "id", r["id"]) for r in self.runs],
                        "count")
        n_subs = d.fact(len(self.subs), str(len(self.subs)),
                        [Ref("submissions", s["name"], "name", s["name"]) for s in self.subs], "count")
        sweeps = self.ledger.list_sweeps()
        n_sweeps = d.fact(len(sweeps), str(len(sweeps)), [Ref("sweeps", s["name"], "name", s["name"]) for s in sweeps],
                          "count")
        comp = f" for {self.competition.name}" if self.competition else ""
        d.subtitle = (f"Written by `cpx report`{comp} from the ledger {self.workspace.ledger_path.name} at "
                      f"{utc_now()[:16].replace('T', ' ')} UTC: {n_runs} runs, {n_subs} submissions, {n_sweeps} "
                      "sweeps. Every number below comes from the ledger (training curves from the runs' "
                      "history.json); none is typed by hand.")

    def ranking(self) -> list[dict]:
        d = self.doc
        s = d.section("Ranking")
        ranked = [r for r in self.runs if r.get("best_val_score") is not None and r.get("status") in RANKED_STATUSES]
        shown = ranked[: self.top]
        model = self._gap_model()
        m = self.metric
        header = ["#", "run", "status", f"val {m}", f"TTA val {m}", f"test {m}", f"predicted test {m}",
                  "val→test gap", "best ep", "last ep", "vs recipe", "vs #1"]
        rows = []
        top_config = shown[0].get("config") if shown else None
        for i, run in enumerate(shown, 1):
            rid = run["id"]
            val_ref = Ref("runs", rid, "best_val_score", run["best_val_score"])
            val = fact_f(d, run["best_val_score"], val_ref)
            tta = self._tta_best(run)
            tta_text = "-"
            if tta is not None:
                tta_text = fact_f(d, tta["score"], Ref("validations", tta["id"], "score", tta["score"])) + f" ({tta['tta']})"
            test = self._run_test(run)
            test_text = gap_text = pred_text = "-"
            if test is not None:
                sub, score = test
                tref = Ref("scores", score["id"], "score", score["score"])
                test_text = fact_f(d, score["score"], tref) + f" ({sub['name']})"
                sval, sref = self._sub_val(sub)
                if sval is not None:
                    gap_text = fact_signed(d, float(score["score"]) - sval, [sref, tref], "diff")
            elif model is not None:
                mean, _, hw, n = model
                value = run["best_val_score"] + mean
                refs = [val_ref, *self._pair_refs()]
                pred_text = (fact_f(d, value, None, "gap_prediction", refs) + " ±"
                             + d.fact(hw, f"{hw:.4f}", refs[1:], "gap_half_width" if n > 1 else "assumed_spread"))
                if n == 1:
                    pred_text += " (1 pair: rough)"
            vs_recipe = short_config(run.get("config_diff") or {}, limit=6) or "recipe as is"
            vs_top = "-" if i == 1 else (short_config(config_diff_vs(run.get("config"), top_config), limit=4) or "same")
            rows.append([str(i), self._label(run), run.get("status") or "", val, tta_text, test_text, pred_text, gap_text,
                         fact_int(d, run.get("best_epoch"), [Ref("runs", rid, "best_epoch", run.get("best_epoch"))]),
                         fact_int(d, run.get("last_epoch"), [Ref("runs", rid, "last_epoch", run.get("last_epoch"))]),
                         d.fact(vs_recipe, vs_recipe, [Ref("runs", rid, "config_diff", run.get("config_diff"))], "config"),
                         d.fact(vs_top, vs_top, [Ref("runs", rid, "config", None)], "config")])
        if not rows:
            s.text(f"No run with a validation {m} is recorded yet.")
            return shown
        more = len(ranked) - len(shown)
        s.add(Table(header, rows, caption=f"Runs by best validation {m} (top {len(shown)}"
                                          + (f"; {more} more not shown" if more > 0 else "") + ")."))
        s.text(f"*val {m}*: best epoch of training (the competition's metric on the run's validation list). "
               f"*TTA val {m}*: best `cpx validate --tta` score where one was measured. *test {m}*: leaderboard "
               f"score of the run's best scored submission. *predicted*: val {m} plus the mean val→test gap, "
               "with its "
               f"{self.level * 100:g}% prediction interval (see Generalisation). *vs recipe* / *vs #1*: config "
               "fields that differ from the recipe / from the top run.")
        return shown

    def submissions(self) -> None:
        d = self.doc
        s = d.section("Submission history")
        if not self.subs:
            s.text("No submission is recorded yet (`cpx package`, `cpx submit NAME --record-score SCORE`).")
            return
        from cpx.submit.submissions import submission_report

        rep = submission_report(self.ledger, self.competition)
        limit = rep.limit
        rows = []
        used: list[Ref] = []
        by_name = {sub["name"]: sub for sub in self.subs}
        best_test = max((r.test_score for r in rep.rows if r.test_score is not None), default=None)
        for r in reversed(rep.rows):  # oldest first
            sub = by_name[r.name]
            score = self.scores.get(r.name)
            tref = Ref("scores", score["id"], "score", score["score"]) if score else None
            sval, sref = self._sub_val(sub)
            if r.counts:
                used.append(Ref("submissions", r.name, "name", r.name))
            left = "-" if limit is None else d.fact(limit - len(used), str(limit - len(used)), list(used), "left",
                                                     {"limit": limit})
            best = "yes" if r.test_score is not None and r.test_score == best_test else ("-" if r.test_score is None else "no")
            run = self.by_id.get(sub.get("run_id"))
            rows.append([r.name, r.date, self._label(run) if run else "-", fact_f(d, sval, sref),
                         fact_f(d, r.test_score, tref), fact_signed(d, None if r.test_score is None or sval is None else r.test_score - sval,
                                                        [sref, tref], "diff"),
                         left, "**final**" if r.final else "", best])
        m = self.metric
        s.add(Table(["submission", "date", "run", f"val {m}", f"test {m}", "gap", "left", "final", "best test"], rows,
                    caption="Submissions, oldest first; *left*: submissions the phase still allows after this one."))
        if rep.final:
            final = next(r for r in rep.rows if r.name == rep.final)
            why = "marked with --final" if rep.final_reason == "marked" else "the latest that counts"
            line = f"The final submission is **{rep.final}** ({why})"
            if best_test is not None and final.test_score is not None:
                line += "; it is " + ("the best scored one." if final.test_score == best_test else
                                      "**not** the best scored one.")
            s.text(line + ("" if not rep.only_final_counts else " Only the final submission counts in this "
                                                                  "competition."))
        for w in rep.warnings:
            s.text(f"Warning: {w}")

    def evaluation_time(self) -> None:
        """TTA, post-processing and held-out calibration gains, paired per image, per run."""
        d = self.doc
        s = d.section("Evaluation-time ingredients")
        ranked = [r for r in self.runs if r.get("best_val_score") is not None and r.get("status") in RANKED_STATUSES]
        found = gains.gains(self.ledger, self.workspace.runs_dir, ranked, self.level)
        if not found:
            s.text("No run has a TTA, post-processed or calibrated score beside its plain one: "
                   "`cpx validate RUN --tta flip`, `cpx validate RUN --post small-components` and "
                   "`cpx calibrate RUN` measure them.")
            return
        rows, by_ingredient = [], {}
        for g in found[:MAX_GAIN_ROWS]:
            refs = [Ref(*src) for src in g.sources]
            t = g.test
            rows.append([self._label(g.run), g.ingredient, fact_f(d, t.mean_a, None, "paired_mean_a", refs),
                         fact_signed(d, t.diff, refs, "paired_diff"),
                         fact_signed(d, t.low, refs, "paired_low") + " .. " + fact_signed(d, t.high, refs, "paired_high"),
                         fact_int(d, t.n, refs, "shared_images"), d.fact(t.t_p, p_text(t.t_p), refs, "paired_t_p"),
                         t.verdict])
            by_ingredient.setdefault(g.ingredient, []).append((t.diff, refs))
        s.add(Table(["run", "ingredient", f"{self.metric} without", "gain", f"{self.level * 100:g}% bootstrap interval",
                     "images",
                     "paired t p", "verdict"], rows,
                    caption="Each ingredient against the plain prediction of the same checkpoint, paired per "
                            "validation image. Calibration is scored on held-out halves: each image with the "
                            "offsets fitted on the other half (2-fold), never in-sample."))
        for name, items in by_ingredient.items():
            if len(items) > 1:
                refs = [r for _, rs in items for r in rs]
                mean = sum(x for x, _ in items) / len(items)
                s.text(f"{name}: mean gain {fact_signed(d, mean, refs, 'mean_paired_diff')} over "
                       f"{fact_int(d, len(items), refs, 'count')} runs.")

    def convergence(self, shown: list[dict]) -> None:
        d = self.doc
        s = d.section("Convergence")
        rows = []
        waits: list[tuple[int, dict, Ref]] = []
        for run in shown:
            rid = run["id"]
            history = [h for h in run_folder(run, self.workspace.runs_dir).read_history() if h.get("val_score") is not None] \
                if run.get("kind") == "train" else []
            wait = _longest_wait(history)
            wref = Ref("history", rid, "val_score", [h["val_score"] for h in history])
            if wait is not None:
                waits.append((wait, run, wref))
            cfg = (run.get("config") or {}).get("train") or {}
            best, last = run.get("best_epoch"), run.get("last_epoch")
            reason = _stop_reason(run, cfg)
            rows.append([self._label(run), fact_int(d, best, [Ref("runs", rid, "best_epoch", best)]),
                         fact_int(d, last, [Ref("runs", rid, "last_epoch", last)]),
                         fact_int(d, run.get("epochs_planned"), [Ref("runs", rid, "epochs_planned", run.get("epochs_planned"))]),
                         fact_int(d, None if best is None or last is None else last - best,
                              [Ref("runs", rid, "best_epoch", best), Ref("runs", rid, "last_epoch", last)], "diff"),
                         "-" if wait is None else fact_int(d, wait, [wref], "longest_wait"), reason])
        if not rows:
            s.text("No run to look at yet.")
            return
        s.add(Table(["run", "best epoch", "stopped at", "planned", "epochs after best", "longest wait", "ended by"], rows,
                    caption="Best against stopped epoch for the ranked runs. *longest wait*: most epochs a run "
                            "went without a new best before it improved again."))
        trained = [r for r in shown if r.get("best_epoch") and r.get("last_epoch")]
        if trained:
            late = [r for r in trained if r["best_epoch"] >= 0.9 * r["last_epoch"]]
            best_refs = [Ref("runs", r["id"], "best_epoch", r["best_epoch"]) for r in trained]
            latest_best = max(r["best_epoch"] for r in trained)
            if late:
                last_refs = [Ref("runs", r["id"], "last_epoch", r["last_epoch"]) for r in late]
                longest = max(r["last_epoch"] for r in late)
                suggestion = int(math.ceil(longest * 1.5 / 5.0) * 5)
                s.text(f"{fact_int(d, len(late), [Ref('runs', r['id'], 'best_epoch', r['best_epoch']) for r in late], 'count')} "
                       f"of them still improved in the last tenth of their epochs: they stopped too early. Train "
                       f"longer: about {d.fact(suggestion, str(suggestion), last_refs, 'epochs_suggestion')} epochs "
                       f"(1.5 times the {fact_int(d, longest, last_refs, 'max')} they ran, rounded up to 5), or give them "
                       "a larger --budget.")
            else:
                suggestion = int(math.ceil(latest_best * 1.2 / 5.0) * 5)
                s.text(f"The latest best epoch among them is {fact_int(d, latest_best, best_refs, 'max')}; "
                       f"about {d.fact(suggestion, str(suggestion), best_refs, 'epochs_suggestion')} epochs "
                       "(20% beyond it, rounded up to 5) are enough, with room for the cosine to finish.")
        if waits:
            wait, run, wref = max(waits, key=lambda w: w[0])
            patience = max(5, int(math.ceil(wait * 1.5)))
            s.text(f"The longest stretch without a new best that still ended in one was "
                   f"{fact_int(d, wait, [wref], 'longest_wait')} epochs ({self._label(run)}): a patience of about "
                   f"{d.fact(patience, str(patience), [wref], 'patience_suggestion')} (1.5 times that, at least 5) "
                   "would not have cut any of these runs short.")

    def generalisation(self, shown: list[dict]) -> None:
        d = self.doc
        s = d.section("Generalisation")
        if not self.pairs:
            s.text(f"No submission has both a validation {self.metric} and a recorded test score, so nothing predicts "
                   "the test score yet. Record scores with `cpx submit NAME --record-score SCORE`.")
            return
        rows = []
        for sub, val, vref, test, tref in self.pairs:
            rows.append([sub["name"], fact_f(d, val, vref), fact_f(d, test, tref), fact_signed(d, test - val, [vref, tref], "diff")])
        s.add(Table(["submission", f"val {self.metric}", f"test {self.metric}", "gap (test − val)"], rows,
                    caption="Observed val→test pairs."))
        mean, sd, hw, n = self._gap_model()
        refs = self._pair_refs()
        line = f"Mean gap {fact_signed(d, mean, refs, 'mean_gap')} over {fact_int(d, n, refs[1::2], 'count')} pair(s)"
        if sd is not None:
            line += (f", sd {d.fact(sd, format_f(sd), refs, 'gap_sd')}; {self.level * 100:g}% prediction interval for "
                     f"a new model ±{d.fact(hw, f'{hw:.4f}', refs, 'gap_half_width')} (t with n−1 degrees of freedom, "
                     "times sqrt(1 + 1/n)).")
        else:
            line += f": one pair gives no spread, so ±{d.fact(hw, f'{hw:.4f}', [], 'assumed_spread')} is assumed (rough)."
        s.text(line)
        unsubmitted = [r for r in shown if self._run_test(r) is None]
        if unsubmitted:
            best = unsubmitted[0]
            vref = Ref("runs", best["id"], "best_val_score", best["best_val_score"])
            value = best["best_val_score"] + mean
            s.text(f"So the best run not yet submitted, {self._label(best)} "
                   f"(val {self.metric} {fact_f(d, best['best_val_score'], vref)}), "
                   f"should score about {fact_f(d, value, None, 'gap_prediction', [vref, *refs])} ± "
                   f"{d.fact(hw, f'{hw:.4f}', refs, 'gap_half_width' if sd is not None else 'assumed_spread')} on the test set. "
                   "This assumes the gap does not depend on the model; keep the validation split fixed.")
        if len(self.pairs) >= 3:
            from scipy.stats import spearmanr

            rho = float(spearmanr([p[1] for p in self.pairs], [p[3] for p in self.pairs]).statistic)
            s.text(f"Rank agreement of val and test {self.metric} over the submissions (Spearman): "
                   f"{d.fact(rho, f'{rho:+.3f}', refs, 'spearman')}"
                   + (" — validation ranks models as the leaderboard does." if rho > 0.5 else
                      " — validation does not rank models as the leaderboard does; trust it less for small differences."))

    def figures_section(self, shown: list[dict]) -> None:
        d = self.doc
        s = d.section("Figures")
        curves = []
        for run in shown:
            if run.get("kind") != "train":
                continue
            history = [h for h in run_folder(run, self.workspace.runs_dir).read_history() if "epoch" in h]
            if history:
                curves.append((self._label(run), history))
            if len(curves) >= CURVES:
                break
        if curves:
            path = plot_history(curves, self.out / "figures" / "curves-top.png", metric=self.metric)
            self.figures.append(path)
            s.add(Figure(path, f"Training curves of the top {len(curves)} runs (solid: training, dashed: validation; "
                               f"stars: best validation {self.metric})."))
        per_class = []
        classes: list[str] = []
        for run in shown:
            v = recorded_validation(self.ledger, run) or self.ledger.best_validation(run["id"])
            if v and isinstance(v.get("per_class"), dict) and v["per_class"]:
                classes = classes or list(v["per_class"])
                per_class.append((self._label(run), [((v["per_class"].get(c) or {}).get("score")) for c in classes],
                                  v["score"]))
            if len(per_class) >= CURVES:
                break
        if per_class:
            path = plot_per_class_runs(classes, per_class, self.out / "figures" / "per-class-top.png",
                                       metric=self.metric, scale=self.scale)
            self.figures.append(path)
            s.add(Figure(path, f"Per-class {self.metric} of the top {len(per_class)} runs (their recorded best "
                               "validation)."))
        if any(f.name.startswith("sweep-") for f in self.figures):
            s.text("Factor plots: with their sweeps under Factor effects.")
        if not s.blocks:
            s.text("No run has a training history or per-class scores yet.")


def _longest_wait(history: list[dict]) -> Optional[int]:
    """Most epochs between two successive new bests of the val score (None with fewer than two bests)."""
    best, last_epoch, longest = None, None, None
    for h in history:
        f = h["val_score"]
        if best is None or f > best:
            if last_epoch is not None:
                gap = h["epoch"] - last_epoch
                longest = gap if longest is None else max(longest, gap)
            best, last_epoch = f, h["epoch"]
    return longest


_STOP_REASONS = {"pruned": "pruned by its sweep", "budget": "time budget", "interrupted": "interrupted",
                 "completed": "planned epochs", "stop_after": "planned epochs (refit)"}


def _stop_reason(run: dict, train_cfg: dict) -> str:
    reason = run.get("stop_reason")
    if reason == "patience":
        return f"patience ({train_cfg.get('patience')})"
    if reason in _STOP_REASONS:
        return _STOP_REASONS[reason]
    # runs of older versions recorded no stop reason: read what their notes and status say
    notes = (run.get("notes") or "").lower()
    if run.get("status") == "pruned" or "pruned" in notes:
        return "pruned by its sweep"
    if "patience" in notes:
        return f"patience ({train_cfg.get('patience')})"
    if "budget" in notes:
        return "time budget"
    if run.get("status") == "stopped":
        return "interrupted"
    if run.get("last_epoch") and run.get("last_epoch") == run.get("epochs_planned"):
        return "planned epochs"
    return run.get("status") or "-"


def build_report(workspace: Workspace, host=None, output: Optional[Path] = None, top: int = TOP,
                 level: float = stats.DEFAULT_LEVEL,
                 progress: Optional[Callable[[str, int, int], None]] = None) -> ReportResult:
    """Write the report into ``output`` (default ``experiments/report/``). ``progress(section,
    done, total)`` is called as each of its sections starts (``total`` sections in all).

    :raises ConfigError: ``output`` is a file, or its folder cannot be made (one line).
    """
    out = Path(output) if output else workspace.experiments_dir / "report"
    try:
        (out / "figures").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        what = "exists and is not a folder" if out.exists() and not out.is_dir() else \
            f"cannot make the folder ({exc.strerror or exc})"
        raise ConfigError(f"--output: {out} {what}; choose a folder") from None
    with Ledger(workspace.ledger_path) as ledger:
        b = _Builder(ledger, workspace, host, out, top, level)
        sections = ["ranking", "submissions", "factor effects", "evaluation-time gains", "convergence",
                    "generalisation", "next experiments", "figures"]

        def starting(section: str) -> None:
            if progress:
                progress(section, sections.index(section), len(sections))

        b.header()
        starting("ranking")
        shown = b.ranking()
        starting("submissions")
        b.submissions()
        starting("factor effects")
        sweeps = b.factors()
        starting("evaluation-time gains")
        b.evaluation_time()
        starting("convergence")
        b.convergence(shown)
        starting("generalisation")
        b.generalisation(shown)
        starting("next experiments")
        b.next_experiments(sweeps, shown)
        starting("figures")
        b.figures_section(shown)
        if progress:
            progress("written", len(sections), len(sections))
    md = out / "report.md"
    html = out / "report.html"
    atomic_write_text(md, b.doc.to_markdown(out))
    atomic_write_text(html, b.doc.to_html())
    return ReportResult(md, html, b.figures, b.doc)
