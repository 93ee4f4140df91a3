"""`cpx report` from a ledger built row by row: recorded test scores, a sweep with seeds, a
single-run one-factor pair; every number in the report traced back to the ledger."""

from __future__ import annotations

import json
import math
import re
import sqlite3
import statistics

import pytest
from PIL import Image
from scipy import stats as sps

from cpx.cli import main
from cpx.report.results import build_report
from cpx.runs.folder import RunFolder
from cpx.runs.ledger import Ledger

COMP = "celebamask-mini"
CLASSES = ["background", "skin", "nose"]
IMAGES = [f"img{i:02d}" for i in range(8)]


def _config(dice=1.5, seed=0, model="msf-lmsa", patience=20):
    return {"recipe": "msf-lmsa", "competition": COMP, "model": {"name": model, "options": {}},
            "loss": {"name": "combined", "options": {"ce": 1.0, "dice": dice}},
            "train": {"epochs": 300, "seed": seed, "patience": patience}}


def _diff(dice=1.5, seed=0, model="msf-lmsa"):
    out = {}
    if dice != 1.5:
        out["loss.options.dice"] = dice
    if seed:
        out["train.seed"] = seed
    if model != "msf-lmsa":
        out["model.name"] = model
    return out


def _run(ledger, ws, name, val, dice=1.5, seed=0, model="msf-lmsa", sweep=None, best=None, last=None, per_image=None,
         history=None):
    folder = RunFolder.create(ws.runs_dir, f"20260101-000000-{name}")
    if history:
        folder.write_history([{"epoch": e, "val_score": f, "train_loss": 1.0 / e, "lr": 1e-3} for e, f in history])
    row = ledger.add_run(id=folder.path.name, name=name, recipe="msf-lmsa", competition=COMP, status="completed",
                         best_val_score=val, best_epoch=best, last_epoch=last, epochs_planned=300,
                         config=_config(dice, seed, model), config_diff=_diff(dice, seed, model), data_fingerprint="fp",
                         run_dir=str(folder.path), sweep=sweep, notes="no improvement in 20 validations (patience)")
    if per_image is not None:
        ledger.add_validation(row["id"], checkpoint="best", tta="none", data="val_list", images=len(per_image),
                              score=sum(per_image.values()) / len(per_image), per_image=per_image,
                              per_class={c: {"score": 0.5 + 0.1 * i, "images": 8} for i, c in enumerate(CLASSES)})
    return row


@pytest.fixture
def ledger_ws(cpx_workspace):
    ws = cpx_workspace
    base = {n: 0.60 + 0.02 * i for i, n in enumerate(IMAGES)}
    with Ledger(ws.ledger_path) as ledger:
        ref = _run(ledger, ws, "ref", 0.6889, best=120, last=140, per_image=base,
                   history=[(1, 0.2), (2, 0.3), (3, 0.3), (4, 0.3), (5, 0.31), (6, 0.30)])
        dice2 = _run(ledger, ws, "dice2", 0.7000, dice=2.0, best=98, last=118,
                     per_image={n: f + 0.01 + 0.002 * (i % 3) for i, (n, f) in enumerate(base.items())})
        ledger.add_validation(dice2["id"], checkpoint="best", tta="flip", data="val_list", images=8, score=0.7100,
                              per_image={n: f + 0.01 + 0.002 * (i % 3) + 0.004 for i, (n, f) in enumerate(base.items())})
        # evaluation-time ingredients of ref: a post-processed validation and held-out calibration
        ledger.add_validation(ref["id"], checkpoint="best", tta="none", data="val_list", images=8, score=0.6870,
                              post="small-components", per_image={n: f - 0.002 for n, f in base.items()})
        RunFolder(ws.runs_dir / ref["id"]).write_calibration(
            {"offsets": [0.0, 0.1, 0.2], "classes": CLASSES, "tta": [],
             "heldout_per_image": {n: [f, f + 0.003 * (i % 2)] for i, (n, f) in enumerate(base.items())}})
        _run(ledger, ws, "unet", 0.6500, model="unet", best=60, last=80)
        ledger.add_sweep("sw", recipe="msf-lmsa", mode="grid", factors=[{"key": "loss.options.dice", "values": [1.0, 2.0]}],
                         seeds=2, trials=4, overrides={}, storage="sqlite:///x.db", study="sw")
        for dice, vals in ((1.0, (0.600, 0.610)), (2.0, (0.660, 0.668))):
            for seed, v in enumerate(vals):
                _run(ledger, ws, f"sw#{dice}-{seed}", v, dice=dice, seed=seed, sweep="sw", best=50, last=70)
        ledger.add_submission("v1", run_id=ref["id"], val_score=0.6889, checkpoint="best", tta="none",
                              created_at="2026-01-02T10:00:00+00:00")
        ledger.record_score("v1", 0.7200)
        ledger.add_submission("v2", run_id=dice2["id"], val_score=0.7000, checkpoint="best", tta="none",
                              created_at="2026-01-03T10:00:00+00:00")
        ledger.record_score("v2", 0.7400)
        ledger.update_submission("v2", is_final=True)
    return ws


def _cell(db, ws, ref):
    if ref.table == "calibration":
        return RunFolder(ws.runs_dir / ref.key).read_calibration()[ref.column]
    if ref.table == "history":
        history = RunFolder(ws.runs_dir / ref.key).read_history()
        return [h["val_score"] for h in history if h.get("val_score") is not None]
    key = {"runs": "id", "validations": "id", "submissions": "name", "scores": "id", "sweeps": "name"}[ref.table]
    row = db.execute(f"SELECT {ref.column} FROM {ref.table} WHERE {key} = ?", (ref.key,)).fetchone()
    assert row is not None, ref
    value = row[0]
    if ref.column in ("per_image", "config_diff", "config", "per_class"):
        value = json.loads(value) if value is not None else None
    return value


def _mean(values):
    return sum(values) / len(values)


def _recompute(fact, values):
    """The fact's value from its ledger inputs, for the kinds of number that are plain arithmetic."""
    how, d = fact.how, fact.detail or {}
    if how == "value":
        return values[0]
    if how == "diff":
        return values[1] - values[0]
    if how == "count":
        return len(values)
    if how == "mean":
        return _mean(values)
    if how == "sd":
        return statistics.stdev(values)
    if how == "max":
        return max(values)
    if how == "left":
        return d["limit"] - len(values)
    if how == "effect":
        return _mean([r.value for r in d["level"]]) - _mean([r.value for r in d["reference"]])
    if how in ("mean_gap", "gap_prediction", "gap_half_width", "gap_sd"):
        pairs = values[1:] if how == "gap_prediction" else values
        gaps = [t - v for v, t in zip(pairs[::2], pairs[1::2])]
        if how == "mean_gap":
            return _mean(gaps)
        if how == "gap_prediction":
            return values[0] + _mean(gaps)
        sd = statistics.stdev(gaps)
        return sd if how == "gap_sd" else sps.t.ppf(0.975, len(gaps) - 1) * sd * math.sqrt(1 + 1 / len(gaps))
    if how in ("paired_diff", "shared_images"):
        if len(values) == 1:  # cross-fitted calibration scores: image -> [before, after]
            values = [{k: v[0] for k, v in values[0].items()}, {k: v[1] for k, v in values[0].items()}]
        a, b = values
        shared = sorted(set(a) & set(b))
        return len(shared) if how == "shared_images" else _mean([b[k] - a[k] for k in shared])
    if how == "longest_wait":
        best, at, longest = None, None, 0
        for epoch, f in enumerate(values[0], 1):
            if best is None or f > best:
                if at is not None:
                    longest = max(longest, epoch - at)
                best, at = f, epoch
        return longest
    if how == "noise_sd":
        return None  # checked below from the sweep's cells
    return None


def assert_traced(result, ws):
    """Every fact's ledger cells hold what it says, plain arithmetic facts recompute from them, and
    the Markdown prints no score-like number or integer table cell that is not a fact."""
    doc = result.document
    md = result.markdown.read_text()
    db = sqlite3.connect(ws.ledger_path)
    checked = {}
    for fact in doc.facts:
        values = []
        for ref in fact.refs:
            value = _cell(db, ws, ref)
            if ref.column != "config":
                assert value == ref.value, (fact, ref)
            values.append(value)
        expected = _recompute(fact, values)
        if expected is not None:
            if isinstance(expected, float):
                assert fact.value == pytest.approx(expected, abs=1e-12), fact
            else:
                assert fact.value == expected, fact
            checked[fact.how] = checked.get(fact.how, 0) + 1
        assert fact.refs or fact.how == "assumed_spread", fact
    for how in ("value", "diff", "count", "mean", "sd", "left", "effect", "gap_prediction", "gap_half_width",
                "mean_gap", "gap_sd", "paired_diff", "shared_images", "longest_wait"):
        assert checked.get(how), f"no {how} fact was checked"

    # every score-like number printed (3+ decimals) and every integer table cell is one of the facts
    fact_tokens = set()
    for fact in doc.facts:
        fact_tokens.update(re.findall(r"[-+]?\d+\.\d+|\d+", str(fact.text)))
    for token in re.findall(r"(?<![\w.])[-+]?\d+\.\d{3,}", md):
        assert token in fact_tokens, f"{token} in the report is no ledger fact"
    for line in md.splitlines():
        if line.startswith("| ") and not line.startswith("| #") and not line.startswith("|---"):
            for cell in line.strip("| ").split(" | "):
                if re.fullmatch(r"\d+", cell.strip()) and not line.startswith(f"| {cell.strip()} | "):
                    assert cell.strip() in fact_tokens, f"table cell {cell!r} is no ledger fact ({line})"


def test_report_regenerated_from_recorded_test_scores_every_number_traced(ledger_ws, cpx_host, capsys):
    assert main(["report"]) == 0
    out = ledger_ws.experiments_dir / "report"
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    # ranking: val score, TTA val score where measured, test score where recorded, predicted test score otherwise
    assert "| # | run | status | val fscore | TTA val fscore | test fscore | predicted test fscore |" in md
    assert "| 1 | dice2 | completed | 0.7000 | 0.7100 (flip) | 0.7400 (v2) | - | +0.0400 | 98 | 118 |" in md
    gaps = [0.7200 - 0.6889, 0.7400 - 0.7000]
    mean = sum(gaps) / 2
    hw = sps.t.ppf(0.975, 1) * statistics.stdev(gaps) * math.sqrt(1.5)
    assert f"| unet | completed | 0.6500 | - | - | {0.65 + mean:.4f} ±{hw:.4f} | - | 60 | 80 | model=unet |" in md
    # submissions: history with the phase's budget, the final one and whether it is the best
    assert "| v1 | 2026-01-02 10:00 | ref | 0.6889 | 0.7200 | +0.0311 | 9 |  | no |" in md
    assert "| v2 | 2026-01-03 10:00 | dice2 | 0.7000 | 0.7400 | +0.0400 | 8 | **final** | yes |" in md
    assert "it is the best scored one" in md
    # factor effects with significance, in words; the single-run pair flagged as single-seed
    assert "| dice | 2 vs 1 | +0.0590 |" in md and "| significant |" in md.replace("**", "")
    assert "single-seed evidence" in md and "significant; single seed" in md
    # dice2 beats ref by 0.010, 0.012 or 0.014 on each of the 8 images: +0.01175 on average
    assert re.search(r"\| dice \| ref \(1\.5\) → dice2 \(2\) \| \+0\.0118 \| \+0\.01\d\d \.\. \+0\.01\d\d \| 8 \|", md)
    # evaluation-time ingredients, paired per image against the plain validation
    assert "| dice2 | TTA flip | 0.6817 | +0.0040 | +0.0040 .. +0.0040 | 8 |" in md
    assert "| ref | post-processing small-components | 0.6700 | -0.0020 |" in md
    assert "| ref | calibration, held out | 0.6700 | +0.0015 |" in md and "never in-sample" in md
    # convergence, generalisation and next experiments
    assert "patience of about 5" in md and "Mean gap +0.0356 over 2 pair(s)" in md
    assert "latest best epoch among them is 120; about 145 epochs" in md  # all stopped by patience
    assert "untested neighbour" in md and "--grid loss.options.dice=2,3 --seeds 2`" in md
    # figures written, linked from the Markdown and inlined in the HTML
    figs = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert figs == ["curves-top.png", "per-class-top.png", "sweep-sw.png"]
    for name in figs:
        assert f"figures/{name}" in md
        assert Image.open(out / "figures" / name).size[0] >= 600
    assert html.count("data:image/png;base64,") == 3 and "figures/" not in html
    assert "<table>" in html and "0.7400" in html

    # a new score is recorded: the report written again shows it and predicts from three pairs
    with Ledger(ledger_ws.ledger_path) as ledger:
        unet = ledger.get_run("unet")
        ledger.add_submission("v3", run_id=unet["id"], val_score=0.6500, created_at="2026-01-04T10:00:00+00:00")
        ledger.record_score("v3", 0.6900)
    result = build_report(ledger_ws, cpx_host)
    md2 = result.markdown.read_text()
    assert_traced(result, ledger_ws)
    assert "| v3 | 2026-01-04 10:00 | unet | 0.6500 | 0.6900 | +0.0400 | 7 |" in md2
    assert "over 3 pair(s)" in md2 and "Spearman" in md2
    assert "is **not** the best scored one" not in md2  # v2 (0.74) stays final and best


def test_report_on_an_empty_ledger(cpx_workspace, cpx_host):
    result = build_report(cpx_workspace, cpx_host)
    md = result.markdown.read_text()
    assert "No run with a validation score" in md and "No submission" in md and result.figures == []


def test_an_ablation_sweep_is_reported_against_its_baseline(cpx_workspace, cpx_host):
    ws = cpx_workspace
    variants = {"plain-flip": {"augmentation.options.flip_swap": False}, "no-ema": {"train.ema": None}}
    with Ledger(ws.ledger_path) as ledger:
        ledger.add_sweep("abl", recipe="msf-lmsa", mode="grid", seeds=2, trials=6, overrides={},
                         storage="sqlite:///x.db", study="abl",
                         factors=[{"key": "variant", "values": ["baseline", "plain-flip", "no-ema"],
                                   "variants": variants}])
        for variant, scores in (("baseline", (0.750, 0.758)), ("plain-flip", (0.630, 0.633)),
                                ("no-ema", (0.752, 0.762))):
            for seed, value in enumerate(scores):
                config = _config(seed=seed)
                config["augmentation"] = {"name": "baseline", "options": {"flip_swap": variant != "plain-flip"}}
                config["train"]["ema"] = None if variant == "no-ema" else 0.998
                folder = RunFolder.create(ws.runs_dir, f"20260101-000000-{variant}-{seed}")
                ledger.add_run(id=folder.path.name, name=f"abl#{variant}-{seed}", recipe="msf-lmsa", competition=COMP,
                               status="completed", best_val_score=value, best_epoch=10, last_epoch=12, config=config,
                               config_diff={}, data_fingerprint="fp", run_dir=str(folder.path), sweep="abl")
    result = build_report(ws, cpx_host)
    md = result.markdown.read_text()
    assert "| variant | plain-flip vs baseline | -0.1225 |" in md and "| variant | no-ema vs baseline | +0.0030 |" in md
    assert "Ablation abl: beyond the noise, against the baseline: plain-flip (-0.1225)" in md
    assert "(ablation, recipe msf-lmsa)" in md and "plain-flip: `augmentation.options.flip_swap=false`" in md
    assert "`--seeds " in md
    assert "The largest effect within the noise is no-ema (+0.0030)" in md
    # the ablation's numbers come from the ledger cells they name
    db = sqlite3.connect(ws.ledger_path)
    effects = [f for f in result.document.facts if f.how == "effect"]
    assert effects and all(_cell(db, ws, ref) == ref.value for f in effects for ref in f.refs)


def test_a_grid_without_effects_says_how_many_seeds_would_tell(cpx_workspace, cpx_host):
    ws = cpx_workspace
    with Ledger(ws.ledger_path) as ledger:
        ledger.add_sweep("flat", recipe="msf-lmsa", mode="grid", seeds=2, trials=4, overrides={},
                         storage="sqlite:///x.db", study="flat",
                         factors=[{"key": "loss.options.dice", "values": [1.0, 2.0]}])
        for dice, scores in ((1.0, (0.700, 0.720)), (2.0, (0.705, 0.723))):
            for seed, value in enumerate(scores):
                _run(ledger, ws, f"flat#{dice}-{seed}", value, dice=dice, seed=seed, sweep="flat", best=10, last=12)
    md = build_report(ws, cpx_host).markdown.read_text()
    assert "Sweep flat: no factor has an effect beyond the noise" in md and "runs per level are needed" in md


def test_no_rendered_report_is_committed():
    """A rendered page carries a copy of the HTML template (``document._CSS`` and the markup):
    committed, that copy drifts from the one owner, cpx/report/document.py (one did). Reports in
    the repository are kept as Markdown and figures; ``cpx report`` renders the HTML."""
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    listed = subprocess.run(["git", "ls-files", "--cached", "*.html", "*.htm"], cwd=repo, capture_output=True,
                            text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    assert listed.stdout.split() == []
