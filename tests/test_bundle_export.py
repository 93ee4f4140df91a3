"""`cpx bundle export` (cpx.bundle.export): the standalone scorer it writes computes each built-in
metric from each built-in format as cpx does, and the round trip export -> init --bundle ->
validate --official agrees with cpx validate."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from test_bundle import SMALL_UNET, cli, enter, write_data

from cpx.bundle.export import SCORER, scorer_config
from cpx.data.competition import Competition
from cpx.data.masks import IGNORE
from cpx.eval.metrics import ScoreAccumulator, create_metric
from cpx.submit.formats import create_format


def _scorer():
    spec = importlib.util.spec_from_file_location("exported_score", SCORER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


METRICS = [{"name": "fscore"}, {"name": "miou"}, {"name": "class-iou", "class": "b"}, {"name": "dice"},
           {"name": "pooled-dice", "classes": ["b", "c"]}, {"name": "pixel-accuracy"},
           {"name": "mean-class-accuracy", "scale": 100}]
FORMATS = [({"name": "masks-png"}, {"values": {0: 0, 100: 1, 200: 2}, "ignore_index": 255}),
           ({"name": "masks-tiff", "folder": "pred"}, {}),
           ({"name": "npz", "key": "name"}, {"ignore_index": 7})]


@pytest.mark.parametrize("fmt, masks", FORMATS, ids=[f[0]["name"] for f in FORMATS])
@pytest.mark.parametrize("metric", METRICS, ids=[m["name"] for m in METRICS])
def test_the_exported_scorer_computes_cpx_metric_from_the_format(metric, fmt, masks, tmp_path, cpx_host):
    comp = Competition.model_validate({"name": "parts", "classes": ["a", "b", "c"], "metric": metric,
                                       "submission": fmt, "masks": masks}).bind(cpx_host)
    writer_format = create_format(comp, cpx_host)
    rng = np.random.default_rng(3)
    acc = ScoreAccumulator(create_metric(comp, cpx_host), 3)
    with writer_format.writer(tmp_path / "ref") as ref, writer_format.writer(tmp_path / "res") as res:
        for i in range(4):
            h, w = int(rng.integers(9, 20)), int(rng.integers(9, 20))
            truth = rng.integers(0, 3, (h, w), dtype=np.uint8)
            if i == 1:
                truth[truth == 2] = 0  # a class absent from one image
            if masks.get("ignore_index") is not None:
                truth[:2, :3] = IGNORE
            pred = np.where(rng.random((h, w)) < 0.6, truth % 3, rng.integers(0, 3, (h, w))).astype(np.uint8)
            ref.add(f"IMG_{i}.JPG", truth)
            res.add(f"IMG_{i}.JPG", pred)
            acc.update(torch.from_numpy(pred), torch.from_numpy(truth))
    scorer = _scorer()
    config = json.loads(json.dumps(scorer_config(comp, cpx_host)))  # as written to score_config.json
    value = scorer.score(scorer.read_submission(tmp_path / "ref", config),
                         scorer.read_submission(tmp_path / "res", config), config)
    assert abs(value - acc.compute().score) < 1e-9


def test_the_exported_scorer_refuses_a_missing_prediction_in_one_line(tmp_path, cpx_host):
    comp = cpx_host.competition("drone-vegetation")
    fmt = create_format(comp, cpx_host)
    with fmt.writer(tmp_path / "ref") as ref:
        ref.add("IMG_1.JPG", np.zeros((4, 5), np.uint8))
    with fmt.writer(tmp_path / "res"):
        pass
    program = tmp_path / "program"
    program.mkdir()
    (program / "score.py").write_text(SCORER.read_text())
    (program / "score_config.json").write_text(json.dumps(scorer_config(comp, cpx_host)))
    done = subprocess.run([sys.executable, str(program / "score.py"), str(tmp_path), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stderr.strip() == "submission refused: no prediction for IMG_1.JPG"


VEG = """\
name: veg
title: Vegetation, exported
classes: [background, vegetation]
layout: {train_images: img/train, train_masks: ann/train, val_images: img/val, val_masks: ann/val,
         test_images: img/test, image_suffixes: [.jpg], mask_suffix: .png}
masks: {values: {0: 0, 255: 1}}
metric: {name: class-iou, class: vegetation, scale: 100}
submission: {name: rle-json, file: results.json, order: row-major, index_base: 0}
rules: {submissions_per_phase: 5, submissions_per_day: 2}
"""


def test_export_init_and_validate_official_agree_with_cpx_validate(capsys, tmp_path, cpx_workspace, monkeypatch):
    data = write_data(tmp_path / "veg", classes=2, stored={0: 0, 1: 255}, seed=2)
    (cpx_workspace.root / "competitions").mkdir()
    (cpx_workspace.root / "competitions" / "veg.yaml").write_text(VEG)
    enter(cpx_workspace.root, monkeypatch)
    bundle = tmp_path / "veg-bundle"
    code, out, err = cli(capsys, "bundle", "export", "veg", bundle, "--data", data, "--zip")
    assert code == 0, err
    assert "reference_data/: 5 reference mask(s)" in out
    assert sorted(p.name for p in bundle.iterdir()) == ["competition.yaml", "evaluation.md", "logo.png",
                                                        "overview.md", "reference_data", "scoring_program",
                                                        "terms.md"]
    yaml_text = (bundle / "competition.yaml").read_text()
    assert "version: 2" in yaml_text and "key: class_iou" in yaml_text and "max_submissions_per_day: 2" in yaml_text
    with zipfile.ZipFile(tmp_path / "veg-bundle.zip") as zf:
        assert "scoring_program/score.py" in zf.namelist() and "reference_data/results.json" in zf.namelist()
    # the program scores the references against themselves: a perfect 100, as Codabench would run it
    inputs = tmp_path / "self"
    (inputs / "ref").mkdir(parents=True)
    (inputs / "ref" / "results.json").write_bytes((bundle / "reference_data" / "results.json").read_bytes())
    (inputs / "res").mkdir()
    (inputs / "res" / "results.json").write_bytes((bundle / "reference_data" / "results.json").read_bytes())
    subprocess.run([sys.executable, str(bundle / "scoring_program" / "score.py"), str(inputs), str(inputs / "out")],
                   check=True, timeout=60, capture_output=True)
    assert json.loads((inputs / "out" / "scores.json").read_text()) == {"class_iou": 100.0}

    hosted = tmp_path / "hosted"
    code, out, err = cli(capsys, "init", hosted, "--bundle", tmp_path / "veg-bundle.zip", "--from-data", data, "--json")
    assert code == 0, err
    made = json.loads(out)
    assert made["name"] == "vegetation-exported" and made["column"] == "class_iou"
    assert "metric" not in made["to_confirm"] and "submission" not in made["to_confirm"]
    enter(hosted, monkeypatch)
    code, out, _ = cli(capsys, "competitions", "vegetation-exported", "--json")
    profile = json.loads(out)
    assert profile["metric"] == {"name": "class-iou", "scale": 100.0, "class": "vegetation"}
    assert profile["submission"] == {"name": "rle-json", "file": "results.json", "order": "row-major",
                                     "index_base": 0}
    assert profile["masks"]["values"] == {"0": 0, "255": 1}
    code, out, err = cli(capsys, "train", "unet", "--data", data, "--name", "h", *SMALL_UNET)
    assert code == 0, err
    code, out, err = cli(capsys, "validate", "h", "--official", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["official"]["column"] == "class_iou" and result["scale"] == 100
    assert abs(result["official"]["value"] - result["score"]) < 1e-4 and result["official"]["agrees"]
    code, out, _ = cli(capsys, "validate", "h", "--json")
    assert abs(json.loads(out)["score"] - result["official"]["value"]) < 1e-4


@pytest.mark.parametrize("name", ["celebamask-mini", "drone-vegetation", "landcover-tiles"])
def test_export_then_init_gives_back_the_same_profile(name, capsys, tmp_path, cpx_workspace, monkeypatch):
    # every rule travels (parameter cap, flip pairs, palette, what is allowed, sizes, suffixes,
    # mask mode); the bundle adds its phases and ranked column, and names the competition by title
    enter(cpx_workspace.root, monkeypatch)
    code, out, err = cli(capsys, "competitions", name, "--json")
    assert code == 0, err
    built_in = json.loads(out)
    code, out, err = cli(capsys, "bundle", "export", name, tmp_path / "bundle", "--zip")
    assert code == 0, err
    code, out, err = cli(capsys, "init", tmp_path / "ws", "--bundle", tmp_path / "bundle.zip", "--json")
    assert code == 0, err
    made = json.loads(out)
    enter(tmp_path / "ws", monkeypatch)
    code, out, err = cli(capsys, "competitions", made["name"], "--json")
    assert code == 0, err
    back = json.loads(out)
    assert back["phases"] and back["leaderboard"]["column"] == made["column"]
    differ = {k for k in set(built_in) | set(back) if built_in.get(k) != back.get(k)}
    assert differ == {"name", "phases", "leaderboard"}, {k: (built_in.get(k), back.get(k)) for k in differ}


def test_export_needs_a_new_folder_and_writes_nothing_on_failure(capsys, tmp_path, cpx_workspace):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "x").write_text("mine")
    code, _, err = cli(capsys, "bundle", "export", "drone-vegetation", taken)
    assert code == 2 and "not an empty folder" in err
    code, _, err = cli(capsys, "bundle", "export", "drone-vegetation", tmp_path / "new", "--data", tmp_path / "nothing")
    assert code == 2 and len([line for line in err.splitlines() if line.strip()]) == 1
    assert not (tmp_path / "new").exists()


def test_the_scorer_module_runs_without_cpx(tmp_path):
    # only numpy, Pillow and the standard library: importable from a folder holding nothing else
    copy = tmp_path / "score.py"
    copy.write_text(Path(SCORER).read_text())
    done = subprocess.run([sys.executable, "-I", str(copy)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2 and "usage: score.py INPUT OUTPUT" in done.stderr
