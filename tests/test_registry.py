import pytest
from pydantic import BaseModel, ConfigDict, Field

from cpx.kernel.errors import ConfigError, PluginError, UnknownComponent
from cpx.kernel.registry import Registry


class Opts(BaseModel):
    model_config = ConfigDict(extra="forbid")
    width: int = Field(8, gt=0, description="channels")


def test_duplicate_names_fail_naming_both_origins():
    reg = Registry("model")
    reg.register("tiny", lambda o, n: None, options=Opts, origin="builtin")
    with pytest.raises(PluginError, match=r"registered twice: by builtin and by acme-cpx 1\.0"):
        reg.register("tiny", lambda o, n: None, origin="acme-cpx 1.0")


def test_unknown_name_suggests_close_matches():
    reg = Registry("loss")
    reg.register("combined", object, origin="builtin")
    with pytest.raises(UnknownComponent, match="did you mean combined"):
        reg.get("combind")


def test_options_errors_name_the_key_path():
    reg = Registry("model")
    reg.register("tiny", lambda o, n: (o, n), options=Opts, origin="builtin")
    entry = reg.get("tiny")
    assert entry.create({"width": 4}, 19) == (Opts(width=4), 19)
    with pytest.raises(ConfigError) as err:
        entry.parse_options({"width": -1, "depth": 3}, where="model.options")
    lines = str(err.value).splitlines()
    assert any(line.startswith("model.options.width:") for line in lines)
    assert "model.options.depth: unknown field" in lines


def test_options_schema_lists_defaults_and_descriptions():
    reg = Registry("model")
    reg.register("tiny", object, options=Opts, origin="builtin")
    assert reg.get("tiny").options_schema() == [
        {"name": "width", "type": "int", "default": 8, "description": "channels"}]


def test_options_must_be_a_pydantic_model():
    with pytest.raises(PluginError, match="pydantic"):
        Registry("model").register("x", object, options=dict, origin="file.py")
