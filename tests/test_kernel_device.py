"""cpx.kernel.device: the CPU heap setting, device and precision choice."""

import os
import sys

import pytest

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
