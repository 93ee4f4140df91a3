"""cpx.kernel.device: the CPU heap setting, device, precision and compile choice, the compile fallback."""

import math
import os
import re
import sys
import warnings
from pathlib import Path

import pytest
import torch

from cpx.kernel import device


def test_keep_freed_memory_can_be_turned_off(monkeypatch):
    monkeypatch.setattr(device, "_heap_kept", False)
    monkeypatch.setenv("CPX_KEEP_FREED_MEMORY", "0")
    assert device.keep_freed_memory() is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_keep_freed_memory_takes_effect_once_on_glibc(monkeypatch):
    monkeypatch.delenv("CPX_KEEP_FREED_MEMORY", raising=False)
    if os.confstr("CS_GNU_LIBC_VERSION") is None:
        pytest.skip("not glibc")
    assert device.keep_freed_memory() is True
    assert device.keep_freed_memory() is True  # idempotent


@pytest.mark.parametrize("name", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("where", ["cpu", "cuda"])
def test_a_named_precision_is_kept(name, where):
    assert device.resolve_precision(name, torch.device(where)) == name


@pytest.mark.parametrize("avx512_bf16,amx,expected", [(True, False, "bf16"), (False, True, "bf16"),
                                                      (True, True, "bf16"), (False, False, "fp32")])
def test_auto_on_a_cpu_is_bf16_only_with_native_bf16(monkeypatch, avx512_bf16, amx, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    assert device.resolve_precision("auto", torch.device("cpu")) == expected


def test_auto_on_a_cpu_without_the_probes_is_fp32(monkeypatch):
    for probe in device._BF16_PROBES:
        monkeypatch.delattr(torch.cpu, probe, raising=False)
    assert device.resolve_precision("auto", torch.device("cpu")) == "fp32"


@pytest.mark.parametrize("bf16,expected", [(True, "bf16"), (False, "fp16")])
def test_auto_on_a_gpu_is_bf16_where_it_is_supported(monkeypatch, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    assert device.resolve_precision("auto", torch.device("cuda")) == expected


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="reads the CPU flags Linux reports")
def test_auto_on_this_cpu_follows_its_flags():
    flags = set(re.findall(r"\b(avx512_bf16|amx_bf16|amx_tile)\b", Path("/proc/cpuinfo").read_text()))
    assert device.resolve_precision("auto", torch.device("cpu")) == ("bf16" if flags else "fp32")


@pytest.mark.parametrize("given, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_importing_cpx_makes_waiting_openmp_threads_sleep_unless_told_otherwise(given, expected):
    # a fresh interpreter: the OpenMP runtime reads the variable once, when torch loads
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    out = subprocess.run([sys.executable, "-c", "import os, cpx; print(os.environ['OMP_WAIT_POLICY'])"],
                         capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == expected


@pytest.mark.parametrize("setting,where,expected", [("auto", "cpu", False), ("auto", "cuda", True),
                                                    (True, "cpu", True), (False, "cuda", False)])
def test_compile_auto_is_cuda_only_and_a_given_choice_is_kept(setting, where, expected):
    assert device.resolve_compile(setting, torch.device(where)) is expected


def test_an_unknown_compile_setting_is_refused():
    with pytest.raises(ValueError, match="train.compile"):
        device.resolve_compile("sometimes", torch.device("cpu"))


def _failing_compiler(module):
    def compiled(*args, **kwargs):  # what torch.compile does without a C compiler: fail on the first call
        raise RuntimeError("inductor: no working C compiler")
    return compiled


def test_a_failed_compile_falls_back_to_eager_once_with_a_warning():
    net = torch.nn.Conv2d(3, 4, 1)
    x = torch.rand(2, 3, 5, 5)
    wrapped = device.CompiledOrEager(net, compiler=_failing_compiler)
    with pytest.warns(RuntimeWarning, match="torch.compile failed"):
        out = wrapped(x)
    assert isinstance(wrapped.failure, RuntimeError)
    torch.testing.assert_close(out, net(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wrapped(x)  # later calls go straight to eager, without a second warning


def test_a_working_compile_is_used():
    calls = []

    def compiler(module):
        def compiled(*args):
            calls.append(1)
            return module(*args)
        return compiled

    wrapped = device.CompiledOrEager(torch.nn.Identity(), compiler=compiler)
    wrapped(torch.zeros(1))
    assert calls == [1] and wrapped.failure is None


def test_a_trainer_asked_to_compile_trains_eagerly_when_compiling_fails(monkeypatch):
    from cpx.kernel.config import OptimizerConfig, ScheduleConfig, TrainConfig
    from cpx.train.loop import Trainer

    monkeypatch.setattr(torch, "compile", _failing_compiler)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 2, 1))
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    masks = torch.randint(0, 2, (4, 8, 8), dtype=torch.uint8)
    trainer = Trainer(model, torch.nn.functional.cross_entropy, None, (images, masks),
                      train=TrainConfig(epochs=1, batch_size=2, compile=True), optimizer=OptimizerConfig(),
                      schedule=ScheduleConfig(), precision="fp32", device=torch.device("cpu"))
    assert trainer.compiled and trainer.net.module is trainer.model
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.warns(RuntimeWarning, match="continues eagerly"):
        record = trainer.train_epoch()
    assert isinstance(trainer.net.failure, RuntimeError) and math.isfinite(record.train_loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # it trained


def test_a_cpu_trainer_trains_eagerly_by_default():
    from cpx.kernel.config import OptimizerConfig, ScheduleConfig, TrainConfig
    from cpx.train.loop import Trainer

    model = torch.nn.Conv2d(3, 2, 1)
    data = (torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(2, 4, 4, dtype=torch.uint8))
    trainer = Trainer(model, torch.nn.functional.cross_entropy, None, data, train=TrainConfig(batch_size=2),
                      optimizer=OptimizerConfig(), schedule=ScheduleConfig(), precision="fp32",
                      device=torch.device("cpu"))
    assert trainer.compiled is False and trainer.net is model
