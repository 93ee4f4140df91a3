import json

import numpy as np
import pytest
from conftest import tiny_overrides
from PIL import Image
from typer.testing import CliRunner

from cpx.cli import create_app, main
from cpx.draw.curves import plot_history
from cpx.draw.figures import (
    ERROR_RGB,
    ImageRow,
    class_colors,
    colorize,
    error_overlay,
    plot_image_grid,
    plot_per_class,
    plot_per_class_comparison,
)
from cpx.draw.pictures import curves_for_runs
from cpx.eval.validate import validate_run
from cpx.kernel.errors import DataError, RunError
from cpx.runs.ledger import Ledger
from cpx.train.run import TrainRequest, train

PALETTE = ((0, 0, 0), (204, 0, 0), (76, 153, 0), (51, 51, 255))
NAMES = ("background", "skin", "nose", "eye")


def _png(path, min_size=(400, 300), min_colors=20):
    """Open a written PNG and check it is a real, non-blank picture; returns it as RGB array."""
    assert path.is_file(), path
    assert not list(path.parent.glob(f".{path.name}.*")), "a temp file was left behind"
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.mode in ("RGB", "RGBA")
        assert img.width >= min_size[0] and img.height >= min_size[1], img.size
        rgb = np.asarray(img.convert("RGB"))
    packed = rgb.reshape(-1, 3).astype(np.uint32) @ np.array([1 << 16, 1 << 8, 1], dtype=np.uint32)
    distinct = len(np.unique(packed))  # packing first: np.unique(axis=0) is many times slower
    assert distinct >= min_colors, f"{path.name}: only {distinct} colours"
    return rgb


def _has_color(rgb, color, at_least=50):
    return int(np.all(rgb == np.array(color, dtype=np.uint8), axis=-1).sum()) >= at_least


def _face(size=48, seed=0):
    rng = np.random.default_rng(seed)
    gt = np.zeros((size, size), np.uint8)
    gt[8:40, 10:38] = 1
    gt[20:30, 20:28] = 2
    gt[14:18, 14:20] = 3
    pred = gt.copy()
    pred[30:40, 10:20] = 0  # a chunk of skin missed
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    return image, gt, pred


# --- pure drawing -----------------------------------------------------------------------------


def test_colorize_and_error_overlay_paint_the_right_pixels():
    colors = class_colors(4, PALETTE)
    mask = np.array([[0, 1], [2, 3]], np.uint8)
    assert colorize(mask, colors).tolist() == [[[0, 0, 0], [204, 0, 0]], [[76, 153, 0], [51, 51, 255]]]
    with pytest.raises(DataError, match="class id 7"):
        colorize(np.array([[7]], np.uint8), colors)
    # classes past the palette still get distinct, non-grey colours
    more = class_colors(6, PALETTE)
    assert len({tuple(c) for c in more}) == 6

    image, gt, pred = _face()
    out = error_overlay(image.transpose(2, 0, 1), pred, gt)  # channels-first is accepted too
    wrong = pred != gt
    assert np.all(out[wrong] == ERROR_RGB)
    right = out[~wrong]
    assert np.all(right[:, 0] == right[:, 1]) and np.all(right[:, 1] == right[:, 2])  # dimmed grey
    assert right.max() <= 0.4 * 255 + 1
    with pytest.raises(DataError, match="same height and width"):
        error_overlay(image, pred[:10], gt)


def test_image_grid_png_shows_masks_errors_and_legend(tmp_path):
    colors = class_colors(4, PALETTE)
    rows = []
    for i in range(3):
        image, gt, pred = _face(seed=i)
        rows.append(ImageRow(name=f"img{i:02d}_" + "ab" * 15, image=image, gt=gt, pred=pred, score=0.5 + i / 10))
    path = plot_image_grid(rows, NAMES, colors, tmp_path / "grid.png", title="worst")
    rgb = _png(path, min_size=(1000, 800))
    # exact palette colours survive (masks are drawn with nearest-neighbour), and errors are red
    assert _has_color(rgb, PALETTE[1], at_least=2000)  # skin
    assert _has_color(rgb, PALETTE[2])  # nose
    assert _has_color(rgb, ERROR_RGB)
    with Image.open(path) as img:
        assert img.height > img.width * 0.8  # three rows of four square panels plus a legend
    with pytest.raises(DataError):
        plot_image_grid([], NAMES, colors, tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_per_class_chart_handles_absent_classes(tmp_path):
    f = [0.9, 0.8, float("nan"), 0.3]
    counts = [10, 10, 0, 4]
    path = plot_per_class(NAMES, f, counts, tmp_path / "pc.png", colors=class_colors(4, PALETTE), score=0.7,
                          title="per class")
    rgb = _png(path, min_size=(800, 250))
    assert _has_color(rgb, PALETTE[1], at_least=500) and _has_color(rgb, PALETTE[3], at_least=500)
    sorted_path = plot_per_class(NAMES, [0.1, None, 0.5, 0.2], counts, tmp_path / "sorted.png", sort=True)
    _png(sorted_path, min_size=(800, 250), min_colors=10)
    with pytest.raises(DataError, match="must match"):
        plot_per_class(NAMES, f[:3], counts, tmp_path / "bad.png")


def test_comparison_chart_and_multi_run_curves(tmp_path):
    path = plot_per_class_comparison(NAMES, [0.9, 0.5, None, 0.2], [0.8, 0.6, 0.4, 0.3], tmp_path / "cmp.png",
                                     labels=("A: one", "B: two"), scores=(0.61, 0.65), title="cmp")
    rgb = _png(path, min_size=(900, 300))
    assert _has_color(rgb, (0x1F, 0x77, 0xB4), at_least=500) and _has_color(rgb, (0xFF, 0x7F, 0x0E), at_least=500)

    def hist(n, scale):
        return [{"epoch": e, "train_loss": scale / e, "val_loss": 1.2 * scale / e if e % 2 else None,
                 "val_score": 0.4 + e / 100, "lr": 1e-3 / e} for e in range(1, n + 1)]

    curves = plot_history([("run-one", hist(6, 1.0)), ("run-two", hist(4, 1.5)), ("single", hist(1, 2.0))],
                          tmp_path / "curves.png")
    rgb = _png(curves, min_size=(1200, 400))
    assert _has_color(rgb, (0x2C, 0xA0, 0x2C), at_least=20)  # the third run's colour is drawn


# --- runs and commands ------------------------------------------------------------------------


def _train(ws, host, name, **overrides):
    return train(TrainRequest(recipe="msf-lmsa", overrides=tiny_overrides(**overrides), name=name), ws, host)


def _invoke(host, *args):
    result = CliRunner().invoke(create_app(host), list(args))
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def test_show_draws_the_worst_validation_images(cpx_workspace, cpx_host, tiny_model):
    # 40 images -> 4 validation images, so "the 3 worst" leaves one out
    run = _train(cpx_workspace, cpx_host, "first", **{"data.synthetic_count": 40})
    reference = validate_run(run.run_id, cpx_workspace, cpx_host, record=False)

    data = json.loads(_invoke(cpx_host, "show", "first", "--images", "3", "--json"))
    expected = sorted(reference.per_image.items(), key=lambda kv: (kv[1], kv[0]))[:3]
    assert [(w["name"], w["score"]) for w in data["worst"]] == [(n, pytest.approx(f)) for n, f in expected]
    assert data["score"] == pytest.approx(reference.scores.score) and data["metric"] == "fscore"
    assert data["images"] == 4
    grid, chart = run.run_dir / "show.png", run.run_dir / "per_class.png"
    assert data["grid"] == str(grid) and data["per_class_figure"] == str(chart)
    rgb = _png(grid, min_size=(1000, 900))
    assert _has_color(rgb, (204, 0, 0), at_least=500)  # skin, in the competition palette
    _png(chart, min_size=(800, 600))
    with Ledger(cpx_workspace.ledger_path) as ledger:
        assert len(ledger.list_validations(run.run_id)) == 1  # training's own; looking does not record

    out = _invoke(cpx_host, "show", "first", "--images", "2", "--output", "pics/worst.png")
    assert expected[0][0] in out and expected[1][0] in out and expected[2][0] not in out
    assert "pics/worst.png" in out.replace("\n", "")
    _png(cpx_workspace.root / "pics" / "worst.png", min_size=(1000, 600))
    _png(cpx_workspace.root / "pics" / "worst_per_class.png", min_size=(800, 600))

    only = json.loads(_invoke(cpx_host, "show", "first", "--per-class", "--output", "pc.png", "--json",
                              "--tta", "flip", "--checkpoint", "last"))
    assert only["grid"] is None and only["worst"] == []
    assert only["tta"] == ["flip"] and only["checkpoint"] == "last"
    _png(cpx_workspace.root / "pc.png", min_size=(800, 600))
    assert not (cpx_workspace.root / "pc_per_class.png").exists()

    bad = CliRunner().invoke(create_app(cpx_host), ["show", "first", "--images", "-1"])
    assert bad.exit_code != 0


def test_compare_and_curves_of_several_runs(cpx_workspace, cpx_host, tiny_model, capsys):
    # one set of trained runs serves both commands: training is what costs time here
    a = _train(cpx_workspace, cpx_host, "base")
    b = _train(cpx_workspace, cpx_host, "reseeded", **{"train.seed": 7, "train.epochs": 3})
    c = _train(cpx_workspace, cpx_host, "resplit", **{"data.split_seed": 3, "train.epochs": 1})

    data = json.loads(_invoke(cpx_host, "compare", "base", "reseeded", "--json"))
    fa = validate_run(a.run_id, cpx_workspace, cpx_host, record=False)
    fb = validate_run(b.run_id, cpx_workspace, cpx_host, record=False)
    assert data["a"]["score"] == pytest.approx(fa.scores.score) and data["metric"] == "fscore"
    assert data["b"]["score"] == pytest.approx(fb.scores.score)
    assert data["same_val_list"] and data["warning"] is None
    diffs = [c_["diff"] for c_ in data["classes"] if c_["diff"] is not None]
    assert diffs == sorted(diffs, reverse=True)
    by_name = {c_["name"]: c_ for c_ in data["classes"]}
    skin = cpx_host.competition("celebamask-mini").classes.index("skin")
    assert by_name["skin"]["score_a"] == pytest.approx(fa.scores.per_class[skin])
    assert by_name["skin"]["score_b"] == pytest.approx(fb.scores.per_class[skin])
    figure = cpx_workspace.experiments_dir / "compare" / f"{a.run_id}__vs__{b.run_id}.png"
    assert data["figure"] == str(figure)
    _png(figure, min_size=(900, 800))

    result = CliRunner().invoke(create_app(cpx_host), ["compare", "base", "resplit", "-o", "cmp.png"])
    assert result.exit_code == 0, result.output
    assert "different lists" in result.output and "B − A" in result.output and "score" in result.output
    _png(cpx_workspace.root / "cmp.png", min_size=(900, 800))

    same = CliRunner().invoke(create_app(cpx_host), ["compare", "base", a.run_id])
    assert same.exit_code != 0 and isinstance(same.exception, RunError)

    # curves: one run (its own curves.png, rewritten), several (one PNG), bad history
    (a.run_dir / "curves.png").unlink()
    out = _invoke(cpx_host, "curves", "base")
    _png(a.run_dir / "curves.png", min_size=(1200, 400))
    assert str(a.run_dir / "curves.png") in out.replace("\n", "")
    _invoke(cpx_host, "curves", "base", "reseeded", "resplit", "--output", "all.png")
    rgb = _png(cpx_workspace.root / "all.png", min_size=(1200, 400))
    assert _has_color(rgb, (0x2C, 0xA0, 0x2C), at_least=20)  # the third run's colour
    path = curves_for_runs(["base", "reseeded"], cpx_workspace, cpx_host)
    assert path.parent == cpx_workspace.experiments_dir / "compare"
    _png(path, min_size=(1200, 400))
    (c.run_dir / "history.json").write_text("{not json")
    with pytest.raises(RunError, match="history.json"):
        curves_for_runs(["resplit"], cpx_workspace, cpx_host)
    with pytest.raises(RunError, match="same run"):
        curves_for_runs(["base", a.run_id], cpx_workspace, cpx_host)
    assert main(["curves", "resplit"]) == 2  # a domain error: one line, exit code 2
    assert "history.json" in capsys.readouterr().err
