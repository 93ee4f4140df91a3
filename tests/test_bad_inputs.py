"""Bad input, command by command: one clear line naming the file or field, a non-zero exit, no
traceback, and nothing already saved is touched.

Each case is ``(argv, words the error must contain)``; ``{run}``, ``{data}``, ``{test}``,
``{garbage}``, ``{file}`` and ``{missing}`` are filled in per test.
"""

import hashlib

import pytest

from cpx.cli import main

CASES = [
    # train
    (["train", "nope"], "unknown recipe 'nope'"),
    (["train", "bset"], "unknown recipe 'bset'; did you mean best?"),
    (["train", "msf-lmsa", "--lr", "inf"], "optimizer.lr"),
    (["train", "msf-lmsa", "--lr", "-1"], "optimizer.lr"),
    (["train", "msf-lmsa", "--lr", "nan"], "optimizer.lr"),
    (["train", "msf-lmsa", "--epochs", "0"], "train.epochs"),
    (["train", "msf-lmsa", "--epochs", "abc"], "Invalid value for '--epochs'"),
    (["train", "msf-lmsa", "--batch-size", "0"], "train.batch_size"),
    (["train", "msf-lmsa", "--image-size", "-5"], "data.image_size"),
    (["train", "msf-lmsa", "--precision", "fp8"], "train.precision"),
    (["train", "msf-lmsa", "--set", "train.epochs=abc", "--epochs", "1"], "train.epochs: set twice"),
    (["train", "msf-lmsa", "--set", "nokey"], "expected section.key=value"),
    (["train", "msf-lmsa", "--set", "model.options.nope=1"], "model.options.nope: unknown field"),
    (["train", "msf-lmsa", "--set", "model.options.dropot=0.1"], "did you mean model.options.dropout"),
    (["train", "msf-lmsa", "--set", "train.epochz=3"], "train.epochz: unknown field; did you mean train.epochs?"),
    (["train", "msf-lmsa", "--set", "flip=0"], "flip: unknown field; did you mean augmentation.options.flip?"),
    (["train", "msf-lmsa", "--set", "ema=0.99"], "ema: unknown field; did you mean train.ema?"),
    (["train", "msf-lmsa", "--set", "augmentation.options.flip=yes"],
     "augmentation.options.flip: expected a probability between 0 and 1, not a yes/no switch (got True)"),
    (["sweep", "msf-lmsa", "--grid", "dic=1,2"], "dic: not a shortcut nor a section.key path; did you mean dice"),
    (["train", "msf-lmsa", "--set", "optimizer.betas=[2, 3]"], "optimizer.betas"),
    (["train", "msf-lmsa", "--set", "data.val_fraction=1.5"], "data.val_fraction"),
    (["train", "msf-lmsa", "--set", "model.name=unnet"], "unknown model 'unnet'; did you mean unet"),
    (["train", "msf-lmsa", "--set", "train.patience=-3"], "train.patience"),
    (["train", "msf-lmsa", "--data", "{missing}"], "does not exist"),
    (["train", "msf-lmsa", "--data", "{file}"], "does not exist"),
    (["train", "msf-lmsa", "--budget", "0"], "--budget"),
    (["train", "msf-lmsa", "--budget", "soon"], "--budget: cannot read 'soon'"),
    (["train", "--resume", "nope"], "nope"),
    (["train", "msf-lmsa", "--resume", "{run}"], "--resume continues a run with its own config"),
    (["train", "--resume", "{run}"], "already completed"),
    (["train", "msf-lmsa", "--set", "model.options.base_channels=400", "--set", "model.name=unet"],
     "parameters; celebamask-mini requires fewer than 1,821,085"),
    # validate, predict, score
    (["validate", "nope"], "no run matches 'nope'"),
    (["validate", "{run}", "--checkpoint", "{missing}"], "does not exist"),
    (["validate", "{run}", "--checkpoint", "{garbage}"], "not a PyTorch checkpoint"),
    (["validate", "{run}", "--data", "{missing}"], "is not a folder"),
    (["validate", "{run}", "--tta", "rotate"], "rotate"),
    (["validate", "{run}", "--batch-size", "0"], "batch-size"),
    (["predict", "{run}", "--input", "{missing}", "--output", "{out}"], "input folder does not exist"),
    (["predict", "{run}", "--input", "{test}", "--output", "{test}"], "choose an output folder other than the input"),
    (["predict", "{run}", "--input", "{test}", "--output", "{file}"], "exists and is not a folder"),
    (["predict", "{run}", "--input", "{test}", "--output", "{out}", "--tta", "bogus"], "bogus"),
    (["score", "{missing}", "{masks}"], "does not exist"),
    (["score", "{masks}", "{empty}"], "no .png ground-truth masks"),
    # runs, pictures, ensembles
    (["runs", "--status", "bogus"], "unknown status 'bogus'"),
    (["runs", "--limit", "0"], "--limit"),
    (["runs", "import", "{missing}"], "{missing}"),
    (["show", "{run}", "--images", "-1"], "--images must be 0 or more"),
    (["show", "{run}", "--images", "1000"], "--images: at most"),
    (["show", "nope"], "no run matches 'nope'"),
    (["compare", "{run}", "nope"], "no run matches 'nope'"),
    (["curves", "nope"], "no run matches 'nope'"),
    (["ensemble", "{run}", "nope"], "no run matches 'nope'"),
    (["ensemble", "{run}", "{run}", "--weights", "a,b"], "--weights"),
    # packaging and submissions
    (["package", "--check", "{missing}"], "no such file"),
    (["package", "nope", "--name", "v1"], "no run matches 'nope'"),
    (["package", "{run}", "--name", "v1", "--test", "{missing}"], "{missing}"),
    (["submit", "nope", "--record-score", "0.5"], "nope"),
    (["submit", "v1", "--record-score", "inf"], "inf"),
    (["submit", "v1", "--record-score", "abc"], "abc"),
    (["submit", "v1", "--zip", "{missing}"], "no such file"),
    (["submit", "v1", "--zip", "{garbage}"], "garbage.pt"),
    # data, plugins, recipes, bench
    (["data", "check", "{missing}"], "{missing}"),
    (["data", "check", "{file}"], "{file}"),
    (["data", "synth", "{out}", "--count", "0"], "--count must be >= 1"),
    (["recipes", "nope"], "unknown recipe 'nope'"),
    (["bench", "msf-lmsa", "--steps", "0"], "--steps"),
    (["bench", "nope"], "unknown recipe 'nope'"),
]


@pytest.fixture
def paths(tmp_path, unet_run, trained_unet):
    _, _, data = trained_unet
    (tmp_path / "a-file.txt").write_text("not a folder")
    (tmp_path / "garbage.pt").write_bytes(b"\x00garbage" * 10)
    (tmp_path / "empty").mkdir()
    return {"run": unet_run, "data": str(data), "test": str(data / "test" / "images"),
            "masks": str(data / "train" / "masks"), "missing": str(tmp_path / "does-not-exist"),
            "file": str(tmp_path / "a-file.txt"), "garbage": str(tmp_path / "garbage.pt"),
            "out": str(tmp_path / "out"), "empty": str(tmp_path / "empty")}


def _ledger_digest(workspace) -> str:
    import sqlite3

    db = sqlite3.connect(workspace.ledger_path)
    try:
        rows = [list(db.execute(f"SELECT * FROM {t} ORDER BY 1")) for t in ("runs", "validations", "submissions")]
    finally:
        db.close()
    return hashlib.sha256(repr(rows).encode()).hexdigest()


@pytest.mark.parametrize("argv,words", CASES, ids=[" ".join(c[0])[:60] for c in CASES])
def test_bad_input_is_one_clear_line(argv, words, paths, cpx_workspace, capsys):
    argv = [a.format(**paths) for a in argv]
    before = _ledger_digest(cpx_workspace)
    code = main(argv)
    out = capsys.readouterr()
    assert code != 0, out.out[-500:]
    assert "Traceback" not in out.err + out.out
    errors = [line for line in out.err.splitlines() if line.startswith("error:") or "Error" in line]
    assert errors, out.err
    assert words.format(**paths) in out.err, out.err
    assert _ledger_digest(cpx_workspace) == before  # nothing recorded, nothing changed


def test_a_name_that_is_not_utf8_is_refused_up_front(cpx_workspace, capsys):
    # issue 19.11: os.fsdecode(b"caf\xe9") is what a Latin-1 terminal hands Python for --name café
    import os

    from cpx.cli import main

    name = os.fsdecode(b"caf\xe9")
    for argv in (["train", "msf-lmsa", "--epochs", "1", "--name", name], ["package", "r", "--name", name]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "not valid UTF-8" in err and "Traceback" not in err
    assert not cpx_workspace.runs_dir.is_dir()
    from cpx.runs.ledger import Ledger

    from cpx.kernel.errors import CpxError

    with Ledger(cpx_workspace.ledger_path) as ledger, pytest.raises(CpxError, match="runs.name: .* not valid UTF-8"):
        ledger.add_run(name=name)
