"""Multi-scale random crops (augmentation options crop_scale and crop_size)."""

import pytest
import torch
from conftest import builtin_host, tiny_overrides

import cpx_plugins.augmentations
from cpx.data.competition import Competition
from cpx.kernel.errors import ConfigError
from cpx.train.run import TrainRequest, train

COMPETITION = Competition(name="t", classes=tuple(str(i) for i in range(19)), flip_pairs=((4, 5), (6, 7), (8, 9)))
GEOMETRY_ONLY = dict(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0, blur=0.0, noise=0.0)
AUGMENTATIONS = builtin_host(cpx_plugins.augmentations, "augmentations").augmentations


def make(**options):
    return AUGMENTATIONS.get("none").create({**GEOMETRY_ONLY, **options}, COMPETITION)


def ramp(batch=4, size=32):
    """Images whose first channel is the column index / size, and masks of random ids."""
    cols = torch.arange(size, dtype=torch.float32) / size
    images = torch.zeros(batch, 3, size, size)
    images[:, 0] = cols
    masks = torch.randint(0, 19, (batch, size, size), generator=torch.Generator().manual_seed(0))
    return images, masks


def test_crops_have_the_crop_size_and_valid_content():
    images, masks = ramp()
    torch.manual_seed(0)
    out, out_masks = make(crop_size=20, crop_scale=(0.5, 1.5), rotation=10.0)(images, masks)
    assert out.shape == (4, 3, 20, 20) and out_masks.shape == (4, 20, 20) and out_masks.dtype == masks.dtype
    assert 0 <= out.min() and out.max() <= 1 and set(out_masks.unique().tolist()) <= set(range(19))
    torch.manual_seed(0)
    again = make(crop_size=20, crop_scale=(0.5, 1.5), rotation=10.0)(images, masks)
    assert torch.equal(again[0], out) and torch.equal(again[1], out_masks)


def test_a_full_size_crop_at_scale_one_is_the_identity():
    images, masks = ramp()
    out, out_masks = make(crop_size=32)(images, masks)
    assert torch.equal(out_masks, masks) and torch.allclose(out, images, atol=1e-5)


@pytest.mark.parametrize("scale", [1.0, 2.0, 0.5])
def test_crops_sample_the_zoomed_image(scale):
    images, masks = ramp()
    torch.manual_seed(1)
    out, _ = make(crop_size=16, crop_scale=(scale, scale))(images, masks)
    # inside the zoomed image each output pixel moves 1 / scale of an input column
    steps = out[:, 0, :, 1:] - out[:, 0, :, :-1]
    assert torch.allclose(steps, torch.full_like(steps, 1 / (32 * scale)), atol=1e-4)


def test_an_image_smaller_than_the_crop_sits_inside_it_padded():
    images, masks = ramp()
    images[:, 1] = 1.0  # marks the image's own pixels
    torch.manual_seed(2)
    out, out_masks = make(crop_size=16, crop_scale=(0.25, 0.25))(images, masks)
    inside = out[:, 1] > 0.99
    assert inside.any() and (~inside).any()
    assert (out_masks[~(out[:, 1] > 0)] == 0).all()  # the padding is background


def test_flipped_crops_keep_left_and_right_classes_on_their_sides():
    # class 4 on the image right, 5 on the left; a mirror must swap them back into place
    masks = torch.full((16, 32, 32), 5, dtype=torch.long)
    masks[:, :, 16:] = 4
    images = torch.rand(16, 3, 32, 32)
    torch.manual_seed(3)
    _, out = make(flip=1.0, rotation=20.0, crop_size=24, crop_scale=(0.7, 1.3))(images, masks)
    cols = torch.arange(24, dtype=torch.float32)
    checked = 0
    for m in out:
        right, left = m == 4, m == 5
        if right.sum() > 20 and left.sum() > 20:
            assert (cols * right).sum() / right.sum() > (cols * left).sum() / left.sum()
            checked += 1
    assert checked >= 8


def test_bad_crop_options_are_refused():
    with pytest.raises(ConfigError, match="crop_scale"):
        make(crop_scale=(1.5, 0.5))
    with pytest.raises(ConfigError, match="crop_size"):
        make(crop_size=0)


def test_training_on_crops(cpx_workspace, cpx_host, tiny_model):
    overrides = tiny_overrides(**{"augmentation.name": "baseline",
                                  "augmentation.options": {"crop_size": 24, "crop_scale": [0.75, 1.25]}})
    result = train(TrainRequest(recipe="msf-lmsa", overrides=overrides), cpx_workspace, cpx_host)
    assert result.status == "completed" and result.best_val_score > 0
