"""The public API (``import cpx``): what a notebook user calls, with shapes and errors."""

import importlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cpx
from cpx.cli import main
from cpx.kernel.errors import ConfigError, DataError, RunError, UnknownComponent
from cpx.kernel.workspace import Workspace
from cpx.runs.ledger import Ledger


def test_all_lists_the_documented_functions():
    assert set(cpx.__all__) == {"__version__", "Run", "create_model", "leaderboard", "open_run", "package",
                                "predict", "score", "train"}
    for name in cpx.__all__[1:]:
        assert getattr(cpx, name).__doc__, name
    importlib.import_module("cpx.train.loop")  # the training package stays importable, and callable
    assert callable(cpx.train) and cpx.train.loop.Trainer and "cpx.api.train" in cpx.train.__call__.__doc__


README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = "<!-- the notebook example: tests/test_api.py::test_the_readme_notebook_example_runs"


def readme_notebook_example() -> str:
    """The Python block that follows the marker comment in README.md, as it is."""
    text = README.read_text()
    assert MARKER in text, "README.md lost its notebook example's marker"
    block = re.search(r"```python\n(.*?)```", text[text.index(MARKER):], re.S)
    return block.group(1)


@pytest.mark.timeout(900)
def test_the_readme_notebook_example_runs(cpx_workspace, capsys):
    code = readme_notebook_example()
    assert "cpx.train(" in code and "cpx.package(" in code and "cpx.leaderboard()" in code
    exec(compile(code, str(README), "exec"), {"__name__": "__readme__"})
    out = capsys.readouterr().out.splitlines()
    with Ledger(cpx_workspace.ledger_path) as ledger:
        (run,) = ledger.list_runs()
        validations = ledger.list_validations(run["id"])
        (submission,) = ledger.list_submissions()
    assert run["status"] == "completed" and out[0].startswith(f"{run['id']} completed ")
    # training's best epoch, run.validate, then package's validation of exactly what it packaged
    assert [v["tta"] for v in validations] == ["none", "flip", "flip"]
    assert submission["name"] == "notebook-v1" and submission["tta"] == "flip"
    assert Path(submission["zip_path"]).is_file() and out[3].startswith(submission["zip_path"])
    assert out[-1].startswith("1 notebook-v1 ")


def test_train_returns_a_run_handle_and_leaderboard_rows_match_the_cli(cpx_workspace, tiny_model, capsys):
    run = cpx.train("msf-lmsa", epochs=1, batch_size=8, model__name="tiny", **{"model.options": {}},
                    data__synthetic_count=24, data__synthetic_size=32, schedule__warmup_epochs=1, name="nb")
    assert isinstance(run, cpx.Run) and run.name == "nb" and run.status == "completed"
    assert run.result.epochs == 1 and run.config.train.epochs == 1 and run.config.model.name == "tiny"
    assert run.row["command"] == "cpx.train('msf-lmsa', ...)"
    assert cpx.open_run("nb").id == run.id and isinstance(cpx.open_run("nb"), cpx.Run)
    rows = cpx.leaderboard()
    assert main(["leaderboard", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == json.loads(json.dumps(rows))
    with pytest.raises(ConfigError, match="train.epochs: given twice"):
        cpx.train("msf-lmsa", epochs=1, train__epochs=2)
    with pytest.raises(ConfigError, match="train.epochz: unknown field; did you mean train.epochs"):
        cpx.train("msf-lmsa", train__epochz=2)


def test_create_model_takes_options_and_checks_them(cpx_workspace):
    model = cpx.create_model("unet", num_classes=5, base_channels=4, depth=2)
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 5, 32, 32)
    # a competition gives the class count and the bands
    assert cpx.create_model("unet", competition="celebamask-mini", base_channels=4, depth=2)(
        torch.rand(1, 3, 16, 16)).shape[1] == 19
    assert cpx.create_model("unet", competition="landcover-tiles", base_channels=4, depth=2)(
        torch.rand(1, 4, 16, 16)).shape[1] == 7
    assert cpx.create_model("unet", num_classes=2, in_channels=1, base_channels=4, depth=2)(
        torch.rand(1, 1, 16, 16)).shape[1] == 2
    # none named: the workspace's, as the command line takes it, else a question
    with pytest.raises(ConfigError, match="competition=: choose one of celebamask-mini, drone-vegetation"):
        cpx.create_model("unet", base_channels=4, depth=2)
    (cpx_workspace.root / "cpx.yaml").write_text("competition: drone-vegetation\n")
    assert cpx.create_model("unet", base_channels=4, depth=2)(torch.rand(1, 3, 16, 16)).shape[1] == 2
    with pytest.raises(ConfigError, match="unet options.not_an_option: unknown field"):
        cpx.create_model("unet", num_classes=5, not_an_option=1)
    with pytest.raises(UnknownComponent, match="did you mean unet"):
        cpx.create_model("unnet", num_classes=5)


def test_open_run_gives_config_history_and_weights(unet_run, trained_unet):
    run = cpx.open_run(unet_run)
    assert run.id == unet_run and run.config.model.name == "unet"
    assert [h["epoch"] for h in run.history] == [1]
    net = run.load_model("best")
    assert not net.training
    saved = torch.load(run.folder.best_path, weights_only=True)["state_dict"]
    assert all(torch.equal(saved[k], v) for k, v in net.state_dict().items())
    with pytest.raises(RunError, match="no run"):
        cpx.open_run("nope")


def test_predict_accepts_paths_arrays_and_tensors(unet_run, trained_unet, tmp_path):
    _, _, data = trained_unet
    path = sorted((data / "test" / "images").iterdir())[0]
    array = np.asarray(Image.open(path).convert("RGB"))
    from_path, from_array, from_tensor = cpx.predict(
        unet_run, [path, array, torch.from_numpy(array.transpose(2, 0, 1).copy())], tta="flip")
    assert from_path.shape == array.shape[:2] and from_path.dtype == np.uint8
    assert np.array_equal(from_path, from_array) and np.array_equal(from_path, from_tensor)
    assert from_path.max() < 19
    with pytest.raises(DataError, match="image 0: expected an H x W x 3 uint8 array"):
        cpx.predict(unet_run, [array.astype(np.float32)])


def test_score_matches_the_cli(unet_run, trained_unet, tmp_path, capsys):
    _, _, data = trained_unet
    masks = data / "train" / "masks"
    result = cpx.score(masks, masks)  # the competition of the ledger's runs
    assert result.scores.score == pytest.approx(1.0) and result.scores.metric == "fscore"
    assert main(["score", str(masks), str(masks), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["per_image"] == result.per_image
    with pytest.raises(DataError, match="does not exist"):
        cpx.score(tmp_path / "missing", masks)


def test_workspace_is_found_from_a_subfolder(tmp_path, monkeypatch):
    root = tmp_path / "comp"
    (root / "experiments").mkdir(parents=True)
    (root / "experiments" / "ledger.db").write_bytes(b"")
    deep = root / "notebooks" / "week2"
    deep.mkdir(parents=True)
    monkeypatch.delenv("CPX_WORKSPACE")
    monkeypatch.chdir(deep)
    assert Workspace.current().root == root.resolve()
    (deep / "cpx.yaml").write_text("plugin_dirs: []\n")  # the nearest wins
    assert Workspace.current().root == deep.resolve()
    monkeypatch.chdir(tmp_path)
    assert Workspace.current().root == tmp_path.resolve()  # none above: the current directory


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith(f"cpx {cpx.__version__} (torch ")


def test_a_misspelt_workspace_is_an_error_not_a_new_ledger(tmp_path, capsys):
    missing = tmp_path / "nope" / "ws"
    assert main(["--workspace", str(missing), "runs"]) == 2
    assert f"--workspace: {missing} is not a folder" in capsys.readouterr().err
    assert not (tmp_path / "nope").exists()
