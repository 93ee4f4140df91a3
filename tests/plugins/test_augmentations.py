"""Contract tests for every augmentation that the register_augmentations hook registers.

Parametrized over the registry, so a new preset is tested without touching this file.
"""

import pytest
import torch
from conftest import builtin_host

import cpx_plugins.augmentations
from cpx.data.competition import Competition
from cpx.kernel.errors import ConfigError

COMPETITION = Competition(name="t", classes=tuple(str(i) for i in range(19)), flip_pairs=((4, 5), (6, 7), (8, 9)))
SWAP = {4: 5, 5: 4, 6: 7, 7: 6, 8: 9, 9: 8}
# switches off everything that changes pixel values, leaving geometry
NO_COLOUR = dict(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0, blur=0.0, noise=0.0)


def _registry():
    return builtin_host(cpx_plugins.augmentations, "augmentations").augmentations


AUGMENTATIONS = _registry()
NAMES = AUGMENTATIONS.names()


def make(name, competition=COMPETITION, **options):
    return AUGMENTATIONS.get(name).create(options, competition)


def sample_batch(batch=3, height=40, width=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, height, width, generator=g)
    masks = torch.randint(0, 19, (batch, height, width), generator=g)
    return images, masks


def test_the_presets_are_registered():
    assert {"none", "baseline", "strong"} <= set(NAMES)
    baseline = AUGMENTATIONS.get("baseline").parse_options({})
    assert (baseline.flip, baseline.rotation, baseline.scale) == (0.5, 15.0, (0.9, 1.1))
    assert (baseline.brightness, baseline.contrast, baseline.saturation) == (0.2, 0.2, 0.1)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("mask_dtype", [torch.long, torch.uint8])
def test_shapes_dtypes_and_ids_are_preserved(name, mask_dtype):
    images, masks = sample_batch()
    masks = masks.to(mask_dtype)
    out_images, out_masks = make(name)(images, masks)
    assert out_images.shape == images.shape and out_images.dtype == images.dtype
    assert out_masks.shape == masks.shape and out_masks.dtype == mask_dtype
    assert 0 <= out_images.min() and out_images.max() <= 1
    assert set(out_masks.unique().tolist()) <= set(range(19))


@pytest.mark.parametrize("name", NAMES)
def test_the_same_seed_gives_the_same_batch(name):
    images, masks = sample_batch()
    augment = make(name)
    torch.manual_seed(7)
    first = augment(images, masks)
    torch.manual_seed(7)
    second = augment(images, masks)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


@pytest.mark.parametrize("name", [n for n in NAMES if n != "none"])
def test_different_seeds_give_different_batches(name):
    images, masks = sample_batch(batch=4)
    augment = make(name)
    torch.manual_seed(1)
    first = augment(images, masks)[0]
    torch.manual_seed(2)
    assert not torch.equal(first, augment(images, masks)[0])


@pytest.mark.parametrize("name", NAMES)
def test_a_certain_flip_alone_mirrors_and_swaps_left_and_right(name):
    images, masks = sample_batch()
    augment = make(name, flip=1.0, rotation=0.0, scale=(1.0, 1.0), translate=0.0, **NO_COLOUR)
    out_images, out_masks = augment(images, masks)
    assert torch.equal(out_images, images.flip(-1))
    expected = masks.flip(-1).clone()
    for a, b in SWAP.items():
        expected[masks.flip(-1) == a] = b
    assert torch.equal(out_masks, expected)


def test_without_flip_pairs_a_flip_only_mirrors():
    images, masks = sample_batch()
    plain = Competition(name="p", classes=tuple(str(i) for i in range(19)))
    out_images, out_masks = make("none", competition=plain, flip=1.0)(images, masks)
    assert torch.equal(out_masks, masks.flip(-1))


def test_flip_swap_false_mirrors_without_relabelling_as_the_reference_did():
    images, masks = sample_batch()
    assert (masks.flip(-1) != masks).any() and any((masks == a).any() for a in SWAP)
    out_images, out_masks = make("baseline", flip=1.0, flip_swap=False, rotation=0.0, scale=(1.0, 1.0),
                                 **NO_COLOUR)(images, masks)
    assert torch.equal(out_images, images.flip(-1)) and torch.equal(out_masks, masks.flip(-1))


def test_ignore_values_pass_through_the_swap():
    images, masks = sample_batch()
    masks[:, :5] = 255
    _, out_masks = make("none", flip=1.0)(images, masks.to(torch.uint8))
    assert (out_masks[:, :5] == 255).all()


def test_none_is_the_identity():
    images, masks = sample_batch()
    out_images, out_masks = make("none")(images, masks)
    assert torch.equal(out_images, images) and torch.equal(out_masks, masks)


@pytest.mark.parametrize("name", NAMES)
def test_colour_leaves_the_mask_alone(name):
    images, masks = sample_batch()
    augment = make(name, flip=0.0, rotation=0.0, scale=(1.0, 1.0), translate=0.0,
                   brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, blur=1.0, noise=0.05)
    out_images, out_masks = augment(images, masks)
    assert torch.equal(out_masks, masks) and not torch.equal(out_images, images)


def square_batch(batch=6, size=64):
    """Images whose channel 0 is 1 exactly where the mask holds the square's class."""
    images = torch.zeros(batch, 3, size, size)
    masks = torch.zeros(batch, size, size, dtype=torch.long)
    masks[:, 12:36, 8:28] = 3      # not a left/right class: keeps its id under a flip
    masks[:, 40:56, 10:24] = 4     # a "left" class, becomes 5 when mirrored
    images[:, 0] = (masks > 0).float()
    images[:, 1] = 0.5             # a flat channel to see what comes in from outside the frame
    return images, masks


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("flip", [0.0, 1.0])
def test_rotated_masks_stay_aligned_with_the_image(name, flip):
    images, masks = square_batch()
    augment = make(name, flip=flip, rotation=35.0, scale=(0.8, 1.2), translate=0.1, **NO_COLOUR)
    torch.manual_seed(3)
    out_images, out_masks = augment(images, masks)

    painted = out_images[:, 0] > 0.5
    labelled = out_masks > 0
    assert labelled.any(1).any(1).all(), "every square should survive a moderate warp"
    # bilinear (image) and nearest (mask) sampling may only disagree along the squares' edges
    disagree = (painted != labelled).sum().item()
    assert disagree <= 0.02 * labelled.sum().item()
    assert not torch.equal(out_masks, masks), "the warp should have moved the squares"

    left, right = (5, 4) if flip else (4, 5)
    assert (out_masks == left).any() and not (out_masks == right).any()
    # what came in from outside the frame is background in the mask and black in the image
    outside = out_images[:, 1] < 0.01
    assert outside.any()
    assert (out_masks[outside] == 0).float().mean() > 0.99


def test_a_flip_inside_the_warp_mirrors_like_a_plain_flip():
    images, masks = square_batch(batch=2)
    warped = make("none", flip=1.0, scale=(1.0, 1.0 + 1e-6), **NO_COLOUR)(images, masks)
    plain = make("none", flip=1.0)(images, masks)
    assert torch.allclose(warped[0], plain[0], atol=1e-3)
    assert torch.equal(warped[1], plain[1])


@pytest.mark.parametrize("options", [{"scale": (1.2, 0.9)}, {"scale": (0.0, 1.0)}, {"flip": 1.5},
                                     {"rotation": -5}, {"translate": 0.6}, {"hue": 0.7}, {"colour": 0.2}])
def test_bad_options_are_an_error(options):
    for name in NAMES:
        with pytest.raises(ConfigError):
            make(name, **options)


def test_mismatched_shapes_are_rejected():
    images, masks = sample_batch()
    with pytest.raises(ValueError, match="same size"):
        make("baseline")(images, masks[:, :-1])
