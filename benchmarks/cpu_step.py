#!/usr/bin/env python3
"""A recipe's CPU training step under several thread counts and batch sizes, side by side.

One process, one model, the recipe's own trainer step (uint8 batch, augmentation, forward, loss,
backward, clipping, AdamW; no callbacks, as in ``cpx bench``), the variants interleaved round
by round (A, B, C, A, B, C ...) so that a change of load on a shared machine hits them all alike. For each variant: the median
images/s and its range (wall clock), and the CPU seconds per image: with more threads than
free cores the CPU time grows while the threads wait for each other, which is what makes a
busy machine train faster on fewer threads.

Usage::

    python benchmarks/cpu_step.py --data /work/shared/data/celebamask-mini
    python benchmarks/cpu_step.py --data DIR --recipe best --variants 2x16,1x16,2x8,1x8 --rounds 6

``TxB`` is T threads at batch B. Prints the machine (lscpu's model and vector flags), the load
before and after, one line per round, the medians, and last one JSON line.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_line, emit, load_avg, recipe_config, step_trainer, workspace_and_host  # noqa: E402, I001 (before torch)
import torch  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="competition data folder")
    p.add_argument("--recipe", default="best")
    p.add_argument("--image-size", type=int, default=None, help="default: the recipe's")
    p.add_argument("--batch-size", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--variants", default=None, help="comma-separated THREADSxBATCH (default: all cores and 1 "
                                                    "thread, at the recipe's batch and half of it)")
    p.add_argument("--steps", type=int, default=2, help="timed steps per variant and round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--workspace", default=None)
    p.add_argument("--json", default=None, help="also write the figures to this file")
    args = p.parse_args(argv)
    args.data = str(Path(args.data).resolve())

    from cpx.kernel.config import build_config
    from cpx.kernel.device import resolve_precision
    from cpx.train.prepare import prepare_data

    root = Path(args.workspace) if args.workspace else Path(tempfile.mkdtemp(prefix="cpx-cpu-step-"))
    ws, host = workspace_and_host(root.resolve())
    base, _ = build_config(args.recipe, {}, ws.experiments_dir, host)
    args.image_size = args.image_size or int(base.data.image_size)
    batch = int(base.train.batch_size)
    cores = os.cpu_count() or 1
    variants = ([tuple(int(v) for v in s.lower().split("x")) for s in args.variants.split(",")] if args.variants
                else [(t, b) for b in (batch, max(1, batch // 2)) for t in sorted({cores, 1}, reverse=True)])
    config, competition = recipe_config(args, ws, host)
    data = prepare_data(config, competition, ws)
    n = max(b for _, b in variants) * args.steps
    images, masks = data.train[0][:n].clone(), data.train[1][:n].clone()
    precision = resolve_precision(config.train.precision, torch.device("cpu"))
    trainer = step_trainer(config, host, competition, images, masks, precision)
    print(f"{args.recipe} ({config.model.name}) at {args.image_size}px, {precision}; {cpu_line()}; "
          f"{cores} cpus; torch {torch.__version__}; load {load_avg()}", flush=True)

    def run(threads: int, b: int) -> tuple[float, float]:
        torch.set_num_threads(threads)
        trainer.config = trainer.config.model_copy(update={"batch_size": b})
        trainer.train_images, trainer.train_masks = images[:b * args.steps], masks[:b * args.steps]
        c0, t0 = time.process_time(), time.perf_counter()
        trainer.train_epoch()
        return b * args.steps / (time.perf_counter() - t0), (time.process_time() - c0) / (b * args.steps)

    for v in variants:  # warm-up: allocator, oneDNN primitive caches for each shape
        run(*v)
    rates = {v: [] for v in variants}
    cpu = {v: [] for v in variants}
    for r in range(args.rounds):
        for v in variants:
            ips, cps = run(*v)
            rates[v].append(ips)
            cpu[v].append(cps)
        print(f"  round {r + 1}: " + ", ".join(f"{t}x{b} {rates[(t, b)][-1]:.2f}" for t, b in variants)
              + f" images/s (load {load_avg()})", flush=True)
    first = variants[0]
    out = {"cpu": cpu_line(), "recipe": args.recipe, "image_size": args.image_size, "variants": {}}
    for v in variants:
        med = statistics.median(rates[v])
        row = {"threads": v[0], "batch": v[1], "images_per_s": med, "range": [min(rates[v]), max(rates[v])],
               "cpu_seconds_per_image": statistics.median(cpu[v]),
               "vs_first": med / statistics.median(rates[first])}
        out["variants"][f"{v[0]}x{v[1]}"] = row
        print(f"  {v[0]} thread(s), batch {v[1]:3d}: {med:.2f} images/s (range {row['range'][0]:.2f}-"
              f"{row['range'][1]:.2f}), {row['cpu_seconds_per_image']:.3f} CPU s/image, "
              f"{row['vs_first']:.2f}x {first[0]}x{first[1]}", flush=True)
    out["load_after"] = load_avg()
    return emit(out, args.json)


if __name__ == "__main__":
    main()
