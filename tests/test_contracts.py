"""Every registered component keeps its contract (cpx.testing), built-in or installed.

The host here loads installed entry points too, so a third-party plugin in this environment
is checked the moment it registers. Per-kind specifics live in tests/plugins/.
"""

import pytest
import torch

from cpx.data.competition import Competition
from cpx.kernel.manager import create_plugin_host
from cpx.testing import (
    check_augmentation,
    check_competition,
    check_logger,
    check_loss,
    check_metric,
    check_model,
    check_postprocessor,
    check_submission_format,
)

HOST = create_plugin_host()
COMPETITIONS = HOST.competitions.names()
DEFAULT = HOST.competition(COMPETITIONS[0])


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", HOST.models.names())
def test_model_contract(name):
    check_model(HOST.models.get(name), num_classes=DEFAULT.num_classes, max_params=DEFAULT.max_params)


@pytest.mark.parametrize("name", HOST.losses.names())
def test_loss_contract(name):
    check_loss(HOST.losses.get(name), num_classes=DEFAULT.num_classes)


@pytest.mark.parametrize("name", HOST.augmentations.names())
def test_augmentation_contract(name):
    check_augmentation(HOST.augmentations.get(name), DEFAULT)


@pytest.mark.parametrize("name", HOST.postprocessors.names())
def test_postprocessor_contract(name):
    check_postprocessor(HOST.postprocessors.get(name), DEFAULT)


@pytest.mark.parametrize("name", COMPETITIONS)
def test_competition_contract(name):
    check_competition(HOST.competitions.get(name), HOST)


# options a metric or a format cannot do without (the built-ins'; a third-party one taking
# required options is checked through a registered competition that names it)
METRIC_OPTIONS = {"class-iou": {"class": "a"}}
FORMAT_OPTIONS = {"rle-json": {"order": "column-major", "index_base": 1}}


@pytest.mark.parametrize("name", HOST.metrics.names())
def test_metric_contract(name):
    check_metric(HOST.metrics.get(name), options=METRIC_OPTIONS.get(name))


@pytest.mark.parametrize("name", HOST.submission_formats.names())
def test_submission_format_contract(name):
    # a two-class competition stored 0/255, which every built-in format can hold
    comp = Competition(name="t", classes=("background", "a"), masks={"values": {0: 0, 255: 1}, "mode": "L"},
                       submission={"name": name, **FORMAT_OPTIONS.get(name, {})})
    check_submission_format(HOST.submission_formats.get(name), comp)


# where each built-in logger writes in a test (any other: a fresh folder)
LOGGER_TARGETS = {"mlflow": lambda tmp: f"sqlite:///{tmp / 'mlflow.db'}"}


@pytest.mark.parametrize("name", HOST.loggers.names())
def test_logger_contract(name, tmp_path):
    from cpx.kernel.errors import MissingDependency

    target = LOGGER_TARGETS.get(name, lambda tmp: str(tmp / "logs"))(tmp_path)
    try:
        check_logger(HOST.loggers.get(name), target)
    except MissingDependency as exc:  # an optional extra not installed here: its own line says which
        pytest.skip(str(exc))


def test_a_broken_model_fails_its_contract_with_the_reason():
    from cpx.kernel.registry import Registry

    class Half(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 19, 1)

        def forward(self, x):
            return self.conv(x)[..., ::2, ::2]  # half resolution: breaks the contract

    registry = Registry("model")
    registry.register("half", lambda options, num_classes: Half(), origin="test")
    with pytest.raises(AssertionError, match="expected logits at the input size"):
        check_model(registry.get("half"))
