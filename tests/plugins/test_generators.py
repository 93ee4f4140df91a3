"""Contract tests for the procedural generators of the drone-vegetation and landcover-tiles profiles."""

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cpx_plugins.competitions as competitions
from cpx.data.competition import load_profile
from cpx.kernel.manager import create_plugin_host
from cpx_plugins.competitions import landcover, vegetation

PROFILES = Path(competitions.__file__).resolve().parent
SIZE = 64
COUNT = 24

# profile name -> (generator module, channels, classes)
GENERATORS = {
    "drone-vegetation": (vegetation, 3, ("background", "vegetation")),
    "landcover-tiles": (landcover, 4, landcover.CLASSES),
}
NAMES = sorted(GENERATORS)


@pytest.fixture(scope="module")
def samples():
    """COUNT samples at SIZE of each generator, drawn once for the module."""
    return {name: list(GENERATORS[name][0].synthesize(COUNT, SIZE, 0)) for name in NAMES}


def _pixels(pairs):
    """All pixels of some pairs: (N x C float image values, N class ids)."""
    x = np.concatenate([i.reshape(-1, i.shape[-1]) for i, _ in pairs]).astype(np.float64)
    return x, np.concatenate([m.ravel() for _, m in pairs])


def _same(a, b) -> bool:
    return len(a) == len(b) and all(np.array_equal(ia, ib) and np.array_equal(ma, mb)
                                    for (ia, ma), (ib, mb) in zip(a, b))


# ------------------------------------------------------------------------ contract, both


@pytest.mark.parametrize("name", NAMES)
def test_shapes_dtypes_and_class_ids(samples, name):
    _, channels, classes = GENERATORS[name]
    pairs = samples[name]
    assert len(pairs) == COUNT
    for image, mask in pairs:
        assert image.dtype == np.uint8 and mask.dtype == np.uint8
        assert image.ndim == 3 and image.shape[2] == channels
        assert mask.shape == image.shape[:2] and mask.shape[0] == SIZE
        assert int(mask.max()) < len(classes)
        assert image.std() > 3  # a picture, not a flat fill


@pytest.mark.parametrize("name", NAMES)
def test_every_class_appears(samples, name):
    classes = GENERATORS[name][2]
    counts = np.bincount(np.concatenate([m.ravel() for _, m in samples[name]]), minlength=len(classes))
    assert len(counts) == len(classes) and (counts > 0).all(), dict(zip(classes, counts))


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_samples_and_prefix_stable(name):
    gen = GENERATORS[name][0].synthesize
    short = list(gen(3, 40, 5))
    assert _same(short, list(gen(3, 40, 5)))
    assert _same(short, list(gen(6, 40, 5))[:3])


@pytest.mark.parametrize("name", NAMES)
def test_other_seed_and_other_index_differ(samples, name):
    gen = GENERATORS[name][0].synthesize
    a, b = list(gen(3, 40, 5)), list(gen(3, 40, 6))
    assert not any(ia.shape == ib.shape and np.array_equal(ia, ib) for (ia, _), (ib, _) in zip(a, b))
    masks = [m for _, m in samples[name][:6]]
    assert all(not np.array_equal(masks[0], m) for m in masks[1:] if m.shape == masks[0].shape)


@pytest.mark.parametrize("name", NAMES)
def test_a_sample_keeps_its_layout_across_sizes(name):
    """Shape decisions come before size-dependent ones: (seed, index) is one scene at any size."""
    gen = GENERATORS[name][0].synthesize
    (_, small), (_, large) = next(gen(1, 48, 9)), next(gen(1, 96, 9))
    down = np.asarray(Image.fromarray(large).resize(small.shape[::-1], Image.Resampling.NEAREST))
    assert abs(large.shape[1] / 96 - small.shape[1] / 48) < 0.03
    assert (down == small).mean() > 0.85


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("count, size", [(-1, 64), (2, 15), (2, 0)])
def test_bad_arguments_raise_at_the_call(name, count, size):
    with pytest.raises(ValueError):
        GENERATORS[name][0].synthesize(count, size, 0)  # eager: no next() needed


@pytest.mark.parametrize("name", NAMES)
def test_zero_count_and_smallest_size(name):
    gen = GENERATORS[name][0].synthesize
    assert list(gen(0, 64, 0)) == []
    image, mask = next(gen(1, 16, 0))
    assert image.shape[0] == mask.shape[0] == 16 and image.shape[:2] == mask.shape


# ------------------------------------------------------------------------ drone-vegetation


def test_vegetation_images_are_wider_than_high_and_differ_in_width(samples):
    widths = [image.shape[1] for image, _ in samples["drone-vegetation"]]
    lo, hi = vegetation.ASPECT_RANGE
    assert all(round(SIZE * lo) <= w <= round(SIZE * hi) for w in widths)
    assert len(set(widths)) >= COUNT // 2 and max(widths) - min(widths) > SIZE * 0.4


def test_vegetation_share_varies_around_a_third(samples):
    shares = np.array([m.mean() for _, m in samples["drone-vegetation"]])
    assert 0.15 < shares.mean() < 0.45
    assert shares.min() < 0.12 and shares.max() > 0.35  # some images hold little vegetation


def test_vegetation_colour_helps_but_does_not_decide(samples):
    """A per-pixel Gaussian colour classifier fitted on one set beats the majority class on
    another, yet stays well short of perfect: shape and context are needed."""
    x, y = _pixels(samples["drone-vegetation"])
    x_test, y_test = _pixels(list(vegetation.synthesize(12, SIZE, 1)))
    accuracy = (_gaussian_classifier(x, y, 2)(x_test) == y_test).mean()
    majority = max(y_test.mean(), 1 - y_test.mean())
    assert majority + 0.05 < accuracy < 0.97


# ------------------------------------------------------------------------ landcover-tiles


def test_landcover_tiles_are_square(samples):
    assert all(image.shape == (SIZE, SIZE, 4) for image, _ in samples["landcover-tiles"])


def test_landcover_nir_separates_vegetation_from_water(samples):
    x, y = _pixels(samples["landcover-tiles"])
    nir = {c: x[y == i, 3].mean() for i, c in enumerate(landcover.CLASSES)}
    assert nir["forest"] > 3 * nir["water"] and nir["cropland"] > 3 * nir["water"]
    assert nir["forest"] - nir["water"] > 60  # on 0..255
    assert nir["building"] > nir["water"] + 40 and nir["building"] < nir["cropland"]
    # in the visible bands forest and water are both dark: far closer than in NIR
    rgb_gap = np.abs(x[y == landcover.FOREST, :3].mean(0) - x[y == landcover.WATER, :3].mean(0)).max()
    assert rgb_gap < (nir["forest"] - nir["water"]) / 3


def test_landcover_nir_band_improves_a_pixel_classifier(samples):
    x, y = _pixels(samples["landcover-tiles"])
    x_test, y_test = _pixels(list(landcover.synthesize(12, SIZE, 1)))
    k = len(landcover.CLASSES)
    rgb = (_gaussian_classifier(x[:, :3], y, k)(x_test[:, :3]) == y_test).mean()
    rgbn = (_gaussian_classifier(x, y, k)(x_test) == y_test).mean()
    assert rgbn > rgb + 0.02 and rgbn < 0.95  # better with NIR, still no colour lookup
    both = np.isin(y_test, (landcover.FOREST, landcover.WATER))
    fit = np.isin(y, (landcover.FOREST, landcover.WATER))
    as_forest = (y[fit] == landcover.FOREST).astype(int)
    truth = (y_test[both] == landcover.FOREST).astype(int)
    rgb_fw = (_gaussian_classifier(x[fit, :3], as_forest, 2)(x_test[both, :3]) == truth).mean()
    rgbn_fw = (_gaussian_classifier(x[fit], as_forest, 2)(x_test[both]) == truth).mean()
    assert rgbn_fw > 0.97 and rgbn_fw > rgb_fw + 0.05


def test_landcover_full_size_tile_is_quick():
    started = time.perf_counter()
    image, mask = landcover.render_tile(1024, 0, 0)
    elapsed = time.perf_counter() - started
    assert image.shape == (1024, 1024, 4) and mask.shape == (1024, 1024)
    assert len(np.unique(mask)) >= 4
    assert elapsed < 5.0  # about 0.4 s on one core; generous for a shared machine


# ------------------------------------------------------------------------ profiles


@pytest.mark.parametrize("name", NAMES)
def test_profile_loads_and_plugin_carries_the_generator(name):
    module, channels, classes = GENERATORS[name]
    profile = load_profile(PROFILES / f"{name}.yaml")
    assert profile.name == name and profile.channels == channels and profile.classes == tuple(classes)
    assert competitions.GENERATORS[name] == module.__name__.rsplit(".", 1)[1]
    host = create_plugin_host(entry_points=False)
    registered = host.competitions.get(name).target
    assert registered.classes == profile.classes and registered.synthesize is not None
    pairs = list(registered.synthesize(2, 32, 3))
    assert _same(pairs, list(module.synthesize(2, 32, 3)))
    assert all(image.shape[2] == channels for image, _ in pairs)


def test_drone_vegetation_profile_fields():
    p = load_profile(PROFILES / "drone-vegetation.yaml")
    assert p.size == "variable" and p.fixed_size is None and p.image_size == 256
    assert p.layout.has_val and p.layout.accepts_image("DJI_001.JPG") and p.layout.mask_name("a.JPG") == "a.png"
    assert p.masks.values == {0: 0, 255: 1} and p.masks.mode == "L"
    assert p.metric.name == "class-iou" and p.metric.scale == 100 and p.metric.options == {"class": "vegetation"}
    assert p.submission.name == "rle-json"
    assert p.submission.options == {"file": "results.json", "order": "column-major", "index_base": 1}
    assert p.rules.submissions_per_phase == 5 and p.rules.submissions_per_day == 2


def test_landcover_tiles_profile_fields():
    p = load_profile(PROFILES / "landcover-tiles.yaml")
    assert p.fixed_size == (1024, 1024) and p.image_size == 1024 and p.num_classes >= 6
    assert len(p.palette) == p.num_classes and len(set(p.palette)) == p.num_classes
    assert p.layout.accepts_image("t.TIF") and p.layout.mask_name("t.tiff") == "t.tif" and not p.layout.has_val
    assert p.masks.values is None and p.masks.mode == "L"
    assert p.metric.name == "miou" and p.submission.name == "masks-tiff"
    assert p.rules.submissions_per_phase


# ------------------------------------------------------------------------ helpers


def _gaussian_classifier(x, y, k):
    """Quadratic discriminant: one full-covariance Gaussian per class, with the class prior."""
    params = []
    for c in range(k):
        xc = x[y == c]
        mu = xc.mean(0)
        cov = np.cov(xc.T) + np.eye(x.shape[1]) * 1e-3
        params.append((mu, np.linalg.inv(cov), np.linalg.slogdet(cov)[1], np.log(len(xc) / len(x))))

    def predict(z):
        scores = [-0.5 * np.einsum("ni,ij,nj->n", z - mu, inv, z - mu) - 0.5 * logdet + prior
                  for mu, inv, logdet, prior in params]
        return np.argmax(scores, 0)

    return predict
