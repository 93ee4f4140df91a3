#!/usr/bin/env python3
"""The training images' memory: the decode-once cache copied into the process against
memory-mapped (``load_dataset(..., mmap=True)``, what ``prepare_data`` does), side by side.

Each case runs in a fresh process, one after the other: it loads the recipe's training split
at the recipe's size through ``cpx.data.load_dataset`` and reads every image and mask once, a
batch of 16 at a time, as an epoch does. Cases: the first run (an empty cache folder, so the
images are decoded and the cache written) and a later run (the cache is there), each copied
and mapped. Printed per case: seconds to load, seconds to read, the peak resident memory
(``VmHWM``) and, at the end, the resident memory split into anonymous pages (the process's
own) and file pages (the cache file's, shared with every process that maps it and dropped by
the kernel under pressure instead of swapped), all from ``/proc/self/status``, in GiB.

Usage::

    python benchmarks/cache_memory.py --data /work/shared/data/celebamask-mini

Prints the machine and the load, one line per case, and last one JSON line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common, also when loaded from its file
from _common import cpu_line, emit, load_avg, recipe_config, workspace_and_host  # noqa: E402

CASES = (("first run", "copied"), ("first run", "mapped"), ("later run", "copied"), ("later run", "mapped"))


def _status_gib() -> dict:
    """``VmHWM``, ``RssAnon``, ``RssFile`` of this process, in GiB (Linux)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) / 2 ** 20  # kB -> GiB
    return out


def _child(args) -> dict:
    from cpx import data as datalib

    ws, host = workspace_and_host(Path(args.workspace))
    config, competition = recipe_config(args, ws, host)
    root = Path(args.data)
    names, _ = datalib.split_names(datalib.train_names(root, competition), config.data.val_fraction,
                                   config.data.split_seed)
    t0 = time.perf_counter()
    images, masks = datalib.load_dataset(root, competition, names, args.image_size, cache_dir=args.cache,
                                         mmap=args.mmap)
    loaded = time.perf_counter() - t0
    total = 0
    for a in range(0, len(images), 16):  # every pixel once, a batch at a time, as an epoch reads them
        total += int(images[a:a + 16].sum()) + int(masks[a:a + 16].sum())
    return {"images": len(images), "data_gib": (images.nbytes + masks.nbytes) / 2 ** 30, "load_s": loaded,
            "read_s": time.perf_counter() - t0 - loaded, "checksum": total, **_status_gib()}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="competition data folder")
    p.add_argument("--recipe", default="best", help="its split and training size")
    p.add_argument("--image-size", type=int, default=None, help="default: the recipe's")
    p.add_argument("--workspace", default=None, help="default: a new temporary folder")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    p.add_argument("--_cache", dest="cache", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_mmap", dest="mmap", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--_child", dest="child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.data = str(Path(args.data).resolve())
    args.batch_size = None
    root = Path(args.workspace or tempfile.mkdtemp(prefix="cpx-cache-memory-")).resolve()
    args.workspace = str(root)
    if args.child:
        figures = _child(args)
        print(json.dumps(figures))
        return figures

    print(f"{cpu_line()}; load {load_avg()}", flush=True)
    cmd = [sys.executable, __file__, "--_child", "--data", args.data, "--recipe", args.recipe, "--workspace",
           args.workspace] + (["--image-size", str(args.image_size)] if args.image_size else [])
    # each first run decodes into an empty folder of its own; the later runs find the first one's
    caches = {"copied": root / "cache-copied", "mapped": root / "cache-mapped"}
    figures = {"cpu": cpu_line(), "recipe": args.recipe, "load_before": load_avg(), "cases": {}}
    for when, how in CASES:
        cache = caches[how] if when == "first run" else caches["copied"]
        out = subprocess.run(cmd + ["--_cache", str(cache)] + (["--_mmap"] if how == "mapped" else []),
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"{when}, {how} failed:\n{out.stderr[-3000:]}")
        row = json.loads(out.stdout.strip().splitlines()[-1])
        figures["cases"][f"{when}, {how}"] = row
        print(f"  {when}, {how}: {row['images']} images ({row['data_gib']:.2f} GiB), load {row['load_s']:.1f} s, "
              f"read {row['read_s']:.1f} s; peak RSS {row['VmHWM']:.2f} GiB, at the end anonymous "
              f"{row['RssAnon']:.2f} GiB + file {row['RssFile']:.2f} GiB (load {load_avg()})", flush=True)
    figures["load_after"] = load_avg()
    return emit(figures, args.json)


if __name__ == "__main__":
    main()
