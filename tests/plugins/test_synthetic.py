"""Contract tests for the procedural CelebAMask-style face generator."""

import numpy as np
import pytest

from cpx.kernel.manager import create_plugin_host
from cpx_plugins.competitions.faces import render_face
from cpx_plugins.competitions.faces import synthesize as synthesize_faces

CELEBAMASK_MINI = create_plugin_host(entry_points=False).competitions.get("celebamask-mini").target

SIZE = 128
COUNT = 40
SKIN, HAIR = 1, 13


@pytest.fixture(scope="module")
def samples():
    return list(synthesize_faces(COUNT, SIZE, 0))


def _centroid_x(mask, cls):
    cols = np.nonzero(mask == cls)[1]
    return cols.mean() if cols.size else None


def test_shapes_and_dtypes(samples):
    assert len(samples) == COUNT
    for image, mask in samples:
        assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
        assert mask.shape == (SIZE, SIZE) and mask.dtype == np.uint8
        assert mask.max() <= 18


def test_small_odd_size_works():
    image, mask = next(synthesize_faces(1, 17, 3))
    assert image.shape == (17, 17, 3) and mask.shape == (17, 17)


def test_same_seed_is_identical_and_other_seed_differs():
    a = list(synthesize_faces(3, 64, 5))
    b = list(synthesize_faces(3, 64, 5))
    c = list(synthesize_faces(3, 64, 6))
    for (ia, ma), (ib, mb) in zip(a, b):
        assert np.array_equal(ia, ib) and np.array_equal(ma, mb)
    assert not any(np.array_equal(ia, ic) for (ia, _), (ic, _) in zip(a, c))
    assert not all(np.array_equal(ma, mc) for (_, ma), (_, mc) in zip(a, c))


def test_samples_within_one_run_differ(samples):
    masks = [m for _, m in samples[:5]]
    assert all(not np.array_equal(masks[0], m) for m in masks[1:])


def test_prefix_property():
    short = list(synthesize_faces(3, 64, 11))
    long = list(synthesize_faces(8, 64, 11))
    for (i1, m1), (i2, m2) in zip(short, long[:3]):
        assert np.array_equal(i1, i2) and np.array_equal(m1, m2)


def test_render_face_addresses_one_sample():
    *_, (image, mask) = synthesize_faces(4, 64, 2)
    one_image, one_mask = render_face(64, 2, 3)
    assert np.array_equal(image, one_image) and np.array_equal(mask, one_mask)


def test_negative_seed_is_accepted_and_distinct():
    neg = next(synthesize_faces(1, 48, -1))[1]
    pos = next(synthesize_faces(1, 48, 1))[1]
    assert not np.array_equal(neg, pos)


@pytest.mark.parametrize("count,size", [(-1, 64), (2, 8)])
def test_bad_arguments_fail_at_the_call(count, size):
    with pytest.raises(ValueError):
        synthesize_faces(count, size, 0)


def test_zero_count_yields_nothing():
    assert list(synthesize_faces(0, 64, 0)) == []


def test_every_class_appears(samples):
    seen = set()
    for _, mask in samples:
        seen |= set(np.unique(mask).tolist())
    assert seen == set(range(19))


def test_frequent_classes_are_nearly_always_present(samples):
    counts = np.zeros(19)
    for _, mask in samples:
        counts += np.bincount(mask.ravel(), minlength=19) > 0
    share = counts / len(samples)
    for cls in (0, 1, 2, 11, 12, 17):  # background, skin, nose, lips, neck
        assert share[cls] >= 0.95, cls
    for cls in (4, 5, 6, 7, 13):  # eyes, brows, hair: missing only behind sunglasses/bangs/bald
        assert share[cls] >= 0.8, cls
    for cls in (3, 14, 15, 16):  # accessories stay occasional
        assert share[cls] <= 0.5, cls


def test_left_right_parts_are_on_the_real_data_side(samples):
    # CelebAMask-HQ "l_" classes are the subject's left, which is the image right
    checked = 0
    for _, mask in samples:
        for left, right in ((4, 5), (6, 7), (8, 9)):
            lx, rx = _centroid_x(mask, left), _centroid_x(mask, right)
            if lx is not None and rx is not None:
                assert lx > rx, (left, right)
                checked += 1
            if lx is not None:
                assert lx > SIZE * 0.45
            if rx is not None:
                assert rx < SIZE * 0.55
    assert checked >= COUNT


def test_layout_is_face_like(samples):
    # vertical order of the main parts, in image rows
    for _, mask in samples:
        rows = {c: np.nonzero(mask == c)[0].mean() for c in (2, 4, 6, 11, 12, 17) if (mask == c).any()}
        if {6, 4} <= rows.keys():
            assert rows[6] < rows[4]  # brow above eye
        assert rows[2] < rows[11] < rows[12]  # nose above upper lip above lower lip
        if 17 in rows:
            assert rows[12] < rows[17]  # lips above neck


def test_image_is_not_a_colour_lookup_of_the_mask(samples):
    for cls in (SKIN, HAIR):
        means = []
        for image, mask in samples:
            sel = mask == cls
            if sel.sum() > 50:
                pixels = image[sel].astype(float)
                means.append(pixels.mean(0))
                assert pixels.std(0).max() > 3.0, cls  # textured within an image
        assert np.std(np.array(means), axis=0).max() > 15.0, cls  # and varies between images


def test_skin_coloured_parts_share_the_skin_tone(samples):
    # nose and neck must be told from skin by shape/context, not colour
    gaps = []
    for image, mask in samples:
        skin = image[mask == SKIN].astype(float).mean(0)
        nose = image[mask == 2].astype(float).mean(0)
        gaps.append(np.abs(skin - nose).max())
    assert np.median(gaps) < 30.0


def test_image_edges_line_up_with_mask_edges(samples):
    # colour changes must be strongest exactly where the mask changes, not a few pixels off
    def edge_strength(image, mask, shift):
        m = np.roll(mask, shift, axis=1)
        boundary = m[:, 1:] != m[:, :-1]
        diff = np.abs(image[:, 1:].astype(float) - image[:, :-1].astype(float)).sum(-1)
        return diff[boundary].mean()

    for image, mask in samples[:10]:
        at = edge_strength(image, mask, 0)
        assert at > 1.3 * edge_strength(image, mask, 3)
        assert at > 1.3 * edge_strength(image, mask, -3)


def test_same_sample_looks_alike_at_any_size():
    small = render_face(64, 9, 0)[1]
    large = render_face(128, 9, 0)[1]
    assert (large[::2, ::2] == small).mean() > 0.9


def test_competition_profile_uses_this_generator():
    image, mask = next(iter(CELEBAMASK_MINI.synthesize(1, 64, 4)))
    ref_image, ref_mask = render_face(64, 4, 0)
    assert np.array_equal(image, ref_image) and np.array_equal(mask, ref_mask)
