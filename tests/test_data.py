"""The data layer on real files written into tmp_path (and on the shared data when present)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cpx import data
from cpx.data import dataset
from cpx.data.competition import Competition, Layout
from cpx.kernel.errors import DataError

COMP = Competition(name="t", classes=tuple("abcde"), size=32,
                   palette=((0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)))


def _sample(i: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(i)
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    mask = np.zeros((size, size), dtype=np.uint8)
    # every class in a band of its own, so presence and pixel shares are known
    for c in range(COMP.num_classes):
        mask[:, c * size // COMP.num_classes:] = c
    mask[0, 0] = i % COMP.num_classes
    return image, mask


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "d"
    data.write_dataset(root, COMP, (_sample(i) for i in range(6)), test_count=2)
    return root


def _img(root: Path, stem: str) -> Path:
    return root / COMP.layout.train_images / f"{stem}.jpg"


def _mask(root: Path, stem: str) -> Path:
    return root / COMP.layout.train_masks / f"{stem}.png"


def _kinds(report) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for p in report.problems:
        out.setdefault(p.kind, []).append(str(p))
    return out


# ---------------------------------------------------------------------------- check_dataset


def test_clean_folder_passes(folder: Path):
    report = data.check_dataset(folder, COMP)
    assert report.ok, [str(p) for p in report.problems]
    assert (report.train_pairs, report.test_images) == (4, 2)
    assert report.image_sizes == {(32, 32): 4}
    assert report.test_image_sizes == {(32, 32): 2}
    assert sum(report.pixel_share) == pytest.approx(1.0)
    assert report.presence_share == [1.0] * 5
    assert report.seconds > 0
    assert report.to_dict()["image_sizes"] == {"32x32": 4}


def test_missing_mask_and_missing_image_name_the_file(folder: Path):
    _mask(folder, "synth_00001").unlink()
    _img(folder, "synth_00002").unlink()
    kinds = _kinds(data.check_dataset(folder, COMP))
    assert kinds["no_mask"] == [f"{COMP.layout.train_images}/synth_00001.jpg: image has no mask "
                                "synth_00001.png"]
    assert len(kinds["no_image"]) == 1 and "train/masks/synth_00002.png" in kinds["no_image"][0]


def test_wrong_size_mask(folder: Path):
    Image.fromarray(np.zeros((16, 20), np.uint8)).save(_mask(folder, "synth_00000"))
    (msg,) = _kinds(data.check_dataset(folder, COMP))["size_mismatch"]
    assert "synth_00000.png" in msg and "16x20" in msg and "32x32" in msg


def test_class_id_out_of_range(folder: Path):
    mask = np.zeros((32, 32), np.uint8)
    mask[3, 3] = 25
    Image.fromarray(mask).save(_mask(folder, "synth_00003"))
    (msg,) = _kinds(data.check_dataset(folder, COMP))["bad_class"]
    assert "synth_00003.png" in msg and "class id 25 outside 0..4" in msg


def test_truncated_jpeg_is_found(folder: Path):
    path = _img(folder, "synth_00002")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    report = data.check_dataset(folder, COMP)
    (msg,) = _kinds(report)["unreadable"]
    assert "synth_00002.jpg" in msg and "truncated" in msg
    # headers alone cannot see it
    assert data.check_dataset(folder, COMP, deep=False).ok


def test_truncated_test_image_is_found(folder: Path):
    path = folder / COMP.layout.test_images / "synth_00005.jpg"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    (msg,) = _kinds(data.check_dataset(folder, COMP))["unreadable"]
    assert "test/images/synth_00005.jpg" in msg


def test_garbage_file_is_unreadable(folder: Path):
    _mask(folder, "synth_00000").write_bytes(b"not a png")
    (msg,) = _kinds(data.check_dataset(folder, COMP))["unreadable"]
    assert "synth_00000.png" in msg


def test_rgb_mask(folder: Path):
    Image.new("RGB", (32, 32)).save(_mask(folder, "synth_00001"))
    report = data.check_dataset(folder, COMP)
    (msg,) = _kinds(report)["mask_channels"]
    assert "synth_00001.png" in msg and "3 channels" in msg
    assert _kinds(data.check_dataset(folder, COMP, deep=False))["mask_channels"]


def test_empty_and_missing_folders(tmp_path: Path):
    (tmp_path / COMP.layout.train_images).mkdir(parents=True)
    report = data.check_dataset(tmp_path, COMP)
    kinds = _kinds(report)
    assert kinds["empty_folder"] == [f"{COMP.layout.train_images}: train image folder holds no "
                                     ".jpeg/.jpg/.png files"]
    assert sorted(m.split(":")[0] for m in kinds["missing_folder"]) == [
        COMP.layout.test_images, COMP.layout.train_masks]
    assert report.train_pairs == 0 and report.pixel_share == [0.0] * 5


def test_shallow_check_skips_class_statistics(folder: Path):
    report = data.check_dataset(folder, COMP, deep=False)
    assert report.ok and report.pixel_share is None and report.presence_share is None


# ---------------------------------------------------------------------------- loading


def test_load_dataset_native_size(folder: Path):
    names = data.train_names(folder, COMP)
    assert names == [f"synth_{i:05d}" for i in range(4)]
    images, masks = data.load_dataset(folder, COMP, names, 32)
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.uint8
    assert masks.shape == (4, 32, 32) and masks.dtype == torch.uint8
    for i, name in enumerate(names):
        assert np.array_equal(masks[i].numpy(), _sample(i)[1])
        jpeg = np.asarray(Image.open(_img(folder, name)).convert("RGB"))
        assert np.array_equal(images[i].permute(1, 2, 0).numpy(), jpeg)


@pytest.mark.parametrize("size", [16, 48])
def test_load_dataset_resizes(folder: Path, size: int):
    images, masks = data.load_dataset(folder, COMP, ["synth_00001", "synth_00000"], size)
    assert images.shape == (2, 3, size, size) and masks.shape == (2, size, size)
    expected = np.asarray(Image.fromarray(_sample(1)[1]).resize((size, size), Image.NEAREST))
    assert np.array_equal(masks[0].numpy(), expected)
    assert set(np.unique(masks.numpy())) <= set(range(5))


def _truncate(root: Path) -> Path:
    path = _img(root, "synth_00001")
    path.write_bytes(path.read_bytes()[:300])
    return path


@pytest.mark.parametrize("breaker, needle", [
    (lambda r: _mask(r, "synth_00001").unlink(), "synth_00001.jpg: image has no mask"),
    # a mask left without its image is a listing problem, named before anything is decoded
    (lambda r: _img(r, "synth_00001").unlink(), "train/masks/synth_00001.png: mask has no image"),
    (lambda r: Image.new("RGB", (32, 32)).save(_mask(r, "synth_00001")), "synth_00001.png: mask has 3"),
    (lambda r: Image.fromarray(np.full((32, 32), 25, np.uint8)).save(_mask(r, "synth_00001")),
     "synth_00001.png: class id 25 outside 0..4"),
    (lambda r: Image.fromarray(np.zeros((8, 32), np.uint8)).save(_mask(r, "synth_00001")),
     "synth_00001.png: mask is 8x32"),
    (_truncate, "synth_00001.jpg: cannot read image"),
])
def test_load_dataset_raises_naming_the_file(folder: Path, breaker, needle):
    breaker(folder)
    with pytest.raises(DataError, match=needle.replace(".", r"\.")):
        data.load_dataset(folder, COMP, [f"synth_{i:05d}" for i in range(4)], 32)


def test_cache_hit_is_identical_and_does_not_decode(folder: Path, tmp_path: Path, monkeypatch):
    names = ["synth_00002", "synth_00000", "synth_00003"]
    cache = tmp_path / "cache"
    first = data.load_dataset(folder, COMP, names, 24, cache)
    assert len(list(cache.glob("*.npy"))) == 2 and not list(cache.glob(".*"))

    def no_decode(*args, **kwargs):
        raise AssertionError("decoded despite a cache hit")

    monkeypatch.setattr(dataset, "_decode_pair", no_decode)
    for mmap in (False, True):
        images, masks = data.load_dataset(folder, COMP, names, 24, cache, mmap=mmap)
        assert torch.equal(images, first[0]) and torch.equal(masks, first[1])
    # another size or another name list is another entry
    with pytest.raises(AssertionError, match="decoded"):
        data.load_dataset(folder, COMP, names, 16, cache)
    with pytest.raises(AssertionError, match="decoded"):
        data.load_dataset(folder, COMP, names[:2], 24, cache)


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="reads the process's mappings (Linux)")
def test_mmap_maps_the_cache_files_from_the_first_load(folder: Path, tmp_path: Path):
    names = ["synth_00001", "synth_00002"]
    cache = tmp_path / "cache"
    expected = data.load_dataset(folder, COMP, names, 24)
    images, masks = data.load_dataset(folder, COMP, names, 24, cache, mmap=True)  # a miss: decodes, writes, maps
    assert torch.equal(images, expected[0]) and torch.equal(masks, expected[1])
    maps = Path("/proc/self/maps").read_text()
    files = sorted(cache.glob("*.npy"))
    assert len(files) == 2 and all(str(f) in maps for f in files)
    # copy-on-write: the training loop may change its tensors, never the cache
    masks[0].fill_(7)
    again = data.load_dataset(folder, COMP, names, 24, cache)
    assert torch.equal(again[1], expected[1])


def test_cache_misses_when_the_data_changes(folder: Path, tmp_path: Path, monkeypatch):
    names = data.train_names(folder, COMP)
    data.load_dataset(folder, COMP, names, 32, tmp_path / "cache")
    mask = _sample(0)[1].copy()
    mask[5, 5] = 4
    data.write_mask(_mask(folder, "synth_00000"), mask, COMP)
    _, masks = data.load_dataset(folder, COMP, names, 32, tmp_path / "cache")
    assert masks[0, 5, 5] == 4


def test_load_images_keeps_original_sizes(tmp_path: Path):
    paths = []
    for i, (h, w) in enumerate([(20, 30), (32, 32)]):
        paths.append(tmp_path / f"x{i}.png")
        data.write_image(paths[-1], np.full((h, w, 3), i * 50, np.uint8))
    singles, sizes = data.load_images(paths)
    assert sizes == [(20, 30), (32, 32)]
    assert [tuple(t.shape) for t in singles] == [(3, 20, 30), (3, 32, 32)]
    assert int(singles[1][0, 0, 0]) == 50
    batch, sizes = data.load_images(paths, 16)
    assert batch.shape == (2, 3, 16, 16) and batch.dtype == torch.uint8
    assert sizes == [(20, 30), (32, 32)]
    paths[0].write_bytes(paths[0].read_bytes()[:40])
    with pytest.raises(DataError, match="x0.png"):
        data.load_images(paths)


# ---------------------------------------------------------------------------- split


def test_split_follows_the_reference_rule():
    names = [f"n{i:03d}" for i in range(97)]
    shuffled = list(reversed(names))
    train, val = data.split_names(shuffled, 0.1, seed=7)
    idx = np.random.RandomState(7).permutation(97)
    cut = 97 - int(97 * 0.1)
    assert train == [names[i] for i in idx[:cut]]
    assert val == [names[i] for i in idx[cut:]]
    assert len(val) == 9 and sorted(train + val) == names
    assert data.split_names(names, 0.1, seed=7) == (train, val)
    assert data.split_names(names, 0.1, seed=8) != (train, val)
    assert data.split_names(names, 0.0, seed=7)[1] == []


# ---------------------------------------------------------------------------- writing


def test_write_mask_round_trip(tmp_path: Path):
    mask = np.arange(64 * 48, dtype=np.int64).reshape(64, 48) % 5
    out = tmp_path / "out"
    out.mkdir()
    path = out / "m.png"
    data.write_mask(path, mask, COMP)
    with Image.open(path) as img:
        assert img.mode == "P" and img.size == (48, 64)
        assert img.getpalette()[:15] == [c for rgb in COMP.palette for c in rgb]
        assert np.array_equal(np.asarray(img), mask)
    assert np.array_equal(data.read_mask(path, COMP), mask.astype(np.uint8))
    assert [p.name for p in out.iterdir()] == ["m.png"]
    with pytest.raises(DataError):
        data.write_mask(tmp_path / "bad.png", np.zeros((4, 4, 3), np.uint8), COMP)


def test_read_mask_rejects_rgb_and_accepts_greyscale(tmp_path: Path):
    Image.new("RGB", (8, 8)).save(tmp_path / "rgb.png")
    with pytest.raises(DataError, match="rgb.png: mask has 3 channels"):
        data.read_mask(tmp_path / "rgb.png")
    Image.fromarray(np.full((8, 8), 3, np.uint8)).save(tmp_path / "l.png")
    assert data.read_mask(tmp_path / "l.png").tolist() == [[3] * 8] * 8
    with pytest.raises(DataError, match="class id 3 outside 0..2"):
        data.read_mask(tmp_path / "l.png", Competition(name="three", classes=("a", "b", "c")))


def test_write_image_formats(tmp_path: Path):
    rgb = np.zeros((10, 12, 3), np.uint8)
    data.write_image(tmp_path / "a.jpg", rgb)
    data.write_image(tmp_path / "a.png", rgb)
    assert Image.open(tmp_path / "a.jpg").format == "JPEG"
    assert Image.open(tmp_path / "a.png").format == "PNG"
    data.write_image(tmp_path / "grey.png", np.zeros((10, 12), np.uint8))  # one band: greyscale
    assert Image.open(tmp_path / "grey.png").mode == "L"
    with pytest.raises(DataError, match="H x W x 3 uint8"):
        data.write_image(tmp_path / "b.png", np.zeros((10, 12, 2), np.uint8))
    with pytest.raises(DataError, match="H x W x 3 uint8"):
        data.write_image(tmp_path / "f.png", np.zeros((10, 12, 3), np.float32))


def test_write_dataset_layout(folder: Path):
    names = lambda part: sorted(p.name for p in (folder / part).iterdir())  # noqa: E731
    assert names(COMP.layout.train_images) == [f"synth_{i:05d}.jpg" for i in range(4)]
    assert names(COMP.layout.train_masks) == [f"synth_{i:05d}.png" for i in range(4)]
    assert names(COMP.layout.test_images) == ["synth_00004.jpg", "synth_00005.jpg"]
    with pytest.raises(DataError, match="not empty"):
        data.write_dataset(folder, COMP, [_sample(0)])


def test_write_dataset_rejects_bad_samples(tmp_path: Path):
    image, mask = _sample(0)
    with pytest.raises(DataError, match="sample 0: class id 9"):
        data.write_dataset(tmp_path, COMP, [(image, np.full_like(mask, 9))])


# ---------------------------------------------------------------------------- fingerprint


def test_fingerprint_follows_contents(folder: Path):
    before = data.fingerprint(folder, COMP)
    assert before == data.fingerprint(folder, COMP) and len(before) == 16
    # test images are not training data
    (folder / COMP.layout.test_images / "synth_00004.jpg").unlink()
    assert data.fingerprint(folder, COMP) == before
    path = _mask(folder, "synth_00002")
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 1
    path.write_bytes(bytes(raw))
    assert data.fingerprint(folder, COMP) != before


# ---------------------------------------------------------------------------- shared data


@pytest.mark.shared_data
def test_shared_celebamask_data_is_clean(shared_data: Path):
    # the conftest fixture skips when ../shared/data/celebamask-mini is absent
    comp = Competition(name="celebamask-mini", classes=tuple(f"c{i}" for i in range(19)),
                       layout=Layout(image_suffixes=(".jpg",)))
    report = data.check_dataset(shared_data, comp)
    assert report.problems == []
    assert (report.train_pairs, report.test_images) == (900, 100)
    assert report.image_sizes == {(512, 512): 900}
    assert all(share > 0 for share in report.presence_share)


def test_data_check_names_many_image_sizes_once(cpx_synthetic, tmp_path, capsys):
    """More than four image sizes are summarised as a count and ranges after the word 'sizes',
    without saying 'sizes' twice."""
    import shutil

    from cpx.cli import main

    data = tmp_path / "data"
    shutil.copytree(cpx_synthetic, data)
    images = sorted((data / "train" / "images").iterdir())[:5]
    for i, image in enumerate(images):
        mask = data / "train" / "masks" / f"{image.stem}.png"
        size = (40 + 4 * i, 48)
        Image.open(image).resize(size).save(image)
        Image.open(mask).resize(size, Image.NEAREST).save(mask)
    assert main(["data", "check", str(data), "--competition", "celebamask-mini"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "sizes 6 different, heights 48..64, widths 40..64" in out and "sizes 6 sizes" not in out, out
