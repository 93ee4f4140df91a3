"""The compute environment: device and precision choice, autocast, ``torch.compile`` with its
eager fallback, parameter counts and the CPU heap setting. Training, prediction, ensembles, packaging and benchmarks all use these.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import warnings
from typing import Callable, Optional, Union

import torch


def resolve_device(name: str) -> torch.device:
    """``"auto"`` gives CUDA when available, else the CPU; any other name is passed to torch.

    :raises RuntimeError: torch does not know the device name.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> str:
    """The precision to compute in: ``fp32``, ``bf16`` or ``fp16``.

    ``"auto"`` picks bf16 on CUDA devices that support it (fp16 otherwise) and, on a CPU, bf16
    only where the CPU has native bf16 dot products (AVX512-BF16 or AMX): elsewhere bf16
    autocast is emulated and slower than fp32, so ``auto`` gives fp32 there.
    """
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


# torch's probes of the CPU's bf16 instructions (private, so each may be missing from a build)
_BF16_PROBES = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 dot products natively (AVX512-BF16 or AMX tiles), as
    torch detects them (the instruction set and the operating system's support for it)."""
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in _BF16_PROBES)


def autocast(device: torch.device, precision: str):
    """A context manager computing in ``precision`` on ``device`` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def resolve_compile(setting: Union[str, bool], device: torch.device) -> bool:
    """Whether to train through ``torch.compile`` (``train.compile``): ``True``/``False`` as given.

    ``"auto"`` compiles on CUDA devices only: on a CPU, inductor made ``best``'s training step
    slower than eager oneDNN convolutions in channels-last, after minutes of compiling (the
    figures: benchmarks/README.md, "Issue 20 item 2 on the perf2 branch").
    """
    if setting == "auto":
        return device.type == "cuda"
    if isinstance(setting, bool):
        return setting
    raise ValueError(f"train.compile: expected auto, true or false, got {setting!r}")


class CompiledOrEager:
    """``module`` called through ``torch.compile``, or eagerly once compiling has failed.

    ``torch.compile`` compiles lazily, on the first call, so a missing C compiler or an
    operation inductor cannot lower only shows there: that call (and every later one) then
    runs ``module`` eagerly, with one warning; ``failure`` keeps the error. The module's
    parameters are shared, so checkpoints and validation use ``module`` itself. A failure after
    part of the compiled graph has run (never seen) would have updated batch-norm running
    statistics once more for that batch.
    """

    def __init__(self, module: torch.nn.Module, compiler: Optional[Callable] = None):
        self.module = module
        self.compiled = (compiler or torch.compile)(module)
        self.failure: Optional[BaseException] = None

    def __call__(self, *args, **kwargs):
        if self.failure is None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - any compile failure falls back to eager
                self.failure = exc
                warnings.warn(f"torch.compile failed ({type(exc).__name__}: {str(exc)[:300]}); training "
                              "continues eagerly (set train.compile: false to skip compiling)", RuntimeWarning,
                              stacklevel=2)
        return self.module(*args, **kwargs)


def count_params(model: torch.nn.Module) -> int:
    """Parameters of ``model``, counted as competitions state their limits:
    ``sum(p.numel() for p in model.parameters())``."""
    return sum(p.numel() for p in model.parameters())


_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4
_heap_kept = False


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of handing it back to the kernel.

    By default every block above 32 MB is mmap-ed and unmapped on free, so each training or
    prediction step page-faults its large activations (160 MB of logits at 512px, batch 8)
    in afresh; at 512px that was about 6% of a CPU training step. Process-wide and idempotent;
    the resident size stays at its high-water mark, which training reaches anyway. Set
    ``CPX_KEEP_FREED_MEMORY=0`` to leave the allocator alone. Returns whether it is in effect.
    """
    global _heap_kept
    if _heap_kept:
        return True
    if os.environ.get("CPX_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = (libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1) == 1
              and libc.mallopt(_M_TOP_PAD, 64 << 20) == 1)
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False
    _heap_kept = bool(ok)
    return _heap_kept
