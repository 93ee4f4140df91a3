"""The built-in augmentations on any number of image bands, and ignored mask pixels (IGNORE)
through flips, warps and crops."""

import pytest
import torch
from conftest import builtin_host

import cpx_plugins.augmentations
from cpx.data.competition import Competition
from cpx.data.masks import IGNORE

COMPETITION = Competition(name="t", classes=tuple(str(i) for i in range(19)), flip_pairs=((4, 5), (6, 7), (8, 9)))
AUGMENTATIONS = builtin_host(cpx_plugins.augmentations, "augmentations").augmentations
EVERYTHING = dict(flip=0.5, rotation=20.0, scale=(0.8, 1.2), translate=0.1, brightness=0.3, contrast=0.3,
                  saturation=0.3, hue=0.05, blur=0.5, noise=0.05, crop_scale=(0.75, 1.25), crop_size=24)
COLOUR_ONLY = dict(flip=0.0, rotation=0.0, scale=(1.0, 1.0), brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)
GEOMETRY_ONLY = dict(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0, blur=0.0, noise=0.0)


def make(name="baseline", competition=COMPETITION, **options):
    return AUGMENTATIONS.get(name).create(options, competition)


def batch(bands, size=(32, 28), seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(4, bands, *size, generator=g)
    masks = torch.randint(0, 19, (4, *size), generator=g)
    masks[:, :, -4:] = IGNORE  # letterbox padding
    masks[torch.rand(4, *size, generator=g) < 0.05] = IGNORE
    return images, masks


@pytest.mark.parametrize("bands", [1, 2, 3, 4, 5])
def test_baseline_with_every_option_takes_any_band_count(bands):
    images, masks = batch(bands)
    augment = make(**EVERYTHING)
    torch.manual_seed(0)
    out, out_masks = augment(images, masks)
    assert out.shape == (4, bands, 24, 24) and out.dtype == images.dtype
    assert out_masks.shape == (4, 24, 24) and out_masks.dtype == masks.dtype
    assert 0 <= out.min() and out.max() <= 1 and torch.isfinite(out).all()
    assert set(out_masks.unique().tolist()) <= set(range(19)) | {IGNORE}
    torch.manual_seed(0)
    again = augment(images, masks)
    assert torch.equal(again[0], out) and torch.equal(again[1], out_masks)


@pytest.mark.parametrize("bands", [4, 5])
def test_colour_jitter_changes_the_rgb_bands_exactly_as_an_rgb_image_and_no_others(bands):
    images, masks = batch(bands)
    augment = make(**COLOUR_ONLY)
    torch.manual_seed(1)
    out, _ = augment(images, masks)
    torch.manual_seed(1)
    rgb, _ = augment(images[:, :3].contiguous(), masks)
    assert torch.equal(out[:, 3:], images[:, 3:])  # near-infrared and the rest: untouched
    assert torch.equal(out[:, :3], rgb)
    assert not torch.equal(out[:, :3], images[:, :3])


def test_blur_and_noise_touch_every_band():
    images, masks = batch(4)
    out, _ = make(flip=0.0, rotation=0.0, scale=(1.0, 1.0), brightness=0.0, contrast=0.0, saturation=0.0,
                  blur=1.0, noise=0.1)(images, masks)
    assert all(not torch.equal(out[:, b], images[:, b]) for b in range(4))


@pytest.mark.parametrize("bands", [1, 2])
def test_grey_bands_get_brightness_and_contrast_only(bands):
    images, masks = batch(1)
    images = images.repeat(1, bands, 1, 1)
    out, _ = make(**COLOUR_ONLY)(images, masks)
    assert not torch.equal(out, images)
    assert torch.equal(out[:, 0], out[:, -1])  # the same factors for every band of a sample
    # saturation and hue have no meaning without colour: nothing happens
    hue_only = dict(COLOUR_ONLY, brightness=0.0, contrast=0.0)
    assert torch.equal(make(**hue_only)(images, masks)[0], images)


def test_a_flip_keeps_ignored_pixels_ignored_and_swaps_the_rest():
    images, masks = batch(3)
    out_images, out_masks = make("none", flip=1.0)(images, masks)
    mirrored = masks.flip(-1)
    expected = torch.tensor(COMPETITION.flip_permutation() + list(range(19, 256)))[mirrored]
    assert torch.equal(out_masks, expected)
    assert torch.equal(out_masks == IGNORE, mirrored == IGNORE)


def test_the_swap_table_maps_the_ignore_id_to_itself():
    lut = make("none").swap_lut
    assert lut.shape == (256,) and lut[IGNORE] == IGNORE
    assert lut[:19].tolist() == COMPETITION.flip_permutation()
    widest = Competition(name="w", classes=tuple(f"c{i}" for i in range(255)), flip_pairs=((0, 254),))
    lut = make("none", competition=widest).swap_lut
    assert lut.shape == (256,) and (lut[0], lut[254], lut[IGNORE]) == (254, 0, IGNORE)


@pytest.mark.parametrize("options", [dict(rotation=30.0, scale=(0.7, 1.3), translate=0.1, flip=0.5),
                                     dict(crop_size=24, crop_scale=(0.5, 1.5), rotation=10.0, flip=0.5)],
                         ids=["warp", "crop"])
def test_warps_and_crops_keep_ignored_pixels_ignored(options):
    # an image of ones and a mask wholly ignored: inside the frame every pixel must stay
    # IGNORE; what comes from outside the frame is black and class 0, as for any mask
    images = torch.ones(8, 3, 32, 32)
    masks = torch.full((8, 32, 32), IGNORE, dtype=torch.uint8)
    torch.manual_seed(4)
    out, out_masks = make("none", **GEOMETRY_ONLY, **options)(images, masks)
    inside, outside = out[:, 0] > 0.999, out[:, 0] == 0
    assert inside.any() and outside.any()
    assert (out_masks[inside] == IGNORE).all() and (out_masks[outside] == 0).all()
    assert set(out_masks.unique().tolist()) <= {0, IGNORE}


def test_an_ignored_area_moves_with_the_image():
    # channel 0 paints the ignored square: bilinear image and nearest mask agree but at edges
    images = torch.zeros(6, 3, 48, 48)
    masks = torch.randint(0, 19, (6, 48, 48), generator=torch.Generator().manual_seed(0))
    masks[:, 10:30, 12:34] = IGNORE
    images[:, 0] = (masks == IGNORE).float()
    torch.manual_seed(5)
    out, out_masks = make("none", **GEOMETRY_ONLY, flip=0.5, rotation=25.0, scale=(0.8, 1.2))(images, masks)
    painted, ignored = out[:, 0] > 0.5, out_masks == IGNORE
    assert ignored.any() and not torch.equal(out_masks, masks)
    assert (painted != ignored).sum() <= 0.05 * ignored.sum()


@pytest.mark.parametrize("bands", [1, 3, 4])
@pytest.mark.parametrize("name", AUGMENTATIONS.names())
def test_every_preset_keeps_the_contract_at_the_competitions_band_count(name, bands):
    from cpx.testing import check_augmentation

    check_augmentation(AUGMENTATIONS.get(name), COMPETITION.model_copy(update={"channels": bands}))
