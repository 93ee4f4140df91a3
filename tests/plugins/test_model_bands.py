"""Every built-in model at any number of image bands (``in_channels``) and classes, and the
RGB models unchanged: same parameters, same state_dict layout, same standalone kwargs."""

import hashlib

import pytest
import torch
from conftest import builtin_host

import cpx_plugins.models
from cpx.testing import check_model
from cpx_plugins.models import dlv3p_arch, msf_arch, unet_arch

PARAM_CAP = 1_821_085  # CelebAMask's limit: strictly fewer trainable parameters
HOST = builtin_host(cpx_plugins.models, "models")
NAMES = HOST.models.names()

# At 3 bands and 19 classes: each built-in model's parameter count (stated here only, beside the
# code; the README quotes them) and a digest of the state_dict's names and shapes, which
# checkpoints saved before in_channels must still fit.
RGB_MODELS = {
    "dlv3p": (1_515_283, "5d50e6ffa9656f01"),
    "dlv3p-s": (648_883, "ba728e91a6a9df54"),
    "msf": (1_733_027, "72a43644da11ae51"),
    "msf-lmsa": (1_761_839, "a569fdd4ae8c01c0"),
    "unet": (488_307, "fdd62421960c6f9b"),
}


pytestmark = pytest.mark.usefixtures("one_thread")


def build(name, num_classes=19, **keywords):
    torch.manual_seed(0)
    return HOST.models.get(name).create({}, num_classes, **keywords)


def layout_digest(model):
    lines = "\n".join(f"{key}:{tuple(value.shape)}" for key, value in model.state_dict().items())
    return hashlib.sha256(lines.encode()).hexdigest()[:16]


def test_every_built_in_model_is_pinned_here():
    assert set(NAMES) == set(RGB_MODELS)


@pytest.mark.parametrize("num_classes", [2, 19])
@pytest.mark.parametrize("in_channels", [1, 3, 4])
@pytest.mark.parametrize("name", NAMES)
def test_the_model_contract_at_any_band_and_class_count(name, in_channels, num_classes):
    check_model(HOST.models.get(name), num_classes=num_classes, max_params=PARAM_CAP, size=(40, 32),
                in_channels=in_channels)


@pytest.mark.parametrize("name", NAMES)
def test_rgb_models_keep_their_parameters_and_layout(name):
    count, digest = RGB_MODELS[name]
    model = build(name)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == count
    assert layout_digest(model) == digest


@pytest.mark.parametrize("name", NAMES)
def test_three_bands_is_the_model_built_without_the_keyword(name):
    plain, explicit = build(name), build(name, in_channels=3)
    assert plain.cpx_source == explicit.cpx_source and "in_channels" not in plain.cpx_source[2]
    for (key, a), (key_b, b) in zip(plain.state_dict().items(), explicit.state_dict().items()):
        assert key == key_b and torch.equal(a, b)
    x = torch.rand(1, 3, 40, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(plain.eval()(x), explicit.eval()(x))


@pytest.mark.parametrize("in_channels", [1, 4, 6])
@pytest.mark.parametrize("name", NAMES)
def test_other_bands_change_only_the_first_convolution(name, in_channels):
    rgb, other = build(name).state_dict(), build(name, in_channels=in_channels).state_dict()
    assert list(rgb) == list(other)
    changed = [key for key in rgb if rgb[key].shape != other[key].shape]
    assert len(changed) == 1 and rgb[changed[0]].shape[1] == 3 and other[changed[0]].shape[1] == in_channels
    assert build(name, in_channels=in_channels).cpx_source[2]["in_channels"] == in_channels


@pytest.mark.parametrize("name", NAMES)
def test_every_band_reaches_the_logits(name):
    model = build(name, in_channels=4).eval()
    x = torch.rand(1, 4, 40, 32, generator=torch.Generator().manual_seed(2))
    y = x.clone()
    y[:, 3] = 1 - y[:, 3]  # the near-infrared band alone
    with torch.no_grad():
        assert not torch.allclose(model(x), model(y))


@pytest.mark.parametrize("arch", [dlv3p_arch, msf_arch, unet_arch], ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_band_statistics(arch):
    mean, std = arch._band_statistics(3)
    assert torch.equal(mean, torch.tensor(arch._MEAN).view(1, 3, 1, 1))
    assert torch.equal(std, torch.tensor(arch._STD).view(1, 3, 1, 1))
    grey = torch.tensor([sum(arch._MEAN) / 3]), torch.tensor([sum(arch._STD) / 3])
    mean, std = arch._band_statistics(5)
    assert torch.equal(mean.flatten()[:3], torch.tensor(arch._MEAN)) and (mean.flatten()[3:] == grey[0]).all()
    assert torch.equal(std.flatten()[:3], torch.tensor(arch._STD)) and (std.flatten()[3:] == grey[1]).all()
    mean, std = arch._band_statistics(2)  # no colour: every band a grey one
    assert mean.shape == (1, 2, 1, 1) and (mean == grey[0]).all() and (std == grey[1]).all()
    with pytest.raises(ValueError, match="in_channels"):
        arch._band_statistics(0)


def test_the_self_contained_architectures_carry_one_normalisation():
    # Each *_arch.py is copied alone into a submission (imports only torch), so each holds its
    # own copy of the band statistics; this keeps the copies one fact.
    import inspect

    first, *others = (dlv3p_arch, msf_arch, unet_arch)
    for arch in others:
        assert (arch._MEAN, arch._STD) == (first._MEAN, first._STD), arch.__name__
        assert inspect.getsource(arch._band_statistics) == inspect.getsource(first._band_statistics), arch.__name__


def test_a_factory_without_in_channels_fails_the_contract_at_other_band_counts():
    from cpx.kernel.registry import Registry

    registry = Registry("model")
    registry.register("rgb-only", lambda options, num_classes: torch.nn.Conv2d(3, num_classes, 1), origin="test")
    check_model(registry.get("rgb-only"), num_classes=2)
    with pytest.raises(AssertionError, match="takes no in_channels keyword"):
        check_model(registry.get("rgb-only"), num_classes=2, in_channels=4)
