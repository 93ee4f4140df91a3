"""solution/run.py predicts exactly as cpx's Predictor, TTA included, for every built-in model."""

from __future__ import annotations

import pytest
import torch

from cpx.eval.predict import DEFAULT_SCALES, Member, Predictor
from cpx.kernel.manager import create_plugin_host
from cpx.submit import standalone_run

TTAS = [(), ("flip",), ("scale",), ("flip", "scale")]


@pytest.fixture(scope="module")
def host():
    return create_plugin_host(entry_points=False)


@pytest.fixture(scope="module")
def models(host):
    """One untrained model per name, built once: building msf-lmsa takes seconds."""
    cache = {}

    def get(name):
        if name not in cache:
            entry = host.models.get(name)
            torch.manual_seed(0)
            cache[name] = entry.create(entry.options(), host.competition("celebamask-mini").num_classes).eval()
        return cache[name]
    return get


# msf-lmsa merges views of one size at its coarse resolution (forward_coarse); unet has none
@pytest.mark.parametrize("model_name", ["msf-lmsa", "unet"])
@pytest.mark.parametrize("tta", TTAS, ids=lambda t: "+".join(t) or "none")
def test_run_py_predicts_what_the_predictor_predicts(host, models, model_name, tta):
    comp = host.competition("celebamask-mini")
    model = models(model_name)
    # untrained weights give near-ties everywhere: the strictest test of equal arithmetic
    predictor = Predictor([Member(model=model, image_size=32)], comp, tta=tta, device="cpu", precision="fp32")
    config = {"image_size": 32, "tta": list(tta), "scales": list(DEFAULT_SCALES),
              "flip_permutation": comp.flip_permutation(), "num_classes": comp.num_classes}
    generator = torch.Generator().manual_seed(1)
    for shape in ((3, 40, 56), (3, 17, 23)):
        image = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
        expected = predictor.predict([image])[0].numpy()
        # run.py predicts a batch (B x C x H x W) and returns B masks
        batch = standalone_run.predict(model, image[None], "cpu", config)
        assert batch.shape == (1, *shape[1:])
        got = batch[0]
        assert got.dtype == expected.dtype and got.shape == shape[1:]
        assert (got == expected).all(), f"{model_name} {tta} {shape}: {(got != expected).mean():.2%} differ"


def test_run_py_imports_only_what_a_solution_may(tmp_path):
    from cpx.submit.solution import RUN_PY, foreign_imports

    assert foreign_imports(RUN_PY) == []


@pytest.mark.parametrize("key", ["state_dict", "model_state_dict", "model"])
def test_run_py_loads_weights_under_every_key_cpx_accepts(host, models, tmp_path, key):
    # the keys come from model.json, written from cpx.runs.checkpoint's list: run.py holds none
    from cpx.runs.checkpoint import WEIGHT_KEYS
    from cpx.submit.solution import export_solution

    comp = host.competition("celebamask-mini")
    model = models("unet")
    export_solution(model, tmp_path, comp, image_size=32, model_name="unet")
    config = standalone_run.read_config(tmp_path)
    assert config["weight_keys"][0] == config["weights_key"] and set(WEIGHT_KEYS) <= set(config["weight_keys"])
    torch.save({key: model.state_dict(), "epoch": 3}, tmp_path / "w.pth")
    loaded = standalone_run.load_model(tmp_path / "w.pth", "cpu", config, folder=tmp_path)
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
