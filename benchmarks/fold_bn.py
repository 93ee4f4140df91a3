#!/usr/bin/env python3
"""dlv3p's evaluation forward with batch norm folded into the convolutions and as its own pass,
side by side.

One process, the recipe's model (random weights, random running statistics so the two paths
really differ) in evaluation mode on the recipe's training images at its size, channels-last,
``torch.no_grad``; the two variants (``ConvBNReLU.fold_batchnorm`` True and False) interleaved
round by round so that a change of load hits both. Prints the machine (lscpu's model and vector
flags), threads, the load, one line per round, the median images/s of each and their ratio, the
largest logit difference between them, and last one JSON line.

Usage::

    python benchmarks/fold_bn.py --data /work/shared/data/celebamask-mini --batch-size 8 --rounds 6
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_line, load_avg, recipe_config, workspace_and_host  # noqa: E402, I001 (before torch)
import torch  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="competition data folder")
    p.add_argument("--recipe", default="best", help="a recipe of the dlv3p model")
    p.add_argument("--image-size", type=int, default=None, help="default: the recipe's")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--steps", type=int, default=2, help="batches per variant and round")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--workspace", default=None, help="default: a new temporary folder")
    args = p.parse_args(argv)
    args.data = str(Path(args.data).resolve())

    from cpx.kernel.config import build_config
    from cpx.train.prepare import prepare_data
    from cpx.train.run import build_components
    from cpx_plugins.models.dlv3p_arch import ConvBNReLU

    torch.set_num_threads(args.threads)
    ws, host = workspace_and_host(Path(args.workspace or tempfile.mkdtemp(prefix="cpx-fold-bn-")).resolve())
    args.image_size = args.image_size or int(build_config(args.recipe, {}, ws.experiments_dir, host)[0].data.image_size)
    config, competition = recipe_config(args, ws, host)
    torch.manual_seed(0)
    model = build_components(config, host, competition)[0].to(memory_format=torch.channels_last).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2)
    images = prepare_data(config, competition, ws).train[0][:args.batch_size]
    x = images.float().div(255).contiguous(memory_format=torch.channels_last)
    print(f"{args.recipe} ({config.model.name}) evaluation at {args.image_size}px, batch {len(x)}, fp32; "
          f"{cpu_line()}; {args.threads} thread(s) of {os.cpu_count()} cpus; torch {torch.__version__}; "
          f"load {load_avg()}", flush=True)
    variants = {"folded": True, "separate": False}

    def run(fold: bool) -> tuple[float, torch.Tensor]:
        ConvBNReLU.fold_batchnorm = fold
        t0 = time.perf_counter()
        with torch.no_grad():
            for _ in range(args.steps):
                out = model(x)
        return len(x) * args.steps / (time.perf_counter() - t0), out

    outs = {name: run(fold)[1] for name, fold in variants.items()}  # warm-up; logits compared
    diff = float((outs["folded"] - outs["separate"]).abs().max())
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(args.rounds):
        for name, fold in variants.items():
            rates[name].append(run(fold)[0])
        print(f"  round {r + 1}: " + ", ".join(f"{n} {rates[n][-1]:.2f}" for n in variants)
              + f" images/s (load {load_avg()})", flush=True)
    ConvBNReLU.fold_batchnorm = True
    med = {n: statistics.median(v) for n, v in rates.items()}
    out = {"cpu": cpu_line(), "threads": args.threads, "image_size": args.image_size, "batch": len(x),
           "images_per_s": med, "range": {n: [min(v), max(v)] for n, v in rates.items()},
           "ratio": med["folded"] / med["separate"], "max_abs_logit_diff": diff, "load_after": load_avg()}
    print(f"  folded {med['folded']:.2f}, separate {med['separate']:.2f} images/s: {out['ratio']:.2f}x; "
          f"largest logit difference {diff:.2e}", flush=True)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
