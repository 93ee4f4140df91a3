"""The quick commands start without the heavy libraries (issue 20): a fresh interpreter runs
`cpx --help`, `--version`, `runs`, `leaderboard` and `recipes` and lists what each left in
``sys.modules``. They run in the workspace ``benchmarks/startup.py`` times (cpx.yaml naming a
competition, four runs, two scored submissions, so the leaderboard predicts test scores).

This checks the property that keeps start-up fast, not the time: the benchmark prints that.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COMMANDS = [["--help"], ["--version"], ["runs"], ["leaderboard"], ["recipes"]]
# none of these is needed to answer the commands above
HEAVY = ["torch", "numpy", "PIL", "scipy", "optuna", "matplotlib", "kornia", "requests", "mlflow", "tensorboard"]

# runs each command in turn and writes, after each, the heavy libraries imported so far
PROBE = """
import json, sys
from cpx.cli import main
out = []
for argv in json.loads(sys.argv[1]):
    code = main(argv)
    out.append({"argv": argv, "code": code, "heavy": [m for m in json.loads(sys.argv[2]) if m in sys.modules]})
with open(sys.argv[3], "w") as fh:
    json.dump(out, fh)
"""


def _probe(commands, workspace: Path, tmp_path: Path) -> list[dict]:
    result = tmp_path / "probe.json"
    run = subprocess.run([sys.executable, "-c", PROBE, json.dumps(commands), json.dumps(HEAVY), str(result)],
                         cwd=workspace, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return json.loads(result.read_text())


def test_quick_commands_import_no_heavy_library(cpx_workspace, tmp_path):
    spec = importlib.util.spec_from_file_location("startup_benchmark", REPO / "benchmarks" / "startup.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    assert [list(c) for c in benchmark.COMMANDS] == COMMANDS  # the benchmark times what this checks
    benchmark.sample_workspace(cpx_workspace.root)

    results = _probe(COMMANDS, cpx_workspace.root, tmp_path)
    assert [r["code"] for r in results] == [0] * len(COMMANDS)
    # the first command that imports one names it
    assert [(r["argv"], r["heavy"]) for r in results] == [(argv, []) for argv in COMMANDS]


PLUGIN = '''
from cpx.kernel.hookspecs import hookimpl


@hookimpl
def register_commands(app):
    @app.command("hello")
    def hello():
        """Greet from a workspace plugin."""
        print("hello from a plugin")


@hookimpl
def register_models(register):
    def build(options, num_classes):
        import torch

        return torch.nn.Conv2d(3, num_classes, 1)

    register("hello-net", build, description="a model whose factory imports torch")
'''


@pytest.mark.parametrize("argv", [["--help"], ["hello"]])
def test_plugin_commands_are_listed_and_run_without_torch(cpx_workspace, tmp_path, argv):
    folder = cpx_workspace.root / "my_plugins"
    folder.mkdir()
    (folder / "hello.py").write_text(PLUGIN)
    (cpx_workspace.root / "cpx.yaml").write_text(f"plugin_dirs: [{folder}]\n")
    code = ("import sys\nfrom cpx.cli import main\ncode = main(sys.argv[1:])\n"
            "assert 'torch' not in sys.modules, 'torch imported'\nsys.exit(code)\n")
    run = subprocess.run([sys.executable, "-c", code, *argv], cwd=cpx_workspace.root, capture_output=True,
                         text=True, env={**os.environ, "COLUMNS": "120"})
    assert run.returncode == 0, run.stderr
    if argv == ["--help"]:
        assert "hello" in run.stdout and "Greet from a workspace plugin." in run.stdout
    else:
        assert run.stdout == "hello from a plugin\n"
