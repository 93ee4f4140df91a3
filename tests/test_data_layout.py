"""The one listing of a data folder (cpx.data.layout) and the checks that read every file through
the one reader, on small folders of any layout written into tmp_path."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cpx import data
from cpx.data.competition import Competition
from cpx.data.images import BadFile, image_size, read_image, write_image, write_stored_mask
from cpx.kernel.errors import DataError
from cpx.submit.zipcheck import image_sizes, list_test_images

SIDE = 16


def _comp(**fields) -> Competition:
    return Competition(**{"name": "t", "classes": ("bg", "fg"), "size": SIDE, **fields})


def _samples(count: int, channels: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        mask = np.zeros((SIDE, SIDE), np.uint8)
        mask[:, SIDE // 2:] = 1
        yield rng.integers(0, 256, (SIDE, SIDE, channels), dtype=np.uint8), mask


def _folder(tmp_path: Path, comp: Competition, count: int = 4, *, test_count: int = 1, val_count: int = 0,
            channels: int = 3) -> Path:
    root = tmp_path / "d"
    data.write_dataset(root, comp, _samples(count + test_count + val_count, channels), test_count=test_count,
                       val_count=val_count)
    return root


def _kinds(problems) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for p in problems:
        out.setdefault(p.kind, []).append(str(p))
    return out


# ---------------------------------------------------------------------------- the two inputs


@pytest.fixture
def with_folder_and_link(tmp_path: Path) -> tuple[Path, Competition]:
    """A training folder holding a directory zz_folder.jpg and a dangling link zz_link.jpg, each
    with a mask."""
    comp = _comp()
    root = _folder(tmp_path, comp)
    images, masks = root / "train" / "images", root / "train" / "masks"
    (images / "zz_folder.jpg").mkdir()
    os.symlink("nowhere.jpg", images / "zz_link.jpg")
    for stem in ("zz_folder", "zz_link"):
        shutil.copy(masks / "synth_00000.png", masks / f"{stem}.png")
    return root, comp


def test_a_folder_and_a_broken_link_named_like_images_are_problems(with_folder_and_link):
    root, comp = with_folder_and_link
    found = data.scan(root, comp)
    assert _kinds(found.problems) == {
        "not_a_file": ["train/images/zz_folder.jpg: a folder, not an image file"],
        "broken_link": ["train/images/zz_link.jpg: a broken link, not an image file: its target nowhere.jpg "
                        "does not exist"]}
    # their masks are not reported again as masks without an image: one cause, one line
    assert found.pairs == [f"synth_{i:05d}" for i in range(4)]
    assert found.problems_in(data.TEST_PARTS) == []


def test_require_stops_in_one_line_naming_the_count_and_the_first(with_folder_and_link):
    root, comp = with_folder_and_link
    expected = (f"{root}: 2 problems in the data folder, first: train/images/zz_folder.jpg: a folder, not an "
                f"image file; run `cpx data check {root}` for all")
    with pytest.raises(DataError) as err:
        data.scan(root, comp).require(data.TRAIN_PARTS)
    assert str(err.value) == expected
    # what training calls sees the same listing and the same line
    with pytest.raises(DataError) as err:
        data.train_names(root, comp)
    assert str(err.value) == expected
    with pytest.raises(DataError) as err:
        data.load_dataset(root, comp, ["synth_00000"], SIDE)
    assert str(err.value) == expected
    # only the parts a command uses stop it
    data.scan(root, comp).require(data.TEST_PARTS)
    assert data.test_image_paths(root, comp) == [root / "test" / "images" / "synth_00004.jpg"]


def test_the_warning_form_names_the_count_and_the_first_files(with_folder_and_link):
    root, comp = with_folder_and_link
    line = data.scan(root, comp).warning(data.TRAIN_PARTS, shown=1)
    assert line == (f"{root}: 2 problems in the data folder, skipped: train/images/zz_folder.jpg (a folder, not "
                    f"an image file), and 1 more; run `cpx data check {root}` for all")
    assert data.scan(root, comp).warning(data.TEST_PARTS) is None


def test_data_check_reports_both(with_folder_and_link):
    root, comp = with_folder_and_link
    report = data.check_dataset(root, comp)
    assert sorted((p.kind, p.path) for p in report.problems) == [("broken_link", "train/images/zz_link.jpg"),
                                                                ("not_a_file", "train/images/zz_folder.jpg")]
    assert report.train_pairs == 4


def test_a_test_folder_listing_goes_through_the_layout(tmp_path: Path):
    comp = _comp()
    root = _folder(tmp_path, comp, test_count=2)
    test = root / "test" / "images"
    (test / "notes.txt").write_text("ignored: another suffix")
    assert list(list_test_images(test, comp)) == ["synth_00004", "synth_00005"]
    (test / "zz_folder.jpg").mkdir()
    with pytest.raises(DataError) as err:
        list_test_images(test, comp)
    assert str(err.value) == f"{test}: 1 problem in the folder: zz_folder.jpg: a folder, not an image file"
    with pytest.raises(DataError, match="test/images/zz_folder.jpg: a folder"):
        data.test_image_paths(root, comp)
    with pytest.raises(DataError, match="test image folder is missing"):
        list_test_images(tmp_path / "nowhere", comp)
    found = data.scan_images(test, comp)
    assert [p.name for p in found.ignored] == ["notes.txt"] and len(found.test_images) == 2


# ---------------------------------------------------------------------------- too many pixels


@pytest.mark.parametrize("suffix", [".jpg", ".tif"])
def test_an_image_over_the_pixel_limit_is_one_line_everywhere(tmp_path: Path, monkeypatch, suffix):
    comp = _comp(layout={"image_suffixes": [suffix]})
    root = _folder(tmp_path, comp)
    image = root / "train" / "images" / f"synth_00000{suffix}"
    # a 179-megapixel photo against Pillow's limit, scaled down: 16 x 16 = 256 pixels over a limit of 100
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(DataError) as err:
        image_sizes({"synth_00000": image})
    line = str(err.value)
    assert line.startswith(f"{image}: image is too large to open safely") and "\n" not in line
    assert "DecompressionBomb" not in line
    for read in (lambda p: read_image(p, 3), image_size):
        with pytest.raises(BadFile) as bad:
            read(image)
        assert bad.value.kind == "too_large" and bad.value.path == image
        assert "too large to open safely" in bad.value.message and "\n" not in bad.value.message
    for deep in (True, False):
        kinds = _kinds(data.check_dataset(root, comp, deep=deep).problems)
        assert f"train/images/synth_00000{suffix}: image is too large" in kinds["too_large"][0]
        assert any(f"test/images/synth_00004{suffix}" in p for p in kinds["too_large"])


def test_between_one_and_two_times_the_limit_is_refused_too(tmp_path: Path, monkeypatch):
    comp = _comp()
    root = _folder(tmp_path, comp)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200)  # Pillow only warns below twice its limit
    with pytest.raises(DataError, match="too large to open safely"):
        image_sizes({"a": root / "train" / "images" / "synth_00000.jpg"})


# ---------------------------------------------------------------------------- layouts


@pytest.mark.parametrize("pattern, image, mask, lost", [
    ("{stem}_segmentation.png", "synth_00000.jpg", "synth_00000_segmentation.png", "zz_lost (.jpg)"),
    ("{name}.png", "synth_00000.JPG", "synth_00000.JPG.png", "zz_lost.JPG"),
])
def test_masks_pair_through_the_mask_pattern(tmp_path: Path, pattern, image, mask, lost):
    suffix = Path(image).suffix
    comp = _comp(layout={"image_suffixes": [suffix], "mask_pattern": pattern})
    root = _folder(tmp_path, comp)
    assert (root / "train" / "masks" / mask).is_file()
    found = data.scan(root, comp)
    assert found.problems == [] and found.pairs == [f"synth_{i:05d}" for i in range(4)]
    assert found.masks["synth_00000"].name == mask
    assert data.check_dataset(root, comp).ok
    # a mask of no image, and a file that does not follow the pattern
    masks = root / "train" / "masks"
    shutil.copy(masks / mask, masks / mask.replace("synth_00000", "zz_lost"))
    shutil.copy(masks / mask, masks / "stray.png")
    kinds = _kinds(data.scan(root, comp).problems)
    assert kinds["no_image"] == [
        f"train/masks/stray.png: mask has no image: its name does not follow layout.mask_pattern {pattern}",
        f"train/masks/{mask.replace('synth_00000', 'zz_lost')}: mask has no image: no image {lost} in train/images"]


def test_suffixes_match_in_any_case_and_duplicate_stems_are_problems(tmp_path: Path):
    comp = _comp(layout={"image_suffixes": [".jpg"]})
    root = _folder(tmp_path, comp)
    images, masks = root / "train" / "images", root / "train" / "masks"
    (images / "synth_00001.jpg").rename(images / "synth_00001.JPG")
    (masks / "synth_00002.png").rename(masks / "synth_00002.PNG")
    found = data.scan(root, comp)
    assert found.problems == [] and found.pairs == [f"synth_{i:05d}" for i in range(4)]
    assert data.check_dataset(root, comp).ok
    shutil.copy(images / "synth_00001.JPG", images / "synth_00001.jpg")
    (problem,) = data.scan(root, comp).problems
    assert problem.kind == "duplicate"
    assert str(problem) == ("train/images/synth_00001.jpg: same name as synth_00001.JPG but for the suffix's case; "
                            "one train image per name")


def test_an_image_without_its_mask_says_which(tmp_path: Path):
    comp = _comp()
    root = _folder(tmp_path, comp)
    (root / "train" / "masks" / "synth_00001.png").unlink()
    (root / "train" / "images" / "notes.txt").write_text("ignored")
    found = data.scan(root, comp)
    assert [str(p) for p in found.problems] == ["train/images/synth_00001.jpg: image has no mask synth_00001.png"]
    assert [p.name for p in found.ignored] == ["notes.txt"]
    with pytest.raises(DataError, match="synth_00001.jpg: image has no mask synth_00001.png"):
        data.train_names(root, comp)


def test_the_organisers_validation_folders_are_listed(tmp_path: Path):
    comp = _comp(layout={"train_images": "img/train", "train_masks": "ann/train", "val_images": "img/val",
                         "val_masks": "ann/val", "test_images": "img/test"})
    root = _folder(tmp_path, comp, val_count=2)
    found = data.scan(root, comp)
    assert found.problems == []
    assert found.pairs == [f"synth_{i:05d}" for i in range(4)]
    assert found.val_pairs == ["synth_00004", "synth_00005"]
    assert found.val_masks["synth_00004"] == root / "ann" / "val" / "synth_00004.png"
    report = data.check_dataset(root, comp)
    assert report.ok and (report.train_pairs, report.val_pairs, report.test_images) == (4, 2, 1)
    images, masks = data.load_dataset(root, comp, found.val_pairs, SIDE, split="val")
    assert images.shape == (2, 3, SIDE, SIDE) and masks.shape == (2, SIDE, SIDE)
    with pytest.raises(DataError, match="no image named synth_00000"):
        data.load_dataset(root, comp, ["synth_00000"], SIDE, split="val")
    # a val name equal to a train name could not be told apart in a split list
    shutil.copy(root / "img" / "val" / "synth_00004.jpg", root / "img" / "val" / "synth_00000.jpg")
    shutil.copy(root / "ann" / "val" / "synth_00004.png", root / "ann" / "val" / "synth_00000.png")
    (problem,) = data.scan(root, comp).problems
    assert problem.kind == "duplicate" and problem.path == "img/val/synth_00000.jpg"
    assert "same name as the train image synth_00000.jpg" in problem.message
    with pytest.raises(DataError, match="img/val/synth_00000.jpg"):
        data.train_names(root, comp)


# ---------------------------------------------------------------------------- checks read like the reader


TIFF_LAYOUT = {"image_suffixes": [".tif"], "mask_suffix": ".tif"}


def test_four_band_tiffs_and_tiff_masks_pass_for_four_channels(tmp_path: Path):
    comp = _comp(channels=4, layout=TIFF_LAYOUT)
    root = _folder(tmp_path, comp, channels=4)
    report = data.check_dataset(root, comp)
    assert report.ok, [str(p) for p in report.problems]
    assert report.train_pairs == 4 and report.presence_share == [1.0, 1.0]
    images, masks = data.load_dataset(root, comp, data.train_names(root, comp), SIDE)
    assert images.shape == (4, 4, SIDE, SIDE) and set(np.unique(masks.numpy())) == {0, 1}


def test_a_band_count_other_than_the_profiles_channels_is_reported(tmp_path: Path):
    root = _folder(tmp_path, _comp(channels=4, layout=TIFF_LAYOUT), channels=4)
    kinds = _kinds(data.check_dataset(root, _comp(channels=3, layout=TIFF_LAYOUT)).problems)
    assert set(kinds) == {"image_bands"} and len(kinds["image_bands"]) == 5  # 4 train, 1 test
    assert kinds["image_bands"][0] == ("train/images/synth_00000.tif: the image has 4 bands, but the competition "
                                       "takes 3 channels (its profile's channels)")


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_a_sixteen_bit_image_needs_pixel_max(tmp_path: Path, suffix):
    comp = _comp(channels=1, layout={"image_suffixes": [suffix]})
    root = _folder(tmp_path, comp, channels=1)
    deep = np.full((SIDE, SIDE), 4000, np.uint16)
    path = root / "train" / "images" / f"synth_00002{suffix}"
    path.unlink()
    if suffix == ".png":
        Image.fromarray(deep).save(path)
    else:
        write_image(path, deep)
    for shallow in (False, True):
        (problem,) = data.check_dataset(root, comp, deep=not shallow).problems
        assert problem.kind == "image_depth" and problem.path == f"train/images/synth_00002{suffix}"
        assert "16-bit image" in problem.message and "set pixel_max in the competition profile" in problem.message
    assert data.check_dataset(root, _comp(channels=1, pixel_max=4095, layout={"image_suffixes": [suffix]})).ok


def test_masks_are_decoded_through_the_value_map(tmp_path: Path):
    comp = _comp(masks={"values": {0: 0, 255: 1}, "mode": "L"})
    root = _folder(tmp_path, comp)
    mask = root / "train" / "masks" / "synth_00003.png"
    assert set(np.unique(np.asarray(Image.open(mask)))) == {0, 255}  # stored as the organisers store them
    report = data.check_dataset(root, comp)
    assert report.ok and report.pixel_share == [0.5, 0.5]
    stray = np.asarray(Image.open(mask)).copy()
    stray[0, 0] = 7
    write_stored_mask(mask, stray, "L")
    (problem,) = data.check_dataset(root, comp).problems
    assert problem.kind == "bad_class" and problem.path == "train/masks/synth_00003.png"
    assert problem.message == "mask value 7 not in the competition's masks.values (0, 255)"
    with pytest.raises(DataError, match="synth_00003.png: mask value 7 not in"):
        data.load_dataset(root, comp, data.train_names(root, comp), SIDE)
