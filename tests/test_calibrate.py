"""Calibration (cpx calibrate): per-class logit offsets fitted for the competition's metric, the
2-fold held-out gain, and the stored offsets applied by validate, predict, package and run.py."""

import json
import shutil
import sqlite3
import zipfile

import numpy as np
import pytest
import torch
from conftest import UNET

from cpx.cli import main
from cpx.data.competition import Competition
from cpx.eval.calibrate import GRID, CachedLogits, _candidate_scores, _Top2, fit_offsets, per_image_scores, set_score
from cpx.eval.metrics import class_ids, create_metric
from cpx.eval.predict import predictor_for_run
from cpx.eval.validate import validate_run
from cpx.kernel.errors import RunError
from cpx.report.leaderboard import build_leaderboard
from cpx.runs.handle import open_run
from cpx.runs.ledger import Ledger


def _cache(n=6, classes=4, size=12, seed=0, bias=None):
    """Random images whose truth is the argmax of noisy logits, with ``bias`` subtracted from
    some classes' logits so that shifting them back helps."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        clean = torch.randn(classes, size * size, generator=g) * 2
        truth = clean.argmax(0).to(torch.uint8)
        noisy = clean + torch.randn(classes, size * size, generator=g) * 0.5
        if bias is not None:
            noisy -= torch.tensor(bias, dtype=torch.float32).view(-1, 1)
        out.append(CachedLogits(noisy.to(torch.float16), truth))
    return out


def _metric(host, **spec):
    """The metric ``spec`` of a four-class competition."""
    comp = Competition(name="four", classes=["c0", "c1", "c2", "c3"], metric={"name": "fscore", **spec})
    return create_metric(comp, host)


# per-image and pooled metrics, one on a scale: the one-pass candidate counts must serve them all
METRICS = [{"name": "fscore"}, {"name": "miou"}, {"name": "class-iou", "class": "c3", "scale": 100},
           {"name": "dice"}]


@pytest.mark.parametrize("spec", METRICS, ids=[m["name"] for m in METRICS])
def test_candidate_scores_equal_scoring_each_shift(spec, cpx_host):
    metric = _metric(cpx_host, **spec)
    cache = _cache()
    b = torch.tensor([0.0, 0.3, -0.2, 0.1])
    top = _Top2(cache, b.clone())
    grid = torch.tensor(GRID, dtype=torch.float32)
    for c in (1, 3):
        fast = _candidate_scores(cache, top, c, grid, metric, 4)  # on 0..1
        for j in (0, 7, 20, 33, 40):
            shifted = b.clone()
            shifted[c] += grid[j]
            exact = set_score(cache, shifted.tolist(), metric, 4) / metric.scale
            assert float(fast[j]) == pytest.approx(exact, abs=1e-9)


def test_per_image_scores_average_to_the_set_score_of_a_per_image_metric(cpx_host):
    metric = _metric(cpx_host)
    cache, offsets = _cache(), [0.0, 0.4, -0.3, 0.2]
    values = per_image_scores(cache, offsets, metric, 4)
    assert len(values) == len(cache) and all(0 <= v <= 1 for v in values)
    assert np.mean(values) == pytest.approx(set_score(cache, offsets, metric, 4), abs=1e-12)


def test_top2_follows_shifts_both_ways():
    cache = _cache(seed=1)
    top = _Top2(cache, torch.zeros(4))
    for c, d in ((2, 0.7), (1, -1.3), (2, -0.4), (3, 2.0), (0, -0.5)):
        top.shift(c, d)
    fresh = _Top2(cache, top.b.clone())
    for k in range(len(cache)):
        assert torch.allclose(top.v1[k], fresh.v1[k]) and torch.allclose(top.v2[k], fresh.v2[k])
        assert torch.equal(top.i1[k], fresh.i1[k])


@pytest.mark.parametrize("spec", METRICS[:2], ids=[m["name"] for m in METRICS[:2]])
def test_fit_recovers_an_under_predicted_class(spec, cpx_host):
    metric = _metric(cpx_host, **spec)
    cache = _cache(n=8, bias=[0.0, 0.0, 1.5, 0.0])  # class 2 held back by 1.5
    offsets = fit_offsets(cache, metric, 4)
    assert offsets[0] == 0.0 and 0.8 <= offsets[2] <= 2.0
    assert set_score(cache, offsets, metric, 4) > set_score(cache, [0.0] * 4, metric, 4) + 0.02
    assert fit_offsets(_cache(n=8), metric, 4, max_rounds=1) == pytest.approx([0.0] * 4, abs=0.31)


@pytest.fixture(scope="module")
def calibration_base(tmp_path_factory):
    """A unet run with 14 validation images (half the data), trained once for this module."""
    from cpx.data import write_dataset
    from cpx.kernel.manager import create_plugin_host
    from cpx.kernel.workspace import Workspace
    from cpx.train.run import TrainRequest, train

    host = create_plugin_host(entry_points=False)
    comp = host.competition("celebamask-mini")
    data = tmp_path_factory.mktemp("calibdata")
    write_dataset(data, comp, comp.synthesize(30, 48, 1), test_count=2)
    base = Workspace(tmp_path_factory.mktemp("calibbase"))
    overrides = {**UNET, "data.path": str(data), "data.val_fraction": 0.5, "train.epochs": 2}
    result = train(TrainRequest(recipe="msf-lmsa", overrides=overrides, name="calib"), base, host)
    return base, result


@pytest.fixture
def calib_run(calibration_base, cpx_workspace):
    """That run copied into this test's workspace (its folder too: calibration writes to it)."""
    base, result = calibration_base
    cpx_workspace.runs_dir.mkdir(parents=True, exist_ok=True)
    folder = cpx_workspace.runs_dir / result.run_id
    shutil.copytree(result.run_dir, folder)
    src, dst = sqlite3.connect(base.ledger_path), sqlite3.connect(cpx_workspace.ledger_path)
    with dst:
        src.backup(dst)
    src.close()
    dst.close()
    with Ledger(cpx_workspace.ledger_path) as ledger:
        ledger.update_run(result.run_id, run_dir=str(folder))
    return result.run_id


def test_offsets_apply_exactly_as_fitted_in_the_predictor(calib_run, cpx_workspace, cpx_host):
    from cpx import data as datalib

    plain = predictor_for_run(calib_run, cpx_workspace, cpx_host, tta="flip", precision="fp32")
    offsets = [0.0, 0.5, -0.25] + [0.1] * 16
    shifted = predictor_for_run(calib_run, cpx_workspace, cpx_host, tta="flip", precision="fp32")
    shifted.logit_offsets = torch.tensor(offsets)
    root = open_run(calib_run, cpx_workspace, cpx_host).data_root
    images, _ = datalib.load_images(sorted((root / "test" / "images").glob("*.jpg")))
    logits = plain.logits(images)
    masks = shifted.predict(images)
    for lg, mask in zip(logits, masks):
        assert torch.equal(class_ids(lg.unsqueeze(0) + torch.tensor(offsets).view(1, -1, 1, 1))[0], mask)
    variants = shifted.predict_variants(images)
    assert all(torch.equal(v["raw"], m) for v, m in zip(variants, plain.predict(images)))


def test_calibrate_reports_two_heldout_folds_and_stores_offsets(calib_run, cpx_workspace, cpx_host, capsys):
    assert main(["calibrate", calib_run, "--force"]) == 0
    out = capsys.readouterr().out
    assert "held-out gain" in out and "mean held-out gain" in out and "in-sample" in out and "stored in" in out
    spec = json.loads((cpx_workspace.runs_dir / calib_run / "calibration.json").read_text())
    assert len(spec["offsets"]) == 19 and spec["offsets"][0] == 0.0 and len(spec["folds"]) == 2
    assert {f["fit_on"] + f["scored_on"] for f in spec["folds"]} == {spec["images"]} and spec["images"] == 14
    assert spec["mean_heldout_gain"] == pytest.approx(np.mean([f["gain"] for f in spec["folds"]]))
    # each image's cross-fitted scores: the folds' means are the means of their halves
    per_image = spec["heldout_per_image"]
    assert len(per_image) == 14 and all(len(v) == 2 for v in per_image.values())
    assert np.mean([a - b for b, a in per_image.values()]) == pytest.approx(
        sum(f["gain"] * f["scored_on"] for f in spec["folds"]) / 14, abs=1e-9)

    ev = validate_run(calib_run, cpx_workspace, cpx_host)
    assert ev.calibrated and "raw" in ev.stages
    off = validate_run(calib_run, cpx_workspace, cpx_host, calibration=False, record=False)
    assert not off.calibrated and off.scores.score == pytest.approx(ev.stages["raw"])
    with Ledger(cpx_workspace.ledger_path) as ledger:
        row = ledger.list_validations(calib_run)[-1]
    assert row["calibrated"] is True and row["score"] == pytest.approx(ev.scores.score)
    with Ledger(cpx_workspace.ledger_path) as ledger:  # in-sample: never the leaderboard's val score
        board = build_leaderboard(ledger)
    assert all(r.val_source != f"validate #{ev.validation_id}" for r in board.rows)
    assert main(["validate", calib_run, "--post", "small-components,fill-holes", "--no-record"]) == 0
    captured = capsys.readouterr()
    assert "fscore by stage" in captured.out and "with the calibrated offsets" in captured.out
    assert "post small-components" in captured.out and "in-sample" in captured.err


def test_a_calibration_of_other_weights_is_not_applied(calib_run, cpx_workspace, cpx_host):
    folder = cpx_workspace.runs_dir / calib_run
    (folder / "calibration.json").write_text(json.dumps({"offsets": [1.0] * 19, "checkpoint_sha256": "other"}))
    predictor = predictor_for_run(calib_run, cpx_workspace, cpx_host)
    assert predictor.logit_offsets is None and "other weights" in predictor.notes[0]


def test_nothing_to_calibrate_on_is_refused(unet_run, cpx_workspace, cpx_host):
    with pytest.raises(RunError, match="at least 4"):
        from cpx.eval.calibrate import calibrate_run

        calibrate_run(unet_run, cpx_workspace, cpx_host)


@pytest.mark.parametrize("tta", [(), ("flip",)])
def test_package_repeats_calibration_and_post_processing_in_run_py(calib_run, cpx_workspace, cpx_host, tta):
    from cpx.submit.package import PackageRequest, package

    folder = cpx_workspace.runs_dir / calib_run
    from cpx.kernel.files import sha256_file

    # strong offsets, so that they change masks
    offsets = [0.0] + [1.5 if c % 2 else -1.5 for c in range(1, 19)]
    (folder / "calibration.json").write_text(json.dumps({"offsets": offsets,
                                                          "checkpoint_sha256": sha256_file(folder / "best.pt")}))
    result = package(PackageRequest(run=calib_run, name=f"calpost{len(tta)}", tta=tta,
                                    post=("small-components:min_share=0.01,fill-holes:max_share=0.01",)),
                     cpx_workspace, cpx_host)
    assert result.solution_exact  # run.py reproduced every mask to the pixel
    with zipfile.ZipFile(result.zip_path) as zf:
        config = json.loads(zf.read("solution/model.json"))
        assert "solution/postprocess_numpy.py" in zf.namelist()
    assert config["logit_offsets"] == pytest.approx(offsets)
    assert [s["function"] for s in config["postprocess"]] == ["remove_small_components", "fill_holes"]
    assert config["postprocess"][0]["kwargs"]["min_share"] == 0.01
