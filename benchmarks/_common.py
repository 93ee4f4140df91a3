"""What the benchmark scripts share: the machine's description, the load, a workspace with its
plugin host, a recipe's config with data, size and batch overrides, and the recipe's trainer
as the step benchmarks time it."""

from __future__ import annotations

import json
import os
from pathlib import Path

# cpx sets OMP_WAIT_POLICY=PASSIVE (cpx/__init__.py), which OpenMP reads when torch loads: a script that
# imports torch before this module would time spinning threads, not cpx's (every script imports it first)
import cpx  # noqa: E402, F401


def emit(figures: dict, json_path=None) -> dict:
    """A benchmark's last step: every figure as one JSON line on stdout (and indented into
    ``json_path`` when given); returns ``figures``."""
    if json_path:
        Path(json_path).write_text(json.dumps(figures, indent=2, default=str))
    print(json.dumps(figures, default=str))
    return figures


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


def add_precision_option(parser) -> None:
    """``--precision``, read by :func:`recipe_config` (``train.precision``)."""
    parser.add_argument("--precision", default=None, choices=["auto", "fp32", "bf16"],
                        help="train.precision; default: the recipe's (auto: bf16 where the CPU has bf16 instructions)")


def recipe_config(args, ws, host, **extra):
    """The recipe ``args.recipe`` on ``args.data`` with ``--image-size``, ``--batch-size`` and
    ``--precision`` (:func:`add_precision_option`) where given (an omitted size is the recipe's,
    not the competition's native size) and ``extra`` overrides (key path -> value); returns
    (config, competition)."""
    from cpx.kernel.config import build_config

    overrides = {"data.path": args.data, **extra}
    if args.image_size:
        overrides["data.image_size"] = args.image_size
    if getattr(args, "precision", None):
        overrides["train.precision"] = args.precision
    if args.batch_size:
        overrides["train.batch_size"] = args.batch_size
    config, _ = build_config(args.recipe, overrides, ws.experiments_dir, host)
    return config, host.competition(config.competition)


def step_trainer(config, host, competition, images, masks, precision: str):
    """The recipe's :class:`cpx.train.loop.Trainer` on CPU over ``images`` (N x C x S x S uint8)
    and ``masks`` (N x S x S uint8), without callbacks (no EMA, no validation), as ``cpx bench``
    times a step; a plan of 10**6 epochs keeps the learning rate in its warm-up/cosine range."""
    import torch

    from cpx.train.loop import Trainer
    from cpx.train.run import build_components

    model, loss_fn, augment = build_components(config, host, competition)
    return Trainer(model, loss_fn, augment, (images, masks), train=config.train.model_copy(update={"epochs": 10 ** 6}),
                   optimizer=config.optimizer, schedule=config.schedule, precision=precision,
                   device=torch.device("cpu"))
