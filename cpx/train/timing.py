"""Timed training steps: how many images/s this machine trains a config at, and the peak memory
it reaches. ``cpx bench`` reports them; a budget run times its variants with them
(:mod:`cpx.train.variants`).
"""

from __future__ import annotations

import resource
import sys
import time
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import torch


def sync(device: torch.device) -> None:
    """Wait for ``device`` to finish its queued work (a no-op on a CPU), before reading a clock."""
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak: CUDA's allocator statistics, or on Linux the process's resident
    high-water mark (``VmHWM``, reset by writing 5 to ``/proc/self/clear_refs``), so the
    training peak leaves out what measuring the machine touched before it."""
    if device.type == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:  # not Linux, or not allowed: the process's whole high-water mark is read
        pass


def peak_memory(device: torch.device) -> tuple[int, str]:
    """``(bytes, kind)``: CUDA's max allocated, else the resident high-water mark since
    :func:`reset_peak_memory` (``VmHWM``), else the process's (``ru_maxrss``)."""
    if device.type == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated(device)), "cuda max allocated"
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024, "RSS high-water"
    except OSError:
        pass
    # ru_maxrss is in kilobytes on Linux, bytes on macOS
    scale = 1 if sys.platform == "darwin" else 1024
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale), "RSS high-water"


def time_training(config, model, loss_fn, augment, images, masks, warmup: int, device, precision: str,
                  timing: Callable[[], None]) -> tuple[float, tuple[int, str]]:
    """Training images/s over the steps after ``warmup`` warm-up steps (one batch of
    ``config.train.batch_size`` images a step, ``images``/``masks`` holding all of them), and the
    peak memory reached ``(bytes, kind)``. ``timing()`` is called as the timed steps start."""
    from cpx.train.loop import Trainer

    batch = int(config.train.batch_size)
    # a plan of 10**6 epochs keeps the learning rate in warm-up/cosine range, never at its end
    trainer = Trainer(model, loss_fn, augment, (images[:batch * warmup], masks[:batch * warmup]),
                      train=config.train.model_copy(update={"epochs": 10 ** 6}), optimizer=config.optimizer,
                      schedule=config.schedule, precision=precision, device=device)
    reset_peak_memory(device)
    trainer.train_epoch()
    trainer.train_images, trainer.train_masks = images[batch * warmup:], masks[batch * warmup:]
    timing()
    sync(device)
    t0 = time.perf_counter()
    trainer.train_epoch()
    sync(device)
    images_per_s = (len(images) - batch * warmup) / (time.perf_counter() - t0)
    return images_per_s, peak_memory(device)
