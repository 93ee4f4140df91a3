"""Contract tests for every loss that the register_losses hook registers.

Parametrized over the registry, so a new loss is tested without touching this file.
"""

import pytest
import torch
from conftest import builtin_host

import cpx_plugins.losses
from cpx.kernel.errors import ConfigError

NUM_CLASSES = 19


def _registry():
    return builtin_host(cpx_plugins.losses, "losses").losses


LOSSES = _registry()
NAMES = LOSSES.names()
WEIGHTED = [e.name for e in LOSSES if "class_weights" in e.options.model_fields]


def make(name, num_classes=NUM_CLASSES, **options):
    return LOSSES.get(name).create(options, num_classes)


def one_hot_logits(target, margin=20.0):
    return torch.nn.functional.one_hot(target, NUM_CLASSES).permute(0, 3, 1, 2).float() * margin


def test_the_built_in_losses_are_registered():
    assert {"ce", "dice", "focal", "combined"} <= set(NAMES)
    assert {"ce", "focal", "combined"} <= set(WEIGHTED)


@pytest.mark.parametrize("name", NAMES)
def test_finite_scalar_with_gradients(name, batch):
    logits, target = batch
    logits.requires_grad_(True)
    loss = make(name)(logits, target)
    assert loss.ndim == 0 and loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


@pytest.mark.parametrize("name", NAMES)
def test_bf16_logits_and_uint8_targets(name, batch):
    logits, target = batch
    fn = make(name)
    low = logits.bfloat16().requires_grad_(True)
    loss = fn(low, target.to(torch.uint8))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert low.grad.dtype == torch.bfloat16
    assert torch.allclose(loss, fn(logits, target), atol=5e-2)


@pytest.mark.parametrize("name", NAMES)
def test_a_perfect_prediction_scores_better_than_a_wrong_one(name, batch):
    _, target = batch
    fn = make(name)
    perfect = fn(one_hot_logits(target), target)
    wrong = fn(one_hot_logits((target + 1) % NUM_CLASSES), target)
    assert perfect < wrong
    assert perfect < 1e-3


@pytest.mark.parametrize("name", NAMES)
def test_last_terms_are_floats(name, batch):
    fn = make(name)
    fn(*batch)
    assert fn.last_terms and all(isinstance(v, float) for v in fn.last_terms.values())


@pytest.mark.parametrize("name", NAMES)
def test_unknown_option_is_an_error(name):
    with pytest.raises(ConfigError, match="colour_weights: unknown field"):
        make(name, colour_weights=[1.0])


@pytest.mark.parametrize("name", WEIGHTED)
def test_class_weights_of_the_wrong_length_are_an_error(name):
    with pytest.raises(ConfigError, match="class_weights: expected 19 values"):
        make(name, class_weights=[1.0, 2.0, 3.0])


@pytest.mark.parametrize("name", WEIGHTED)
@pytest.mark.parametrize("weights", [[-1.0] + [1.0] * 18, [0.0] * 19])
def test_negative_or_all_zero_class_weights_are_an_error(name, weights):
    with pytest.raises(ConfigError, match="class_weights"):
        make(name, class_weights=weights)


@pytest.mark.parametrize("options", [{"label_smoothing": 1.0}, {"label_smoothing": -0.1},
                                     {"ce": -1.0}, {"focal_gamma": -1.0}, {"ce": 0, "dice": 0, "focal": 0}])
def test_combined_options_are_validated(options):
    with pytest.raises(ConfigError):
        make("combined", **options)


def test_combined_without_dice_is_the_weighted_cross_entropy(batch):
    fn = make("combined", ce=2.5, dice=0.0)
    expected = 2.5 * make("ce")(*batch)
    assert torch.allclose(fn(*batch), expected)
    assert set(fn.last_terms) == {"ce"}


def test_combined_is_the_weighted_sum_of_its_terms(batch):
    weights = [float(i + 1) for i in range(NUM_CLASSES)]
    fn = make("combined", ce=0.5, dice=1.5, focal=2.0, class_weights=weights, label_smoothing=0.1, focal_gamma=1.0)
    total = fn(*batch)
    expected = (0.5 * make("ce", class_weights=weights, label_smoothing=0.1)(*batch)
                + 1.5 * make("dice")(*batch)
                + 2.0 * make("focal", class_weights=weights, gamma=1.0)(*batch))
    assert torch.allclose(total, expected)
    assert set(fn.last_terms) == {"ce", "dice", "focal"}


def test_class_weights_change_cross_entropy(batch):
    weights = [1.0] * NUM_CLASSES
    weights[3] = 10.0
    assert not torch.allclose(make("ce", class_weights=weights)(*batch), make("ce")(*batch))


@pytest.mark.parametrize("weights", [None, [float(i % 4 + 1) for i in range(NUM_CLASSES)]])
def test_focal_with_gamma_0_is_cross_entropy(batch, weights):
    assert torch.allclose(make("focal", gamma=0.0, class_weights=weights)(*batch),
                          make("ce", class_weights=weights)(*batch))


def test_focal_down_weights_easy_pixels(batch):
    logits, target = batch
    assert make("focal", gamma=2.0)(logits, target) < make("focal", gamma=0.0)(logits, target)


def test_dice_matches_a_one_hot_reference(batch):
    logits, target = batch
    probs = logits.softmax(1)
    onehot = torch.nn.functional.one_hot(target, NUM_CLASSES).permute(0, 3, 1, 2).float()
    inter = (probs * onehot).sum((0, 2, 3))
    dice = (2 * inter + 1.0) / (probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3)) + 1.0)
    assert torch.allclose(make("dice", smooth=1.0)(logits, target), 1 - dice.mean())



# --- the fused cross-entropy + Dice used by "combined" and "dice" ---


@pytest.mark.parametrize("weights", [None, [float(i % 4 + 1) for i in range(NUM_CLASSES)]])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("ce, dice", [(1.0, 1.5), (0.0, 1.0), (2.0, 0.5)])
def test_fused_ce_dice_equals_the_separate_terms_in_value_and_gradient(batch, weights, smoothing, ce, dice):
    from cpx_plugins.loss_functions import ce_dice, cross_entropy, soft_dice

    logits, target = batch
    w = None if weights is None else torch.tensor(weights)
    a = logits.double().requires_grad_()
    b = logits.double().requires_grad_()
    reference = (ce * cross_entropy(a, target, None if w is None else w.double(), smoothing)
                 + dice * soft_dice(a, target, 1.0))
    total, ce_term, dice_term = ce_dice(b, target, ce, dice, None if w is None else w.double(), smoothing, 1.0)
    torch.testing.assert_close(total, reference)
    torch.testing.assert_close(dice_term, soft_dice(a, target, 1.0).detach())
    if ce:
        torch.testing.assert_close(ce_term, cross_entropy(a, target, None if w is None else w.double(),
                                                          smoothing).detach())
    reference.backward()
    total.backward()
    torch.testing.assert_close(b.grad, a.grad)


def test_fused_ce_dice_passes_gradcheck(monkeypatch):
    from cpx_plugins.loss_functions import _SoftmaxCEDice, ce_dice

    # gradcheck runs backward through one graph more than once: the probabilities are kept for it
    monkeypatch.setattr(_SoftmaxCEDice, "reuse_probs", False)
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 3, 5, dtype=torch.float64, generator=g, requires_grad=True)
    target = torch.randint(0, 4, (2, 3, 5), generator=g)
    weight = torch.tensor([0.5, 1.0, 2.0, 0.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda z: ce_dice(z, target, 1.0, 1.5, weight, 0.1, 1.0)[0], (logits,))


def test_fused_ce_dice_refuses_a_second_backward_through_one_graph_in_one_line(batch, monkeypatch):
    from cpx_plugins.loss_functions import _SoftmaxCEDice, ce_dice

    logits, target = batch
    z = logits.clone().requires_grad_()
    total = ce_dice(z, target, 1.0, 1.5)[0]
    first = torch.autograd.grad(total, z, retain_graph=True)[0]
    with pytest.raises(RuntimeError, match="second backward pass through the same graph.*reuse_probs = False"):
        torch.autograd.grad(total, z)
    # with the probabilities kept, a second pass gives the same gradient as the in-place first
    monkeypatch.setattr(_SoftmaxCEDice, "reuse_probs", False)
    total = ce_dice(z, target, 1.0, 1.5)[0]
    kept = torch.autograd.grad(total, z, retain_graph=True)[0]
    torch.testing.assert_close(torch.autograd.grad(total, z)[0], kept)
    torch.testing.assert_close(kept, first)


def test_fused_terms_carry_no_gradient(batch):
    from cpx_plugins.loss_functions import ce_dice

    logits, target = batch
    total, ce, dice = ce_dice(logits.clone().requires_grad_(), target, 1.0, 1.0)
    assert total.requires_grad and not ce.requires_grad and not dice.requires_grad
