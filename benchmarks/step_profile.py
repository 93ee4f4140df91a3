#!/usr/bin/env python3
"""Where a recipe's CPU training step spends its time, by kind of operator, against the work each
kind does: the roofline question of issue 20, item 2 (is a kind bound by arithmetic or by memory?).

Every aten operator of ``--steps`` training steps (augmentation, forward, loss, backward, optimizer;
the recipe's own :class:`cpx.train.loop.Trainer` on real images, as ``cpx bench`` times a step) is
timed as it runs, through a ``TorchDispatchMode``, and filed under one kind:

- ``dense conv``: convolutions with one group, forward and both gradients;
- ``depthwise conv``: one input channel per group, forward and both gradients;
- ``matmul``: mm, bmm, addmm, baddbmm (dlv3p's classifier);
- ``batch norm``: batch norm forward and backward;
- ``elementwise``: operators torch tags ``pointwise`` (ReLU and its gradient, adds, copies);
- ``other``: the rest (interpolation, reductions, the loss, the optimizer, augmentation's warps).

Per kind: its slowest operators by name, its share of the timed operator time, seconds per step, FLOPs (for convolutions
``2 x output elements x input channels per group x kernel area`` for the forward pass and for
each gradient computed, Hockney & Jesshope's count as ``torch.utils.flop_counter`` uses it; for
matmuls ``2 m n k``), GFLOP/s, and bytes moved (each tensor argument read once and each result
written once: a lower bound) in GB/s. Beside them, in the same run, the machine's matmul
FLOP/s in the step's precision and its copy bandwidth (:func:`cpx.bench.measure.attainable_matmul_flops`,
:func:`cpx.bench.measure.copy_bandwidth`): a kind far under the first and near the second is
bound by memory.

Usage::

    python benchmarks/step_profile.py --data /work/shared/data/celebamask-mini [--recipe best] [--steps 2]

Prints the machine (lscpu's model and vector flags), threads and the load, one line per kind,
and last one JSON line.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_precision_option, cpu_line, emit, load_avg, recipe_config, step_trainer, workspace_and_host  # noqa: E402, I001 (before torch)
import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

KINDS = ("dense conv", "depthwise conv", "matmul", "batch norm", "elementwise", "other")
_BATCH_NORM = {"native_batch_norm", "_native_batch_norm_legit", "_native_batch_norm_legit_no_training",
               "native_batch_norm_backward", "batch_norm_backward"}
_MATMUL = {"mm", "bmm", "addmm", "baddbmm"}
TOP = 4  # operators named per kind, the slowest first
# untimed steps first: after one, the first timed step still page-faulted its 180 MB loss
# buffers in (log-softmax 0.3-0.4 s against 0.03 s later, `best` at 384 px in bf16)
WARMUP_STEPS = 3


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)


def _bytes(args, out) -> int:
    return sum(t.numel() * t.element_size() for t in (*_tensors(args), *_tensors(out)))


def _conv_kind(weight: torch.Tensor, groups: int) -> str:
    return "depthwise conv" if groups > 1 and weight.shape[1] == 1 else "dense conv"


def classify(func, args, out) -> tuple[str, float]:
    """(kind, FLOPs) of one aten call ``func(*args) -> out``."""
    name = func.overloadpacket.__name__
    if name == "convolution":
        weight, groups = args[1], args[8]
        return _conv_kind(weight, groups), 2.0 * out.numel() * weight[0].numel()
    if name == "convolution_backward":
        grad_out, weight, groups, mask = args[0], args[2], args[9], args[10]
        return _conv_kind(weight, groups), 2.0 * grad_out.numel() * weight[0].numel() * (int(mask[0]) + int(mask[1]))
    if name in _MATMUL:
        a, b = (args[1], args[2]) if name in ("addmm", "baddbmm") else (args[0], args[1])
        return "matmul", 2.0 * a.numel() * b.shape[-1]
    if name in _BATCH_NORM:
        return "batch norm", 0.0
    if torch.Tag.pointwise in func.tags:
        return "elementwise", 0.0
    return "other", 0.0


class OpTimer(TorchDispatchMode):
    """Times every aten call made under it (CPU: calls are synchronous) and files it by
    :func:`classify`: ``seconds``, ``flops``, ``bytes`` and ``calls`` per kind, and ``by_op``:
    seconds per (kind, aten operator name)."""

    def __init__(self):
        super().__init__()
        self.seconds, self.flops, self.bytes, self.calls = (defaultdict(float), defaultdict(float),
                                                            defaultdict(float), defaultdict(int))
        self.by_op = defaultdict(float)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        t0 = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        dt = time.perf_counter() - t0
        kind, flops = classify(func, args, out)
        self.seconds[kind] += dt
        self.flops[kind] += flops
        self.bytes[kind] += _bytes(args, out)
        self.calls[kind] += 1
        self.by_op[kind, func.overloadpacket.__name__] += dt
        return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="competition data folder")
    p.add_argument("--recipe", default="best")
    p.add_argument("--image-size", type=int, default=None, help="default: the recipe's")
    p.add_argument("--batch-size", type=int, default=None, help="default: the recipe's")
    add_precision_option(p)
    p.add_argument("--steps", type=int, default=2, help="profiled training steps (after WARMUP_STEPS untimed ones)")
    p.add_argument("--threads", type=int, default=None, help="default: torch's (all cores)")
    p.add_argument("--workspace", default=None)
    p.add_argument("--json", default=None, help="also write the figures to this file")
    args = p.parse_args(argv)
    args.data = str(Path(args.data).resolve())
    if args.threads:
        torch.set_num_threads(args.threads)

    from cpx import data as datalib
    from cpx.bench.measure import attainable_matmul_flops, copy_bandwidth
    from cpx.kernel.device import resolve_precision

    root = Path(args.workspace) if args.workspace else Path(tempfile.mkdtemp(prefix="cpx-step-profile-"))
    ws, host = workspace_and_host(root.resolve())
    config, competition = recipe_config(args, ws, host)
    args.image_size = int(config.data.image_size)
    batch = int(config.train.batch_size)
    names = datalib.train_names(Path(args.data), competition)[:batch * (args.steps + WARMUP_STEPS)]
    images, masks = datalib.load_dataset(args.data, competition, names, args.image_size)
    precision = resolve_precision(config.train.precision, torch.device("cpu"))
    warm = batch * WARMUP_STEPS
    trainer = step_trainer(config, host, competition, images[:warm], masks[:warm], precision)
    print(f"{args.recipe} ({config.model.name}) at {args.image_size}px, batch {batch}, {precision}; {cpu_line()}; "
          f"{torch.get_num_threads()} threads; torch {torch.__version__}; load {load_avg()}", flush=True)
    trainer.train_epoch()  # warm-up: the allocator's heap, oneDNN's primitive caches
    trainer.train_images, trainer.train_masks = images[warm:], masks[warm:]
    timer = OpTimer()
    t0 = time.perf_counter()
    with timer:
        trainer.train_epoch()
    wall = time.perf_counter() - t0
    steps = len(trainer.train_images) // batch
    ceiling = attainable_matmul_flops(torch.device("cpu"), precision)
    bandwidth = copy_bandwidth(torch.device("cpu"))
    timed = sum(timer.seconds.values())
    print(f"  {steps} steps in {wall:.2f} s ({steps * batch / wall:.2f} images/s with the timer on); operators "
          f"{timed:.2f} s of it; matmul ceiling {ceiling / 1e9:.1f} GFLOP/s, copy bandwidth {bandwidth / 1e9:.1f} "
          f"GB/s (load {load_avg()})", flush=True)
    kinds = {}
    for kind in KINDS:
        s = timer.seconds.get(kind, 0.0)
        row = {"share": s / timed if timed else 0.0, "seconds_per_step": s / steps, "calls_per_step": timer.calls[kind] / steps,
               "gflop_per_step": timer.flops[kind] / steps / 1e9, "gb_per_step": timer.bytes[kind] / steps / 1e9,
               "gflop_per_s": timer.flops[kind] / s / 1e9 if s else 0.0, "gb_per_s": timer.bytes[kind] / s / 1e9 if s else 0.0}
        row["fraction_of_ceiling"] = row["gflop_per_s"] * 1e9 / ceiling
        row["fraction_of_bandwidth"] = row["gb_per_s"] * 1e9 / bandwidth
        ops = sorted(((t, name) for (k, name), t in timer.by_op.items() if k == kind), reverse=True)
        row["top_operators"] = {name: t / steps for t, name in ops[:TOP]}  # seconds per step
        kinds[kind] = row
        flops = (f"{row['gflop_per_step']:7.1f} GFLOP, {row['gflop_per_s']:6.1f} GFLOP/s "
                 f"({100 * row['fraction_of_ceiling']:4.1f}% of the ceiling)") if row["gflop_per_step"] else " " * 46
        print(f"  {kind:15s} {100 * row['share']:5.1f}% of the time, {row['seconds_per_step']:6.3f} s/step; {flops}; "
              f"{row['gb_per_step']:6.2f} GB, {row['gb_per_s']:5.1f} GB/s ({100 * row['fraction_of_bandwidth']:3.0f}% of "
              f"copy)", flush=True)
        if row["top_operators"]:
            print("  " + " " * 16 + ", ".join(f"{name} {t:.3f}" for name, t in row["top_operators"].items())
                  + " s/step", flush=True)
    return emit({"cpu": cpu_line(), "recipe": args.recipe, "model": config.model.name, "image_size": args.image_size,
                 "batch": batch, "precision": precision, "threads": torch.get_num_threads(), "steps": steps,
                 "wall_s": wall, "operator_s": timed, "ceiling_flops": ceiling, "copy_bandwidth": bandwidth,
                 "kinds": kinds, "load_after": load_avg()}, args.json)


if __name__ == "__main__":
    main()
