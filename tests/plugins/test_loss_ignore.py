"""Every built-in loss leaves out the pixels holding the ignore index (cpx's IGNORE = 255):
they change neither the loss nor its gradient, normalisations count only the other pixels,
and a target id that is neither a class nor ignored is a clear error."""

import pytest
import torch
import torch.nn.functional as F
from conftest import builtin_host

import cpx_plugins.loss_functions as LF
import cpx_plugins.losses as L
from cpx.data.masks import IGNORE

NUM_CLASSES = 5
LOSSES = builtin_host(L, "losses").losses
WEIGHTS = [0.5, 1.0, 2.0, 0.25, 1.5]

# (name, options): every term, with the options that change how it normalises
VARIANTS = [
    ("ce", {}),
    ("ce", {"class_weights": WEIGHTS, "label_smoothing": 0.1}),
    ("dice", {}),
    ("dice", {"smooth": 0.0}),
    ("focal", {}),
    ("focal", {"class_weights": WEIGHTS, "gamma": 1.0}),
    ("lovasz", {}),
    ("lovasz", {"classes": "all"}),
    ("lovasz", {"per_image": True}),
    ("ohem", {"threshold": 0.5, "min_kept": 10}),
    ("ohem", {"threshold": None, "keep_fraction": 0.3, "min_kept": 1, "class_weights": WEIGHTS}),
    ("boundary", {"width": 1, "band_weight": 3.0}),
    ("boundary", {"class_weights": WEIGHTS}),
    ("combined", {}),
    ("combined", {"ce": 0.5, "dice": 1.0, "focal": 0.5, "lovasz": 0.5, "ohem": 0.5, "boundary": 0.5,
                  "class_weights": WEIGHTS, "label_smoothing": 0.1, "ohem_threshold": 0.5, "ohem_min_kept": 10}),
    ("combined", {"ce": 1.0, "dice": 0.0, "class_weights": WEIGHTS}),
]
IDS = [f"{name}-{i}" for i, (name, _) in enumerate(VARIANTS)]
# terms that score pixels without looking at their neighbours or their image, so leaving a
# pixel out is the same as deleting it from a flat list of pixels
FLAT = [(n, o) for n, o in VARIANTS if n != "boundary" and not o.get("per_image") and not o.get("boundary")]
FLAT_IDS = [f"{n}-{i}" for i, (n, o) in enumerate(VARIANTS) if (n, o) in FLAT]


def make(name, ignore_index=IGNORE, **options):
    entry = LOSSES.get(name)
    if ignore_index is None:
        return entry.create(options, NUM_CLASSES)
    return entry.create(options, NUM_CLASSES, ignore_index=ignore_index)


def ignored_batch(seed=0, dtype=torch.float32):
    """Logits 2 x 5 x 8 x 7 and targets with a padded band (as letterboxing leaves) and
    scattered pixels set to IGNORE, about a third of the batch."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, NUM_CLASSES, 8, 7, generator=g, dtype=dtype)
    target = torch.randint(0, NUM_CLASSES, (2, 8, 7), generator=g)
    target[0, :, 5:] = IGNORE
    target[torch.rand(2, 8, 7, generator=g) < 0.2] = IGNORE
    return logits, target


def value_and_grad(fn, logits, target):
    z = logits.clone().requires_grad_(True)
    loss = fn(z, target)
    loss.backward()
    return loss.detach(), z.grad


def flat_kept(logits, target):
    """The kept pixels alone, as a 1 x C x 1 x N batch, with their targets."""
    keep = target != IGNORE
    return logits.permute(1, 0, 2, 3)[:, keep].unsqueeze(0).unsqueeze(2), target[keep].view(1, 1, -1)


@pytest.mark.parametrize("name, options", VARIANTS, ids=IDS)
def test_ignored_pixels_change_neither_the_loss_nor_the_gradient(name, options):
    logits, target = ignored_batch()
    ignored = (target == IGNORE).unsqueeze(1).expand_as(logits)
    other = logits.clone()
    other[ignored] = torch.randn(int(ignored.sum()), dtype=logits.dtype) * 10  # anything at all there
    fn = make(name, **options)
    value, grad = value_and_grad(fn, logits, target)
    value_other, grad_other = value_and_grad(fn, other, target)
    assert torch.isfinite(value) and value > 0
    torch.testing.assert_close(value_other, value)
    torch.testing.assert_close(grad_other, grad)
    assert (grad[ignored] == 0).all() and (grad_other[ignored] == 0).all()
    assert grad[~ignored].abs().sum() > 0


@pytest.mark.parametrize("name, options", FLAT, ids=FLAT_IDS)
def test_ignoring_pixels_is_deleting_them(name, options):
    logits, target = ignored_batch()
    value, grad = value_and_grad(make(name, **options), logits, target)
    small_logits, small_target = flat_kept(logits, target)
    expected, expected_grad = value_and_grad(make(name, ignore_index=None, **options), small_logits, small_target)
    torch.testing.assert_close(value, expected)
    # the same pixels' gradients, in the same order
    torch.testing.assert_close(flat_kept(grad, target)[0], expected_grad)


def test_lovasz_per_image_averages_each_image_over_its_kept_pixels():
    logits, target = ignored_batch()
    target[1] = IGNORE  # a wholly ignored image has nothing to score and does not count
    target = torch.cat([target, ignored_batch(1)[1][:1]])
    logits = torch.cat([logits, ignored_batch(1)[0][:1]])
    value = make("lovasz", per_image=True)(logits, target)
    expected = [LF.lovasz_softmax(*flat_kept(logits[i:i + 1], target[i:i + 1])) for i in (0, 2)]
    torch.testing.assert_close(value, sum(expected) / 2)


def test_boundary_band_ignores_the_edge_of_an_ignored_area():
    target = torch.zeros(1, 6, 8, dtype=torch.long)
    target[0, :, 6:] = IGNORE          # padding on the right: no class edge
    target[0, 0, 0] = 3                # a real edge in the top-left corner
    safe, keep = LF.kept_pixels(target, NUM_CLASSES, IGNORE)
    band = LF.boundary_band(safe, 1, keep)
    expected = torch.zeros(1, 6, 8, dtype=torch.bool)
    expected[0, :2, :2] = True
    assert torch.equal(band, expected)


def test_boundary_loss_is_the_band_weighted_mean_over_kept_pixels():
    logits, target = ignored_batch()
    safe, keep = LF.kept_pixels(target, NUM_CLASSES, IGNORE, logits.dtype)
    band = LF.boundary_band(safe, 1, keep)
    nll = F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="none")
    w = (1.0 + 2.0 * band.float()) * torch.tensor(WEIGHTS, dtype=logits.dtype)[safe] * keep
    value = make("boundary", width=1, band_weight=3.0, class_weights=WEIGHTS)(logits, target)
    torch.testing.assert_close(value, (w * nll).sum() / w.sum())


@pytest.mark.parametrize("name, options", VARIANTS, ids=IDS)
def test_a_wholly_ignored_batch_scores_zero(name, options):
    logits, target = ignored_batch()
    target[:] = IGNORE
    value, grad = value_and_grad(make(name, **options), logits, target)
    assert torch.isfinite(value) and value == 0
    assert (grad == 0).all()


@pytest.mark.parametrize("name, options", VARIANTS, ids=IDS)
def test_an_ignore_index_that_no_pixel_holds_changes_nothing(name, options):
    logits, target = ignored_batch()
    target[target == IGNORE] = 1
    value, grad = value_and_grad(make(name, **options), logits, target)
    expected, expected_grad = value_and_grad(make(name, ignore_index=None, **options), logits, target)
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(grad, expected_grad)


@pytest.mark.parametrize("name", LOSSES.names())
def test_ids_outside_the_classes_are_a_clear_error(name):
    logits, target = ignored_batch()
    with pytest.raises(ValueError, match="target holds id 255.*pass ignore_index"):
        make(name, ignore_index=None)(logits, target)
    target[0, 0, 0] = NUM_CLASSES
    with pytest.raises(ValueError, match=f"target holds id {NUM_CLASSES}, which is not a class id"):
        make(name)(logits, target)


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_factory_takes_ignore_index(name):
    # the trainer passes ignore_index=255 to the factories that accept the keyword
    assert LOSSES.get(name).accepts("ignore_index")


def test_uint8_targets_and_bf16_logits_with_ignored_pixels():
    logits, target = ignored_batch()
    fn = make("combined", lovasz=0.5, ohem=0.5, boundary=0.5, ohem_min_kept=10)
    low = logits.bfloat16().requires_grad_(True)
    loss = fn(low, target.to(torch.uint8))
    loss.backward()
    assert torch.isfinite(loss) and (low.grad[(target == IGNORE).unsqueeze(1).expand_as(low)] == 0).all()
    assert torch.allclose(loss, fn(logits, target), atol=5e-2)


# --- the fused cross-entropy + Dice and its hand-written backward ---


@pytest.mark.parametrize("weights", [None, WEIGHTS])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_fused_ce_dice_with_ignored_pixels_equals_the_separate_terms(weights, smoothing):
    logits, target = ignored_batch(dtype=torch.float64)
    w = None if weights is None else torch.tensor(weights, dtype=torch.float64)
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    ce = LF.cross_entropy(a, target, w, smoothing, IGNORE)
    dice = LF.soft_dice(a, target, 1.0, IGNORE)
    (1.5 * ce + 0.7 * dice).backward()
    total, ce_term, dice_term = LF.ce_dice(b, target, 1.5, 0.7, w, smoothing, 1.0, IGNORE)
    total.backward()
    torch.testing.assert_close(total, 1.5 * ce + 0.7 * dice)
    torch.testing.assert_close(ce_term, ce.detach())
    torch.testing.assert_close(dice_term, dice.detach())
    torch.testing.assert_close(b.grad, a.grad)
    # the readable cross-entropy is F.cross_entropy's own mean over the kept pixels
    torch.testing.assert_close(ce, F.cross_entropy(logits, target, w, ignore_index=IGNORE, label_smoothing=smoothing))


@pytest.mark.parametrize("weights", [None, [0.5, 1.0, 2.0, 0.0]])
def test_fused_ce_dice_with_ignored_pixels_passes_gradcheck(weights, monkeypatch):
    monkeypatch.setattr(LF._SoftmaxCEDice, "reuse_probs", False)  # gradcheck runs backward twice per graph
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 3, 5, dtype=torch.float64, generator=g, requires_grad=True)
    target = torch.randint(0, 4, (2, 3, 5), generator=g)
    target[0, 1] = IGNORE
    target[1, :, 4] = IGNORE
    w = None if weights is None else torch.tensor(weights, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda z: LF.ce_dice(z, target, 1.0, 1.5, w, 0.1, 1.0, IGNORE)[0], (logits,))
    target[:] = IGNORE  # nothing kept: a constant 0
    assert torch.autograd.gradcheck(lambda z: LF.ce_dice(z, target, 1.0, 1.5, w, 0.1, 1.0, IGNORE)[0], (logits,))


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_loss_keeps_the_contract_with_ignored_pixels(name):
    from cpx.testing import check_loss

    check_loss(LOSSES.get(name), num_classes=19)  # includes check_loss_ignores
