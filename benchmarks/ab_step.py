#!/usr/bin/env python3
"""A recipe's CPU training step in two source trees of cpx (before and after a change), step
by step side by side.

Each tree gets a worker process that imports cpx and its built-in plugins from that tree
(``PYTHONPATH=TREE:TREE/plugins``; ``.`` is the installed cpx), builds the recipe's trainer
(:func:`_common.step_trainer`, the same in both) on the same real images, and waits. The parent
then asks them in turn for ``--steps`` training steps (A, B, A, B ... for ``--rounds`` rounds):
only one works at a time, the other sleeps on its pipe, so a change of load on a shared machine
hits both alike, minute by minute. Per tree: median images/s and its range (wall clock), CPU
seconds per image (the process's user + system time: with other programs on the cores this
moves less than the wall clock), GFLOP/s from the FLOP count of the tree's own model
(``cpx.bench.measure.count_flops``) and its share of the attainable matmul FLOP/s in the
step's precision (``--precision``, default the recipe's; measured by the parent before and
after, the better kept: on a loaded machine it is lower than on a
quiet one), and the worker's peak RSS. Both trees must build the trainer as
:func:`_common.step_trainer` does (cpx's ``Trainer`` with ``train``/``optimizer``/``schedule``
sections, main from December 2026 on).

Usage::

    git archive OLD_COMMIT | tar -x -C /tmp/before
    python benchmarks/ab_step.py --data /work/shared/data/celebamask-mini --trees /tmp/before,.

An AVX512 CPU can stand in for an AVX2-only one (the instruction set, not its caches or
clock): ``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 ... --precision fp32``.

Prints the machine (lscpu's model and vector flags), threads and the load, one line per round,
one line per tree, and last one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common, also when loaded from its file
from _common import add_precision_option, cpu_line, emit, load_avg, recipe_config, step_trainer, workspace_and_host  # noqa: E402


def _worker(args) -> None:
    """Build the trainer, say so in one JSON line, then answer each line of stdin with the
    figures of ``--steps`` training steps."""
    import torch

    from cpx import data as datalib
    from cpx.bench.measure import count_flops
    from cpx.kernel.device import count_params, resolve_precision

    torch.set_num_threads(args.threads)
    ws, host = workspace_and_host(Path(args.workspace))
    config, competition = recipe_config(args, ws, host)
    batch = int(config.train.batch_size)
    names = datalib.train_names(Path(args.data), competition)[:batch * args.steps]
    images, masks = datalib.load_dataset(args.data, competition, names, args.image_size)
    precision = resolve_precision(config.train.precision, torch.device("cpu"))
    trainer = step_trainer(config, host, competition, images, masks, precision)
    _, train_flops = count_flops(trainer.model, args.image_size, torch.device("cpu"), competition.channels)
    import cpx

    print(json.dumps({"cpx": str(Path(cpx.__file__).parent), "model": config.model.name,
                      "params": count_params(trainer.model), "batch": batch, "precision": precision,
                      "train_flops": train_flops}), flush=True)
    for _ in sys.stdin:
        c0, t0 = time.process_time(), time.perf_counter()
        trainer.train_epoch()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # kB -> GiB
        print(json.dumps({"images": len(images), "wall_s": wall, "cpu_s": cpu, "peak_rss_gib": peak}), flush=True)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="competition data folder")
    p.add_argument("--trees", required=True, help="BEFORE,AFTER: cpx source trees ('.' is the installed cpx)")
    p.add_argument("--recipe", default="best")
    p.add_argument("--image-size", type=int, default=None, help="default: the recipe's")
    p.add_argument("--batch-size", type=int, default=None, help="default: the recipe's")
    add_precision_option(p)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--steps", type=int, default=1, help="training steps per tree and round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--workspace", default=None, help="default: a new temporary folder")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    p.add_argument("--_worker", dest="worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.data = str(Path(args.data).resolve())
    if args.workspace is None:
        import tempfile

        args.workspace = tempfile.mkdtemp(prefix="cpx-ab-step-")
    if args.image_size is None:
        from cpx.kernel.config import build_config

        ws, host = workspace_and_host(Path(args.workspace))
        args.image_size = int(build_config(args.recipe, {}, ws.experiments_dir, host)[0].data.image_size)
    if args.worker:
        _worker(args)
        return {}

    import torch

    from cpx.bench.measure import attainable_matmul_flops

    trees = [t.strip() for t in args.trees.split(",")]
    torch.set_num_threads(args.threads)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_worker", "--data", args.data, "--recipe", args.recipe,
           "--image-size", str(args.image_size), "--threads", str(args.threads), "--steps", str(args.steps),
           "--workspace", args.workspace, "--trees", args.trees]
    if args.batch_size:
        cmd += ["--batch-size", str(args.batch_size)]
    if args.precision:
        cmd += ["--precision", args.precision]
    workers, info = {}, {}
    for tree in trees:
        env = dict(os.environ)
        if tree != ".":
            root = Path(tree).resolve()
            env["PYTHONPATH"] = os.pathsep.join([str(root), str(root / "plugins"), env.get("PYTHONPATH", "")])
        workers[tree] = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        info[tree] = json.loads(workers[tree].stdout.readline())  # one at a time: building is not timed
    precision = info[trees[0]]["precision"]  # the ceiling in the precision the step trains in
    attainable = [attainable_matmul_flops(torch.device("cpu"), precision)]
    print(f"{args.recipe} ({info[trees[0]]['model']}) at {args.image_size}px, batch {info[trees[0]]['batch']}, "
          f"{info[trees[0]]['precision']}; {cpu_line()}; {args.threads} thread(s) of {os.cpu_count()} cpus; "
          f"torch {torch.__version__}; load {load_avg()}", flush=True)

    def step(tree: str) -> dict:
        workers[tree].stdin.write("step\n")
        workers[tree].stdin.flush()
        return json.loads(workers[tree].stdout.readline())

    for tree in trees:  # warm-up: allocator, oneDNN primitive caches
        step(tree)
    rows: dict[str, list[dict]] = {t: [] for t in trees}
    for r in range(args.rounds):
        for tree in trees:
            rows[tree].append(step(tree))
        print(f"  round {r + 1}: " + ", ".join(f"{t} {rows[t][-1]['images'] / rows[t][-1]['wall_s']:.2f}"
                                               for t in trees) + f" images/s (load {load_avg()})", flush=True)
    for w in workers.values():
        w.stdin.close()
        w.wait()
    attainable.append(attainable_matmul_flops(torch.device("cpu"), precision))
    ceiling = max(attainable)
    figures = {"cpu": cpu_line(), "threads": args.threads, "recipe": args.recipe, "image_size": args.image_size,
               "attainable_flops": attainable, "trees": {}}
    for tree in trees:
        rates = [x["images"] / x["wall_s"] for x in rows[tree]]
        ips = statistics.median(rates)
        flops = ips * info[tree]["train_flops"]
        figures["trees"][tree] = row = {
            **info[tree], "images_per_s": ips, "range": [min(rates), max(rates)],
            "cpu_seconds_per_image": statistics.median(x["cpu_s"] / x["images"] for x in rows[tree]),
            "train_flops_per_s": flops, "fraction_of_attainable": flops / ceiling,
            "peak_rss_gib": max(x["peak_rss_gib"] for x in rows[tree])}
        print(f"  {tree}: {ips:.2f} images/s (range {row['range'][0]:.2f}-{row['range'][1]:.2f}), "
              f"{row['cpu_seconds_per_image']:.2f} CPU s/image, {flops / 1e9:.1f} GFLOP/s = "
              f"{100 * row['fraction_of_attainable']:.1f}% of {ceiling / 1e9:.0f}, peak RSS {row['peak_rss_gib']:.2f} GiB",
              flush=True)
    first, last = (figures["trees"][t] for t in (trees[0], trees[-1]))
    figures["ratio"] = last["images_per_s"] / first["images_per_s"]
    figures["cpu_ratio"] = first["cpu_seconds_per_image"] / last["cpu_seconds_per_image"]
    figures["load_after"] = load_avg()
    print(f"  {trees[-1]} / {trees[0]}: {figures['ratio']:.2f}x images/s, {figures['cpu_ratio']:.2f}x less CPU "
          f"time per image", flush=True)
    return emit(figures, args.json)


if __name__ == "__main__":
    main()
