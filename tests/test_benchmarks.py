"""The scripts in ``benchmarks/``: each imports, every cpx name it imports (inside functions
too) exists, and each runs end to end on tiny input, so a change to cpx's API cannot leave a
benchmark broken until someone next measures (it did: ``vs_reference.py`` still imported
``predict_folder`` from where it had moved away). The plain run checks the imports in a moment;
the end-to-end runs (tens of seconds: fresh processes, a benchmark child, three trainings) are
marked slow, so they run in CI's slow pass.

The reference training loop the benchmark compares against lives outside the repository
(``../shared/bench/seedstyle.py``); a stand-in with its command line and output runs here.
"""

import ast
import importlib
import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))
# what the scripts share (``_common.py``): imported by them, not run
HELPERS = [p for p in BENCHMARKS if p.name.startswith("_")]

# seedstyle.py's interface: `throughput` and `budget` modes printing one JSON line, evaluate()
STAND_IN = '''
import argparse, importlib, json, sys

import torch


def evaluate(model, data, files, size):
    return 0.5


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode")
    p.add_argument("--data")
    p.add_argument("--factory")
    p.add_argument("--image-size", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--minutes", type=float)
    p.add_argument("--val-fraction", type=float)
    p.add_argument("--save")
    args = p.parse_args()
    module, _, name = args.factory.partition(":")
    model = getattr(importlib.import_module(module), name)()
    if args.mode == "throughput":
        print(json.dumps({"mode": "throughput", "images_per_s": 1.0}))
    else:
        torch.save({"state_dict": model.state_dict()}, args.save)
        print(json.dumps({"mode": "budget", "epochs": 1, "train_seconds": 1, "val_f_score": 0.5}))


if __name__ == "__main__":
    main()
'''


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(f"benchmark_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cpx_imports(path: Path) -> list[tuple[int, str, str]]:
    """(line, module, name) of every ``from cpx... import name`` in the file, in functions too."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("cpx", "cpx_plugins"):
            found += [(node.lineno, node.module, alias.name) for alias in node.names]
    return found


@pytest.mark.parametrize("path", BENCHMARKS, ids=[p.name for p in BENCHMARKS])
def test_every_benchmark_imports_and_every_cpx_name_it_imports_exists(path):
    module = _load(path)
    assert path in HELPERS or callable(module.main)
    missing = []
    for line, module, name in _cpx_imports(path):
        owner = importlib.import_module(module)
        submodule = hasattr(owner, "__path__") and importlib.util.find_spec(f"{module}.{name}") is not None
        if not hasattr(owner, name) and not submodule:
            missing.append(f"line {line}: from {module} import {name}")
    assert not missing, f"{path.name} imports names cpx no longer has:\n" + "\n".join(missing)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_vs_reference_runs_every_section_on_tiny_input(tmp_path, monkeypatch, cpx_host, one_thread, capsys):
    data, workspace = _tiny_workspace(tmp_path, cpx_host)  # every section's recipe is its tiny unet
    (tmp_path / "seedstyle.py").write_text(STAND_IN)
    monkeypatch.chdir(workspace)
    script = _load(next(p for p in BENCHMARKS if p.name == "vs_reference.py"))
    figures = script.main(["--data", str(data), "--reference", str(tmp_path / "seedstyle.py"), "--recipe", "tiny",
                           "--workspace", str(workspace), "--steps", "1", "--image-size", "32", "--batch-size", "2",
                           "--predict-batches", "2", "--precision-recipe", "tiny", "--precision-size", "32",
                           "--precision-epochs", "1", "--budget-minutes", "0.01", "--budget-recipe", "tiny",
                           "--budget-size", "32", "--only", "throughput,predict,precision,budget"])
    assert set(figures) >= {"throughput", "predict", "precision", "budget"}
    assert figures["throughput"]["cpx_images_per_s"] > 0 and figures["predict"]["images"] == 2
    assert {"bf16", "fp32"} <= set(figures["precision"])
    assert 0 <= figures["budget"]["reference_scored_by_cpx"] <= 1
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]).keys() == figures.keys()
    assert sys.modules.get("benchmark_vs_reference") is None  # loaded from its file, not installed


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_startup_times_every_quick_command(capsys):
    script = _load(next(p for p in BENCHMARKS if p.name == "startup.py"))
    figures = script.main(["--runs", "1"])
    assert [c["command"] for c in figures["commands"]] == \
        ["python -c pass"] + ["cpx " + " ".join(c) for c in script.COMMANDS]
    assert all(c["exit_codes"] == [0] and c["own_seconds"] > 0 for c in figures["commands"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == figures


def _tiny_workspace(tmp_path, cpx_host) -> tuple[Path, Path]:
    """(data folder of 20 synthetic 32 px faces, workspace with a recipe ``tiny``: a unet of a
    few thousand parameters)."""
    from cpx.data import write_dataset

    comp = cpx_host.competition("celebamask-mini")
    data = tmp_path / "data"
    write_dataset(data, comp, comp.synthesize(20, 32, 0), test_count=2)
    workspace = tmp_path / "ws"
    (workspace / "experiments").mkdir(parents=True)
    (workspace / "experiments" / "tiny.yaml").write_text(
        "base: unet\nmodel:\n  options: {base_channels: 4, depth: 2}\n"
        "train: {epochs: 1, batch_size: 4}\nschedule: {warmup_epochs: 0}\n")
    return data, workspace


def _on_tiny_data(name: str, tmp_path, monkeypatch, cpx_host):
    """(the benchmark script ``name`` loaded, :func:`_tiny_workspace`'s data and workspace), with
    the workspace as the current folder."""
    data, workspace = _tiny_workspace(tmp_path, cpx_host)
    monkeypatch.chdir(workspace)
    return _load(next(p for p in BENCHMARKS if p.name == name)), data, workspace


def test_an_omitted_image_size_is_the_recipes_not_the_competitions(tmp_path, monkeypatch, cpx_host):
    # `best` trains at 384 px on a competition whose images are 512 px: a benchmark run without
    # --image-size measures the recipe as it trains
    import argparse

    monkeypatch.setenv("CPX_WORKSPACE", str(tmp_path / "ws"))  # workspace_and_host sets it; restored after
    common = _load(BENCHMARKS[0].parent / "_common.py")
    ws, host = common.workspace_and_host(tmp_path / "ws")
    args = argparse.Namespace(recipe="best", data=str(tmp_path / "data"), image_size=None, batch_size=None)
    assert common.recipe_config(args, ws, host)[0].data.image_size == 384
    args.image_size, args.batch_size = 128, 4
    args.precision = "fp32"
    config = common.recipe_config(args, ws, host)[0]
    assert (config.data.image_size, config.train.batch_size, config.train.precision) == (128, 4, "fp32")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_cpu_step_times_each_variant_on_tiny_input(tmp_path, monkeypatch, cpx_host, one_thread):
    script, data, workspace = _on_tiny_data("cpu_step.py", tmp_path, monkeypatch, cpx_host)
    figures = script.main(["--data", str(data), "--recipe", "tiny", "--image-size", "32", "--workspace",
                           str(workspace), "--variants", "1x2,1x4", "--steps", "1", "--rounds", "2"])
    assert set(figures["variants"]) == {"1x2", "1x4"}
    assert all(v["images_per_s"] > 0 and v["cpu_seconds_per_image"] > 0 for v in figures["variants"].values())
    assert figures["variants"]["1x2"]["vs_first"] == 1.0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_cache_memory_loads_the_same_pixels_copied_and_mapped(tmp_path, monkeypatch, cpx_host):
    script, data, workspace = _on_tiny_data("cache_memory.py", tmp_path, monkeypatch, cpx_host)
    figures = script.main(["--data", str(data), "--recipe", "tiny", "--image-size", "32", "--workspace",
                           str(workspace)])
    cases = figures["cases"]
    assert len(cases) == 4 and len({c["checksum"] for c in cases.values()}) == 1
    assert all(c["images"] > 0 and c["VmHWM"] > 0 for c in cases.values())
    assert (workspace / "cache-copied").is_dir() and (workspace / "cache-mapped").is_dir()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ab_step_runs_two_trees_in_turn_on_tiny_input(tmp_path, monkeypatch, cpx_host):
    # the source tree of this checkout against the installed cpx (the same code, two workers)
    tree = str(Path(__file__).resolve().parents[1])
    script, data, workspace = _on_tiny_data("ab_step.py", tmp_path, monkeypatch, cpx_host)
    figures = script.main(["--data", str(data), "--trees", f"{tree},.", "--recipe", "tiny", "--image-size", "32",
                           "--batch-size", "2", "--threads", "1", "--rounds", "2", "--workspace", str(workspace)])
    assert set(figures["trees"]) == {tree, "."}
    for row in figures["trees"].values():
        assert row["images_per_s"] > 0 and row["train_flops_per_s"] > 0 and row["peak_rss_gib"] > 0
    assert figures["trees"][tree]["cpx"] == str(Path(tree) / "cpx")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_step_profile_files_every_operator_of_a_step_by_kind(tmp_path, monkeypatch, cpx_host, one_thread):
    script, data, workspace = _on_tiny_data("step_profile.py", tmp_path, monkeypatch, cpx_host)
    figures = script.main(["--data", str(data), "--recipe", "best", "--image-size", "32", "--batch-size", "2",
                           "--steps", "1", "--workspace", str(workspace)])
    kinds = figures["kinds"]
    assert set(kinds) == set(script.KINDS) and figures["steps"] == 1
    assert abs(sum(k["share"] for k in kinds.values()) - 1) < 1e-6
    # dlv3p at 32 px: both kinds of convolution ran, forward and backward, and did arithmetic
    for kind in ("dense conv", "depthwise conv"):
        assert kinds[kind]["calls_per_step"] > 0 and kinds[kind]["gflop_per_step"] > 0
    assert kinds["batch norm"]["gb_per_step"] > 0 and kinds["batch norm"]["gflop_per_step"] == 0
    assert "convolution" in kinds["dense conv"]["top_operators"] and len(kinds["other"]["top_operators"]) <= script.TOP


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_fold_bn_times_both_evaluation_paths_on_tiny_input(tmp_path, monkeypatch, cpx_host, one_thread):
    from cpx_plugins.models.dlv3p_arch import ConvBNReLU

    script, data, workspace = _on_tiny_data("fold_bn.py", tmp_path, monkeypatch, cpx_host)
    figures = script.main(["--data", str(data), "--recipe", "best", "--image-size", "32", "--batch-size", "2",
                           "--threads", "1", "--steps", "1", "--rounds", "2", "--workspace", str(workspace)])
    assert set(figures["images_per_s"]) == {"folded", "separate"} and figures["ratio"] > 0
    assert figures["max_abs_logit_diff"] < 1e-3
    assert ConvBNReLU.fold_batchnorm is True  # left as it found it


GPU_CHECK = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"


def test_gpu_check_explains_itself_and_refuses_bad_arguments_in_one_line(tmp_path):
    import subprocess

    shown = subprocess.run(["bash", str(GPU_CHECK), "--help"], capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0 and "--device cuda|cpu" in shown.stdout and "set -euo" not in shown.stdout
    for args, said in ((["--data", str(tmp_path / "nowhere")], f"--data {tmp_path / 'nowhere'}: no such folder"),
                       (["--device"], "--device needs a value"), (["--bogus"], "unknown option --bogus")):
        out = subprocess.run(["bash", str(GPU_CHECK), *args], capture_output=True, text=True, timeout=30,
                             env={**os.environ, "OUT": str(tmp_path / "out")})
        assert out.returncode == 2 and out.stderr.strip() == f"gpu_check.sh: {said}" + (
            " (--help lists them)" if args == ["--bogus"] else ""), out.stderr


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_gpu_check_runs_on_the_cpu_and_leaves_only_its_figures(tmp_path, cpx_host):
    # the dry run the script's header asks for before a GPU machine is spent on it
    import subprocess

    data, _ = _tiny_workspace(tmp_path, cpx_host)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    out = subprocess.run(["bash", str(GPU_CHECK), "--device", "cpu", "--recipe", "unet", "--image-size", "32",
                          "--epochs", "1", "--data", str(data)], capture_output=True, text=True, timeout=600,
                         cwd=tmp_path, env={**os.environ, "OUT": str(tmp_path / "out"), "TMPDIR": str(scratch)})
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["epochs"] and summary["bench"]["train_images_per_s"] > 0 and summary["predict_seconds"] > 0
    assert "bench peak memory" in (tmp_path / "out" / "summary.txt").read_text()
    # the scratch workspace (mktemp's tmp.XXXXXXXXXX: a run, predictions) is gone
    assert not [p.name for p in scratch.iterdir() if p.name.startswith("tmp.")]
