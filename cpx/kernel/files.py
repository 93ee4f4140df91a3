"""Small helpers shared by the core: atomic writes, parameter counts, the CPU heap setting."""

from __future__ import annotations

import ctypes
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

# mkstemp creates files 0600; saved results should get the usual permissions instead
_UMASK = os.umask(0)
os.umask(_UMASK)
_MODE = 0o666 & ~_UMASK


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file beside ``path`` then rename, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_torch_save(obj: Any, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.chmod(tmp, _MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def count_params(model: torch.nn.Module) -> int:
    """Trainable parameters, counted the way competitions state their limits."""
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
