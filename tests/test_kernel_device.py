"""cpx.kernel.device: the CPU heap setting, device and precision choice."""

import os
import re
import sys
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
