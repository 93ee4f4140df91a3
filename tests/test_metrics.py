"""The competition F-score: hand-worked cases, a numpy cross-check, and the accumulator."""

import json
import math

import numpy as np
import pytest
import torch

from cpx.eval.metrics import (
    METRICS,
    ScoreAccumulator,
    confusion_per_image,
    fscore_per_image,
    fscore_reference,
    get_metric,
)
from cpx.kernel.errors import DataError, UnknownComponent


def f_of(tp, fp, fn):
    """The README's per-class F from pixel counts, eps and all."""
    p = tp / (tp + fp + 1e-7)
    r = tp / (tp + fn + 1e-7)
    return 2 * p * r / (p + r + 1e-7)


def score(pred, gt, num_classes):
    return fscore_per_image(torch.tensor(pred), torch.tensor(gt), num_classes)


# (a) ------------------------------------------------------------------------------------------

def test_perfect_prediction_is_one_minus_tiny():
    gt = [[0, 1], [1, 1]]
    # class 0: tp=1 fp=0 fn=0; class 1: tp=3 fp=0 fn=0. The eps terms keep F just under 1:
    # P = R = 1/(1+1e-7) ~ 1-1e-7, F = 2P^2/(2P+1e-7) ~ 1-1.5e-7.
    expected = (f_of(1, 0, 0) + f_of(3, 0, 0)) / 2
    got = float(score(gt, gt, 2)[0])
    assert got == pytest.approx(expected, abs=1e-12)
    assert 1 - 1e-6 < got < 1


# (b) ------------------------------------------------------------------------------------------

def test_single_class_image_perfect_and_half_wrong():
    gt = [[0, 0, 0, 0]]
    # perfect: only class 0 is in the gt, tp=4 -> F ~ 1
    assert float(score(gt, gt, 2)[0]) == pytest.approx(f_of(4, 0, 0), abs=1e-12)

    # half wrong: pred = 0 0 1 1. Class 0: tp=2 fp=0 fn=2 -> P ~ 1, R ~ 2/4 = 0.5,
    # F ~ 2*1*0.5/1.5 = 2/3. Class 1 is absent from the gt so it is not averaged in.
    got = float(score([[0, 0, 1, 1]], gt, 2)[0])
    assert got == pytest.approx(f_of(2, 0, 2), abs=1e-12)
    assert got == pytest.approx(2 / 3, abs=1e-6)


# (c) ------------------------------------------------------------------------------------------

def test_class_predicted_but_absent_from_gt_is_not_averaged():
    gt = [[0, 0, 1, 1]]
    pred = [[0, 2, 1, 1]]
    # class 0: tp=1 fp=0 fn=1 (its pixel was taken by 2) -> P ~ 1, R ~ 0.5, F ~ 2/3
    # class 1: tp=2 fp=0 fn=0 -> F ~ 1, untouched by the stray 2
    # class 2: not in the gt, not averaged. Score ~ (2/3 + 1)/2 = 5/6, not (2/3 + 1 + 0)/3.
    got = float(score(pred, gt, 3)[0])
    assert got == pytest.approx((f_of(1, 0, 1) + f_of(2, 0, 0)) / 2, abs=1e-12)
    assert got == pytest.approx(5 / 6, abs=1e-6)
    assert got == pytest.approx(fscore_reference(np.array(pred), np.array(gt)), abs=1e-12)


# (d) ------------------------------------------------------------------------------------------

def test_four_by_four_two_classes_exact_counts():
    gt = [[0, 0, 0, 0],
          [0, 0, 1, 1],
          [0, 0, 1, 1],
          [0, 1, 1, 1]]
    pred = [[0, 0, 0, 1],   # (0,3): gt 0 -> pred 1
            [0, 0, 1, 1],
            [0, 1, 1, 1],   # (2,1): gt 0 -> pred 1
            [0, 0, 1, 1]]   # (3,1): gt 1 -> pred 0
    # gt has 9 zeros and 7 ones. Two 0->1 errors, one 1->0 error:
    # class 0: tp = 9-2 = 7, fp = 1, fn = 2
    # class 1: tp = 7-1 = 6, fp = 2, fn = 1
    conf = confusion_per_image(torch.tensor(pred), torch.tensor(gt), 2)
    assert conf.tolist() == [[[7, 2], [1, 6]]]

    # Without eps: F0 = 2*7/(2*7+1+2) = 14/17, F1 = 2*6/(2*6+2+1) = 12/15 = 0.8,
    # mean = (14/17 + 0.8)/2 = 0.8117647... With eps (what the scorer does):
    p0, r0 = 7 / (7 + 1 + 1e-7), 7 / (7 + 2 + 1e-7)
    p1, r1 = 6 / (6 + 2 + 1e-7), 6 / (6 + 1 + 1e-7)
    f0 = 2 * p0 * r0 / (p0 + r0 + 1e-7)
    f1 = 2 * p1 * r1 / (p1 + r1 + 1e-7)
    expected = (f0 + f1) / 2
    assert expected == pytest.approx((14 / 17 + 0.8) / 2, abs=1e-6)
    assert float(score(pred, gt, 2)[0]) == pytest.approx(expected, abs=1e-9)


# (e) ------------------------------------------------------------------------------------------

def test_vectorised_matches_numpy_reference_on_random_images():
    rng = np.random.default_rng(0)
    num_classes = 19
    preds, gts = [], []
    for _ in range(20):
        classes = rng.choice(num_classes, size=rng.integers(1, num_classes + 1), replace=False)
        gt = rng.choice(classes, size=(48, 40))
        # mostly right, some noise anywhere in 0..18 so absent classes get predicted too
        pred = np.where(rng.random(gt.shape) < 0.7, gt, rng.integers(0, num_classes, gt.shape))
        preds.append(pred)
        gts.append(gt)
    got = fscore_per_image(torch.tensor(np.stack(preds)), torch.tensor(np.stack(gts)),
                           num_classes)
    want = [fscore_reference(p, g) for p, g in zip(preds, gts)]
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-9)


# (f) ------------------------------------------------------------------------------------------

def test_accumulator_over_batches_equals_mean_of_per_image():
    rng = np.random.default_rng(1)
    acc = ScoreAccumulator(5)
    every = []
    for batch in (3, 1, 4):
        gt = torch.tensor(rng.integers(0, 5, (batch, 16, 16)))
        pred = torch.where(torch.rand(gt.shape) < 0.6, gt, torch.randint(0, 5, gt.shape))
        acc.update(pred, gt)
        every.extend(fscore_reference(p.numpy(), g.numpy()) for p, g in zip(pred, gt))
    s = acc.compute()
    assert s.num_images == 8
    np.testing.assert_allclose(s.per_image, every, rtol=0, atol=1e-9)
    assert s.fscore == pytest.approx(float(np.mean(every)), abs=1e-12)


def _pooled_case():
    # image A: gt 0 0, pred 0 0 -> class 0 perfect, F ~ 1
    # image B: gt 1 1, pred 0 0 -> class 1 tp=0, F = 0
    gt = torch.tensor([[[0, 0]], [[1, 1]]])
    pred = torch.tensor([[[0, 0]], [[0, 0]]])
    return pred, gt


def test_pooled_score_differs_from_per_image_and_matches_hand_value():
    pred, gt = _pooled_case()
    acc = ScoreAccumulator(3, pool_size=2)
    acc.update(pred, gt)
    s = acc.compute()
    # per image: (F_A + F_B)/2 ~ (1 + 0)/2 = 0.5
    assert s.fscore == pytest.approx((f_of(2, 0, 0) + 0.0) / 2, abs=1e-12)
    # pooled as one mask gt 0 0 1 1 / pred 0 0 0 0:
    # class 0: tp=2 fp=2 fn=0 -> P ~ 0.5, R ~ 1, F ~ 2/3; class 1: tp=0 -> F = 0
    # pooled ~ (2/3 + 0)/2 = 1/3
    assert s.pooled_fscore == pytest.approx((f_of(2, 2, 0) + 0.0) / 2, abs=1e-12)
    assert s.pooled_fscore == pytest.approx(1 / 3, abs=1e-6)
    assert abs(s.pooled_fscore - s.fscore) > 0.1

    # class 0 is in image A only (F ~ 1), class 1 in image B only (F = 0), class 2 nowhere
    assert s.class_images == [1, 1, 0]
    assert s.per_class_f[0] == pytest.approx(f_of(2, 0, 0), abs=1e-12)
    assert s.per_class_f[1] == 0.0
    assert math.isnan(s.per_class_f[2])
    # 2 of 4 pixels right; IoU0 = 2/(2+2+0) = 0.5, IoU1 = 0/(0+0+2) = 0 -> mIoU 0.25
    assert s.pixel_acc == pytest.approx(0.5)
    assert s.miou == pytest.approx(0.25)

    d = s.to_dict()
    assert d["per_class_f"][2] is None
    json.dumps(d, allow_nan=False)


def test_pools_follow_update_order_across_batches():
    pred, gt = _pooled_case()
    whole = ScoreAccumulator(3, pool_size=2)
    whole.update(pred, gt)
    one_by_one = ScoreAccumulator(3, pool_size=2)
    one_by_one.update(pred[:1], gt[:1])
    one_by_one.update(pred[1:], gt[1:])
    assert one_by_one.compute().pooled_fscore == whole.compute().pooled_fscore

    # pool_size 1 pools nothing, so pooled equals per-image
    single = ScoreAccumulator(3, pool_size=1)
    single.update(pred, gt)
    s = single.compute()
    assert s.pooled_fscore == pytest.approx(s.fscore, abs=1e-15)

    # a trailing short pool counts as one pool: pools [A, B] and [A]
    trailing = ScoreAccumulator(3, pool_size=2)
    trailing.update(torch.cat([pred, pred[:1]]), torch.cat([gt, gt[:1]]))
    expected = ((f_of(2, 2, 0) + 0.0) / 2 + f_of(2, 0, 0)) / 2
    assert trailing.compute().pooled_fscore == pytest.approx(expected, abs=1e-12)


# (g) ------------------------------------------------------------------------------------------

def test_uint8_inputs_match_long_and_result_is_on_cpu():
    rng = np.random.default_rng(2)
    gt = torch.tensor(rng.integers(0, 7, (4, 20, 24)))
    pred = torch.tensor(rng.integers(0, 7, (4, 20, 24)))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    as_long = fscore_per_image(pred.to(device), gt.to(device), 7)
    as_u8 = fscore_per_image(pred.to(device, torch.uint8), gt.to(device, torch.uint8), 7)
    assert as_u8.device.type == "cpu"
    assert torch.equal(as_long, as_u8)
    # a single H x W image is a batch of one
    assert float(fscore_per_image(pred[0].to(torch.uint8), gt[0], 7)[0]) == float(as_long[0])


# errors ---------------------------------------------------------------------------------------

def test_bad_inputs_are_refused():
    gt = torch.zeros(1, 4, 4, dtype=torch.long)
    with pytest.raises(DataError, match="shape"):
        fscore_per_image(torch.zeros(1, 4, 5, dtype=torch.long), gt, 2)
    with pytest.raises(DataError, match="class id 2"):
        fscore_per_image(torch.full((1, 4, 4), 2), gt, 2)
    with pytest.raises(DataError, match="class id -1"):
        fscore_per_image(gt, torch.full((1, 4, 4), -1), 2)
    with pytest.raises(DataError, match="argmax"):
        fscore_per_image(torch.zeros(1, 4, 4), gt, 2)
    with pytest.raises(DataError, match="no images"):
        ScoreAccumulator(2).compute()


def test_metric_lookup():
    assert get_metric("fscore") is fscore_per_image
    assert METRICS["fscore"] is fscore_per_image
    with pytest.raises(UnknownComponent, match="fscore"):
        get_metric("dice")


def test_class_ids_is_argmax_with_first_maximum_on_ties():
    from cpx.eval.metrics import class_ids

    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 3, (2, 5, 7, 9), generator=g).float()  # many ties
    ids = class_ids(scores)
    assert ids.dtype == torch.uint8 and ids.shape == (2, 7, 9)
    assert torch.equal(ids.long(), scores.argmax(1))
    assert torch.equal(class_ids(scores[0], 0).long(), scores[0].argmax(0))
    many = torch.randn(1, 300, 4, 4, generator=g)  # more classes than uint8 holds
    assert torch.equal(class_ids(many), many.argmax(1))
