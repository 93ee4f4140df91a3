"""Competitions as data: every registered competition through the whole lifecycle, and a
workspace profile written from scratch in YAML (the issue's acceptance contract)."""

import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cpx.cli import main
from cpx.data.images import read_image, read_mask, write_image, write_mask
from cpx.kernel.manager import create_plugin_host

BUILTIN = create_plugin_host(entry_points=False).competitions.names()
# a real built-in model, small enough to train one epoch in seconds on 24 images
SMALL_UNET = ["--set", "model.options.base_channels=4", "--set", "model.options.depth=2"]


def cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_every_built_in_competition_is_a_yaml_profile_with_its_origin(capsys):
    code, out, _ = cli(capsys, "competitions", "--json")
    assert code == 0
    listing = {r["name"]: r for r in json.loads(out)["competitions"]}
    assert {"celebamask-mini", "drone-vegetation", "landcover-tiles"} <= set(listing)
    assert listing["celebamask-mini"]["metric"] == "fscore"
    assert listing["drone-vegetation"]["metric"] == "class-iou class=vegetation (x100)"
    assert listing["landcover-tiles"]["channels"] == 4
    assert all(r["origin"] == "builtin" and r["synthetic"] for r in listing.values())


@pytest.mark.parametrize("name", BUILTIN)
def test_the_whole_lifecycle_runs_for_every_competition(name, capsys, tmp_path, cpx_workspace, cpx_host):
    comp = cpx_host.competition(name)
    data = tmp_path / "data"
    assert cli(capsys, "data", "synth", str(data), "--competition", name, "--count", "20", "--size", "48",
               "--test-count", "3")[0] == 0
    assert cli(capsys, "data", "check", str(data), "--competition", name)[0] == 0
    code, out, err = cli(capsys, "train", "unet", "--competition", name, "--data", str(data), "--epochs", "1",
                         "--image-size", "32", "--batch-size", "8", "--name", "r", "--quiet", *SMALL_UNET)
    assert code == 0, err
    code, out, _ = cli(capsys, "validate", "r", "--json")
    ev = json.loads(out)
    assert code == 0 and ev["metric"] == comp.metric.name and 0 <= ev["score"] <= comp.metric.scale
    test_dir = comp.data_path(data, "test_images")
    code, out, err = cli(capsys, "predict", "r", "--input", str(test_dir), "--output", str(tmp_path / "pred"))
    assert code == 0, err
    written = sorted(p.name for p in (tmp_path / "pred").iterdir())
    assert written == sorted(comp.layout.mask_name(p.name) for p in test_dir.iterdir())
    code, out, err = cli(capsys, "package", "r", "--name", "s1", "--test", str(test_dir), "--json")
    assert code == 0, err
    packaged = json.loads(out)
    zip_path = Path(packaged["zip_path"])
    assert zip_path.is_file() and packaged["check"]["ok"] and packaged["masks"] == 3
    assert zip_path.name.startswith(f"submission-s1_{comp.metric.name}")
    code, out, err = cli(capsys, "package", "--check", str(zip_path), "--test", str(test_dir), "--json")
    assert code == 0 and json.loads(out)["ok"], err
    score = 0.5 * comp.metric.scale
    assert cli(capsys, "submit", "s1", "--record-score", str(score))[0] == 0
    code, out, _ = cli(capsys, "leaderboard", "--json")
    rows = json.loads(out)["rows"]
    assert code == 0 and any(r.get("test_score") == score for r in rows)


VEG_PROFILE = """\
name: veg
classes: [background, vegetation]
channels: 3
size: variable
layout: {train_images: img/train, train_masks: ann/train, val_images: img/val, val_masks: ann/val,
         test_images: img/test, image_suffixes: [.JPG, .jpg], mask_suffix: .png}
metric: {name: class-iou, class: vegetation, scale: 100}
submission: {name: rle-json, file: results.json, order: column-major, index_base: 1}
rules: {submissions_per_phase: 5}
"""


def _veg_data(root: Path, rng: np.random.Generator) -> None:
    """Non-square images of varying width named *.JPG, binary masks 0/1, an organiser val split."""
    for part, count in (("train", 16), ("val", 6), ("test", 3)):
        for i in range(count):
            h, w = 40, int(rng.integers(46, 77))
            mask = np.zeros((h, w), np.uint8)
            y, x = rng.integers(0, h - 12), rng.integers(0, w - 12)
            mask[y:y + 12, x:x + int(rng.integers(8, 12))] = 1
            image = np.full((h, w, 3), 120, np.uint8) + rng.integers(0, 30, (h, w, 3), dtype=np.uint8)
            image[mask == 1] = (30, 140, 40)
            write_image(root / "img" / part / f"IMG_{part}{i}.JPG", image)
            if part != "test":
                (root / "ann" / part).mkdir(parents=True, exist_ok=True)
                from PIL import Image

                Image.fromarray(mask, mode="L").save(root / "ann" / part / f"IMG_{part}{i}.png")


def _pooled_iou(preds: dict, truth: dict) -> float:
    tp = sum(int(((preds[k] == 1) & (truth[k] == 1)).sum()) for k in truth)
    fp = sum(int(((preds[k] == 1) & (truth[k] == 0)).sum()) for k in truth)
    fn = sum(int(((preds[k] == 0) & (truth[k] == 1)).sum()) for k in truth)
    return tp / (tp + fp + fn)


def _rle_decode(entry: dict) -> np.ndarray:
    h, w = entry["height"], entry["width"]
    flat = np.zeros(h * w, np.uint8)
    counts = entry["counts"]
    for start, length in zip(counts[::2], counts[1::2]):
        flat[start - 1:start - 1 + length] = 1
    return flat.reshape(w, h).T  # column-major


def test_a_new_challenge_from_a_yaml_profile_end_to_end(capsys, tmp_path, cpx_workspace, cpx_host):
    (cpx_workspace.root / "competitions").mkdir()
    (cpx_workspace.root / "competitions" / "veg.yaml").write_text(VEG_PROFILE)
    data = tmp_path / "veg"
    _veg_data(data, np.random.default_rng(0))
    code, out, err = cli(capsys, "train", "unet", "--competition", "veg", "--data", str(data), "--epochs", "3",
                         "--image-size", "32", "--name", "v", "--quiet", *SMALL_UNET)
    assert code == 0, err
    code, out, err = cli(capsys, "validate", "v", "--json")
    ev = json.loads(out)
    assert code == 0 and ev["metric"] == "class-iou" and ev["scale"] == 100
    code, out, err = cli(capsys, "validate", "v")  # the table reads on one scale: the metric's
    assert code == 0, err
    assert re.search(rf"mIoU \(x100, counts pooled over the set\)\s*│\s*{100 * ev['miou']:.4f}", out), out
    assert re.search(rf"pixel accuracy \(x100\)\s*│\s*{100 * ev['pixel_acc']:.4f}", out), out
    # the score is the IoU of class 1 pooled over the organisers' val images, x100, as an
    # independent scorer computes it from the masks `cpx predict` writes
    pred = tmp_path / "pred"
    assert cli(capsys, "predict", "v", "--input", str(data / "img" / "val"), "--output", str(pred))[0] == 0
    names = sorted(p.stem for p in (data / "ann" / "val").iterdir())
    assert sorted(p.stem for p in pred.iterdir()) == names
    preds = {n: read_mask(pred / f"{n}.png") for n in names}
    truth = {n: read_mask(data / "ann" / "val" / f"{n}.png") for n in names}
    assert abs(ev["score"] - 100 * _pooled_iou(preds, truth)) < 1e-4
    code, out, err = cli(capsys, "package", "v", "--name", "s1", "--json")
    assert code == 0, err
    zip_path = Path(json.loads(out)["zip_path"])
    with zipfile.ZipFile(zip_path) as zf:
        results = json.loads(zf.read("results.json"))
    test_images = sorted((data / "img" / "test").iterdir())
    assert sorted(results) == [p.name for p in test_images]  # keys keep the .JPG
    for p in test_images:
        decoded = _rle_decode(results[p.name])
        assert decoded.shape == read_image(p)[0].shape[:2]
    assert cli(capsys, "submit", "s1", "--record-score", "29.6")[0] == 0


BAD_PROFILES = [
    (VEG_PROFILE.replace("channels: 3", "channels: 3\ncolour: red"), "colour: unknown field"),
    (VEG_PROFILE.replace("class-iou", "class-iuo"), "metric.name: unknown metric 'class-iuo'"),
    (VEG_PROFILE.replace("rle-json", "rle-jsn"), "submission.name: unknown submission format 'rle-jsn'"),
    (VEG_PROFILE.replace("class: vegetation", "class: trees"), "metric.class: 'trees' is not one of the classes"),
    (VEG_PROFILE.replace("rules:", "rules:\n  submissions_per_phase: 3\nrules:"), "key 'rules' appears twice"),
]


@pytest.mark.parametrize("text, field", BAD_PROFILES)
def test_a_bad_profile_is_one_line_naming_the_file_and_field(text, field, capsys, cpx_workspace, tmp_path):
    (cpx_workspace.root / "competitions").mkdir()
    (cpx_workspace.root / "competitions" / "veg.yaml").write_text(text)
    code, out, err = cli(capsys, "train", "unet", "--competition", "veg", "--data", str(tmp_path), "--epochs", "1")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert "competitions/veg.yaml" in lines[0] and field in lines[0]
    assert not (cpx_workspace.experiments_dir / "runs").exists()


@pytest.mark.parametrize("text, field", BAD_PROFILES)
def test_competitions_lists_a_bad_profile_as_broken_in_the_line_train_refuses_it_with(text, field, capsys,
                                                                                      cpx_workspace):
    """``cpx competitions`` checks each profile as a command naming it would: a bad one (even
    one that reads but names a class it lacks) is not listed as usable but marked broken."""
    (cpx_workspace.root / "competitions").mkdir()
    (cpx_workspace.root / "competitions" / "veg.yaml").write_text(text)
    code, out, err = cli(capsys, "competitions", "--json")
    shown = json.loads(out)
    assert code == 0 and "veg" not in [r["name"] for r in shown["competitions"]]
    (broken,) = shown["broken"]
    assert broken["name"] == "veg" and field in broken["error"] and "competitions/veg.yaml" in broken["error"]
    code, out, err = cli(capsys, "competitions")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 0 and len(lines) == 1 and "competition veg is broken" in lines[0] and field in lines[0], err
    assert lines[0].count("competitions/veg.yaml") == 1


def test_mask_values_outside_the_map_are_refused_naming_the_file(capsys, cpx_workspace, tmp_path):
    (cpx_workspace.root / "competitions").mkdir()
    (cpx_workspace.root / "competitions" / "veg.yaml").write_text(
        VEG_PROFILE.replace("rules:", "masks: {values: {0: 0, 255: 1}}\nrules:"))
    data = tmp_path / "veg"
    _veg_data(data, np.random.default_rng(1))
    from PIL import Image

    bad = data / "ann" / "train" / "IMG_train0.png"
    Image.fromarray(np.full((40, 50), 7, np.uint8), mode="L").save(bad)
    code, out, err = cli(capsys, "train", "unet", "--competition", "veg", "--data", str(data), "--epochs", "1",
                         *SMALL_UNET)
    assert code == 2 and "IMG_train0" in err and "masks.values" in err, err


def test_record_score_is_checked_against_the_metric_scale(capsys, cpx_workspace):
    from cpx.submit.submissions.scores import parse_score

    comp = create_plugin_host(entry_points=False).competitions.get("drone-vegetation").target
    assert parse_score("29.61", comp) == 29.61
    with pytest.raises(Exception, match="outside 0..100"):
        parse_score("129", comp)
    celeb = create_plugin_host(entry_points=False).competitions.get("celebamask-mini").target
    with pytest.raises(Exception, match="outside 0..1.*metric.scale: 100"):
        parse_score("29.61", celeb)


def test_write_and_read_masks_keep_the_stored_values(tmp_path, cpx_host):
    comp = cpx_host.competition("drone-vegetation")
    ids = (np.arange(30).reshape(5, 6) % 2).astype(np.uint8)
    write_mask(tmp_path / "m.png", ids, comp)
    assert set(np.unique(read_mask(tmp_path / "m.png"))) == {0, 255}
    assert np.array_equal(read_mask(tmp_path / "m.png", comp), ids)



def test_the_leaderboard_checks_the_metric_alone_and_train_still_checks_the_format(capsys, cpx_workspace,
                                                                                   tmp_path):
    """Ranking binds only the profile's metric (the formats' numpy and Pillow stay unimported);
    a command that writes submissions still refuses the profile's unknown format."""
    (cpx_workspace.root / "competitions").mkdir()
    (cpx_workspace.root / "competitions" / "veg.yaml").write_text(VEG_PROFILE.replace("rle-json", "rle-jsn"))
    (cpx_workspace.root / "competitions" / "veg2.yaml").write_text(
        VEG_PROFILE.replace("class-iou", "class-iuo").replace("name: veg", "name: veg2"))
    code, out, err = cli(capsys, "leaderboard", "--competition", "veg2")
    assert code == 2 and "metric.name: unknown metric 'class-iuo'" in err
    code, out, err = cli(capsys, "leaderboard", "--competition", "veg", "--json")
    assert code == 0, err
    assert json.loads(out)["metric"] == "class-iou x100"
    code, out, err = cli(capsys, "train", "unet", "--competition", "veg", "--data", str(tmp_path), "--epochs", "1")
    assert code == 2 and "submission.name: unknown submission format 'rle-jsn'" in err
