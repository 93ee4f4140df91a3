import os
import sqlite3
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

# Commands print at the piped width (cpx.cli._common) whatever launched the tests: pytest-xdist
# workers run with COLUMNS=80 in their environment, which would fold the lines the tests read.
os.environ.pop("COLUMNS", None)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "celebamask-mini"


@pytest.fixture(autouse=True)
def _isolated(cpx_workspace, cpx_host):
    """Every test runs in its own workspace with a fresh plugin host."""
    yield


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "train" / "images").is_dir():
        pytest.skip("../shared/data/celebamask-mini is not present")
    return SHARED_DATA


class _TinyOptions(BaseModel, extra="forbid"):
    width: int = Field(8, ge=1, description="channels of the hidden layer")


class _TinyPlugin:
    """A two-layer model so trainer tests take seconds, registered like any third-party plugin,
    with an option of its own."""

    @staticmethod
    def _build(options, num_classes):
        import torch

        w = options.width
        return torch.nn.Sequential(torch.nn.Conv2d(3, w, 3, padding=1), torch.nn.BatchNorm2d(w),
                                   torch.nn.ReLU(), torch.nn.Dropout(0.1), torch.nn.Conv2d(w, num_classes, 1))

    from cpx.kernel.hookspecs import hookimpl

    @hookimpl
    def register_models(self, register):
        register("tiny", self._build, options=_TinyOptions, description="test model")


@pytest.fixture
def tiny_model(cpx_host):
    cpx_host.register(_TinyPlugin(), name="tiny-test-plugin", origin="tests")
    return "tiny"


def tiny_overrides(**extra):
    """Overrides that make a recipe train in about a second on synthetic data (switching to
    ``tiny`` drops the recipe's model options)."""
    out = {"model.name": "tiny", "train.epochs": 2, "train.batch_size": 8,
           "data.synthetic_count": 24, "data.synthetic_size": 32, "schedule.warmup_epochs": 1}
    out.update(extra)
    return out


def fscore_reference(pred, gt) -> float:
    """The organisers' F-score of one image (numpy masks of class ids), written out literally:
    the mean over the classes in the ground truth of each class's F from pixel counts."""
    import numpy as np

    scores = []
    for c in np.unique(gt):
        tp = np.sum((pred == c) & (gt == c))
        fp = np.sum((pred == c) & (gt != c))
        fn = np.sum((pred != c) & (gt == c))
        precision = tp / (tp + fp + 1e-7)
        recall = tp / (tp + fn + 1e-7)
        scores.append(2 * precision * recall / (precision + recall + 1e-7))
    return float(np.mean(scores))


def builtin_host(module, name: str):
    """A fresh plugin host holding one built-in plugin module, for registry-driven tests."""
    from cpx.kernel.manager import create_plugin_host

    host = create_plugin_host(entry_points=False, builtins=False)
    host.register(module, name=name)
    return host


# a real built-in model (it has a standalone source) small enough to train in a second
UNET = {"model.name": "unet", "model.options": {"base_channels": 4, "depth": 2}, "data.image_size": 32,
        "train.epochs": 1, "train.batch_size": 8, "schedule.warmup_epochs": 1}


@pytest.fixture(scope="session")
def trained_unet(tmp_path_factory):
    """One unet run on synthetic 64px faces (4 test images), trained once for the whole session:
    (its workspace, the TrainResult, its data folder)."""
    from cpx.data import write_dataset
    from cpx.kernel.manager import create_plugin_host
    from cpx.kernel.workspace import Workspace
    from cpx.train.run import TrainRequest, train

    host = create_plugin_host(entry_points=False)
    comp = host.competition("celebamask-mini")
    data = tmp_path_factory.mktemp("unetdata")
    write_dataset(data, comp, comp.synthesize(28, 64, 0), test_count=4)
    base = Workspace(tmp_path_factory.mktemp("unetbase"))
    result = train(TrainRequest(recipe="msf-lmsa", overrides={**UNET, "data.path": str(data)}), base, host)
    assert result.status == "completed"
    return base, result, data


@pytest.fixture
def unet_run(trained_unet, cpx_workspace) -> str:
    """The shared unet run, recorded in this test's own fresh ledger (its folder is shared: read it only)."""
    base, result, _ = trained_unet
    cpx_workspace.experiments_dir.mkdir(parents=True, exist_ok=True)
    # the backup API, because a plain copy would miss rows still in the WAL file
    src, dst = sqlite3.connect(base.ledger_path), sqlite3.connect(cpx_workspace.ledger_path)
    with dst:
        src.backup(dst)
    src.close()
    dst.close()
    # the ledger keeps run folders relative to its workspace: point this one's at the shared folder
    cpx_workspace.runs_dir.mkdir(parents=True, exist_ok=True)
    (cpx_workspace.runs_dir / result.run_id).symlink_to(result.run_dir, target_is_directory=True)
    return result.run_id


class CtrlCInEpoch2:
    """A training callback that presses Ctrl-C during the second epoch (after epoch 1 is saved)."""

    def on_batch_end(self, trainer, i, loss):
        if trainer.epoch == 1:
            raise KeyboardInterrupt


@pytest.fixture
def comp(cpx_host):
    """The celebamask-mini profile, bound to its metric and submission format."""
    return cpx_host.competition("celebamask-mini")


@pytest.fixture
def batch():
    """Seeded logits of a 19-class model (2 x 19 x 12 x 10) and a target to match: a loss's input."""
    import torch

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 19, 12, 10, generator=g)
    target = torch.randint(0, 19, (2, 12, 10), generator=g)
    return logits, target


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: a second thread only adds synchronisation, which hurts on a busy machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------
# The ledger and its submissions


@pytest.fixture
def ledger(cpx_workspace):
    """This test's workspace ledger, open."""
    from cpx.runs.ledger import Ledger

    with Ledger(cpx_workspace.ledger_path) as led:
        yield led


@pytest.fixture
def packaged(ledger, tmp_path):
    """Record a submission as `cpx package` leaves it: ``packaged(name, val=..., run_name=...,
    **columns)`` adds the run when the ledger has none of that name, writes a small zip of its
    own (masks and a solution runner) and returns the submission's row."""
    import hashlib
    import zipfile

    from cpx.kernel.errors import RunError

    def make(name: str = "v2", *, run_name: str = "r1", val: float = 0.69, **columns):
        try:
            run = ledger.get_run(run_name)
        except RunError:
            run = ledger.add_run(name=run_name, competition="celebamask-mini", status="completed",
                                 best_val_score=val, best_epoch=40)
        path = tmp_path / f"submission-{name}.zip"
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("masks/0001.png", f"mask of {name}".encode() * 20)
            zf.writestr("solution/run.py", "print('hi')\n")
        return ledger.add_submission(name, run_id=run["id"], zip_path=str(path), val_score=val, checkpoint="best",
                                     zip_sha256=hashlib.sha256(path.read_bytes()).hexdigest(), **columns)

    return make


# --------------------------------------------------------------------------------------------
# The test Codabench (tests/codabench_server.py)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    """Requests to the local test server never go through a proxy; no server URL leaks in."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.delenv("CODABENCH_URL", raising=False)


@pytest.fixture
def fake():
    """A running test Codabench on loopback."""
    from codabench_server import FakeCodabench

    with FakeCodabench() as server:
        yield server


@pytest.fixture
def logged_in(fake):
    """The test Codabench with its credentials stored, as after `cpx codabench login`."""
    from cpx.submit import codabench

    codabench.save_credentials(fake.url, fake.token, username=fake.username)
    return fake
