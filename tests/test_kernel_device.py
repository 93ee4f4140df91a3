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
