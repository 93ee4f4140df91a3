"""The Lovasz-softmax, OHEM and boundary losses on small cases checked by hand, the class
weights computed from data frequencies, and the combined loss with the new terms."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import builtin_host

import cpx_plugins.loss_functions as LF
import cpx_plugins.losses as L
from cpx.kernel.errors import ConfigError

NUM_CLASSES = 19


def make(name, num_classes=NUM_CLASSES, class_frequencies=None, **options):
    entry = builtin_host(L, "losses").losses.get(name)
    if class_frequencies is None:
        return entry.create(options, num_classes)
    return entry.create(options, num_classes, class_frequencies=class_frequencies)


def two_class_logits(p_class0):
    """1 x 2 x 1 x N logits whose softmax gives class 0 the probabilities ``p_class0``."""
    p = torch.tensor(p_class0, dtype=torch.float64)
    return torch.stack([p.log(), (1 - p).log()]).view(1, 2, 1, -1)


# --- Lovasz-softmax ---


def test_lovasz_on_three_pixels_by_hand():
    # class 0: p = .9 .6 .2, truth 1 0 1 -> errors .1 .6 .8; sorted .8(fg) .6(bg) .1(fg):
    #   Jaccard losses 1 - 1/2, 1 - 1/3, 1 - 0/3 -> steps .5, 1/6, 1/3 -> .4 + .1 + 1/30
    # class 1: errors the same; sorted .8(bg) .6(fg) .1(bg): Jaccard losses 1/2, 1, 1 -> steps
    #   .5, .5, 0 -> .4 + .3
    logits = two_class_logits([0.9, 0.6, 0.2])
    target = torch.tensor([[[0, 1, 0]]])
    expected = ((0.4 + 0.1 + 1 / 30) + 0.7) / 2
    assert LF.lovasz_softmax(logits, target).item() == pytest.approx(expected, abs=1e-9)


def test_lovasz_with_even_odds_is_one_half():
    # every error is 0.5, and the weights of each class sum to its full Jaccard loss, 1
    logits = torch.zeros(2, 2, 4, 4)
    target = torch.randint(0, 2, (2, 4, 4), generator=torch.Generator().manual_seed(1))
    target[0, 0, 0], target[0, 0, 1] = 0, 1
    assert LF.lovasz_softmax(logits, target).item() == pytest.approx(0.5)


def test_lovasz_of_hard_predictions_is_one_minus_iou(batch):
    # on 0/1 probabilities the Lovasz extension is exact: 1 - IoU of each present class
    _, target = batch
    pred = (target + (torch.arange(target.numel()).view_as(target) % 3 == 0).long()) % NUM_CLASSES
    logits = F.one_hot(pred, NUM_CLASSES).permute(0, 3, 1, 2).double() * 50
    losses = []
    for c in target.unique():
        inter = ((pred == c) & (target == c)).sum().item()
        union = ((pred == c) | (target == c)).sum().item()
        losses.append(1 - inter / union)
    assert LF.lovasz_softmax(logits, target).item() == pytest.approx(sum(losses) / len(losses), abs=1e-9)


def test_lovasz_per_image_averages_the_images(batch):
    logits, target = batch
    per_image = LF.lovasz_softmax(logits, target, per_image=True)
    separately = (LF.lovasz_softmax(logits[:1], target[:1]) + LF.lovasz_softmax(logits[1:], target[1:])) / 2
    torch.testing.assert_close(per_image, separately)


def test_lovasz_all_classes_also_counts_absent_ones():
    logits = two_class_logits([0.9, 0.6, 0.2])
    target = torch.zeros(1, 1, 3, dtype=torch.long)  # class 1 absent: its false positives count with 'all'
    # class 0: errors .1 .4 .8, all foreground: steps 1/3 each -> 1.3 / 3
    # class 1: errors .1 .4 .8, all background: Jaccard losses 1, 1, 1 -> steps 1, 0, 0 -> .8
    assert LF.lovasz_softmax(logits, target, classes="present").item() == pytest.approx(1.3 / 3)
    assert LF.lovasz_softmax(logits, target, classes="all").item() == pytest.approx((1.3 / 3 + 0.8) / 2)


def test_lovasz_gradient_matches_finite_differences():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(1, 3, 2, 3, dtype=torch.float64, generator=g, requires_grad=True)
    target = torch.tensor([[[0, 1, 2], [2, 1, 0]]])
    assert torch.autograd.gradcheck(lambda z: LF.lovasz_softmax(z, target), (logits,))


# --- OHEM ---


P_TRUE = [0.9, 0.5, 0.2, 0.8]  # true-class (class 0) probabilities of four pixels


@pytest.mark.parametrize("options, kept", [
    ({"threshold": 0.7, "min_kept": 1}, [0.5, 0.2]),                          # under the threshold
    ({"threshold": 0.7, "min_kept": 3}, [0.5, 0.2, 0.8]),                     # the minimum wins
    ({"threshold": None, "keep_fraction": 0.25, "min_kept": 1}, [0.2]),       # the hardest quarter
    ({"threshold": 0.1, "keep_fraction": 0.5, "min_kept": 1}, [0.5, 0.2]),    # the share wins
    ({"threshold": 1.0, "min_kept": 1}, P_TRUE),                              # everything
])
def test_ohem_keeps_the_hardest_pixels(options, kept):
    logits = two_class_logits(P_TRUE)
    target = torch.zeros(1, 1, 4, dtype=torch.long)
    expected = sum(-math.log(p) for p in kept) / len(kept)
    assert make("ohem", 2, **options)(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_ohem_class_weights_normalise_over_the_kept_pixels():
    logits = two_class_logits([0.9, 0.5, 0.2, 0.8])
    target = torch.tensor([[[0, 0, 1, 1]]])  # true-class probs .9 .5 .8 .2
    value = make("ohem", 2, threshold=0.7, min_kept=1, class_weights=[1.0, 3.0])(logits, target)
    expected = (1 * -math.log(0.5) + 3 * -math.log(0.2)) / (1 + 3)
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_ohem_keeping_everything_is_cross_entropy(batch):
    torch.testing.assert_close(make("ohem", threshold=1.0)(*batch), make("ce")(*batch))


# --- boundary ---


def test_boundary_band_by_hand():
    target = torch.zeros(1, 6, 6, dtype=torch.long)
    target[0, 2, 2] = 3
    band = LF.boundary_band(target, 1)
    expected = torch.zeros(1, 6, 6, dtype=torch.bool)
    expected[0, 1:4, 1:4] = True  # the pixel itself and its 8 neighbours
    assert torch.equal(band, expected)
    band2 = LF.boundary_band(target, 2)
    assert int(band2.sum()) == 25 and band2[0, :5, :5].all()  # the 5x5 square around it


def test_boundary_band_of_a_straight_edge():
    target = torch.zeros(1, 4, 8, dtype=torch.long)
    target[..., 4:] = 1  # edge between columns 3 and 4
    band = LF.boundary_band(target, 2)
    assert band[0, :, 2:6].all() and not band[0, :, :2].any() and not band[0, :, 6:].any()
    assert not LF.boundary_band(torch.zeros(1, 4, 4, dtype=torch.long), 3).any()


def test_boundary_loss_by_hand():
    # 1 x 2 x 1 x 4 with an edge in the middle: band (width 1) = pixels 1 and 2
    logits = two_class_logits([0.9, 0.6, 0.3, 0.2])
    target = torch.tensor([[[0, 0, 1, 1]]])
    nll = [-math.log(0.9), -math.log(0.6), -math.log(0.7), -math.log(0.8)]
    w = [1, 4, 4, 1]
    value = make("boundary", 2, width=1, band_weight=4.0)(logits, target)
    assert value.item() == pytest.approx(sum(a * b for a, b in zip(w, nll)) / sum(w), rel=1e-6)


def test_boundary_with_band_weight_1_is_cross_entropy(batch):
    weights = [float(i % 3 + 1) for i in range(NUM_CLASSES)]
    torch.testing.assert_close(make("boundary", band_weight=1.0, class_weights=weights)(*batch),
                               make("ce", class_weights=weights)(*batch))


# --- class weights from the data's frequencies ---


def test_weights_from_frequencies_by_hand():
    # 1/sqrt(.25) = 2, 2, 1/sqrt(.5) = 1.4142; mean 1.8047
    w = L.weights_from_frequencies([0.25, 0.25, 0.5])
    raw = [2.0, 2.0, 2 ** 0.5]
    assert w == pytest.approx([r / (sum(raw) / 3) for r in raw])
    assert sum(w) / 3 == pytest.approx(1.0)
    # counts work as well as shares; an absent class gets the largest weight
    assert L.weights_from_frequencies([100, 100, 200]) == pytest.approx(w)
    assert L.weights_from_frequencies([0, 1, 4])[0] == pytest.approx(L.weights_from_frequencies([0, 1, 4])[1])


def test_class_frequencies_from_masks():
    masks = torch.tensor([[[0, 0, 1, 2]], [[2, 2, 2, 255]]], dtype=torch.uint8)
    assert L.class_frequencies_from_masks(masks, 3) == pytest.approx([2 / 7, 1 / 7, 4 / 7])


def test_sqrt_inverse_frequency_needs_frequencies():
    with pytest.raises(ConfigError, match="only training provides"):
        make("ce", class_weights="sqrt-inverse-frequency")


@pytest.mark.parametrize("name", ["ce", "focal", "ohem", "boundary", "combined"])
def test_sqrt_inverse_frequency_uses_the_frequencies_given(name, batch):
    freqs = [float(i + 1) for i in range(NUM_CLASSES)]
    explicit = L.weights_from_frequencies(freqs)
    torch.testing.assert_close(make(name, class_frequencies=freqs, class_weights="sqrt-inverse-frequency")(*batch),
                               make(name, class_weights=explicit)(*batch))


def test_frequencies_of_the_wrong_length_or_sign_are_errors():
    with pytest.raises(ConfigError, match="expected 19"):
        make("ce", class_frequencies=[1.0, 2.0], class_weights="sqrt-inverse-frequency")
    with pytest.raises(ConfigError, match="not all zero"):
        make("ce", class_frequencies=[1.0, -1.0] + [0.0] * 17, class_weights="sqrt-inverse-frequency")
    with pytest.raises(ConfigError, match="class_weights"):
        make("ce", class_weights="inverse-frequency")


# --- the combined loss with the new terms ---


def test_combined_adds_lovasz_ohem_and_boundary(batch):
    weights = [float(i % 4 + 1) for i in range(NUM_CLASSES)]
    fn = make("combined", ce=0.3, dice=0.7, lovasz=0.5, ohem=0.25, boundary=2.0, class_weights=weights,
              ohem_threshold=0.5, ohem_min_kept=10, boundary_width=1, boundary_band_weight=3.0)
    total = fn(*batch)
    expected = (0.3 * make("ce", class_weights=weights)(*batch) + 0.7 * make("dice")(*batch)
                + 0.5 * make("lovasz")(*batch)
                + 0.25 * make("ohem", threshold=0.5, min_kept=10, class_weights=weights)(*batch)
                + 2.0 * make("boundary", width=1, band_weight=3.0, class_weights=weights)(*batch))
    torch.testing.assert_close(total, expected)
    assert set(fn.last_terms) == {"ce", "dice", "lovasz", "ohem", "boundary"}


def test_combined_with_one_new_term_alone(batch):
    torch.testing.assert_close(make("combined", ce=0, dice=0, lovasz=2.0)(*batch), 2 * make("lovasz")(*batch))


def test_combined_keeps_the_fused_path_for_ce_and_dice(batch, monkeypatch):
    calls = []
    fused = LF.ce_dice
    monkeypatch.setattr(L, "ce_dice", lambda *a, **k: calls.append(1) or fused(*a, **k))
    fn = make("combined", ce=1.0, dice=1.5)
    fn(*batch)
    assert calls and set(fn.last_terms) == {"ce", "dice"}


def test_combined_takes_every_option_of_every_term_as_the_term_declares_it():
    for term, (_, options, *_) in L.TERMS.items():
        for option, info in options.model_fields.items():
            field = L.CombinedOptions.model_fields[L.combined_field(term, option)]
            assert (field.annotation, field.default, field.metadata) == (info.annotation, info.default, info.metadata)


def test_combined_passes_every_term_its_options(batch):
    # lovasz_classes could not be set before the combined loss took its options from the terms
    fn = make("combined", ce=0, dice=0, lovasz=1.0, lovasz_classes="all", lovasz_per_image=True, focal=0.5,
              focal_gamma=0.5)
    expected = make("lovasz", classes="all", per_image=True)(*batch) + 0.5 * make("focal", gamma=0.5)(*batch)
    torch.testing.assert_close(fn(*batch), expected)
    logits, target = batch
    few = (logits, target % 4)  # classes 4.. absent: "all" counts them, "present" does not
    assert make("combined", ce=0, dice=0, lovasz=1.0, lovasz_classes="all")(*few) != make("lovasz")(*few)
