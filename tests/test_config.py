import pytest

from cpx.kernel.config import build_config, list_recipes, load_recipe, parse_assignment
from cpx.kernel.errors import ConfigError


def test_reference_recipe_matches_the_published_one(cpx_workspace, cpx_host):
    config, diff = build_config("msf-lmsa", {}, cpx_workspace.experiments_dir, cpx_host)
    assert diff == {}
    assert config.model.name == "msf-lmsa" and config.model.options["dropout"] == 0.15
    assert config.loss.options["ce"] == 1.0 and config.loss.options["dice"] == 1.5
    assert (config.optimizer.name, config.optimizer.lr, config.optimizer.weight_decay) == ("adamw", 8e-4, 1e-4)
    assert (config.schedule.name, config.schedule.warmup_epochs) == ("cosine", 5)
    t = config.train
    assert (t.batch_size, t.grad_clip, t.patience, t.epochs) == (32, 1.0, 20, 300)
    assert (config.data.val_fraction, config.augmentation.name) == (0.1, "baseline")


def test_overrides_and_diff(cpx_workspace, cpx_host):
    config, diff = build_config("msf-lmsa", {"loss.options.dice": 1.0, "train.epochs": 3},
                                cpx_workspace.experiments_dir, cpx_host)
    assert config.loss.options["dice"] == 1.0
    assert diff == {"loss.options.dice": 1.0, "train.epochs": 3}


def test_bad_values_name_each_key_path(cpx_workspace, cpx_host):
    with pytest.raises(ConfigError) as err:
        build_config("msf-lmsa", {"train.epochs": -1, "optimizer.lr": "fast", "model.options.depthz": 2},
                     cpx_workspace.experiments_dir, cpx_host)
    text = str(err.value)
    assert "train.epochs" in text and "optimizer.lr" in text


def test_component_options_validated_by_the_plugin(cpx_workspace, cpx_host):
    with pytest.raises(ConfigError, match=r"model\.options\.depthz: unknown field"):
        build_config("msf-lmsa", {"model.options.depthz": 2}, cpx_workspace.experiments_dir, cpx_host)


def test_workspace_recipes_add_and_override(cpx_workspace, cpx_host):
    exp = cpx_workspace.experiments_dir
    exp.mkdir(parents=True, exist_ok=True)
    (exp / "mine.yaml").write_text("base: msf-lmsa\ntrain:\n  epochs: 7\n")
    assert list_recipes(exp)["mine"].endswith("mine.yaml")
    assert list_recipes(exp)["msf-lmsa"] == "builtin"
    config, diff = build_config("mine", {}, exp, cpx_host)
    assert config.train.epochs == 7 and config.recipe == "mine"
    (exp / "msf-lmsa.yaml").write_text("base: unet\n")
    with pytest.raises(ConfigError, match="loops"):
        load_recipe("msf-lmsa", exp)


def test_recipe_path_and_yaml_errors(cpx_workspace, cpx_host, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: line 2"):
        load_recipe(str(bad), cpx_workspace.experiments_dir)
    with pytest.raises(ConfigError, match="unknown recipe 'nope'"):
        load_recipe("nope", cpx_workspace.experiments_dir)


def test_parse_assignment_reads_yaml_values():
    assert parse_assignment("train.epochs=3") == ("train.epochs", 3)
    assert parse_assignment("augmentation.options.scale=[0.8, 1.2]") == ("augmentation.options.scale", [0.8, 1.2])
    assert parse_assignment("data.path=/x/y") == ("data.path", "/x/y")
    with pytest.raises(ConfigError):
        parse_assignment("novalue")


def test_swapping_a_component_drops_the_old_components_options(cpx_workspace, cpx_host):
    config, diff = build_config("msf-lmsa", {"model.name": "unet"}, cpx_workspace.experiments_dir, cpx_host)
    assert config.model.name == "unet" and "dropout" not in diff
    with pytest.raises(ConfigError):
        build_config("msf-lmsa", {"model.name": "unet", "model.options.embed_dimz": 1},
                     cpx_workspace.experiments_dir, cpx_host)


def test_a_key_given_twice_in_a_recipe_or_cpx_yaml_is_refused_naming_both_lines(cpx_workspace, cpx_host):
    # issue 19.8: PyYAML keeps the last of two equal keys, so a second train: block dropped epochs: 1
    exp = cpx_workspace.experiments_dir
    exp.mkdir(parents=True, exist_ok=True)
    (exp / "twice.yaml").write_text("base: msf-lmsa\ntrain:\n  epochs: 1\nmodel:\n  name: unet\ntrain:\n  batch_size: 4\n")
    with pytest.raises(ConfigError, match=r"twice.yaml: key 'train' appears twice \(lines 2 and 6\)"):
        load_recipe("twice", exp)
    (cpx_workspace.root / "cpx.yaml").write_text("plugin_dirs: [a]\nplugin_dirs: [b]\n")
    with pytest.raises(ConfigError, match=r"cpx.yaml: key 'plugin_dirs' appears twice \(lines 1 and 2\)"):
        cpx_workspace.settings()


def test_one_key_set_twice_is_refused_naming_both():
    # issue 19.17: the last --set silently won
    from cpx.kernel.config import merge_overrides

    with pytest.raises(ConfigError, match=r"train.epochs: set twice, by --set train.epochs=3 and by --set train.epochs=5"):
        merge_overrides(["train.epochs=3", "train.epochs=5"], {})
    assert merge_overrides(["train.epochs=3", "train.epochs=3"], {}) == {"train.epochs": 3}
    with pytest.raises(ConfigError, match="set twice"):
        merge_overrides(["loss.options.dice=1"], {"loss.options.dice": 2.0})


def test_a_third_party_model_switched_in_by_set_takes_its_own_options(cpx_workspace, cpx_host, tiny_model):
    config, diff = build_config("msf-lmsa", {"model.name": "tiny", "model.options.width": 4},
                                cpx_workspace.experiments_dir, cpx_host)
    assert (config.model.name, config.model.options) == ("tiny", {"width": 4})
    assert diff["model.options.width"] == 4 and "model.options.dropout" not in diff


def test_a_recipe_switching_its_base_model_takes_its_own_options(cpx_workspace, cpx_host, tiny_model):
    exp = cpx_workspace.experiments_dir
    exp.mkdir(parents=True, exist_ok=True)
    (exp / "mine.yaml").write_text("base: msf-lmsa\nmodel:\n  name: tiny\n  options:\n    width: 4\n"
                                   "loss:\n  options:\n    dice: 2.0\n")
    config, _ = build_config("mine", {}, exp, cpx_host)
    assert (config.model.name, config.model.options) == ("tiny", {"width": 4})
    assert config.loss.options["dice"] == 2.0 and config.loss.options["ce"] == 1.0  # same loss: merged
    # and the recipe's own options stay when an override keeps its component
    config, _ = build_config("mine", {"model.name": "tiny", "model.options.width": 6}, exp, cpx_host)
    assert config.model.options == {"width": 6}
