"""The compact DeepLabV3+ CNNs (dlv3p, dlv3p-s): sizes, shapes, exact rewrites, options."""

import copy
import importlib.util

import pytest
import torch
import torch.nn.functional as F
from conftest import builtin_host

import cpx_plugins.models
from cpx.kernel.errors import ConfigError
from cpx_plugins.models import dlv3p_arch

NUM_CLASSES = 19
PARAM_CAP = 1_821_085
NAMES = ["dlv3p", "dlv3p-s"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def host():
    return builtin_host(cpx_plugins.models, "models")


@pytest.fixture(scope="module")
def models(host):
    torch.manual_seed(0)
    return {name: host.models.get(name).create({}, NUM_CLASSES) for name in NAMES}


def n_params(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_parameter_counts_are_under_the_cap(models):
    # the exact counts are pinned with every built-in model's in test_model_bands.py
    for name in NAMES:
        assert n_params(models[name]) < PARAM_CAP


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [256, 512])
def test_logits_at_the_input_size(models, name, size):
    model = models[name].eval()
    with torch.no_grad():
        coarse = model.forward_coarse(torch.rand(1, 3, size, size))
        out = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    assert coarse.shape == (1, NUM_CLASSES, size // 2, size // 2)
    assert out.shape == (1, NUM_CLASSES, size, size)
    if size == 256:
        with torch.no_grad():
            torch.testing.assert_close(model(torch.zeros(1, 3, size, size)),
                                       F.interpolate(model.forward_coarse(torch.zeros(1, 3, size, size)),
                                                     size=(size, size), mode="bilinear", align_corners=False))


@pytest.mark.parametrize("options", [{}, {"output_stride": 8, "dilations": [1, 2, 4]},
                                     {"widths": [16, 16, 32, 64], "depths": [1, 1, 1, 2], "aspp_rates": [3]}])
def test_cpx_source_rebuilds_the_model_standalone(host, options):
    model = host.models.get("dlv3p").create(options, 7).eval()
    arch_file, builder, kwargs = model.cpx_source
    assert builder == "build_dlv3p" and kwargs["num_classes"] == 7
    spec = importlib.util.spec_from_file_location("standalone_dlv3p_test", arch_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rebuilt = getattr(module, builder)(**kwargs).eval()
    rebuilt.load_state_dict(model.state_dict())
    x = torch.rand(2, 3, 70, 54)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x))


@pytest.mark.parametrize("dilation", [2, 3, 4, 6])
@pytest.mark.parametrize("hw", [(16, 16), (13, 9), (5, 7)])
def test_dilated_depthwise_equals_the_dilated_convolution(dilation, hw):
    g = torch.Generator().manual_seed(dilation)
    x = torch.randn(2, 5, *hw, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(5, 1, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    expected = F.conv2d(x, w, None, 1, dilation, dilation, 5)
    torch.testing.assert_close(dlv3p_arch.dilated_depthwise(x, w, dilation), expected)
    assert torch.autograd.gradcheck(lambda a, b: dlv3p_arch.dilated_depthwise(a, b, dilation), (x, w),
                                    fast_mode=True)


def test_output_stride_8_keeps_the_deep_map_at_one_eighth(host):
    model = host.models.get("dlv3p").create({"output_stride": 8}, NUM_CLASSES).eval()
    seen = {}
    model.aspp.register_forward_hook(lambda m, i, o: seen.update(shape=o.shape))
    with torch.no_grad():
        model(torch.rand(1, 3, 64, 64))
    assert seen["shape"][-2:] == (8, 8)


def test_a_batch_of_one_trains(models):
    # the image-pooling branch has no batch norm, so a 1 x 1 pooled map of one image is fine
    model = copy.deepcopy(models["dlv3p-s"]).train()
    loss = F.cross_entropy(model(torch.rand(1, 3, 64, 64)), torch.randint(0, NUM_CLASSES, (1, 64, 64)))
    loss.backward()


@pytest.mark.parametrize("options, match", [({"output_stride": 4}, "output_stride"),
                                            ({"depths": [1, 0, 1, 1]}, "depths"),
                                            ({"dilations": []}, "dilations"),
                                            ({"widths": [16, 16, 16]}, "widths")])
def test_bad_options_are_config_errors(host, options, match):
    with pytest.raises(ConfigError, match=match):
        host.models.get("dlv3p").create(options, NUM_CLASSES)


def test_space_to_batch_round_trips_and_undilates():
    x = torch.randn(2, 3, 8, 12, dtype=torch.float64)
    torch.testing.assert_close(dlv3p_arch.batch_to_space(dlv3p_arch.space_to_batch(x, 2), 2), x)
    w = torch.randn(3, 1, 3, 3, dtype=torch.float64)
    sub = F.conv2d(dlv3p_arch.space_to_batch(x, 2), w, None, 1, 1, 1, 3)
    torch.testing.assert_close(dlv3p_arch.batch_to_space(sub, 2), F.conv2d(x, w, None, 1, 2, 2, 3))


@pytest.mark.parametrize("hw", [(12, 8), (13, 9)])  # the whole block on sub-images; padded: per convolution
@pytest.mark.parametrize("train", [True, False])
def test_dilated_inverted_residual_equals_the_dilated_block(hw, train):
    torch.manual_seed(0)
    block = dlv3p_arch.InvertedResidual(6, 6, dilation=2).double().train(train)
    reference = copy.deepcopy(block)
    if not train:  # running statistics that are not the identity
        for m in block.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2)
        reference.load_state_dict(block.state_dict())
    x = torch.randn(3, 6, *hw, dtype=torch.float64, requires_grad=True)

    def plain(x):  # the block as written, with the stock dilated convolution
        y = x
        for layer in reference.body:
            conv = layer[0]
            y = F.conv2d(y, conv.weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
            for rest in list(layer)[1:]:
                y = rest(y)
        return x + y

    out, expected = block(x), plain(x)
    torch.testing.assert_close(out, expected)
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, [x, *block.parameters()], g)
    want = torch.autograd.grad(expected, [x, *reference.parameters()], g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    if train:  # batch statistics over the same pixels
        for a, b in zip(block.buffers(), reference.buffers()):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("train", [True, False])
def test_classifier_is_the_channel_dropout_then_the_1x1_convolution(models, train):
    model = copy.deepcopy(models["dlv3p"]).double().train(train)
    y = torch.randn(3, 32, 10, 14, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    torch.manual_seed(7)
    got = model._classify(y)
    torch.manual_seed(7)  # Dropout2d draws one Bernoulli per image and channel, the same draws
    expected = model.classifier(model.dropout(y))
    assert got.is_contiguous() and got.dtype == torch.float32
    torch.testing.assert_close(got, expected.float())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("options", [{}, {"output_stride": 8}])
def test_evaluation_folds_batch_norm_into_the_convolutions_without_changing_the_logits(host, name, options,
                                                                                       monkeypatch):
    torch.manual_seed(0)
    model = host.models.get(name).create(options, NUM_CLASSES).double().eval()
    for m in model.modules():  # running statistics and affine parameters that are not the identity
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-0.2, 0.2)
    x = torch.rand(2, 3, 72, 88, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    calls = []
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        folded = model(x)
        assert calls == []  # every batch norm was folded: no separate pass
        monkeypatch.setattr(dlv3p_arch.ConvBNReLU, "fold_batchnorm", False)
        separate = model(x)
        assert calls
    torch.testing.assert_close(folded, separate)
    # training still normalises with the batch's statistics, through the batch-norm layers
    model.train()
    monkeypatch.setattr(dlv3p_arch.ConvBNReLU, "fold_batchnorm", True)
    before = [m.running_mean.clone() for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    model(x)
    after = [m.running_mean for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(not torch.equal(a, b) for a, b in zip(before, after))


def _train_step(model, x, seed=1):
    """Logits, the input's and every parameter's gradient of one float64 training step."""
    x = x.clone().requires_grad_(True)
    torch.manual_seed(seed)  # the same dropout draws
    out = model(x)
    grads = torch.autograd.grad(out.square().mean(), [x, *model.parameters()])
    return out, grads


def _saved_bytes(model, x):
    """Bytes autograd keeps for the backward pass of ``model(x)`` (each storage once)."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(storages.values())


@pytest.mark.parametrize("options", [{}, {"output_stride": 8, "dilations": [1, 2, 4]}])
@pytest.mark.parametrize("hw", [(64, 96), (66, 98)])  # 66 x 98: dilated blocks on padded maps
def test_training_that_recomputes_relu_and_depthwise_outputs_equals_the_plain_layers(host, monkeypatch, options, hw):
    torch.manual_seed(0)
    model = host.models.get("dlv3p").create(options, NUM_CLASSES).double().train()
    for m in model.modules():  # affine parameters that are not the identity
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-0.2, 0.2)
    reference = copy.deepcopy(model)
    x = torch.rand(2, 3, *hw, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    monkeypatch.setattr(dlv3p_arch.ConvBNReLU, "recompute_activations", False)
    want_out, want = _train_step(reference, x)
    monkeypatch.setattr(dlv3p_arch.ConvBNReLU, "recompute_activations", True)
    got_out, got = _train_step(model, x)
    torch.testing.assert_close(got_out, want_out)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    for a, b in zip(model.buffers(), reference.buffers()):  # running statistics and batch counts
        torch.testing.assert_close(a, b)


def test_training_keeps_less_for_the_backward_pass_in_float32_only(models, monkeypatch):
    model = copy.deepcopy(models["dlv3p"]).train()
    x = torch.rand(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    monkeypatch.setattr(dlv3p_arch.ConvBNReLU, "recompute_activations", False)
    plain = _saved_bytes(model, x)
    monkeypatch.setattr(dlv3p_arch.ConvBNReLU, "recompute_activations", True)
    recomputed = _saved_bytes(model, x)
    assert recomputed < 0.75 * plain  # 0.71 here (ReLU outputs alone: 0.81)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # under autocast the layers run as built
        kept_bf16 = _saved_bytes(model, x)
        monkeypatch.setattr(dlv3p_arch.ConvBNReLU, "recompute_activations", False)
        assert _saved_bytes(model, x) == kept_bf16
