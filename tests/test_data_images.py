"""One image reader and one mask reader, with one set of rules, for every command."""

import io

import numpy as np
import pytest
from PIL import Image

from cpx.cli import main
from cpx.data import check_dataset, read_mask, read_rgb, write_dataset, write_mask
from cpx.data.images import BadFile
from cpx.eval.validate import score_folders
from cpx.kernel.errors import DataError

RGB = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)


@pytest.fixture
def comp(cpx_host):
    # unlike conftest's: the profile as registered, since the data layer needs no metric or
    # submission format bound
    return cpx_host.competitions.get("celebamask-mini").target


def _saved(tmp_path, image: Image.Image, name: str, **kw):
    path = tmp_path / name
    image.save(path, **kw)
    return path


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "CMYK", "1"])
def test_eight_bit_modes_convert_as_pillow_does(tmp_path, mode):
    image = Image.fromarray(RGB).convert(mode)
    path = _saved(tmp_path, image, "x.png" if mode != "CMYK" else "x.jpg", **({"quality": 100} if mode == "CMYK" else {}))
    arr, size = read_rgb(path)
    assert arr.shape == (6, 5, 3) and arr.dtype == np.uint8 and size == (6, 5)
    with Image.open(path) as reopened:
        assert np.array_equal(arr, np.asarray(reopened.convert("RGB")))


def test_sixteen_bit_grey_keeps_its_top_byte(tmp_path):
    values = np.array([[0, 255, 256, 65535]], dtype=np.uint16)
    path = _saved(tmp_path, Image.fromarray(values), "deep.png")
    arr, _ = read_rgb(path)
    # Pillow's own convert("RGB") clips 256 and 65535 to 255, and 255 stays 255: a wrong picture
    assert arr[0, :, 0].tolist() == [0, 0, 1, 255] and (arr[..., 0] == arr[..., 2]).all()


def test_float_images_are_refused_in_one_line(tmp_path):
    path = _saved(tmp_path, Image.fromarray(np.zeros((4, 4), np.float32), mode="F"), "f.tif")
    with pytest.raises(BadFile, match="float32 pixels; cpx reads 8- and 16-bit integer images"):
        read_rgb(path)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow warns below its error limit
def test_the_decompression_bomb_limit_is_one_clear_line_everywhere(tmp_path, monkeypatch, comp, capsys):
    data = tmp_path / "data"
    write_dataset(data, comp, comp.synthesize(4, 64, 0), test_count=1)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1500)  # 64 x 64 = 4096 > 2 x 1500: an error
    image = next((data / "train" / "images").iterdir())
    with pytest.raises(BadFile, match="too large to open safely"):
        read_rgb(image)
    report = check_dataset(data, comp)
    assert any(p.kind == "too_large" for p in report.problems)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2500)  # 4096 < 2 x 2500: Pillow only warns; still refused
    with pytest.raises(DataError, match="too large"):
        read_mask(next((data / "train" / "masks").iterdir()))
    assert main(["data", "check", str(data)]) != 0
    out = capsys.readouterr()
    assert "too large to open safely" in out.out + out.err
    assert "DecompressionBomb" not in out.out + out.err and "Traceback" not in out.err


def test_a_jpeg_mask_under_a_png_name_is_refused_by_every_reader(tmp_path, comp):
    data = tmp_path / "data"
    write_dataset(data, comp, comp.synthesize(5, 32, 0), test_count=1)
    mask = sorted((data / "train" / "masks").iterdir())[0]
    ids = np.asarray(Image.open(mask))
    buf = io.BytesIO()
    Image.fromarray(ids * 10).convert("L").save(buf, format="JPEG")
    mask.write_bytes(buf.getvalue())
    report = check_dataset(data, comp)
    assert [p.kind for p in report.problems] == ["mask_format"]
    assert "stored as JPEG, not PNG" in report.problems[0].message
    with pytest.raises(DataError, match="stored as JPEG"):
        read_mask(mask)
    scored = score_folders(data / "train" / "masks", data / "train" / "masks", comp)
    assert any("stored as JPEG" in p for p in scored.problems)


def test_an_exif_rotation_tag_is_a_warning_not_a_problem(tmp_path, comp, capsys):
    data = tmp_path / "data"
    write_dataset(data, comp, comp.synthesize(4, 32, 0), test_count=1)
    image = sorted((data / "train" / "images").iterdir())[0]
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when shown
    with Image.open(image) as img:
        img.load()
        img.save(image, exif=exif, quality=95)
    report = check_dataset(data, comp)
    assert report.ok and [w.kind for w in report.warnings] == ["exif_rotation"]
    arr, size = read_rgb(image)
    assert size == (32, 32)  # as stored: the tag is not applied
    assert main(["data", "check", str(data)]) == 0
    assert "EXIF orientation tag 6" in capsys.readouterr().out


def test_mask_rules_are_the_same_for_training_and_scoring(tmp_path, comp):
    gt = tmp_path / "gt"
    gt.mkdir()
    write_mask(gt / "a.png", np.zeros((4, 4), np.uint8), comp)
    pred = tmp_path / "pred"
    pred.mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(pred / "a.png")
    with pytest.raises(DataError, match="mask has 3 channels") as train_side:
        read_mask(pred / "a.png")
    (problem,) = score_folders(pred, gt, comp).problems
    assert problem == "a.png: " + str(train_side.value).split(": ", 1)[1]
