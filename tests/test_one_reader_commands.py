"""Issue 23, command by command: a folder and a dangling link named like images, and an image
over Pillow's pixel limit, give one line and a non-zero exit in every command that meets them
(train, validate, predict, package), and nothing is written to submissions/."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from cpx.cli import main
from cpx.data import write_dataset


def cli(capsys, *argv) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = main(list(argv))
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, err


def _bad_entries(folder: Path, masks: Path | None = None) -> None:
    """A directory zz_folder.jpg and a dangling link zz_link.jpg (with masks when ``masks``)."""
    (folder / "zz_folder.jpg").mkdir()
    os.symlink("nowhere.jpg", folder / "zz_link.jpg")
    if masks is not None:
        first = min(masks.glob("*.png"))
        for stem in ("zz_folder", "zz_link"):
            shutil.copy(first, masks / f"{stem}.png")


@pytest.fixture
def data_with_bad_entries(tmp_path, cpx_host) -> Path:
    comp = cpx_host.competition("celebamask-mini")
    root = tmp_path / "bad"
    write_dataset(root, comp, comp.synthesize(14, 32, 0), test_count=3)
    _bad_entries(root / "train" / "images", root / "train" / "masks")
    _bad_entries(root / "test" / "images")
    return root


def _one_line_naming_both(code, err, what="zz_folder.jpg"):
    assert code != 0 and len(err) == 1, err
    assert "2 problems" in err[0] and what in err[0], err[0]


def test_train_stops_on_the_listing_problems(capsys, data_with_bad_entries, cpx_workspace):
    code, err = cli(capsys, "train", "unet", "--data", str(data_with_bad_entries), "--epochs", "1",
                    "--competition", "celebamask-mini")
    _one_line_naming_both(code, err)
    assert not (cpx_workspace.experiments_dir / "runs").exists()


def test_validate_predict_and_package_stop_on_them_too(capsys, unet_run, data_with_bad_entries, tmp_path,
                                                        cpx_workspace):
    code, err = cli(capsys, "validate", unet_run, "--data", str(data_with_bad_entries))
    _one_line_naming_both(code, err)
    test_dir = data_with_bad_entries / "test" / "images"
    code, err = cli(capsys, "predict", unet_run, "--input", str(test_dir), "--output", str(tmp_path / "p"))
    assert code != 0 and "zz_folder.jpg" in "\n".join(err) and not (tmp_path / "p").exists()
    # predict is meant to go on with --skip-bad: a warning names what it skipped
    code, err = cli(capsys, "predict", unet_run, "--input", str(test_dir), "--output", str(tmp_path / "p"),
                    "--skip-bad")
    assert code == 0 and len(list((tmp_path / "p").iterdir())) == 3
    code, err = cli(capsys, "package", unet_run, "--name", "bad", "--test", str(test_dir))
    _one_line_naming_both(code, err)
    assert not any((cpx_workspace.root / "submissions").glob("*.zip"))


def test_an_image_over_the_pixel_limit_is_one_line_in_package(capsys, unet_run, tmp_path, monkeypatch,
                                                               cpx_workspace):
    test_dir = tmp_path / "huge"
    test_dir.mkdir()
    Image.new("RGB", (300, 200)).save(test_dir / "big.jpg")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # 60,000 pixels is now a bomb
    code, err = cli(capsys, "package", unet_run, "--name", "huge", "--test", str(test_dir))
    assert code == 2 and len(err) == 1 and "big.jpg" in err[0] and "too large" in err[0], err
    assert not any((cpx_workspace.root / "submissions").glob("*.zip"))


