"""Cost figures: FLOP counts, the benchmark result, the CLI table, and budget planning."""

import io
import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import UNET, tiny_overrides

from cpx.bench.measure import STAGES, BenchRequest, count_flops, project, run_bench
from cpx.cli import main
from cpx.kernel.errors import ConfigError


class _ConvAndDepthwise(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.dw = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)

    def forward(self, x):
        return self.dw(self.conv(x))


def test_flops_of_a_conv_and_a_depthwise_conv_by_hand():
    s = 16
    dense, depthwise = 2 * s * s * 8 * 3 * 9, 2 * s * s * 8 * 1 * 9  # multiply-adds x 2
    forward, train_flops = count_flops(_ConvAndDepthwise(), s, torch.device("cpu"))
    assert forward == dense + depthwise
    # backward: the weight gradient of each conv costs its forward, the input gradient of the
    # depthwise conv its forward too; the image needs no gradient. torch's own formula would
    # count the depthwise weight gradient 8 (= groups) times over.
    assert train_flops == forward + dense + 2 * depthwise


class _Attention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):
        t = (x.flatten(2).transpose(1, 2) * self.w)[:, None]  # 1 x 1 x (S*S) x 3 tokens
        return F.scaled_dot_product_attention(t, t, t)


def test_attention_flops_are_counted_on_cpu():
    s = 4
    forward, _ = count_flops(_Attention(), s, torch.device("cpu"))
    n, d = s * s, 3
    assert forward == 4 * n * n * d  # q @ k^T and attention @ v


def test_bench_in_process_projects_epoch_and_recipe_time(cpx_workspace, cpx_host, tiny_model):
    overrides = tiny_overrides(**{"train.batch_size": 4, "train.epochs": 7, "train.precision": "fp32",
                                  "data.image_size": 32})
    stages = []
    r = run_bench(BenchRequest(recipe="msf-lmsa", overrides=overrides, steps=1, warmup=1, isolate=False),
                  cpx_workspace, cpx_host, progress=lambda *step: stages.append(step))
    assert stages == [(stage, i, len(STAGES)) for i, stage in enumerate(STAGES)] + [("measured", 7, 7)]
    assert r.model == "tiny" and r.image_size == 32 and r.batch_size == 4 and r.precision == "fp32"
    assert (r.train_images, r.val_images) == (22, 2)  # the synthetic set's 24 split 90/10
    conv1, conv2 = 2 * 32 * 32 * 8 * 3 * 9, 2 * 32 * 32 * 19 * 8
    assert r.forward_flops == conv1 + conv2
    assert r.train_flops == r.forward_flops + conv1 + 2 * conv2
    assert r.attainable_flops > 1e8 and r.train_images_per_s > 0 and r.predict_images_per_s > 0
    assert 0 < r.train_fraction < 1
    assert r.epoch_seconds == pytest.approx(22 / r.train_images_per_s + 2 / r.predict_images_per_s)
    assert r.recipe_seconds == pytest.approx(7 * r.epoch_seconds)
    assert r.data_bytes == 24 * 4 * 32 * 32 and r.peak_memory_bytes > 0
    assert "random pixels" in r.data and r.notes
    # onto a T4 at the share of the ceiling reached here: FLOPs over the peak times that share
    t4 = project(r, "t4")
    assert t4.accelerator.peak_flops == 65e12 and t4.train_fraction == r.train_fraction and t4.epochs == 7
    per_epoch = 22 * r.train_flops / (65e12 * r.train_fraction) + 2 * r.forward_flops / (65e12 * r.predict_fraction)
    by_memory = r.epoch_seconds * r.memory_bandwidth / 320e9  # the copy measured here against 320 GB/s
    assert r.memory_bandwidth > 1e8 and t4.bound == ("memory" if by_memory > per_epoch else "compute")
    assert t4.epoch_seconds == pytest.approx(max(per_epoch, by_memory))
    assert t4.total_seconds == pytest.approx(7 * t4.epoch_seconds)
    # a smaller share assumed takes proportionally longer; a given epoch count replaces the recipe's
    slow = project(r, "T4", epochs=88, fraction=r.train_fraction / 2)  # a given share: compute only
    assert slow.epochs == 88 and slow.bound == "compute"
    assert slow.epoch_seconds == pytest.approx(2 * 22 * r.train_flops / (65e12 * r.train_fraction)
                                               + 2 * r.forward_flops / (65e12 * r.train_fraction / 2))
    for key, fraction in (("tpu", None), ("t4", 0.0), ("t4", 1.5)):
        with pytest.raises(ConfigError):
            project(r, key, fraction=fraction)


def test_bench_measures_a_competition_of_four_bands(cpx_workspace, cpx_host):
    # the model, the training batch, the FLOP count and the predicted tiles all take its 4 bands
    overrides = {**UNET, "competition": "landcover-tiles", "train.batch_size": 2, "train.precision": "fp32"}
    r = run_bench(BenchRequest(recipe="msf-lmsa", overrides=overrides, steps=1, warmup=1, isolate=False),
                  cpx_workspace, cpx_host)
    assert r.model == "unet" and r.image_size == 32 and r.predict_size == 1024
    assert r.forward_flops > 0 and r.train_images_per_s > 0 and r.predict_images_per_s > 0


@pytest.mark.slow  # a fresh interpreter and real processes: run by .ci/run after the plain suite
def test_cli_bench_measures_in_a_fresh_process(cpx_workspace):
    out = subprocess.run([sys.executable, "-m", "cpx", "bench", "msf-lmsa", "--set", "model.name=unet",
                          "--set", "model.options={base_channels: 4, depth: 2}", "--image-size", "32",
                          "--batch-size", "2", "--precision", "fp32", "--steps", "1", "--warmup", "1", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout)
    assert r["model"] == "unet" and r["device"] == "cpu" and r["memory_kind"] == "RSS high-water"
    # a fresh interpreter with torch loaded holds well over 100 MB; a 32px unet far below 4 GB
    assert 100 * 2 ** 20 < r["peak_memory_bytes"] < 4 * 2 ** 30
    assert r["train_flops"] > r["forward_flops"] > 0 and r["recipe_seconds"] > 0


def test_cli_bench_table_and_bad_values(cpx_workspace, capsys, monkeypatch):
    # the bar, drawn on an 80-column terminal, follows the measuring process's stages
    from rich.console import Console

    from cpx.cli import _common

    terminal = Console(file=io.StringIO(), force_terminal=True, width=80, color_system=None)
    monkeypatch.setattr(_common, "console", terminal)
    code = main(["bench", "msf-lmsa", "--set", "model.name=unet", "--set", "model.options={base_channels: 4, depth: 2}",
                 "--image-size", "32", "--batch-size", "2", "--steps", "1", "--warmup", "1", "--gpu", "a100"])
    out = capsys.readouterr()
    assert "projected on NVIDIA A100 40GB (312.00 TFLOP/s, 1.55 TB/s;" in out.out and "lower bounds" in out.out
    assert code == 0, out.err[-2000:]
    assert "(512px images, run by the model at 32px;" in out.out  # the competition's images, the recipe's size
    flat = " ".join(out.out.split())  # one timed step: the table says its figures are rough
    assert "timed over 1 step of 2 images" in flat or "timed no slower than plain prediction" in flat
    for label in ("parameters", "FLOPs per image", "attainable (matmul)", "training", "prediction",
                  "peak memory (training)", "one epoch", "whole recipe"):
        assert label in out.out, label
    drawn = terminal.file.getvalue()
    assert "measured" in drawn and "7/7" in drawn and "0:00:" in drawn and "…" not in drawn
    assert main(["bench", "msf-lmsa", "--gpu", "nope"]) == 2
    assert "--gpu nope: unknown; choose from a100, h100, l4, t4, v100" in capsys.readouterr().err
    # --steps 0 is one of tests/test_bad_inputs.py's cases


def test_the_training_peak_leaves_out_what_came_before_it():
    """On Linux the resident high-water mark restarts where training starts: memory touched
    and freed before (measuring the machine) is not counted as training's."""
    import mmap
    import sys

    import torch

    from cpx.train.timing import peak_memory, reset_peak_memory

    if not sys.platform.startswith("linux"):
        pytest.skip("VmHWM is Linux's")
    block = mmap.mmap(-1, 96 * 2 ** 20)  # its own mapping, whatever the allocator keeps
    block.write(b"x" * len(block))  # 96 MiB touched
    before, _ = peak_memory(torch.device("cpu"))
    block.close()
    reset_peak_memory(torch.device("cpu"))
    after, kind = peak_memory(torch.device("cpu"))
    assert kind == "RSS high-water" and after <= before - 64 * 2 ** 20


def test_cli_bench_names_a_bad_data_folder_in_one_line_before_measuring(cpx_workspace, tmp_path, capsys):
    # checked in this process, as cpx train checks it: no measuring process, no exception class name
    assert main(["bench", "msf-lmsa", "--data", str(tmp_path / "nowhere")]) == 2
    out = capsys.readouterr()
    assert out.err.strip() == f"error: data folder {tmp_path / 'nowhere'} does not exist"
    assert "measuring" not in out.out
    (tmp_path / "empty").mkdir()
    assert main(["bench", "msf-lmsa", "--data", str(tmp_path / "empty")]) == 2
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and "train image folder is missing" in lines[0] and "Error:" not in lines[0]
    assert "measuring" not in out.out
