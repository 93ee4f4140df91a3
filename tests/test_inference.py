import numpy as np
import pytest
import torch
from conftest import tiny_overrides
from PIL import Image

from cpx.cli import main
from cpx.eval.predict import Member, Predictor, check_ensemble_allowed, parse_tta, predictor_for_run
from cpx.eval.predict_folder import predict_folder
from cpx.kernel.errors import ConfigError, DataError, RuleViolation
from cpx.runs.ledger import Ledger
from cpx.train.run import TrainRequest, train

L_EYE, R_EYE = 4, 5


class SidedEyes(torch.nn.Module):
    """Says "eye" where the red channel is bright: a left eye on the image's left half, a right
    eye on its right half. Mirroring the image therefore mirrors the mask and swaps the ids."""

    def __init__(self, num_classes=19):
        super().__init__()
        self.num_classes = num_classes
        self.seen = []

    def forward(self, x):
        self.seen.append(tuple(x.shape))
        b, _, h, w = x.shape
        out = torch.zeros(b, self.num_classes, h, w)
        out[:, 0] = 0.5
        red = x[:, 0]
        left = (torch.arange(w) < w / 2).float()
        out[:, L_EYE] = red * left * 2
        out[:, R_EYE] = red * (1 - left) * 2
        return out


class AlwaysLeft(torch.nn.Module):
    """Calls every bright pixel a left eye, wherever it is: not mirror-equivariant."""

    def forward(self, x):
        out = torch.zeros(x.shape[0], 19, *x.shape[-2:])
        out[:, 0] = 0.5
        out[:, L_EYE] = x[:, 0] * 2
        return out


def _image(h=16, w=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = torch.zeros(3, h, w, dtype=torch.uint8)
    img[0] = (torch.rand(h, w, generator=g) > 0.6).to(torch.uint8) * 255
    return img


def _swap_ids(mask, perm=None):
    """Left/right class ids exchanged (all pairs of the competition, or just the eyes)."""
    if perm is not None:
        return torch.tensor(perm)[mask.long()].to(mask.dtype)
    out = mask.clone()
    out[mask == L_EYE] = R_EYE
    out[mask == R_EYE] = L_EYE
    return out


def test_parse_tta():
    assert parse_tta("scale,flip") == ("flip", "scale")
    assert parse_tta(None) == () and parse_tta("none") == () and parse_tta("") == ()
    with pytest.raises(ConfigError, match="rotate"):
        parse_tta("flip,rotate")


def test_mirrored_image_gives_mirrored_mask_with_swapped_ids(comp):
    pred = Predictor([Member(SidedEyes(), 16)], comp)
    img = _image()
    a, b = pred.predict([img, img.flip(-1)])
    assert {L_EYE, R_EYE} <= set(a.unique().tolist())
    assert torch.equal(b, _swap_ids(a.flip(-1)))


def test_flip_tta_swaps_left_right_channels_back(comp):
    img = _image(seed=1)
    plain = Predictor([Member(SidedEyes(), 16)], comp).probs([img])[0]
    flipped = Predictor([Member(SidedEyes(), 16)], comp, tta=["flip"]).probs([img])[0]
    # the model is mirror-equivariant, so the flipped view agrees exactly once its
    # channels are swapped back; without the swap l_eye and r_eye would tie
    assert torch.allclose(plain, flipped, atol=1e-6)


def test_flip_tta_output_is_mirror_consistent_for_any_model(comp):
    perm = comp.flip_permutation()
    half = _image(16, 8, seed=2)
    symmetric = torch.cat([half, half.flip(-1)], dim=-1)
    assert torch.equal(symmetric, symmetric.flip(-1))
    torch.manual_seed(0)
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 19, 3, padding=1))
    for model in (AlwaysLeft(), conv):
        pred = Predictor([Member(model, 16)], comp, tta="flip")
        p_sym = pred.probs([symmetric])[0]
        assert torch.allclose(p_sym, p_sym.flip(-1)[perm], atol=1e-5)
        if model is conv:  # (AlwaysLeft ties l/r on bright pixels; argmax breaks ties one way)
            mask = p_sym.argmax(0)
            assert {8, 9} <= set(mask.unique().tolist())  # some left/right ids to swap
            assert torch.equal(mask, _swap_ids(mask.flip(-1), perm))
        # any image: the prediction of the mirror is the mirrored, swapped prediction
        img = _image(seed=3)
        p, q = pred.probs([img, img.flip(-1)])
        assert torch.allclose(q, p.flip(-1)[perm], atol=1e-5)
    # without the swap a left-only model cannot be mirror-consistent: TTA makes l/r tie
    p = Predictor([Member(AlwaysLeft(), 16)], comp, tta="flip").probs([symmetric])[0]
    bright = symmetric[0] > 0
    assert torch.allclose(p[L_EYE][bright], p[R_EYE][bright])


def test_scale_tta_runs_each_member_at_its_own_scaled_size(comp):
    a, b = SidedEyes(), SidedEyes()
    pred = Predictor([Member(a, 16), Member(b, 32)], comp, tta="flip,scale")
    img = _image(20, 30)
    out = pred.probs([img])
    assert out[0].shape == (19, 20, 30)
    assert sorted({s[-1] for s in a.seen}) == [12, 16, 20]
    assert sorted({s[-1] for s in b.seen}) == [24, 32, 40]
    assert len(a.seen) == 6  # 3 scales x (plain, flipped)
    assert torch.allclose(out[0].sum(0), torch.ones(20, 30), atol=1e-5)


class Constant(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = torch.as_tensor(logits, dtype=torch.float32)

    def forward(self, x):
        return self.logits.view(1, -1, 1, 1).expand(x.shape[0], -1, *x.shape[-2:]).clone()


def test_members_are_averaged_as_weighted_softmax(comp):
    l1 = torch.zeros(19)
    l1[1] = 3.0
    l2 = torch.zeros(19)
    l2[2] = 5.0
    pred = Predictor([Member(Constant(l1), 8, weight=3), Member(Constant(l2), 12, weight=1)], comp)
    p = pred.probs([torch.zeros(3, 10, 10, dtype=torch.uint8)])[0]
    expected = 0.75 * l1.softmax(0) + 0.25 * l2.softmax(0)
    assert torch.allclose(p[:, 4, 7], expected, atol=1e-6)
    assert p.dtype == torch.float32 and not p.requires_grad


def test_outputs_at_image_size_or_requested_size(comp):
    pred = Predictor([Member(SidedEyes(), 16)], comp)
    imgs = [_image(20, 30), _image(7, 9), _image(20, 30, seed=5)]
    masks = pred.predict(imgs)
    assert [tuple(m.shape) for m in masks] == [(20, 30), (7, 9), (20, 30)]
    assert all(m.dtype == torch.uint8 for m in masks)
    assert pred.predict(imgs[:1], sizes=[(5, 6)])[0].shape == (5, 6)
    with pytest.raises(DataError, match="uint8"):
        pred.predict([imgs[0].float()])


def _write_inputs(folder):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(24, 24), (24, 24), (24, 24), (18, 30)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"img{i}.jpg")
    Image.fromarray(rng.integers(0, 255, (10, 12, 3), dtype=np.uint8)).save(folder / "grey.png")
    good = (folder / "img0.jpg").read_bytes()
    (folder / "broken.jpg").write_bytes(good[: len(good) // 2])
    (folder / "notes.txt").write_text("not an image")


def test_predict_folder_reports_bad_files_and_writes_nothing(tmp_path, comp):
    _write_inputs(tmp_path / "in")
    pred = Predictor([Member(SidedEyes(), 16)], comp)
    with pytest.raises(DataError) as err:
        predict_folder(pred, tmp_path / "in", tmp_path / "out")
    assert "broken.jpg" in str(err.value) and "notes.txt" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_predict_folder_writes_palette_masks_batched_by_size(tmp_path, comp):
    _write_inputs(tmp_path / "in")
    model = SidedEyes()
    pred = Predictor([Member(model, 16)], comp)
    calls = []
    report = predict_folder(pred, tmp_path / "in", tmp_path / "out" / "masks", batch_size=2, skip_bad=True,
                            progress=lambda d, t: calls.append((d, t)))
    assert sorted(p.name for p in report.written) == ["grey.png", "img0.png", "img1.png", "img2.png", "img3.png"]
    assert sorted(p.name for p, _ in report.skipped) == ["broken.jpg", "notes.txt"]
    assert calls[-1] == (5, 5)
    # three 24x24 images at batch size 2: one batch of 2, then 1; every batch one size
    assert sorted(s[0] for s in model.seen) == [1, 1, 1, 2]
    for path in report.written:
        src = next((tmp_path / "in").glob(path.stem + ".*"))
        with Image.open(path) as m, Image.open(src) as i:
            assert m.mode == "P" and m.size == i.size
            assert m.getpalette()[:57] == [v for rgb in comp.palette for v in rgb]
            assert int(np.asarray(m).max()) < 19
    # no silent overwrite
    with pytest.raises(DataError, match="already exist"):
        predict_folder(pred, tmp_path / "in", tmp_path / "out" / "masks", skip_bad=True)
    again = predict_folder(pred, tmp_path / "in", tmp_path / "out" / "masks", skip_bad=True, overwrite=True)
    assert len(again.written) == 5


def _tiny_run(ws, host, name, **extra):
    over = tiny_overrides(**{"data.image_size": 32, "train.epochs": 1, **extra})
    return train(TrainRequest(recipe="msf-lmsa", overrides=over, name=name), ws, host)


def cli(capsys, *args):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_predict_cli_from_a_run_and_ensemble_refusal(cpx_workspace, cpx_host, tiny_model, cpx_synthetic, tmp_path,
                                                     capsys):
    a = _tiny_run(cpx_workspace, cpx_host, "a")
    pred = predictor_for_run("a", cpx_workspace, cpx_host, tta="flip")
    assert pred.tta == ("flip",) and pred.members[0].image_size == 32 and pred.members[0].run_id == a.run_id
    test_dir = cpx_synthetic / "test" / "images"
    code, out = cli(capsys, "predict", "a", "--input", test_dir, "--output", tmp_path / "o", "--tta", "flip,scale",
                    "--batch-size", "3")
    assert code == 0, out
    assert "wrote 4 mask(s)" in out and "tta flip,scale" in out
    written = sorted(p.stem for p in (tmp_path / "o").iterdir())
    assert written == sorted(p.stem for p in test_dir.iterdir())
    code, out = cli(capsys, "predict", "a", "--input", test_dir, "--output", tmp_path / "o")
    assert code == 2 and "--overwrite" in out and "Traceback" not in out

    import shutil

    mixed = tmp_path / "mixed"
    shutil.copytree(test_dir, mixed)
    (mixed / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    code, out = cli(capsys, "predict", "a", "--input", mixed, "--output", tmp_path / "m")
    assert code == 2 and "zz_broken.jpg" in out and "nothing was written" in out and "Traceback" not in out
    assert not (tmp_path / "m").exists()
    code, out = cli(capsys, "predict", "a", "--input", mixed, "--output", tmp_path / "m", "--skip-bad")
    assert code == 0 and "skipped" in out and "zz_broken.jpg" in out and len(list((tmp_path / "m").iterdir())) == 4

    with Ledger(cpx_workspace.ledger_path) as ledger:
        ledger.add_run(id="ens", kind="ensemble", status="completed", competition="celebamask-mini",
                       members=[{"run": a.run_id, "weight": 1, "checkpoint": "best"},
                                {"run": a.run_id, "weight": 2, "checkpoint": "last"}])
    code, out = cli(capsys, "predict", "ens", "--input", test_dir, "--output", tmp_path / "e")
    assert code == 2 and "forbids ensembles" in out and "--allow-rule-break" in out
    assert not (tmp_path / "e").exists()
    code, out = cli(capsys, "predict", "ens", "--input", test_dir, "--output", tmp_path / "e", "--allow-rule-break")
    assert code == 0, out
    assert "must not be submitted" in out and len(list((tmp_path / "e").iterdir())) == 4


def test_check_ensemble_allowed(comp):
    from cpx.data.competition import Rules

    row = {"id": "e1", "kind": "ensemble", "members": [{"run": "x"}, {"run": "y"}]}
    with pytest.raises(RuleViolation, match="forbids ensembles"):
        check_ensemble_allowed(row, comp, False)
    assert "must not be submitted" in check_ensemble_allowed(row, comp, True)
    assert check_ensemble_allowed({"id": "t", "kind": "train"}, comp, False) is None
    assert check_ensemble_allowed(row, comp.model_copy(update={"rules": Rules(ensembles_allowed=True)}), False) is None


def test_class_softmax_equals_softmax():
    from cpx.eval.predict import class_softmax

    logits = torch.randn(2, 7, 5, 6, generator=torch.Generator().manual_seed(0)) * 30
    torch.testing.assert_close(class_softmax(logits), logits.softmax(1))
    assert class_softmax(logits.double()).dtype == torch.float64  # other dtypes take torch's own


def test_a_members_views_merge_as_mean_logits_and_members_as_probabilities(comp):
    perm = torch.tensor(comp.flip_permutation())
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 19, 3, padding=1)
    other = Constant(torch.linspace(-1, 1, 19))
    img = _image(12, 12, seed=4)  # the members' own size: no resizing
    x = img[None].float() / 255
    with torch.no_grad():
        views = conv(x) + conv(x.flip(-1)).flip(-1)[:, perm]
    mine = (views / 2).softmax(1)[0]
    pred = Predictor([Member(conv, 12), Member(other, 12, weight=3)], comp, tta="flip")
    flat = torch.linspace(-1, 1, 19)  # its mirrored view swaps the left/right values
    expected = 0.25 * mine + 0.75 * ((flat + flat[perm]) / 2).softmax(0).view(19, 1, 1)
    torch.testing.assert_close(pred.probs([img])[0], expected, atol=1e-5, rtol=1e-5)
    masks = Predictor([Member(conv, 12)], comp, tta="flip").predict([img])[0]
    assert torch.equal(masks.long(), mine.argmax(0))


def test_views_of_a_model_with_forward_coarse_merge_before_one_resize(comp, cpx_host):
    torch.manual_seed(0)
    model = cpx_host.models.get("msf-lmsa").create({}, 19).eval()
    assert callable(model.forward_coarse)
    perm = torch.tensor(comp.flip_permutation())
    img = _image(40, 40, seed=5)
    x = torch.nn.functional.interpolate(img[None], size=(32, 32), mode="bilinear", align_corners=False,
                                        antialias=True).float() / 255
    with torch.no_grad():
        views = model(x) + model(x.flip(-1)).flip(-1)[:, perm]  # each view resized on its own
    expected = torch.nn.functional.interpolate(views / 2, size=(40, 40), mode="bilinear", align_corners=False)
    calls = []
    model.register_forward_hook(lambda m, i, o: calls.append("forward"))
    pred = Predictor([Member(model, 32)], comp, tta="flip")
    torch.testing.assert_close(pred.probs([img])[0], expected.softmax(1)[0], atol=1e-5, rtol=1e-4)
    assert calls == []  # both views went through forward_coarse


def test_a_non_square_image_is_letterboxed_in_each_view(comp, cpx_host):
    # 40 x 24 on a 32 canvas: 32 x 19 (aspect kept), padded right; the coarse map of the canvas
    # does not line up with the image, so each view takes forward and is cropped, then resized
    torch.manual_seed(0)
    model = cpx_host.models.get("msf-lmsa").create({}, 19).eval()
    perm = torch.tensor(comp.flip_permutation())
    img = _image(40, 24, seed=5)
    x = torch.nn.functional.interpolate(img[None], size=(32, 19), mode="bilinear", align_corners=False,
                                        antialias=True).float() / 255

    def view(t):
        logits = model(torch.nn.functional.pad(t, (0, 32 - 19, 0, 0)))[..., :32, :19]
        return torch.nn.functional.interpolate(logits, size=(40, 24), mode="bilinear", align_corners=False)

    with torch.no_grad():
        expected = (view(x) + view(x.flip(-1)).flip(-1)[:, perm]) / 2
    calls = []
    model.register_forward_hook(lambda m, i, o: calls.append(tuple(i[0].shape[-2:])))
    pred = Predictor([Member(model, 32)], comp, tta="flip")
    torch.testing.assert_close(pred.probs([img])[0], expected.softmax(1)[0], atol=1e-5, rtol=1e-4)
    assert calls == [(32, 32), (32, 32)]  # the canvas, once per view
