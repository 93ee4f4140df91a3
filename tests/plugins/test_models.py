"""Registry-driven checks for the built-in models: every registered name gets the same tests."""

import ast
import copy
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from conftest import builtin_host
import cpx_plugins.models
from cpx.kernel.errors import ConfigError

NUM_CLASSES = 19
PARAM_CAP = 1_821_085  # the competition's limit: strictly fewer trainable parameters


def _host():
    return builtin_host(cpx_plugins.models, "models")


MODEL_NAMES = _host().models.names()


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # tiny tensors: a second thread only adds synchronisation, which hurts on a busy machine
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_coarse_resizes_to_forward(models, name):
    # the optional contract the TTA merge relies on (see cpx.kernel.hookspecs.register_models)
    model = models[name].eval()
    if not hasattr(model, "forward_coarse"):
        pytest.skip(f"{name} has no forward_coarse")
    x = torch.rand(1, 3, 72, 56)
    with torch.no_grad():
        coarse = model.forward_coarse(x)
        full = model(x)
    assert coarse.dtype == torch.float32 and coarse.shape[-1] < x.shape[-1]
    torch.testing.assert_close(F.interpolate(coarse, size=(72, 56), mode="bilinear", align_corners=False), full)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_backward_reaches_every_parameter(models, name):
    model = models[name].train()
    model.zero_grad(set_to_none=True)
    x = torch.rand(2, 3, 64, 64)
    target = torch.randint(0, NUM_CLASSES, (2, 64, 64))
    F.cross_entropy(model(x), target).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_under_the_parameter_cap(models, name):
    assert n_params(models[name]) < PARAM_CAP


def test_msf_lmsa_uses_most_of_the_budget(models):
    assert 1_600_000 <= n_params(models["msf-lmsa"]) <= PARAM_CAP - 1
    assert n_params(models["msf"]) < n_params(models["msf-lmsa"])


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_bf16_autocast_forward(models, name):
    model = models[name].eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.rand(1, 3, 72, 56))
    assert out.shape == (1, NUM_CLASSES, 72, 56)
    assert torch.isfinite(out.float()).all()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_channels_last_bf16_training_step(models, name):
    # how the trainer runs on CPU: channels-last weights, bf16 autocast, backward
    model = copy.deepcopy(models[name]).train().to(memory_format=torch.channels_last)
    x = torch.rand(2, 3, 64, 48).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    loss = F.cross_entropy(out.float(), torch.randint(0, NUM_CLASSES, (2, 64, 48)))
    loss.backward()
    assert out.shape == (2, NUM_CLASSES, 64, 48)
    assert all(p.grad is not None and p.grad.dtype == p.dtype for p in model.parameters())


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_unknown_option_is_rejected(host, name):
    entry = host.models.get(name)
    with pytest.raises(ConfigError, match="not_an_option: unknown field"):
        entry.parse_options({"not_an_option": 1}, where="")
    with pytest.raises(ValidationError):
        entry.options.model_validate({"not_an_option": 1})


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_option_is_described(host, name):
    rows = host.models.get(name).options_schema()
    assert rows and all(row["description"] for row in rows)


def _imported_modules(path):
    tree = ast.parse(Path(path).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            yield "." * node.level + (node.module or "")


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_arch_file_imports_only_torch_and_stdlib(models, name):
    arch_file, _, _ = models[name].cpx_source
    for module in _imported_modules(arch_file):
        top = module.split(".")[0]
        assert top == "torch" or top in sys.stdlib_module_names, f"{arch_file} imports {module}"


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_arch_file_rebuilds_the_model_standalone(models, name):
    # what a submission does: load the copied file on its own, build, load the weights
    model = models[name].eval()
    arch_file, builder, kwargs = model.cpx_source
    spec = importlib.util.spec_from_file_location(f"standalone_{name.replace('-', '_')}", arch_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rebuilt = getattr(module, builder)(**kwargs).eval()
    rebuilt.load_state_dict(model.state_dict())
    x = torch.rand(1, 3, 64, 48)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x))


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
