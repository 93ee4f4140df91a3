import inspect
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cpx.kernel import hookspecs
from cpx.kernel.errors import PluginError
from cpx.kernel.hookspecs import hookimpl
from cpx.kernel.manager import BUILTIN_PLUGINS, create_plugin_host

TESTS = Path(__file__).parent

PLUGIN_SOURCE = '''
import torch
from pydantic import BaseModel, ConfigDict, Field
from cpx.kernel.hookspecs import hookimpl


class TinyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    width: int = Field(4, gt=0, description="hidden channels")


class Tiny(torch.nn.Module):
    def __init__(self, width, num_classes):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, width, 3, padding=1), torch.nn.ReLU(),
                                        torch.nn.Conv2d(width, num_classes, 1))

    def forward(self, x):
        return self.body(x)


@hookimpl
def register_models(register):
    register("acme-tiny", lambda options, num_classes: Tiny(options.width, num_classes),
             options=TinyOptions, description="a two-layer test model")
'''


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory):
    """A throwaway distribution with a `cpx` entry point, pip-installed into a target folder."""
    src = tmp_path_factory.mktemp("acme_src")
    (src / "acme_cpx").mkdir()
    (src / "acme_cpx" / "__init__.py").write_text(PLUGIN_SOURCE)
    (src / "pyproject.toml").write_text(textwrap.dedent('''
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "acme-cpx"
        version = "1.2.3"
        [project.entry-points.cpx]
        acme = "acme_cpx"
        [tool.setuptools]
        packages = ["acme_cpx"]
    '''))
    target = tmp_path_factory.mktemp("acme_site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(src)], check=True, capture_output=True)
    return target


def _env_with(path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(path), env.get("PYTHONPATH", "")])
    return env


def test_third_party_plugin_loads_from_its_entry_point(installed_plugin, monkeypatch):
    monkeypatch.syspath_prepend(str(installed_plugin))
    import importlib

    importlib.invalidate_caches()
    host = create_plugin_host()
    entry = host.models.get("acme-tiny")
    assert entry.origin == "acme-cpx 1.2.3"
    model = entry.create({"width": 2}, 19)
    assert model(__import__("torch").zeros(1, 3, 8, 8)).shape == (1, 19, 8, 8)


@pytest.mark.slow  # a fresh interpreter and real processes: run by .ci/run after the plain suite
def test_third_party_model_shows_in_cli_and_trains(installed_plugin, cpx_workspace):
    env = _env_with(installed_plugin)
    out = subprocess.run([sys.executable, "-m", "cpx", "plugins", "--json"], env=env, capture_output=True,
                         text=True, check=True)
    rows = {(r["kind"], r["name"]): r for r in json.loads(out.stdout)["components"]}
    assert rows[("model", "acme-tiny")]["origin"] == "acme-cpx 1.2.3"
    assert rows[("model", "acme-tiny")]["options"][0]["name"] == "width"
    run = subprocess.run([sys.executable, "-m", "cpx", "train", "msf-lmsa", "--quiet", "--set", "model.name=acme-tiny",
                          "--epochs", "1", "--image-size", "32", "--set", "data.synthetic_count=12",
                          "--set", "data.synthetic_size=32", "--batch-size", "4"],
                         env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "completed" in run.stdout
    runs = subprocess.run([sys.executable, "-m", "cpx", "runs", "--json"], env=env, capture_output=True,
                          text=True, check=True)
    (row,) = json.loads(runs.stdout)
    assert row["config"]["model"]["name"] == "acme-tiny" and row["status"] == "completed"


def test_broken_plugin_is_one_warning_and_the_rest_works(tmp_path, cpx_workspace):
    folder = tmp_path / "local_plugins"
    folder.mkdir()
    (folder / "broken.py").write_text("import does_not_exist_anywhere\n")
    (cpx_workspace.root / "cpx.yaml").write_text(f"plugin_dirs: [{folder}]\n")
    out = subprocess.run([sys.executable, "-m", "cpx", "plugins", "--json"], capture_output=True, text=True)
    assert out.returncode == 0
    warnings = [line for line in out.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "broken.py" in warnings[0] and "does_not_exist_anywhere" in warnings[0]
    assert "Traceback" not in out.stderr
    assert any(r["name"] == "msf-lmsa" for r in json.loads(out.stdout)["components"])


def test_plugin_file_from_workspace_folder(tmp_path, cpx_workspace):
    folder = cpx_workspace.root / "my_plugins"
    folder.mkdir()
    (folder / "tiny.py").write_text(PLUGIN_SOURCE)
    host = create_plugin_host(entry_points=False, plugin_dirs=[folder])
    assert host.models.get("acme-tiny").origin == str(folder / "tiny.py")


def test_misspelt_hook_name_fails():
    class Typo:
        @hookimpl
        def register_model(self, register):  # missing "s"
            pass

    host = create_plugin_host(entry_points=False, builtins=False)
    with pytest.raises(PluginError, match="register_model"):
        host.register(Typo(), name="typo")


def test_duplicate_name_across_plugins_fails_naming_both(cpx_host):
    class Dup:
        @hookimpl
        def register_models(self, register):
            register("msf-lmsa", lambda o, n: None)

    cpx_host.register(Dup(), name="dup", origin="dup-plugin 0.1")
    with pytest.raises(PluginError, match="registered twice: by .* and by .*"):
        cpx_host.models
    with pytest.raises(PluginError) as err:
        cpx_host.models
    assert "builtin" in str(err.value) and "dup-plugin 0.1" in str(err.value)


def test_plugin_that_raises_while_registering_is_a_failure_not_a_crash(cpx_host):
    class Raises:
        @hookimpl
        def register_losses(self, register):
            raise RuntimeError("boom")

    cpx_host.register(Raises(), name="raises", origin="raises-plugin")
    assert "combined" in cpx_host.losses
    assert any("raises-plugin" in f and "boom" in f for f in cpx_host.failures)


def test_load_plugins_env_restricts_entry_points(installed_plugin, monkeypatch):
    monkeypatch.syspath_prepend(str(installed_plugin))
    monkeypatch.setenv("CPX_LOAD_PLUGINS", "")
    assert "acme-tiny" not in create_plugin_host().models
    monkeypatch.setenv("CPX_LOAD_PLUGINS", "acme-cpx")
    assert "acme-tiny" in create_plugin_host().models


def test_each_builtin_declares_the_hooks_it_implements():
    # the manager imports a built-in only when one of the hooks it declares is first called, so
    # a hook missing from BUILTIN_PLUGINS would never be called
    import importlib

    for name, hooks in BUILTIN_PLUGINS.items():
        module = importlib.import_module(name)
        implemented = {n for n, f in vars(module).items() if callable(f) and hasattr(f, "cpx_impl")}
        assert implemented == set(hooks), name


def test_a_builtin_is_imported_when_its_hook_is_first_called():
    code = ("import sys\n"
            "from cpx.kernel.manager import create_plugin_host\n"
            "host = create_plugin_host(entry_points=False)\n"
            "assert 'cpx_plugins.models' not in sys.modules\n"
            "host.competitions\n"
            "assert 'cpx_plugins.competitions' in sys.modules and 'cpx_plugins.models' not in sys.modules\n"
            "assert 'msf-lmsa' in host.models and 'cpx_plugins.models' in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_builtins_use_the_public_marker():
    import importlib

    for name in BUILTIN_PLUGINS:
        module = importlib.import_module(name)
        impls = [f for f in vars(module).values() if callable(f) and hasattr(f, "cpx_impl")]
        assert impls, f"{name} registers nothing through cpx.kernel.hookspecs.hookimpl"


def test_every_hook_is_documented_and_tested():
    specs = [name for name, f in vars(hookspecs).items() if hasattr(f, "cpx_spec")]
    assert len(specs) >= 5
    test_text = "\n".join(p.read_text() for p in TESTS.rglob("test_*.py"))
    for name in specs:
        doc = inspect.getdoc(getattr(hookspecs, name)) or ""
        assert ":param" in doc and "Example" in doc, f"hook {name} lacks parameter docs or an example"
        assert name in test_text.replace("hookspecs", ""), f"hook {name} has no test"


def test_register_commands_adds_a_cli_command(cpx_host):
    from typer.testing import CliRunner

    from cpx.cli import create_app

    class Cmd:
        @hookimpl
        def register_commands(self, app):
            @app.command("hello")
            def hello():
                print("hello from a plugin")

    cpx_host.register(Cmd(), name="cmd")
    result = CliRunner().invoke(create_app(cpx_host), ["hello"])
    assert result.exit_code == 0 and "hello from a plugin" in result.stdout


class _ThirdPartyScoring:
    """A plugin adding a metric and a submission format, as a third-party package would."""

    from cpx.kernel.hookspecs import hookimpl

    @hookimpl
    def register_metrics(self, register):
        from cpx_plugins.metrics import MeanClassAccuracy

        class Recall(MeanClassAccuracy):
            label = "mean recall (a plugin's)"

        register("recall", lambda options, classes: Recall(), description="mean class recall")

    @hookimpl
    def register_submission_formats(self, register):
        from cpx_plugins.formats.masks_png import MasksPng, MasksPngOptions

        register("png-too", MasksPng, options=MasksPngOptions, description="masks-png under another name")


def test_a_plugin_adds_a_metric_and_a_format_that_a_yaml_profile_can_name(cpx_host, cpx_workspace):
    import numpy as np

    from cpx.eval.metrics import ScoreAccumulator, create_metric
    from cpx.submit.formats import create_format

    cpx_host.register(_ThirdPartyScoring(), name="scoring-plugin", origin="tests")
    (cpx_workspace.root / "competitions").mkdir()
    (cpx_workspace.root / "competitions" / "two.yaml").write_text(
        "classes: [bg, fg]\nmetric: {name: recall}\nsubmission: {name: png-too}\n")
    cpx_host.__dict__.pop("registries", None)  # the workspace profile is read when the registries are built
    comp = cpx_host.competition("two")
    metric = create_metric(comp, cpx_host)
    acc = ScoreAccumulator(metric, 2)
    acc.update(np.array([[0, 1, 1, 1]]), np.array([[0, 1, 1, 0]]))
    assert acc.compute().score == 0.75  # recall: bg 1/2, fg 2/2
    assert create_format(comp, cpx_host).describe().startswith("masks/")
    assert cpx_host.metrics.get("recall").origin == "tests"
