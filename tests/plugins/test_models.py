"""The built-in models beyond the contract every model keeps (tests/test_contracts.py):
odd input sizes, the parameter budget, and the MicroSegFormer rewrites."""

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import builtin_host

import cpx_plugins.models
from cpx.kernel.errors import ConfigError

NUM_CLASSES = 19
PARAM_CAP = 1_821_085  # the competition's limit: strictly fewer trainable parameters


def _host():
    return builtin_host(cpx_plugins.models, "models")


MODEL_NAMES = _host().models.names()


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def host():
    return _host()


@pytest.fixture(scope="module")
def models(host):
    torch.manual_seed(0)
    return {name: host.models.get(name).create({}, NUM_CLASSES) for name in MODEL_NAMES}


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_builtin_models_are_registered():
    assert {"msf", "msf-lmsa", "unet"} <= set(MODEL_NAMES)


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (1, 3, 72, 56), (1, 3, 100, 76)])
def test_forward_gives_logits_at_input_size(models, name, shape):
    model = models[name].eval()
    with torch.no_grad():
        out = model(torch.rand(*shape))
    assert out.shape == (shape[0], NUM_CLASSES, *shape[2:])
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()








def test_msf_lmsa_uses_most_of_the_budget(models):
    assert 1_600_000 <= n_params(models["msf-lmsa"]) <= PARAM_CAP - 1
    assert n_params(models["msf"]) < n_params(models["msf-lmsa"])
















# --- MicroSegFormer specifics ---


@pytest.mark.parametrize("name", ["msf", "msf-lmsa"])
def test_msf_decoder_rewrites_match_the_textbook_decoder(models, name):
    # the decoder folds projection into fusion before upsampling, and in eval mode the batch
    # norms into the layers before them; the output must equal the textbook order:
    # project -> upsample -> concat -> fuse -> batch norm -> ReLU (-> LMSA) -> classify -> upsample
    model = copy.deepcopy(models[name])
    x = torch.rand(2, 3, 72, 56, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.train()
        model(x)  # moves the running statistics away from their identity start
        model.eval()
        h = ((x - model.mean) / model.std).contiguous(memory_format=torch.channels_last)
        maps = []
        for stage in model.stages:
            t, hh, ww = stage(h)
            maps.append((t, hh, ww))
            h = t.reshape(2, hh, ww, -1).permute(0, 3, 1, 2)
        size = maps[0][1:]
        ups = []
        for (t, hh, ww), proj in zip(maps, model.proj):
            z = proj(t).reshape(2, hh, ww, -1).permute(0, 3, 1, 2)
            ups.append(F.interpolate(z, size=size, mode="bilinear", align_corners=False))
        y = F.relu(model.fuse_bn(model.fuse(torch.cat(ups, 1))))
        if model.lmsa is not None:
            lm = model.lmsa
            b = sum(branch(y) for branch in lm.branches)
            b = F.gelu(lm.bn(lm.pw(b)))
            y = y + b * torch.sigmoid(lm.se2(F.relu(lm.se1(b.mean((2, 3), keepdim=True)))))
        naive = F.interpolate(model.classifier(y), size=x.shape[-2:], mode="bilinear", align_corners=False)
        torch.testing.assert_close(model(x), naive, rtol=1e-4, atol=1e-4)


def test_lmsa_merged_kernel_matches_parallel_branches(models):
    lmsa = copy.deepcopy(models["msf-lmsa"].lmsa).train()  # eval mode calls no pw module
    x = torch.randn(2, lmsa.pw.in_channels, 9, 11)
    captured = {}
    hook = lmsa.pw.register_forward_hook(lambda m, inp, out: captured.update(branches=inp[0]))
    with torch.no_grad():
        lmsa(x)
    hook.remove()
    with torch.no_grad():
        parallel = sum(branch(x) for branch in lmsa.branches)
    torch.testing.assert_close(captured["branches"], parallel, rtol=1e-4, atol=1e-5)


def test_lmsa_depthwise_conv_gradients():
    # the hand-written backward (weight gradient in column slices) against autograd's own
    from cpx_plugins.models.msf_arch import depthwise_conv

    for k, shape in ((7, (1, 2, 5, 6)), (5, (2, 1, 4, 3))):
        x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
        w = torch.randn(shape[1], 1, k, k, dtype=torch.float64, requires_grad=True)
        b = torch.randn(shape[1], dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda x, w, b: depthwise_conv(x, w, b, k // 2), (x, w, b), fast_mode=True)


def test_msf_rejects_heads_that_do_not_divide_width(host):
    with pytest.raises(ConfigError, match="num_heads"):
        host.models.get("msf").parse_options({"num_heads": [3, 2, 4, 5]})


def test_lmsa_rejects_even_kernels(host):
    with pytest.raises(ConfigError, match="lmsa_kernels"):
        host.models.get("msf-lmsa").parse_options({"lmsa_kernels": [3, 4]})


def test_factory_kwargs_build_the_same_architecture(host):
    model = host.models.get("msf-lmsa").create({"decoder_dim": 64, "depths": [1, 1, 1, 1]}, 5)
    _, _, kwargs = model.cpx_source
    assert kwargs["decoder_dim"] == 64 and kwargs["num_classes"] == 5 and kwargs["lmsa"] is True
    assert model.classifier.out_channels == 5


def test_blocked_attention_equals_scaled_dot_product_attention(monkeypatch):
    from cpx_plugins.models import msf_arch

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 8, generator=g) for n in (37, 5, 5))
    expected = F.scaled_dot_product_attention(q, k, v)
    monkeypatch.setattr(msf_arch, "_SCORE_BLOCK", 2 * 3 * 5 * 4)  # four query rows per block
    torch.testing.assert_close(msf_arch._blocked_attention(q, k, v, 0.0, False), expected)
    monkeypatch.setattr(msf_arch, "_SCORE_BLOCK", 1 << 22)  # one block
    torch.testing.assert_close(msf_arch._blocked_attention(q, k, v, 0.0, False), expected)


def test_bf16_forward_follows_the_float32_model(models):
    # under bf16 autocast on CPU the attention takes the blocked path instead of SDPA
    model = models["msf-lmsa"].eval()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        exact = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = model(x).float()
    assert (fast.argmax(1) == exact.argmax(1)).float().mean() > 0.95
    assert (fast - exact).abs().mean() < 0.05 * exact.abs().mean() + 1e-3
