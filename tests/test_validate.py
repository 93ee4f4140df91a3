import json
import math

import numpy as np
import pytest
import torch
from conftest import tiny_overrides
from PIL import Image

from cpx.cli import main
from cpx.data import write_mask
from cpx.eval.metrics import create_metric
from cpx.eval.predict import Member, Predictor
from cpx.eval.validate import evaluate_files, score_folders, validate_run
from cpx.kernel.errors import DataError
from cpx.runs.ledger import Ledger
from cpx.train.run import TrainRequest, train

EPS = 1e-7  # the organisers' constant, in every denominator of their formula


def F1(tp, fp, fn):
    """The scorer's per-class F, by hand."""
    p = tp / (tp + fp + EPS)
    r = tp / (tp + fn + EPS)
    return 2 * p * r / (p + r + EPS)


class Fixed(torch.nn.Module):
    """Ignores the image: always the same 2 x 2 logits.

    Top row: class 1 = 10, class 3 = 8; bottom row: class 2 = 10, class 3 = 8. Resized to
    4 x 4 (bilinear, align_corners=False) BEFORE the argmax, rows 1 and 2 mix the two rows
    3:1 and 1:3, so class 3 (8 > 7.5) wins there; an argmax taken at 2 x 2 and then enlarged
    would never predict class 3. So the 4 x 4 prediction is rows [1, 3, 3, 2].
    """

    def forward(self, x):
        logits = torch.zeros(1, 19, 2, 2)
        logits[0, 1, 0, :] = 10
        logits[0, 2, 1, :] = 10
        logits[0, 3] = 8
        return logits.expand(x.shape[0], -1, -1, -1).clone()


GT_A = np.array([[1, 1, 0, 0]] * 4, dtype=np.uint8)  # two classes
GT_B = np.full((4, 4), 3, dtype=np.uint8)  # a single class
PRED = np.array([[1] * 4, [3] * 4, [3] * 4, [2] * 4], dtype=np.uint8)  # class 2 is in no ground truth


def _dataset(root, comp):
    (root / "train" / "images").mkdir(parents=True)
    (root / "train" / "masks").mkdir(parents=True)
    for name, gt in (("a", GT_A), ("b", GT_B)):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "train" / "images" / f"{name}.jpg")
        write_mask(root / "train" / "masks" / f"{name}.png", gt, comp)
    return root


# Worked by hand from GT_A, GT_B and PRED:
#  a: class 1 tp 2 fp 2 fn 6; class 0 tp 0 fp 0 fn 8; class 3 and 2 absent -> not averaged
#  b: class 3 tp 8 fp 0 fn 8 (classes 1 and 2 predicted but absent -> not averaged)
F_A = (F1(2, 2, 6) + F1(0, 0, 8)) / 2  # = (1/3 + 0) / 2
F_B = F1(8, 0, 8)  # = 2/3
EXPECTED = {
    "score": (F_A + F_B) / 2,  # celebamask-mini ranks by the per-image F
    "pixel_acc": 10 / 32,
    # pooled over both images, classes with a union: 0, 1, 3 (2 is predicted but in no ground
    # truth, so its IoU is 0 and counts)
    "miou": (0 + 2 / 14 + 0 + 8 / 24) / 4,
}


def test_hand_worked_case_is_exact(cpx_host):
    assert F_A == pytest.approx(1 / 6, abs=1e-6) and F_B == pytest.approx(2 / 3, abs=1e-6)
    from cpx_plugins.metrics import FSCORE_EPS

    assert FSCORE_EPS == EPS


def test_evaluate_uses_the_scorer_metric_at_mask_size(tmp_path, comp, cpx_host):
    root = _dataset(tmp_path / "d", comp)
    predictor = Predictor([Member(Fixed(), image_size=2)], comp)
    assert np.array_equal(predictor.predict([torch.zeros(3, 4, 4, dtype=torch.uint8)])[0].numpy(), PRED)
    ev = evaluate_files(predictor, root, ["a", "b"], comp, create_metric(comp, cpx_host), batch_size=1)
    s = ev.scores
    assert s.metric == "fscore" and s.scale == 1 and ev.score == s.score
    assert ev.per_image == pytest.approx({"a": F_A, "b": F_B}, abs=1e-12)
    for key, value in EXPECTED.items():
        assert getattr(s, key) == pytest.approx(value, abs=1e-12), key
    assert s.class_images[:4] == [1, 1, 0, 1]
    # a class's F: the mean of its F over the images whose ground truth holds it
    assert s.per_class[1] == pytest.approx(F1(2, 2, 6)) and s.per_class[3] == pytest.approx(F_B)
    assert math.isnan(s.per_class[2])  # predicted everywhere in row 3, but in no ground truth
    assert ev.per_class()["l_lip"] == {"score": None, "images": 0}
    # the same predictions ranked by a pooled metric on a scale: the mIoU above, in percent
    miou = comp.model_copy(update={"metric": comp.metric.model_copy(update={"name": "miou", "scale": 100.0})})
    pooled = evaluate_files(predictor, root, ["a", "b"], miou, create_metric(miou, cpx_host), batch_size=1)
    assert pooled.score == pytest.approx(100 * EXPECTED["miou"], abs=1e-9) and pooled.scores.metric == "miou"
    assert pooled.per_image["b"] == pytest.approx(100 * (8 / 16 + 0 + 0) / 3, abs=1e-9)  # classes 3, 1, 2


def test_score_folders_matches_evaluate_and_cli(tmp_path, comp, capsys):
    root = _dataset(tmp_path / "d", comp)
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    for name in ("a", "b"):
        write_mask(pred_dir / f"{name}.png", PRED, comp)
    report = score_folders(pred_dir, root / "train" / "masks", comp)
    assert report.ok and report.problems == [] and report.warnings == []
    for key, value in EXPECTED.items():
        assert getattr(report.scores, key) == pytest.approx(value, abs=1e-12), key
    gt = str(root / "train" / "masks")
    assert main(["score", str(pred_dir), gt]) == 2  # several competitions, none chosen
    assert "--competition: choose one of" in capsys.readouterr().err
    code = main(["score", str(pred_dir), gt, "--competition", "celebamask-mini", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["score"] == pytest.approx(EXPECTED["score"]) and out["metric"] == "fscore" and out["ok"]
    assert out["per_class"]["skin"] == {"score": pytest.approx(F1(2, 2, 6)), "images": 1}
    code = main(["score", str(pred_dir), gt, "--competition", "celebamask-mini"])
    text = capsys.readouterr().out
    assert code == 0 and f"{EXPECTED['score']:.4f}" in text and "(the competition's metric)" in text
    assert "mIoU (counts pooled over the set)" in text


def test_score_lists_every_problem_by_name(tmp_path, comp, capsys):
    gt = tmp_path / "gt"
    gt.mkdir()
    for name in ("ok", "missing", "small", "rgb", "range", "broken"):
        write_mask(gt / f"{name}.png", GT_A, comp)
    pred = tmp_path / "pred"
    pred.mkdir()
    write_mask(pred / "ok.png", GT_A, comp)
    write_mask(pred / "small.png", GT_A[:2], comp)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(pred / "rgb.png")
    write_mask(pred / "range.png", np.full((4, 4), 19, np.uint8), comp)
    (pred / "broken.png").write_bytes(b"\x89PNG not really")
    write_mask(pred / "extra.png", GT_A, comp)
    (pred / "readme.txt").write_text("hi")
    report = score_folders(pred, gt, comp)
    assert not report.ok and report.scores is None
    text = "\n".join(report.problems)
    for needle in ("missing.png: no prediction", "small.png: size 2x4", "rgb.png: mask has 3 channels (RGB)",
                   "range.png: class id 19 outside 0..18",
                   "broken.png: cannot read"):
        assert needle in text, needle
    assert len(report.problems) == 5
    assert any("extra.png" in w for w in report.warnings) and any("readme.txt" in w for w in report.warnings)
    code = main(["score", str(pred), str(gt), "--competition", "celebamask-mini"])
    err = capsys.readouterr().err
    assert code == 2 and "missing.png" in err and "rgb.png" in err and "extra.png" in err
    assert "Traceback" not in err
    # only warnings: scored, exit 0
    for name in ("missing", "small", "rgb", "range", "broken"):
        write_mask(pred / f"{name}.png", GT_A, comp)
    report = score_folders(pred, gt, comp)
    assert report.ok and report.scores.score == pytest.approx(1.0, abs=1e-6) and len(report.warnings) == 2
    with pytest.raises(DataError, match="does not exist"):
        score_folders(tmp_path / "nope", gt, comp)


def _tiny_run(ws, host, **extra):
    over = tiny_overrides(**{"data.image_size": 32, "train.epochs": 1, **extra})
    return train(TrainRequest(recipe="msf-lmsa", overrides=over, name="r"), ws, host)


def test_validate_run_matches_training_and_is_recorded(cpx_workspace, cpx_host, tiny_model, cpx_synthetic, capsys):
    run = _tiny_run(cpx_workspace, cpx_host)
    ev = validate_run("r", cpx_workspace, cpx_host)
    # same images, sizes, precision and metric as the trainer's own validation
    assert ev.scores.score == pytest.approx(run.best_val_score, abs=1e-9)
    assert ev.names == (run.run_dir / "val_list.txt").read_text().split()
    with Ledger(cpx_workspace.ledger_path) as ledger:
        rows = ledger.list_validations(run.run_id)
    assert len(rows) == 2  # training recorded its best epoch's validation; cpx validate the second
    trained, row = rows
    # the trainer's record and cpx validate agree image by image
    assert trained["score"] == pytest.approx(row["score"], abs=1e-9)
    assert trained["per_image"] == pytest.approx(row["per_image"], abs=1e-9) and len(row["per_image"]) == len(ev.names)
    assert row["checkpoint"] == "best" and row["tta"] == "none" and row["data"] == "val_list"
    assert row["score"] == pytest.approx(ev.scores.score) and row["metric"] == trained["metric"] == "fscore"
    assert row["pixel_acc"] == pytest.approx(ev.scores.pixel_acc) and row["miou"] == pytest.approx(ev.scores.miou)
    assert row["per_class"]["background"]["images"] == len(ev.names) and row["images"] == len(ev.names)

    # another labelled folder: all of its images
    code = main(["validate", "r", "--data", str(cpx_synthetic), "--tta", "flip", "--checkpoint", "last", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["images"] == 24 and out["tta"] == "flip" and out["checkpoint"] == "last"
    assert out["data"] == str(cpx_synthetic.resolve()) and 0 <= out["score"] <= 1 and out["metric"] == "fscore"

    # the run's own training folder: flagged as optimistic
    own = json.loads((run.run_dir / "data.json").read_text())["path"]
    code = main(["validate", "r", "--data", own, "--no-record"])
    captured = capsys.readouterr()
    assert code == 0 and "optimistic" in captured.err and "(the competition's metric)" in captured.out
    with Ledger(cpx_workspace.ledger_path) as ledger:
        assert len(ledger.list_validations(run.run_id)) == 3  # training's, and two cpx validate
    code = main(["validate", "r", "--checkpoint", "nope.pt"])
    assert code == 2 and "nope.pt" in capsys.readouterr().err


def test_validate_on_a_busy_ledger_prints_the_score_and_says_it_was_not_recorded(unet_run, cpx_workspace,
                                                                                 monkeypatch, capsys):
    import sqlite3

    monkeypatch.setenv("CPX_LEDGER_TIMEOUT", "0.2")
    browser = sqlite3.connect(cpx_workspace.ledger_path, isolation_level=None)
    browser.execute("BEGIN IMMEDIATE")  # a DB browser with an open write transaction
    try:
        assert main(["validate", unet_run]) == 0
    finally:
        browser.execute("ROLLBACK")
        browser.close()
    out = capsys.readouterr()
    assert "(the competition's metric)" in out.out and "Traceback" not in out.err
    (line,) = [line for line in out.err.splitlines() if "not recorded" in line]
    assert "locked by another program" in line


def test_validate_says_it_recorded_the_validation_without_the_ledgers_row_number(unet_run, capsys):
    """The ledger's row id counts every run's validations, so it is not shown as if it were this
    run's count."""
    assert main(["validate", unet_run]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"recorded in the ledger as a validation of {unet_run}" in out and "recorded as validation" not in out
