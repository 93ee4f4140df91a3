"""Data-parallel training: 2 CPU processes against one, and a rank that dies.

The workers are fresh processes, so the test model comes from a plugin file named by
CPX_PLUGIN_DIRS rather than from the in-process test host.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from cpx.kernel.errors import ConfigError
from cpx.runs.ledger import Ledger
from cpx.train.distributed import parse_nnodes, plan_launch
from cpx.train.run import TrainRequest, train

PLUGIN = '''
import os

import torch

from cpx.kernel.hookspecs import hookimpl


class TinyNoNorm(torch.nn.Module):
    """No BatchNorm and no dropout, so ranks hold no per-rank state or randomness."""

    def __init__(self, num_classes):
        super().__init__()
        self.a = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.b = torch.nn.Conv2d(8, num_classes, 1)

    def forward(self, x):
        if os.environ.get("CPX_TEST_DIE_RANK", "-") == os.environ.get("RANK"):
            os._exit(3)  # a crash (OOM kill, segfault) leaves no Python error behind
        return self.b(torch.relu(self.a(x)))


@hookimpl
def register_models(register):
    register("tiny-ddp", lambda options, num_classes: TinyNoNorm(num_classes), description="test model")
'''

# global batch 8 over 22 training images: steps of 8, 8 and a tail of 6 (3 per rank)
OVERRIDES = {"model.name": "tiny-ddp", "model.options": {}, "loss.name": "ce", "loss.options": {},
             "augmentation.name": "none", "augmentation.options": {}, "train.epochs": 2,
             "train.batch_size": 8, "train.precision": "fp32", "train.device": "cpu",
             "data.synthetic_count": 24, "data.synthetic_size": 32, "schedule.warmup_epochs": 1}


@pytest.fixture
def ddp_plugin(cpx_workspace, cpx_host, monkeypatch):
    folder = cpx_workspace.root / "test_plugins"
    folder.mkdir()
    (folder / "tiny_ddp.py").write_text(PLUGIN)
    monkeypatch.setenv("CPX_PLUGIN_DIRS", str(folder))
    from cpx.kernel.manager import load_plugin_files

    load_plugin_files(cpx_host, [folder])
    cpx_host.__dict__.pop("registries", None)
    return folder


def _cli(*args, timeout=120, **env):
    return subprocess.run([sys.executable, "-m", "cpx", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **env})


def _sets():
    return [a for k, v in OVERRIDES.items() for a in ("--set", f"{k}={json.dumps(v)}")]


@pytest.mark.slow  # two torchrun workers: minutes on a loaded 2-core machine
def test_two_processes_match_one_with_the_same_global_batch(cpx_workspace, cpx_host, ddp_plugin):
    single = train(TrainRequest(recipe="msf-lmsa", overrides=dict(OVERRIDES)), cpx_workspace, cpx_host)

    out = _cli("train", "msf-lmsa", "--nproc", "2", "--quiet", "--name", "ddp", *_sets())
    assert out.returncode == 0, out.stderr[-2000:]
    with Ledger(cpx_workspace.ledger_path) as ledger:
        row = ledger.get_run("ddp")
    assert row["status"] == "completed" and row["world_size"] == 2 and row["last_epoch"] == 2
    a = torch.load(single.run_dir / "last.pt", weights_only=False)
    b = torch.load(f"{row['run_dir']}/last.pt", weights_only=False)
    # Same images per step and gradients averaged over equal shards (the 6-image tail splits
    # 3 + 3): only the order of float sums differs, so the weights agree to float32 rounding.
    for key, value in a["model"].items():
        assert torch.allclose(value, b["model"][key], rtol=1e-4, atol=1e-5), key
    for ha, hb in zip(a["history"], b["history"]):
        assert hb["train_loss"] == pytest.approx(ha["train_loss"], rel=1e-4)
        assert hb["val_score"] == pytest.approx(ha["val_score"], abs=1e-4)
    # only rank 0 wrote: one run folder for the data-parallel run, beside the single-process one
    assert sorted(p.name for p in cpx_workspace.runs_dir.iterdir()) == sorted([single.run_id, row["id"]])


@pytest.mark.slow
def test_a_dying_rank_ends_the_job_with_one_error_line(cpx_workspace, ddp_plugin):
    out = _cli("train", "msf-lmsa", "--nproc", "2", "--quiet", "--name", "dies", *_sets(), CPX_TEST_DIE_RANK="1")
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "rank 1 exited with code 3" in errors[0], out.stderr[-2000:]
    assert "Traceback" not in out.stderr, out.stderr
    with Ledger(cpx_workspace.ledger_path) as ledger:
        assert ledger.get_run("dies")["status"] == "failed"


@pytest.mark.slow  # a fresh interpreter and real processes: run by .ci/run after the plain suite
def test_launch_arguments_are_checked_before_any_process_starts(cpx_workspace):
    assert parse_nnodes("2") == (2, 2) and parse_nnodes("1:4") == (1, 4)
    with pytest.raises(ConfigError, match="--nnodes"):
        parse_nnodes("two")
    with pytest.raises(ConfigError, match="--rdzv-endpoint"):
        plan_launch(cpx_workspace, 2, "2")
    assert plan_launch(cpx_workspace, 2).threads >= 1
    out = _cli("train", "nope", "--nproc", "2")
    assert out.returncode == 2 and "unknown recipe 'nope'" in out.stderr and "Traceback" not in out.stderr
