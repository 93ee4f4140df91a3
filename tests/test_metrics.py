"""Metrics: the CelebAMask F-score worked by hand, every built-in metric against a literal
numpy reference (per image and pooled), the ignore index, and the accumulator."""

import json

import numpy as np
import pytest
import torch
from conftest import fscore_reference

from cpx.data.competition import Competition
from cpx.data.masks import IGNORE
from cpx.eval.metrics import ScoreAccumulator, confusion_per_image, counts_of, create_metric
from cpx.kernel.errors import ConfigError, DataError, UnknownComponent
from cpx.kernel.manager import create_plugin_host

HOST = create_plugin_host(entry_points=False)
CLASSES = tuple(f"c{i}" for i in range(19))


def metric(name="fscore", names=CLASSES, **options):
    comp = Competition(name="t", classes=names, metric={"name": name, **options})
    return create_metric(comp, HOST)


def f_of(tp, fp, fn):
    """The README's per-class F from pixel counts, eps and all."""
    p = tp / (tp + fp + 1e-7)
    r = tp / (tp + fn + 1e-7)
    return 2 * p * r / (p + r + 1e-7)


def score(pred, gt, num_classes):
    m = metric("fscore", tuple(f"c{i}" for i in range(num_classes)))
    tp, fp, fn = counts_of(confusion_per_image(torch.tensor(pred), torch.tensor(gt), num_classes))
    return m.image_values(tp, fp, fn)


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
    got = score(np.stack(preds), np.stack(gts), num_classes)
    want = [fscore_reference(p, g) for p, g in zip(preds, gts)]
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-9)


# (f) ------------------------------------------------------------------------------------------

def test_accumulator_over_batches_equals_mean_of_per_image():
    rng = np.random.default_rng(1)
    acc = ScoreAccumulator(metric("fscore", CLASSES[:5]), 5)
    every = []
    for batch in (3, 1, 4):
        gt = torch.tensor(rng.integers(0, 5, (batch, 16, 16)))
        pred = torch.where(torch.rand(gt.shape) < 0.6, gt, torch.randint(0, 5, gt.shape))
        acc.update(pred, gt)
        every.extend(fscore_reference(p.numpy(), g.numpy()) for p, g in zip(pred, gt))
    s = acc.compute()
    assert s.num_images == 8
    np.testing.assert_allclose(s.per_image, every, rtol=0, atol=1e-9)
    assert s.score == pytest.approx(float(np.mean(every)), abs=1e-12)


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


# --- every built-in metric against a literal numpy reference ---------------------------------


def _np_counts(pred, gt, k, ignore=None):
    keep = np.ones(gt.shape, bool) if ignore is None else gt != ignore
    tp = np.array([np.sum((pred == c) & (gt == c) & keep) for c in range(k)], float)
    fp = np.array([np.sum((pred == c) & (gt != c) & keep) for c in range(k)], float)
    fn = np.array([np.sum((pred != c) & (gt == c) & keep) for c in range(k)], float)
    return tp, fp, fn


def ref_miou(preds, gts, k):
    # mmsegmentation IoUMetric: areas summed over the set, IoU per class, nanmean
    inter = sum(np.array([np.sum((p == c) & (g == c)) for c in range(k)], float) for p, g in zip(preds, gts))
    area_p = sum(np.array([np.sum(p == c) for c in range(k)], float) for p in preds)
    area_g = sum(np.array([np.sum(g == c) for c in range(k)], float) for g in gts)
    union = area_p + area_g - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.nanmean(np.where(union > 0, inter / union, np.nan)))


def ref_class_iou(preds, gts, c):
    tp = sum(np.sum((p == c) & (g == c)) for p, g in zip(preds, gts))
    fp = sum(np.sum((p == c) & (g != c)) for p, g in zip(preds, gts))
    fn = sum(np.sum((p != c) & (g == c)) for p, g in zip(preds, gts))
    return 1.0 if tp + fp + fn == 0 else tp / (tp + fp + fn)


def ref_dice_image(p, g, classes):
    values = []
    for c in classes:
        a, b = p == c, g == c
        denom = a.sum() + b.sum()
        values.append(1.0 if denom == 0 else 2 * np.sum(a & b) / denom)
    return float(np.mean(values))


def ref_pooled_dice(preds, gts, classes):
    values = []
    for c in classes:
        inter = sum(np.sum((p == c) & (g == c)) for p, g in zip(preds, gts))
        denom = sum(np.sum(p == c) + np.sum(g == c) for p, g in zip(preds, gts))
        values.append(1.0 if denom == 0 else 2 * inter / denom)
    return float(np.mean(values))


def ref_pixel_accuracy(preds, gts):
    return sum(np.sum(p == g) for p, g in zip(preds, gts)) / sum(g.size for g in gts)


def ref_mean_class_accuracy(preds, gts, k):
    accs = []
    for c in range(k):
        total = sum(np.sum(g == c) for g in gts)
        if total:
            accs.append(sum(np.sum((p == c) & (g == c)) for p, g in zip(preds, gts)) / total)
    return float(np.mean(accs))


def _random_set(k, seed, n=12):
    rng = np.random.default_rng(seed)
    preds, gts = [], []
    for _ in range(n):
        present = rng.choice(k, size=rng.integers(1, k + 1), replace=False)
        g = rng.choice(present, size=(17, 23))
        p = np.where(rng.random(g.shape) < 0.6, g, rng.integers(0, k, g.shape))
        preds.append(p)
        gts.append(g)
    return preds, gts


def _accumulate(m, preds, gts, k):
    acc = ScoreAccumulator(m, k)
    for p, g in zip(preds, gts):
        acc.update(torch.tensor(p), torch.tensor(g))
    return acc.compute()


@pytest.mark.parametrize("k", [2, 5])
def test_every_builtin_metric_matches_its_numpy_reference(k):
    names = tuple(f"c{i}" for i in range(k))
    preds, gts = _random_set(k, seed=k)
    fg = list(range(1, k))
    cases = {
        "fscore": (metric("fscore", names), float(np.mean([fscore_reference(p, g) for p, g in zip(preds, gts)]))),
        "miou": (metric("miou", names), ref_miou(preds, gts, k)),
        "class-iou": (metric("class-iou", names, **{"class": names[1]}), ref_class_iou(preds, gts, 1)),
        "dice": (metric("dice", names), float(np.mean([ref_dice_image(p, g, fg) for p, g in zip(preds, gts)]))),
        "pooled-dice": (metric("pooled-dice", names), ref_pooled_dice(preds, gts, fg)),
        "pixel-accuracy": (metric("pixel-accuracy", names), ref_pixel_accuracy(preds, gts)),
        "mean-class-accuracy": (metric("mean-class-accuracy", names), ref_mean_class_accuracy(preds, gts, k)),
    }
    assert set(cases) == set(HOST.metrics.names())  # a new built-in needs its reference here
    for name, (m, want) in cases.items():
        got = _accumulate(m, preds, gts, k).score
        assert got == pytest.approx(want, abs=1e-9), name


def test_pooled_and_per_image_metrics_differ_as_their_definitions_say():
    # image A is large and right, image B small and all wrong: pooling weighs pixels, the
    # per-image mean weighs images
    a_gt = np.ones((10, 10), int)
    b_gt = np.ones((1, 2), int)
    preds, gts = [a_gt.copy(), np.zeros((1, 2), int)], [a_gt, b_gt]
    names = ("bg", "fg")
    pooled = _accumulate(metric("class-iou", names, **{"class": "fg"}), preds, gts, 2)
    assert pooled.score == pytest.approx(100 / 102)
    assert pooled.per_image == [1.0, 0.0]  # the same formula on each image alone
    per_image = _accumulate(metric("dice", names), preds, gts, 2)
    assert per_image.score == pytest.approx(0.5)


def test_dice_both_empty_is_one_and_the_class_list_is_an_option():
    names = ("bg", "a", "b")
    g = np.zeros((4, 4), int)
    g[0, 0] = 1
    p = g.copy()  # class b absent from both: 1 by the medical convention
    assert _accumulate(metric("dice", names), [p], [g], 3).score == 1.0
    only_b = metric("dice", names, classes=["b"])
    assert _accumulate(only_b, [p], [g], 3).score == 1.0
    with pytest.raises(ConfigError, match="metric.classes"):
        Competition(name="t", classes=names, metric={"name": "dice", "classes": ["z"]}).bind(HOST)


def test_every_metric_ignores_pixels_at_the_ignore_index():
    rng = np.random.default_rng(7)
    names = tuple(f"c{i}" for i in range(4))
    g = rng.integers(0, 4, (12, 12))
    p = rng.integers(0, 4, (12, 12))
    g_ignored = g.copy()
    g_ignored[:, 6:] = IGNORE  # the right half is padding
    for name in HOST.metrics.names():
        options = {"class": "c1"} if name == "class-iou" else {}
        m = metric(name, names, **options)
        got = _accumulate(m, [p], [g_ignored], 4).score
        want = _accumulate(m, [p[:, :6]], [g[:, :6]], 4).score
        assert got == pytest.approx(want, abs=1e-12), name


def test_scale_and_direction_come_from_the_profile():
    m = metric("class-iou", ("bg", "veg"), **{"class": "veg", "scale": 100})
    s = _accumulate(m, [np.array([[0, 1, 1]])], [np.array([[0, 1, 0]])], 2)
    assert s.score == pytest.approx(50.0) and s.scale == 100 and s.metric == "class-iou"
    assert m.better(0.6, 0.5) and not m.better(float("nan"), 0.1) and m.better(0.1, None)


def test_scores_are_json_ready_with_nan_as_null():
    s = _accumulate(metric("fscore", CLASSES[:3]), [np.array([[0, 0]])], [np.array([[0, 0]])], 3)
    d = s.to_dict()
    assert d["per_class"][2] is None and d["class_images"] == [1, 0, 0]
    json.dumps(d, allow_nan=False)


def test_bad_inputs_are_refused():
    gt = torch.zeros(1, 4, 4, dtype=torch.long)
    with pytest.raises(DataError, match="shape"):
        confusion_per_image(torch.zeros(1, 4, 5, dtype=torch.long), gt, 2)
    with pytest.raises(DataError, match="class id 2"):
        confusion_per_image(torch.full((1, 4, 4), 2), gt, 2)
    with pytest.raises(DataError, match="class id -1"):
        confusion_per_image(gt, torch.full((1, 4, 4), -1), 2)
    with pytest.raises(DataError, match="argmax"):
        confusion_per_image(torch.zeros(1, 4, 4), gt, 2)
    with pytest.raises(DataError, match="no images"):
        ScoreAccumulator(metric("miou", CLASSES[:2]), 2).compute()
    with pytest.raises(UnknownComponent, match="fscore"):
        HOST.metrics.get("fscor")
