"""The report's sections on what changed the score: factor effects (sweeps and ablations
against their seed-to-seed noise, then one-factor pairs of single runs) and the next
experiments they point to. A mixin of the report builder (:mod:`cpx.report.results`), which
provides ``doc``, ``ledger``, ``runs``, ``level``, ``out``, ``figures`` and ``_label``.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from cpx.kernel.config import flatten
from cpx.kernel.text import format_f, safe_filename
from cpx.report import stats
from cpx.report.document import Document, Figure, Ref, Section, Table
from cpx.report.facts import fact_f, fact_int, fact_signed, p_text
from cpx.report.paired import recorded_validation
from cpx.report.sweeps import SweepResults, plot_sweep, short_key, show_value, sweep_results

RANKED_STATUSES = ("completed", "stopped", "pruned", "imported")
# config fields that never make two runs a "different setting"
IGNORED_KEYS = ("recipe", "description", "data.path", "train.device", "train.precision")


def config_diff_vs(config: dict, other: dict) -> dict:
    """Flat ``{key: value}`` of ``config`` where it differs from ``other``, leaving out the fields
    that never make two runs a different setting (:data:`IGNORED_KEYS`)."""
    a, b = flatten(config or {}), flatten(other or {})
    return {k: v for k, v in a.items() if b.get(k, object()) != v and not k.startswith(IGNORED_KEYS)}


class EffectSections:
    """Factor effects and next experiments, for the report builder (which sets ``metric``, the
    name of the score the runs were ranked by)."""

    metric: str = "score"

    def factors(self) -> list[SweepResults]:
        d = self.doc
        s = d.section("Factor effects")
        results = []
        for sw in self.ledger.list_sweeps():
            res = sweep_results(self.ledger, sw["name"], self.level)
            if not res.runs:
                continue
            results.append(res)
            self._sweep(s, res)
        if not results:
            s.text("No sweep is recorded: `cpx sweep RECIPE --grid key=a,b --seeds 3` measures effects against the "
                   "seed-to-seed noise.")
        self._single_pairs(s)
        return results

    def _sweep(self, s: Section, res: SweepResults) -> None:
        d = self.doc
        counts = res.status_counts()
        s.text(f"**Sweep {res.name}** ({res.kind}, recipe {res.sweep.get('recipe')}): "
               + ", ".join(f"{fact_int(d, n, [Ref('runs', r.run_id, 'status', r.status) for r in res.runs if r.status == st], 'count')} {st}"
                           for st, n in sorted(counts.items())) + ".")
        keys = res.factor_keys
        for f in res.factors:
            if f.variants:
                s.text("Variants (each against the recipe unchanged, `baseline`): " + "; ".join(
                    f"{name}: " + ", ".join(f"`{k}={set_value(v)}`" for k, v in changes.items())
                    for name, changes in f.variants.items()) + ".")
        rows = []
        for cell in sorted(res.cells, key=lambda c: -(c.summary.mean if c.summary else -1)):
            counted = [r for r in cell.runs if r.counted]
            refs = [Ref("runs", r.run_id, "best_val_score", r.value) for r in counted]
            summ = cell.summary
            rows.append([*(show_value(cell.params.get(k)) for k in keys),
                         fact_int(d, len(counted), refs, "count"),
                         fact_f(d, summ.mean if summ else None, None, "mean", refs),
                         "-" if not summ or summ.sd is None else d.fact(summ.sd, format_f(summ.sd), refs, "sd")])
        s.add(Table([*(short_key(k) for k in keys), "runs", f"mean best val {self.metric}", "sd over seeds"], rows,
                    caption=f"Sweep {res.name}: each cell over its seeds."))
        nz = res.noise
        all_refs = [Ref("runs", r.run_id, "best_val_score", r.value) for r in res.counted]
        if nz is not None:
            if nz.sd is None:
                s.text("One run per cell and no spare degrees of freedom: the noise, and so the significance of "
                       "any effect, cannot be judged. Re-run with `--seeds 3`.")
            else:
                sd = d.fact(nz.sd, format_f(nz.sd), all_refs, "noise_sd", {"source": nz.source, "dof": nz.dof})
                src = "replicate seeds" if nz.source == "seeds" else "the residual of an additive model"
                s.text(f"Seed-to-seed noise: sd {sd} (from {src}).")
        if res.effects:
            rows = []
            for e in res.effects:
                est = effect_fact(d, res, e)
                ci = "-" if e.low is None else (fact_signed(d, e.low, all_refs, "effect_low") + " .. "
                                                + fact_signed(d, e.high, all_refs, "effect_high"))
                p = "-" if e.p is None else d.fact(e.p, p_text(e.p), all_refs, "p_value")
                verdict = f"**{e.verdict}**" if e.significant else e.verdict
                rows.append([short_key(e.factor), f"{show_value(e.level)} vs {show_value(e.reference)}", est, ci, p,
                             verdict])
            s.add(Table(["factor", "levels", f"effect on val {self.metric}", f"{self.level * 100:g}% interval", "p",
                         "verdict"], rows,
                        caption=f"Sweep {res.name}: effect of each level against the reference level (difference "
                                f"of mean best val {self.metric} over all other factors and seeds)."))
        for sl in res.slopes:
            unit = "per x10" if sl.log else "per unit"
            refs = all_refs
            s.text(f"{short_key(sl.factor)}: trend {fact_signed(d, sl.slope, refs, 'slope')} {unit} "
                   f"({self.level * 100:g}% interval {fact_signed(d, sl.low, refs, 'slope_low')} .. "
                   f"{fact_signed(d, sl.high, refs, 'slope_high')}): {sl.verdict}.")
        path = plot_sweep(res, self.out / "figures" / f"sweep-{safe_filename(res.name)}.png", self.level, self.metric)
        if path:
            self.figures.append(path)
            s.add(Figure(path, f"Sweep {res.name}: best val {self.metric} against each factor; dots are runs "
                               "(colour: seed), bars are level means with their interval."))

    def _single_pairs(self, s: Section) -> None:
        """Pairs of single runs that differ in exactly one config field (same recipe, data and seed)."""
        d = self.doc
        candidates = [r for r in self.runs if r.get("kind") == "train" and r.get("config") and r.get("best_val_score") is not None
                      and r.get("status") in RANKED_STATUSES]
        pairs = []
        for i, a in enumerate(candidates):
            for b in candidates[i + 1:]:
                if a.get("recipe") != b.get("recipe") or a.get("data_fingerprint") != b.get("data_fingerprint"):
                    continue
                if a.get("sweep") and a.get("sweep") == b.get("sweep"):
                    continue  # a sweep's own analysis covers it, with its seeds
                diff = config_diff_vs(b["config"], a["config"])
                if len(diff) == 1:
                    key = next(iter(diff))
                    # A is the baseline: the run that keeps the recipe's value, else the older run
                    a_changed, b_changed = key in (a.get("config_diff") or {}), key in (b.get("config_diff") or {})
                    if (a_changed and not b_changed) or (a_changed == b_changed and a["created_at"] > b["created_at"]):
                        a, b = b, a
                    pairs.append((a, b, key))
        shown = 0
        rows = []
        for a, b, key in pairs:
            if shown >= 8:
                break
            va, vb = recorded_validation(self.ledger, a), recorded_validation(self.ledger, b)
            if va is None or vb is None:
                continue
            try:
                t = stats.paired_test(va["per_image"], vb["per_image"], level=self.level)
            except ValueError:
                continue
            shown += 1
            refs = [Ref("validations", va["id"], "per_image", va["per_image"]),
                    Ref("validations", vb["id"], "per_image", vb["per_image"])]
            fa, fb = flatten(a["config"]).get(key), flatten(b["config"]).get(key)
            rows.append([short_key(key), f"{self._label(a)} ({show_value(fa)}) → {self._label(b)} ({show_value(fb)})",
                         fact_signed(d, t.diff, refs, "paired_diff"),
                         fact_signed(d, t.low, refs, "paired_low") + " .. " + fact_signed(d, t.high, refs, "paired_high"),
                         fact_int(d, t.n, refs, "shared_images"), d.fact(t.t_p, p_text(t.t_p), refs, "paired_t_p"),
                         t.verdict + "; single seed"])
        if rows:
            s.add(Table(["factor", "runs", "B − A", f"{self.level * 100:g}% bootstrap interval", "images", "paired t p",
                         "verdict"], rows,
                        caption="One-factor comparisons between single runs: **single-seed evidence**. The interval "
                                "covers the images of the validation list (paired per image), not the spread between "
                                "seeds, which is often as large as the difference itself."))

    def next_experiments(self, sweeps: list[SweepResults], shown: list[dict]) -> None:
        d = self.doc
        s = d.section("Next experiments")
        found = False
        for res in sweeps:
            best = res.best_cell
            if best is None or res.mode != "grid":
                continue
            significant = sorted((e for e in res.effects if e.significant), key=lambda e: -abs(e.estimate))
            all_refs = [Ref("runs", r.run_id, "best_val_score", r.value) for r in res.counted]
            if any(f.variants is not None for f in res.factors):
                found = self._next_after_ablation(s, res, significant, all_refs) or found
                continue
            if not significant:
                biggest, need = self._seeds_to_resolve(res, res.effects)
                if need:
                    s.text(f"Sweep {res.name}: no factor has an effect beyond the noise. To tell an effect as large "
                           f"as the biggest seen ({effect_fact(d, res, biggest)}, "
                           f"{short_key(biggest.factor)}) from noise of sd "
                           f"{d.fact(res.noise.sd, format_f(res.noise.sd), all_refs, 'noise_sd')}, "
                           f"about {d.fact(need, str(need), all_refs, 'seeds_needed')} runs per level are needed "
                           "(80% power): add seeds before trusting any ranking of these settings.")
                    found = True
                continue
            lines = []
            for e in significant[:3]:
                tested = sorted({stats.level_key(r.params.get(e.factor)) for r in res.runs}, key=stats.level_order)
                best_level = best.params.get(e.factor)
                for value in _neighbours(tested, best_level):
                    if self._tried(res, e.factor, value, best.params):
                        continue
                    fixed = {**(res.sweep.get("overrides") or {}),
                             **{k: v for k, v in best.params.items() if k != e.factor}}
                    others = " ".join(f"--set {k}={set_value(v)}" for k, v in fixed.items())
                    command = (f"cpx sweep {res.sweep.get('recipe')} --grid {e.factor}={show_value(best_level)},"
                               f"{show_value(value)} --seeds {max(2, res.sweep.get('seeds') or 2)} {others}").strip()
                    lines.append([short_key(e.factor), show_value(best_level), show_value(value), effect_fact(d, res, e),
                                  f"`{command}`"])
            if lines:
                found = True
                s.add(Table(["factor", "best level", "untested neighbour", "effect seen", "command"], lines,
                            caption=f"Sweep {res.name}: untested neighbours of the best cell ({best.label}) along the "
                                    "factors with the largest significant effects."))
        if not found:
            s.text("No significant effect is recorded yet, so there is no direction to follow: run a sweep with seeds "
                   "over the settings you care about, e.g. `cpx sweep RECIPE --grid dice=1,1.5,2 --seeds 3`.")

    def _seeds_to_resolve(self, res: SweepResults, effects: list) -> tuple[Optional[stats.Effect], Optional[int]]:
        """The largest of ``effects`` and the runs per level that would tell it from the sweep's
        noise (80% power); ``(None, None)`` without effects or a noise estimate."""
        biggest = max(effects, key=lambda e: abs(e.estimate), default=None)
        if biggest is None or res.noise is None or not res.noise.sd:
            return None, None
        return biggest, stats.seeds_needed(res.noise.sd, abs(biggest.estimate), level=self.level)

    def _next_after_ablation(self, s: Section, res: SweepResults, significant: list, all_refs: list) -> bool:
        """What an ablation says to do: which variants moved the val score beyond the noise, and how many
        seeds would tell the largest of the others from noise."""
        d = self.doc
        said = False
        if significant:
            parts = [f"{show_value(e.level)} ({effect_fact(d, res, e)})" for e in significant]
            s.text(f"Ablation {res.name}: beyond the noise, against the baseline: " + ", ".join(parts)
                   + ". A negative effect is an ingredient of the baseline worth keeping; a positive one, a change "
                     "worth adopting.")
            said = True
        biggest, need = self._seeds_to_resolve(res, [e for e in res.effects if not e.significant])
        if need:
            s.text(f"The largest effect within the noise is {show_value(biggest.level)} "
                   f"({effect_fact(d, res, biggest)}); telling it from noise of sd "
                   f"{d.fact(res.noise.sd, format_f(res.noise.sd), all_refs, 'noise_sd')} takes about "
                   f"{d.fact(need, str(need), all_refs, 'seeds_needed')} runs per variant (80% power, "
                   f"`--seeds {need}` on the same command), or a longer budget per run if the effect grows "
                   "with training.")
            said = True
        return said

    def _tried(self, res: SweepResults, factor: str, value: Any, params: dict) -> bool:
        want = {**params, factor: value}
        for run in self.runs:
            flat = flatten(run.get("config") or {})
            if run.get("recipe") == res.sweep.get("recipe") and all(flat.get(k) == v for k, v in want.items()):
                return True
        return False


def effect_fact(doc: Document, res: SweepResults, e: stats.Effect) -> str:
    """An effect's estimate as a fact: the runs at its level and at the reference level."""
    def refs(level):
        return [Ref("runs", r.run_id, "best_val_score", r.value) for r in res.counted
                if stats.level_key(r.params.get(e.factor)) == level]

    lv, ref = refs(e.level), refs(e.reference)
    return fact_signed(doc, e.estimate, lv + ref, "effect", {"level": lv, "reference": ref})


def set_value(value: Any) -> str:
    """A value as ``--set`` reads it back (YAML)."""
    if isinstance(value, (dict, list)):
        return "'" + json.dumps(value) + "'"
    if value is None or isinstance(value, bool):
        return json.dumps(value)  # null, true, false
    return show_value(value)


def _neighbours(levels: list, best: Any) -> list:
    """Untested values next to ``best`` along sorted numeric ``levels``: one step beyond an end,
    midpoints towards inner neighbours."""
    nums = [v for v in levels if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if best not in nums or len(nums) < 2:
        return []
    i = nums.index(best)
    out = []
    if i == len(nums) - 1:
        out.append(_round(best + (best - nums[i - 1])))
    else:
        out.append(_round((best + nums[i + 1]) / 2))
    if i == 0:
        step = nums[1] - best
        if best - step > 0:
            out.append(_round(best - step))
    else:
        out.append(_round((best + nums[i - 1]) / 2))
    return out


def _round(x: float) -> float:
    return float(f"{x:.4g}")
