"""What the benchmark scripts share: the machine's description, the load, a workspace with its
plugin host, and a recipe's config with data, size and batch overrides."""

from __future__ import annotations

import os
from pathlib import Path


def load_avg() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def cpu_line() -> str:
    """lscpu's model name and the vector extensions that decide the CPU kernels."""
    model, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown CPU":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16")
    return f"{model} ({' '.join(f for f in wanted if f in flags) or 'no AVX2'})"


def workspace_and_host(root: Path):
    from cpx.kernel.manager import create_plugin_host, set_host
    from cpx.kernel.workspace import Workspace

    root.mkdir(parents=True, exist_ok=True)
    os.environ["CPX_WORKSPACE"] = str(root)
    ws = Workspace(root)
    host = create_plugin_host(plugin_dirs=ws.plugin_dirs())
    set_host(host)
    return ws, host


def recipe_config(args, ws, host, **extra):
    from cpx.kernel.config import build_config

    overrides = {"data.path": args.data, "data.image_size": args.image_size, **extra}
    if args.batch_size:
        overrides["train.batch_size"] = args.batch_size
    config, _ = build_config(args.recipe, overrides, ws.experiments_dir, host)
    return config, host.competition(config.competition)
