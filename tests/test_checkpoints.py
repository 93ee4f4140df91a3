"""Checkpoints from elsewhere: never unpickled as code, accepted in the shapes people have.

Every command that takes a checkpoint gets a file whose unpickling would run code; the code
must never run. Wrapper prefixes and bare state_dicts must give exactly the original score, and a
run of any band count reloads into the model it was trained as.
"""

import pytest
import torch
import yaml
from conftest import UNET, CtrlCInEpoch2, tiny_overrides

from cpx.cli import main
from cpx.eval.validate import validate_run
from cpx.kernel.errors import RunError
from cpx.runs.checkpoint import read_checkpoint
from cpx.train.run import TrainRequest, train


class RunsCode:
    """Unpickling this calls ``open(path, "w")``: proof that code ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def evil_checkpoint(path, marker, weights=None):
    torch.save({"state_dict": weights or {"w": torch.zeros(1)}, "note": RunsCode(marker)}, path)
    return path


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "code-ran"
    yield path
    assert not path.exists(), "unpickling ran code from a checkpoint"


@pytest.mark.parametrize("command", [
    ["validate", "{run}", "--checkpoint", "{ckpt}"],
    ["predict", "{run}", "--checkpoint", "{ckpt}", "--input", "{test}", "--output", "{out}"],
    ["show", "{run}", "-c", "{ckpt}", "--per-class"],
    ["package", "{run}", "--checkpoint", "{ckpt}", "--name", "evil", "--test", "{test}"],
])
def test_no_command_runs_code_from_a_checkpoint(command, unet_run, trained_unet, tmp_path, marker, capsys):
    ckpt = evil_checkpoint(tmp_path / "evil.pt", marker)
    args = [a.format(run=unet_run, ckpt=ckpt, test=trained_unet[2] / "test" / "images", out=tmp_path / "out")
            for a in command]
    assert main(args) != 0
    err = capsys.readouterr().err
    assert "refused: it holds pickled Python objects" in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1


def test_resume_never_runs_code_from_last_pt(cpx_workspace, cpx_host, tiny_model, marker):

    result = train(TrainRequest(recipe="msf-lmsa", overrides=tiny_overrides(**{"train.epochs": 3})), cpx_workspace,
                   cpx_host, callbacks=(CtrlCInEpoch2(),))
    evil_checkpoint(result.run_dir / "last.pt", marker)
    with pytest.raises(RunError, match="refused: it holds pickled Python objects"):
        train(TrainRequest(resume=result.run_id), cpx_workspace, cpx_host)


def test_validating_an_imported_run_never_runs_code(cpx_workspace, cpx_host, unet_run, tmp_path, marker, capsys):
    from cpx.runs.handle import open_run

    run = open_run(unet_run)
    folder = tmp_path / "other-scripts-run"
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump(run.config.model_dump(mode="json")))
    evil_checkpoint(folder / "best_model.pth", marker, weights=torch.load(run.folder.best_path,
                                                                          weights_only=True)["state_dict"])
    assert main(["runs", "import", str(folder), "--name", "imported"]) == 0
    said = capsys.readouterr()
    assert "refused: it holds pickled Python objects" in said.out + said.err
    assert main(["validate", "imported"]) == 2
    assert "refused" in capsys.readouterr().err


def _saved_in_shape(source, dest, shape):
    state = torch.load(source, weights_only=True)["state_dict"]
    if shape == "module.":
        torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, dest)
    elif shape == "_orig_mod.":
        torch.save({"model_state_dict": {"_orig_mod." + k: v for k, v in state.items()}, "epoch": 3}, dest)
    elif shape == "module._orig_mod.":
        torch.save({"module._orig_mod." + k: v for k, v in state.items()}, dest)
    elif shape == "bare":
        torch.save(state, dest)
    return dest


@pytest.mark.parametrize("shape", ["module.", "_orig_mod.", "module._orig_mod.", "bare"])
def test_wrapped_and_bare_state_dicts_give_exactly_the_original_score(shape, unet_run, cpx_workspace, cpx_host,
                                                                  tmp_path):
    from cpx.runs.handle import open_run

    best = open_run(unet_run).folder.best_path
    original = validate_run(unet_run, cpx_workspace, cpx_host, record=False)
    path = _saved_in_shape(best, tmp_path / "other.pth", shape)
    again = validate_run(unet_run, cpx_workspace, cpx_host, checkpoint=str(path), record=False)
    assert again.scores.score == original.scores.score and again.scores.metric == "fscore"
    assert again.per_image == original.per_image


def test_a_run_of_four_bands_reloads_as_it_was_trained(cpx_workspace, cpx_host):
    # the model was built with the competition's 4 bands; reloading it must build the same stem
    overrides = {**UNET, "competition": "landcover-tiles", "data.synthetic_count": 12, "data.synthetic_size": 32}
    result = train(TrainRequest(recipe="msf-lmsa", overrides=overrides, name="bands"), cpx_workspace, cpx_host)
    from cpx.runs.handle import open_run

    net = open_run("bands", cpx_workspace, cpx_host).load_model("best")
    assert net(torch.rand(1, 4, 32, 32)).shape == (1, 7, 32, 32)
    ev = validate_run("bands", cpx_workspace, cpx_host, record=False)
    assert ev.scores.metric == "miou" and ev.score == pytest.approx(result.best_val_score, abs=1e-9)


def test_a_whole_pickled_model_is_refused_saying_how_to_save_weights(tmp_path, unet_run, capsys):
    torch.save(torch.nn.Conv2d(3, 19, 1), tmp_path / "model.pt")
    assert main(["validate", unet_run, "--checkpoint", str(tmp_path / "model.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "torch.save({'state_dict': model.state_dict()}, path)" in err


def test_a_key_mismatch_is_counted_with_examples(tmp_path, unet_run, capsys):
    from cpx.runs.handle import open_run

    state = torch.load(open_run(unet_run).folder.best_path, weights_only=True)["state_dict"]
    first = next(iter(state))
    state["extra.weight"] = torch.zeros(2)
    del state[first]
    torch.save({"state_dict": state}, tmp_path / "mismatch.pt")
    assert main(["validate", unet_run, "--checkpoint", str(tmp_path / "mismatch.pt")]) == 2
    err = capsys.readouterr().err
    assert f"1 missing (e.g. {first})" in err and "1 unexpected (e.g. extra.weight)" in err


def test_read_checkpoint_names_what_it_found(tmp_path):
    torch.save({"optimizer": {"lr": 1}, "epoch": 3}, tmp_path / "no-weights.pt")
    with pytest.raises(RunError, match=r"no weights under state_dict, model_state_dict, model .*epoch, optimizer"):
        read_checkpoint(tmp_path / "no-weights.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(RunError, match="not a PyTorch checkpoint"):
        read_checkpoint(tmp_path / "text.pt")
    torch.save({"a.weight": torch.ones(1)}, tmp_path / "bare.pt")
    found = read_checkpoint(tmp_path / "bare.pt")
    assert found.key == "" and list(found.weights) == ["a.weight"]


def test_the_files_cpx_writes_load_with_weights_only(unet_run):
    from cpx.runs.checkpoint import load_file
    from cpx.runs.handle import open_run

    run = open_run(unet_run)
    assert read_checkpoint(run.folder.best_path).key == "state_dict"
    state = load_file(run.folder.last_path)  # what resume needs: tensors and plain types only
    assert state["epoch"] == 1 and set(state) >= {"model", "optimizer", "history", "config"}


def test_validate_refuses_a_best_checkpoint_that_fails_its_checksum_as_doctor_says(cpx_workspace, cpx_host,
                                                                                  tiny_model, capsys):
    """One flipped byte in best.pt: ``cpx doctor`` reports it, and ``cpx validate`` refuses it in
    that same wording (suggesting --checkpoint last) instead of loading it; last.pt still works."""
    from cpx.doctor.checks import check_workspace

    run = train(TrainRequest(recipe="msf-lmsa", overrides=tiny_overrides()), cpx_workspace, cpx_host)
    best = cpx_workspace.runs_dir / run.run_id / "best.pt"
    data = bytearray(best.read_bytes())
    data[200] ^= 0xFF
    best.write_bytes(bytes(data))
    (said,) = [p.message for p in check_workspace(cpx_workspace, cpx_host, min_free=0).problems
               if p.kind == "file-damaged"]
    capsys.readouterr()

    assert main(["validate", run.run_id]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert str(best) in err and said in err and "--checkpoint last" in err, (err, said)
    assert main(["validate", run.run_id, "--checkpoint", "last"]) == 0
