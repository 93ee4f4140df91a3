"""The CNN recipes resolve, build their model under the cap and keep their documented choices."""

import pytest

from cpx.kernel.config import build_config

PARAM_CAP = 1_821_085


@pytest.mark.parametrize("recipe, model, size", [("cnn-cpu", "dlv3p", 256), ("cnn-cpu-s", "dlv3p-s", 256),
                                                 ("cnn-cpu-384", "dlv3p", 384)])
def test_cnn_recipes_resolve_and_build(cpx_workspace, cpx_host, recipe, model, size):
    config, _ = build_config(recipe, {}, cpx_workspace.experiments_dir, cpx_host)
    assert config.model.name == model and config.data.image_size == size
    assert config.model.options["dropout"] == 0.1  # not the msf base recipe's 0.15
    assert config.train.patience is None and config.train.precision == "auto"
    net = cpx_host.models.get(model).create(config.model.options, 19)
    assert sum(p.numel() for p in net.parameters()) < PARAM_CAP


@pytest.mark.parametrize("recipe, base_recipe", [("best", "cnn-cpu-384"), ("best-cpu", "cnn-cpu"),
                                                ("best-cpu-384", "cnn-cpu-384")])
def test_the_winning_recipes_add_ema_and_corrected_labels_to_their_cnn(cpx_workspace, cpx_host, recipe,
                                                                       base_recipe):
    config, _ = build_config(recipe, {}, cpx_workspace.experiments_dir, cpx_host)
    base, _ = build_config(base_recipe, {}, cpx_workspace.experiments_dir, cpx_host)
    assert config.train.ema == 0.998 and config.data.fix_suspect and not config.data.exclude_suspect
    assert config.augmentation.options["flip"] == 0.5 and config.augmentation.options["flip_swap"] is True
    same = config.model_dump(exclude={"recipe", "description", "budget_variants"})
    same["train"]["ema"], same["data"]["fix_suspect"] = None, False
    assert same == base.model_dump(exclude={"recipe", "description", "budget_variants"})
    # only the recommended recipe weighs resolutions for a budget
    assert [v.name for v in config.budget_variants] == (["384px", "256px", "128px"] if recipe == "best" else [])
