import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_overrides
from PIL import Image
from typer.testing import CliRunner

from cpx.cli import create_app
from cpx.kernel.errors import ConfigError, SubmissionError
from cpx.runs.ledger import Ledger
from cpx.submit.package import PackageRequest, package
from cpx.submit.solution import check_standalone, foreign_imports
from cpx.submit.zipcheck import check_submission, check_zip, list_test_images
from cpx.train.run import TrainRequest, train


@pytest.fixture
def trained(trained_unet):
    return trained_unet


@pytest.fixture
def run_id(unet_run):
    return unet_run


@pytest.fixture
def test_dir(trained):
    return trained[2] / "test" / "images"


def _package(ws, host, **kw):
    kw.setdefault("name", "v1")
    return package(PackageRequest(**kw), ws, host)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_package_writes_a_verified_zip_and_records_it(run_id, cpx_workspace, cpx_host, test_dir, trained):
    result = _package(cpx_workspace, cpx_host, run=run_id)
    zpath = Path(result.zip_path)
    assert zpath.parent == cpx_workspace.submissions_dir
    # named after the competition's metric and the validation score of what it holds
    assert re.fullmatch(r"submission-v1_fscore\d\.\d{4}\.zip", zpath.name)
    assert zpath.name == f"submission-v1_fscore{trained[1].best_val_score:.4f}.zip"
    # nothing but the zip: no temp files left over
    assert [p.name for p in cpx_workspace.submissions_dir.iterdir()] == [zpath.name]

    stems = sorted(p.stem for p in test_dir.iterdir())
    with zipfile.ZipFile(zpath) as zf:
        names = zf.namelist()
        assert sorted(n for n in names if n.startswith("masks/")) == [f"masks/{s}.png" for s in stems]
        assert {"solution/run.py", "solution/ckpt.pth", "solution/requirements.txt", "solution/model.json",
                "solution/unet_arch.py", "manifest.json"} <= set(names)
        for stem in stems:
            with Image.open(io.BytesIO(zf.read(f"masks/{stem}.png"))) as img:
                assert img.mode == "P" and img.size == Image.open(test_dir / f"{stem}.jpg").size
                assert img.getpalette()[:6] == [0, 0, 0, 204, 0, 0]
                assert np.asarray(img).max() < 19
        manifest = json.loads(zf.read("manifest.json"))
        assert set(manifest["files"]) == set(names) - {"manifest.json"}
        for name, digest in manifest["files"].items():
            assert _sha(zf.read(name)) == digest, name
        ckpt = torch.load(io.BytesIO(zf.read("solution/ckpt.pth")), weights_only=True)
        reqs = zf.read("solution/requirements.txt").decode()
        arch = zf.read("solution/unet_arch.py").decode()
    assert manifest["run_id"] == run_id and manifest["params"] == result.params
    assert manifest["tta"] == [] and manifest["cpx_version"] and manifest["config"]["model"]["name"] == "unet"
    assert set(ckpt) == {"state_dict"}
    from cpx_plugins.models.unet_arch import build_unet

    model = build_unet(num_classes=19, base_channels=4, depth=2)
    model.load_state_dict(ckpt["state_dict"])  # strict: every key fits
    assert sum(p.numel() for p in model.parameters()) == result.params
    # ranges pip can resolve on the organisers' machine, not this machine's exact builds
    assert reqs.split() == ["torch>=2.2,<3", "numpy>=1.24", "pillow>=10"]
    assert foreign_imports(arch) == []

    assert result.solution_images == 4 and result.solution_exact is True and result.check.ok
    with Ledger(cpx_workspace.ledger_path) as ledger:
        row = ledger.get_submission("v1")
    assert row["run_id"] == run_id and row["zip_path"] == str(zpath) and row["tta"] == "none"
    assert row["zip_sha256"] == _sha(zpath.read_bytes()) and row["size_bytes"] == zpath.stat().st_size
    assert row["val_score"] == pytest.approx(trained[1].best_val_score) and row["checkpoint"] == "best"

    # reusing the name is refused and leaves the zip alone
    before = zpath.read_bytes()
    with pytest.raises(SubmissionError, match="'v1' is already recorded"):
        _package(cpx_workspace, cpx_host, run=run_id)
    assert zpath.read_bytes() == before and len(list(cpx_workspace.submissions_dir.iterdir())) == 1

    # the same verification from the command line: green summary, exit 0
    out = CliRunner().invoke(create_app(cpx_host), ["package", "--check", str(zpath)])
    assert out.exit_code == 0, out.output
    assert "ok" in out.output and "4 masks for 4 test images" in out.output

    # the solution, run by hand on every test image from a folder extracted from the zip
    tmp = cpx_workspace.root / "unzipped"
    with zipfile.ZipFile(zpath) as zf:
        zf.extractall(tmp)
    shutil.move(tmp / "solution" / "ckpt.pth", tmp / "weights.pth")  # --weights is honoured
    proc = subprocess.run([sys.executable, str(tmp / "solution" / "run.py"), "--input", str(test_dir),
                           "--output", str(tmp / "out"), "--weights", str(tmp / "weights.pth")],
                          cwd=tmp, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for stem in stems:
        mine = np.asarray(Image.open(tmp / "out" / f"{stem}.png"))
        assert Image.open(tmp / "out" / f"{stem}.png").mode == "P"
        assert np.array_equal(mine, np.asarray(Image.open(tmp / "masks" / f"{stem}.png"))), stem

    # the organisers' interface: one image in, one mask out, run from the unzipped folder
    one = test_dir / f"{stems[0]}.jpg"
    shutil.copy2(one, tmp / "one.jpg")
    shutil.move(tmp / "weights.pth", tmp / "solution" / "ckpt.pth")
    proc = subprocess.run([sys.executable, "solution/run.py", "--input", "one.jpg", "--output", "one.png"],
                          cwd=tmp, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    with Image.open(tmp / "one.png") as img:
        assert img.mode == "P" and img.size == Image.open(one).size
        assert np.array_equal(np.asarray(img), np.asarray(Image.open(tmp / "masks" / f"{stems[0]}.png")))
    proc = subprocess.run([sys.executable, "solution/run.py", "--input", "missing.jpg", "--output", "x.png"],
                          cwd=tmp, capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.strip() == "--input missing.jpg: no such file or folder"


def test_a_zip_file_with_the_name_is_refused_too(run_id, cpx_workspace, cpx_host):
    cpx_workspace.submissions_dir.mkdir()
    stray = cpx_workspace.submissions_dir / "submission-v9_fscore0.1234.zip"
    stray.write_bytes(b"made elsewhere")
    with pytest.raises(SubmissionError, match="already exists"):
        _package(cpx_workspace, cpx_host, run=run_id, name="v9")
    assert stray.read_bytes() == b"made elsewhere"
    with pytest.raises(SubmissionError, match="--name"):
        _package(cpx_workspace, cpx_host, run=run_id, name="../evil")


def test_a_solution_that_does_not_reproduce_the_masks_leaves_nothing(run_id, cpx_workspace, cpx_host,
                                                                     monkeypatch, test_dir):
    import cpx.submit.solution

    # a runner that gets one image wrong (the last one) by predicting background there
    last = sorted(p.stem for p in test_dir.iterdir())[-1]
    line = "        for (_, mask_path), mask in zip(chunk, masks):\n"
    broken = cpx.submit.solution.RUN_PY.replace(
        line, line + f"            mask = mask * 0 if mask_path.stem == {last!r} else mask\n")
    assert broken != cpx.submit.solution.RUN_PY
    monkeypatch.setattr(cpx.submit.solution, "RUN_PY", broken)
    with pytest.raises(SubmissionError, match=rf"does not reproduce the packaged masks: 1 of 4 differ \(first {last}"):
        _package(cpx_workspace, cpx_host, run=run_id, name="bad")
    assert not any(cpx_workspace.submissions_dir.iterdir())
    with Ledger(cpx_workspace.ledger_path) as ledger:
        assert ledger.list_submissions() == []


def test_a_tta_package_holds_exactly_the_masks_its_run_py_writes(run_id, cpx_workspace, cpx_host, test_dir):
    result = _package(cpx_workspace, cpx_host, run=run_id, name="flip", tta=("flip", "scale"))
    # the self-check compared every packaged mask with what run.py writes, to the pixel
    assert result.tta == ["flip", "scale"] and result.solution_images == 4
    assert result.solution_exact is True and result.solution_agreement == 1.0
    with zipfile.ZipFile(result.zip_path) as zf:
        assert json.loads(zf.read("manifest.json"))["tta"] == ["flip", "scale"]
        config = json.loads(zf.read("solution/model.json"))
    assert config["tta"] == ["flip", "scale"] and config["scales"] == [0.75, 1.0, 1.25]
    assert config["flip_permutation"][4:10] == [5, 4, 7, 6, 9, 8]
    with Ledger(cpx_workspace.ledger_path) as ledger:
        assert ledger.get_submission("flip")["tta"] == "flip,scale"


def test_a_model_without_standalone_source_gets_a_clear_error(cpx_workspace, cpx_host, tiny_model,
                                                               cpx_synthetic):
    run = train(TrainRequest(recipe="msf-lmsa", overrides=tiny_overrides(**{"data.path": str(cpx_synthetic), "data.image_size": 32,
                                                                             "train.epochs": 1})),
                cpx_workspace, cpx_host)
    with pytest.raises(SubmissionError, match="no standalone source"):
        _package(cpx_workspace, cpx_host, run=run.run_id)
    assert not cpx_workspace.submissions_dir.exists() or not any(cpx_workspace.submissions_dir.iterdir())


def test_arch_files_may_import_only_torch_numpy_pillow(tmp_path):
    ok = "import math\nimport torch\nfrom PIL import Image\nimport numpy as np\ndef build(): pass\n"
    assert foreign_imports(ok) == []
    assert foreign_imports("import cpx.data.dataset\nfrom . import x\nimport timm\n") == ["cpx.data.dataset", ".", "timm"]
    path = tmp_path / "arch.py"
    path.write_text(ok)
    with pytest.raises(SubmissionError, match="no top-level make"):
        check_standalone(ok, path, "make")
    with pytest.raises(SubmissionError, match="imports timm"):
        check_standalone("import timm\ndef build(): pass\n", path, "build")


# --------------------------------------------------------------------------------------------
# --check on broken zips


def _png(arr, mode="P") -> bytes:
    buf = io.BytesIO()
    img = Image.fromarray(np.asarray(arr, dtype=np.uint8))
    img = img.convert(mode) if mode != "L" else img
    img.save(buf, format="PNG")
    return buf.getvalue()


def _mask(value=1, size=64) -> bytes:
    img = Image.frombytes("P", (size, size), bytes([value]) * size * size)
    img.putpalette([0] * 768)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _zip(path: Path, files: dict) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def _good_files(stems) -> dict:
    state = {"conv.weight": torch.zeros(4, 3, 3, 3), "conv.bias": torch.zeros(4)}
    buf = io.BytesIO()
    torch.save({"state_dict": state}, buf)
    files = {f"masks/{s}.png": _mask(1) for s in stems}
    files.update({"solution/run.py": "# --input --output --weights\n", "solution/ckpt.pth": buf.getvalue(),
                  "solution/requirements.txt": "torch\n"})
    return files


def _kinds(report):
    return sorted({p.kind for p in report.problems})


def test_check_reports_every_problem_of_a_hand_made_zip(cpx_workspace, cpx_host, cpx_synthetic):
    comp = cpx_host.competition("celebamask-mini")
    images = list_test_images(cpx_synthetic / "test" / "images", comp)
    stems = sorted(images)
    good = _zip(cpx_workspace.root / "good.zip", _good_files(stems))
    report = check_zip(good, comp, test_images=images)
    assert report.ok, report.problems
    assert report.masks == 4 and report.test_images == 4 and report.params == 4 * 27 + 4

    files = _good_files(stems)
    del files[f"masks/{stems[0]}.png"]                        # missing mask
    files[f"masks/{stems[1]}.png"] = _png(np.zeros((64, 64, 3)), "RGB")  # RGB mask
    files[f"masks/{stems[2]}.png"] = _mask(25)                # value out of range
    files[f"masks/{stems[3]}.png"] = _mask(1, size=32)        # wrong size
    files["masks/stranger.png"] = _mask(1)                    # no such test image
    files["__MACOSX/masks/._x.png"] = b"junk"
    files["../evil.png"] = _mask(1)
    files["/etc/abs.png"] = _mask(1)
    del files["solution/ckpt.pth"]
    bad = _zip(cpx_workspace.root / "bad.zip", files)
    report = check_zip(bad, comp, test_images=images)
    assert _kinds(report) == sorted(["missing_mask", "mask_channels", "bad_class", "mask_size", "extra_mask",
                                     "macosx", "parent_path", "absolute_path", "no_weights"])
    messages = "\n".join(map(str, report.problems))
    assert f"masks/{stems[0]}.png: missing" in messages and "mask has 3 channels (RGB)" in messages
    assert f"masks/{stems[2]}.png: class id 25 outside 0..18" in messages
    assert f"masks/{stems[3]}.png: prediction is 32x32 but the test image is 64x64" in messages

    # the command line lists each problem and exits 1
    out = CliRunner().invoke(create_app(cpx_host), ["package", "--check", str(bad), "--test",
                                                    str(cpx_synthetic / "test" / "images"),
                                                    "--competition", "celebamask-mini"])
    assert out.exit_code == 1
    for needle in ("9 problems", "missing", "3 channels (RGB)", "class id 25", "__MACOSX", "../evil.png", "ckpt.pth"):
        assert needle in out.output, needle


def test_check_sees_through_a_nested_folder_and_checks_the_weights(cpx_workspace, cpx_host, cpx_synthetic):
    comp = cpx_host.competition("celebamask-mini")
    images = list_test_images(cpx_synthetic / "test" / "images", comp)
    files = _good_files(sorted(images))
    buf = io.BytesIO()
    torch.save({"weights": {}}, buf)
    files["solution/ckpt.pth"] = buf.getvalue()
    files["solution/run.py"] = "print('hi')\n"
    del files["solution/requirements.txt"]
    nested = _zip(cpx_workspace.root / "nested.zip", {f"sub/{k}": v for k, v in files.items()})
    report = check_zip(nested, comp, test_images=images)
    assert _kinds(report) == ["nested_top_folder", "no_requirements", "no_weights_key", "runner_arguments"]
    assert report.masks == 4  # the masks inside the folder were still checked


def test_check_counts_parameters_against_the_limit(cpx_workspace, cpx_host, cpx_synthetic):
    comp = cpx_host.competition("celebamask-mini").model_copy(update={"max_params": 100})
    images = list_test_images(cpx_synthetic / "test" / "images", comp)
    report = check_zip(_zip(cpx_workspace.root / "big.zip", _good_files(sorted(images))), comp, test_images=images)
    assert _kinds(report) == ["params"] and "requires fewer than 100" in str(report.problems[0])


def test_check_without_test_images_says_what_it_could_not_check(cpx_workspace, cpx_host):
    path = _zip(cpx_workspace.root / "s.zip", _good_files(["a", "b"]))
    # no manifest, no ledger, no cpx.yaml: with several competitions registered, it asks
    with pytest.raises(ConfigError, match="--competition: choose one of celebamask-mini"):
        check_submission(path, cpx_workspace, cpx_host)
    report = check_submission(path, cpx_workspace, cpx_host, competition="celebamask-mini")
    assert report.ok and report.test_images is None and report.masks == 2
    assert any("--test" in n for n in report.notes)
    empty = check_zip(_zip(cpx_workspace.root / "e.zip", {}), cpx_host.competition("celebamask-mini"))
    assert _kinds(empty) == ["empty_zip", "no_masks", "no_solution"]
    not_zip = cpx_workspace.root / "x.zip"
    not_zip.write_bytes(b"not a zip")
    assert _kinds(check_zip(not_zip, cpx_host.competition("celebamask-mini"))) == ["not_a_zip"]


def test_ensembles_are_refused_where_the_rules_forbid_them(cpx_workspace, cpx_host):
    from cpx.kernel.errors import RuleViolation

    with Ledger(cpx_workspace.ledger_path) as ledger:
        ens = ledger.add_run(kind="ensemble", status="completed", competition="celebamask-mini",
                             members=[{"run": "a", "weight": 1.0}, {"run": "b", "weight": 1.0}])
    with pytest.raises(RuleViolation, match="forbids ensembles"):
        _package(cpx_workspace, cpx_host, run=ens["id"])
    # allowed on purpose, it still cannot ship: no standalone solution for ensembles yet
    with pytest.raises(SubmissionError, match="ensemble"):
        _package(cpx_workspace, cpx_host, run=ens["id"], allow_rule_break=True)
    assert not cpx_workspace.submissions_dir.exists()
