#!/usr/bin/env python3
"""cpx against the loop a competent user writes with segmentation_models_pytorch, in one run.

The user's side: ``smp.DeepLabV3Plus`` with a timm encoder (``tu-...``) of about cpx's
parameter count, no pretrained weights, ImageNet normalisation, cross-entropy + Dice
(``smp.losses.DiceLoss``), AdamW with a linear warm-up epoch then a cosine, a random
horizontal flip that swaps the left/right classes, and the training images decoded once into
memory at the training size (no per-step decoding on either side, so the comparison is of
model and loop). cpx's side: the recipe (default ``best``) through its own trainer.

Sections:

* ``throughput``: training images/s of both loops in this process, interleaved (user, cpx,
  user, cpx ... for ``--rounds`` rounds of ``--steps`` steps each), at the same resolution,
  batch size and threads; the user's loop is timed in NCHW and in channels-last and the faster
  layout goes on to the budget section;
* ``budget`` (``--budget-minutes``): each side trains for the same wall-clock minutes (the user's
  loop fits its cosine to the pace of its first epoch, as cpx's ``--budget`` does), one after
  the other, or both at once with ``--side-by-side`` (each then gets ``--threads``; on a shared
  machine this keeps the load the same for both); each final model is scored by cpx's
  evaluator on the same validation images at their own size.

Usage::

    python benchmarks/vs_smp.py --data /work/shared/data/celebamask-mini
    python benchmarks/vs_smp.py --data DIR --only budget --budget-minutes 20

Needs ``pip install 'cpx[bench]'`` (segmentation-models-pytorch, timm); without them it says so
and exits 0. Prints one block per section and, last, one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common, also when loaded from its file
from _common import cpu_line, load_avg, recipe_config, step_trainer, workspace_and_host  # noqa: E402, I001 (before torch)
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

SECTIONS = ("throughput", "budget")
NOTES: list[str] = []
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def import_smp():
    """``segmentation_models_pytorch``, or None with the reason it is missing."""
    try:
        import segmentation_models_pytorch as smp
        return smp, ""
    except ImportError as exc:
        return None, f"{exc.name or exc} is not installed: pip install 'cpx[bench]' (segmentation-models-pytorch, timm)"
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise
    # torchvision's compiled operators were built for another torch than this one (PyPI's
    # torchvision beside a CPU build of torch from elsewhere); timm and smp only need its Python
    # parts here, which load once the fake-kernel registrations of those operators are skipped
    for name in [m for m in sys.modules if m.split(".")[0] in ("torchvision", "timm", "segmentation_models_pytorch")]:
        del sys.modules[name]
    sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
    import segmentation_models_pytorch as smp
    NOTES.append("torchvision's compiled operators do not match this torch: loaded without them (unused here)")
    return smp, ""


# --------------------------------------------------------------------------------------------
# The user's loop


class Normalized(nn.Module):
    """An smp model taking [0, 1] images, as cpx's predictor hands them over."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x):
        return self.model((x - self.mean) / self.std)


def user_model(smp, args, num_classes: int) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = smp.DeepLabV3Plus(encoder_name=args.encoder, encoder_weights=None, classes=num_classes,
                                decoder_channels=args.decoder_channels)
    return Normalized(net)


class UserLoop:
    """The training loop of the module docstring: one ``step`` per batch of uint8 images."""

    def __init__(self, smp, args, images: torch.Tensor, masks: torch.Tensor, competition, channels_last: bool,
                 seed: int = 0):
        torch.manual_seed(seed)
        self.model = user_model(smp, args, competition.num_classes).train()
        self.channels_last = channels_last
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.images, self.masks = images, masks
        self.batch = args.batch_size_used
        self.lr = args.user_lr
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.lr, weight_decay=1e-4)
        self.ce = nn.CrossEntropyLoss(ignore_index=255)
        self.dice = smp.losses.DiceLoss("multiclass", from_logits=True, ignore_index=255)
        swap = torch.arange(256)
        for a, b in competition.flip_pairs:
            swap[a], swap[b] = b, a
        self.swap = swap
        self.steps_per_epoch = max(1, len(images) // self.batch)
        self.total_steps = 10 ** 9  # set by the budget once the pace is known
        self.step_count = 0

    def lr_at(self, step: int) -> float:
        warm = self.steps_per_epoch
        if step < warm:
            return self.lr * (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, self.total_steps - warm))
        return 0.5 * self.lr * (1 + math.cos(math.pi * progress))

    def step(self, idx: torch.Tensor) -> float:
        x = self.images[idx].float().div_(255)
        y = self.masks[idx].long()
        flip = torch.rand(len(idx)) < 0.5
        if flip.any():
            x[flip] = x[flip].flip(-1)
            y[flip] = self.swap[y[flip].flip(-1)]
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step_count)
        out = self.model(x)
        loss = self.ce(out, y) + self.dice(out, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step_count += 1
        return loss.item()

    def epoch_batches(self):
        order = torch.randperm(len(self.images))
        return [order[i * self.batch:(i + 1) * self.batch] for i in range(self.steps_per_epoch)]


def cpx_evaluate(model: nn.Module, val, competition, host, size: int) -> float:
    """The competition's metric on the validation images, the way cpx validates a run."""
    from cpx.eval.metrics import create_metric
    from cpx.eval.predict import Member, Predictor
    from cpx.eval.validate import evaluate, in_batches

    model.eval()
    predictor = Predictor([Member(model, size)], competition, device=torch.device("cpu"), precision="fp32")
    with torch.no_grad():
        return evaluate(predictor, in_batches(val, 8), create_metric(competition, host)).score


def user_data(args, ws, host):
    """(train images, train masks, validation items, competition): the recipe's split, the raw masks."""
    from cpx import data as datalib
    from cpx.train.prepare import prepare_data

    config, competition = recipe_config(args, ws, host)
    # the recipe's split and validation images; the user trains on the masks as published
    prepared = prepare_data(config, competition, ws)
    images, masks = datalib.load_dataset(prepared.root, competition, prepared.train_names, args.image_size,
                                         cache_dir=ws.cache_dir, mmap=True)
    return images, masks, prepared.val, competition


# --------------------------------------------------------------------------------------------
# Sections


def section_throughput(args, ws, host, smp) -> dict:
    from cpx.kernel.device import keep_freed_memory
    from cpx.train.prepare import prepare_data

    keep_freed_memory()  # for both sides: page faults are no part of either loop
    config, competition = recipe_config(args, ws, host)
    batch = args.batch_size_used
    n = batch * args.steps
    data = prepare_data(config, competition, ws)
    images, masks = data.train[0][:n].clone(), data.train[1][:n].clone()
    print(f"[throughput] {args.image_size}px, batch {batch}, {args.threads} thread(s), {args.rounds} rounds of "
          f"{args.steps} steps per side, interleaved (load {load_avg()})", flush=True)
    trainer = step_trainer(config, host, competition, images, masks, "fp32")
    model = trainer.model
    users = {layout: UserLoop(smp, args, images, masks, competition, layout == "channels_last")
             for layout in ("nchw", "channels_last")}

    def run_user(loop):
        for idx in loop.epoch_batches()[:args.steps]:
            loop.step(idx)

    sides = {f"smp ({k})": (lambda loop=v: run_user(loop)) for k, v in users.items()}
    sides["cpx"] = trainer.train_epoch
    for fn in sides.values():  # warm-up: allocator, oneDNN primitive caches
        fn()
    rates: dict[str, list[float]] = {k: [] for k in sides}
    for r in range(args.rounds):
        for name, fn in sides.items():
            t0 = time.perf_counter()
            fn()
            rates[name].append(n / (time.perf_counter() - t0))
        print(f"  round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in rates.items())
              + f" images/s (load {load_avg()})", flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    best_user = max((k for k in med if k.startswith("smp")), key=med.get)
    args.user_channels_last = "channels_last" in best_user
    params = {"smp": sum(p.numel() for p in users["nchw"].model.parameters()),
              "cpx": sum(p.numel() for p in model.parameters())}
    for k in sides:
        print(f"  {k:20s} median {med[k]:.2f} images/s (range {min(rates[k]):.2f}-{max(rates[k]):.2f})", flush=True)
    ratio = med["cpx"] / med[best_user]
    print(f"  parameters: smp {params['smp']:,} ({args.encoder}, decoder {args.decoder_channels}), "
          f"cpx {params['cpx']:,} ({config.model.name})", flush=True)
    print(f"  cpx / {best_user} = {ratio:.2f}x", flush=True)
    return {"images_per_s": rates, "median": med, "ratio": ratio, "user_layout": best_user, "params": params,
            "load_after": load_avg()}


def user_budget(args) -> dict:
    """The user's loop for ``--budget-minutes`` of training, then cpx's evaluator (a subprocess)."""
    smp, why = import_smp()
    if smp is None:
        raise SystemExit(why)
    torch.set_num_threads(args.threads)
    ws, host = workspace_and_host(Path(args.workspace))
    images, masks, val, competition = user_data(args, ws, host)
    loop = UserLoop(smp, args, images, masks, competition, args.user_channels_last, seed=args.seed)
    budget = args.budget_minutes * 60
    t0 = time.perf_counter()
    epochs = seen = 0
    while True:
        for idx in loop.epoch_batches():
            loop.step(idx)
            seen += len(idx)
        epochs += 1
        used = time.perf_counter() - t0
        if epochs == 1:  # fit the cosine to the pace of the first epoch, as a user would
            planned = max(1, int(budget / used))
            loop.total_steps = planned * loop.steps_per_epoch
        if used + used / epochs > budget or loop.step_count >= loop.total_steps:
            break
    train_seconds = time.perf_counter() - t0
    score = cpx_evaluate(loop.model, val, competition, host, args.image_size)
    return {"val_score": score, "epochs": epochs, "epochs_planned": planned, "images": seen,
            "train_seconds": round(train_seconds, 1), "images_per_s": seen / train_seconds,
            "load_after": load_avg()}


def section_budget(args, ws, host, smp) -> dict:
    minutes, threads = args.budget_minutes, args.threads
    how = "at the same time" if args.side_by_side else "one after the other"
    print(f"[budget] {minutes:g} minutes each at {args.image_size}px, {threads} thread(s) each, {how} "
          f"(load {load_avg()})", flush=True)
    user_cmd = [sys.executable, __file__, "--data", args.data, "--_user-budget", "--budget-minutes", f"{minutes:g}",
                "--image-size", str(args.image_size), "--threads", str(threads), "--workspace", str(ws.root),
                "--recipe", args.recipe, "--encoder", args.encoder, "--decoder-channels", str(args.decoder_channels),
                "--user-lr", str(args.user_lr), "--seed", str(args.seed)]
    if args.batch_size:
        user_cmd += ["--batch-size", str(args.batch_size)]
    if args.user_channels_last:
        user_cmd.append("--user-channels-last")
    name = f"vs-smp-{int(time.time())}"
    cpx_cmd = [str(Path(sys.executable).with_name("cpx")), "--workspace", str(ws.root), "train", args.recipe, "--data", args.data,
               "--image-size", str(args.image_size), "--budget", f"{minutes:g}m", "--seed", str(args.seed),
               "--name", name, "--quiet"]
    if args.batch_size:
        cpx_cmd += ["--batch-size", str(args.batch_size)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "CPX_WORKSPACE": str(ws.root)}
    for cmd in (user_cmd, cpx_cmd):
        print("  $ OMP_NUM_THREADS=%d %s" % (threads, " ".join(cmd)), flush=True)
    t0 = time.perf_counter()
    user_proc = subprocess.Popen(user_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    if not args.side_by_side:
        user_out, user_err = user_proc.communicate()
    cpx_proc = subprocess.run(cpx_cmd, capture_output=True, text=True, env=env)
    if args.side_by_side:
        user_out, user_err = user_proc.communicate()
    if user_proc.returncode != 0:
        raise SystemExit(f"the smp loop failed:\n{user_err[-3000:]}")
    if cpx_proc.returncode != 0:
        raise SystemExit(f"cpx train failed:\n{cpx_proc.stderr[-3000:]}\n{cpx_proc.stdout[-2000:]}")
    user = json.loads(user_out.strip().splitlines()[-1])
    print(f"  smp: val {user['val_score']:.4f} after {user['epochs']} epochs ({user['images']} images, "
          f"{user['images_per_s']:.2f} images/s)", flush=True)

    from cpx.runs.checkpoint import load_file
    from cpx.runs.handle import open_run

    handle = open_run(name, ws, host)
    history = handle.history
    images_seen = sum(round(h["images_per_s"] * h["seconds"]) for h in history)
    # cpx's final weights scored by the same evaluator as the user's (a budget may stop at an
    # epoch it did not validate); the better of the raw and the EMA weights, as cpx's own
    # validation picks
    _, _, val, competition = user_data(args, ws, host)
    scores = {"raw": cpx_evaluate(handle.load_model("last", "cpu", host), val, competition, host, args.image_size)}
    state = load_file(handle.checkpoint_path("last"))
    if isinstance(state, dict) and "ema" in state:
        ema = handle.create_model(host)
        ema.load_state_dict(state["ema"])
        scores["ema"] = cpx_evaluate(ema, val, competition, host, args.image_size)
    final = max(scores.values())
    print(f"  cpx: val {final:.4f} ({', '.join(f'{k} {v:.4f}' for k, v in scores.items())}) after {len(history)} "
          f"epochs ({images_seen} images); {time.perf_counter() - t0:.0f} s in all (load {load_avg()})", flush=True)
    print(f"  cpx - smp = {final - user['val_score']:+.4f}", flush=True)
    return {"minutes": minutes, "threads": threads, "side_by_side": args.side_by_side, "smp": user,
            "cpx": {"final_val_score": final, "scores": scores, "epochs": len(history), "images": images_seen,
                    "run_dir": str(handle.run_dir)},
            "gain": final - user["val_score"], "load_after": load_avg()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="competition data folder")
    p.add_argument("--recipe", default="best", help="cpx's recipe (its resolution and batch unless given)")
    p.add_argument("--image-size", type=int, default=None, help="training resolution of both (default: the recipe's)")
    p.add_argument("--batch-size", type=int, default=None, help="batch of both (default: the recipe's)")
    p.add_argument("--threads", type=int, default=None, help="torch threads of each side (default: all cores)")
    p.add_argument("--encoder", default="tu-mobilenetv2_075", help="smp encoder (timm's with the tu- prefix)")
    p.add_argument("--decoder-channels", type=int, default=128, help="smp DeepLabV3Plus decoder width")
    p.add_argument("--user-lr", type=float, default=1e-3, help="the user's AdamW peak learning rate")
    p.add_argument("--user-channels-last", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, default=3, help="timed steps per side and round")
    p.add_argument("--rounds", type=int, default=4, help="interleaved rounds of the throughput section")
    p.add_argument("--budget-minutes", type=float, default=None, help="run the budget section with this many minutes")
    p.add_argument("--side-by-side", action="store_true", help="train both budget runs at the same time")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", default=None, help=f"comma-separated sections from {', '.join(SECTIONS)}")
    p.add_argument("--workspace", default=None, help="where runs go (default: a new temporary folder)")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    p.add_argument("--_user-budget", dest="user_budget", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.data = str(Path(args.data).resolve())
    args.threads = args.threads or torch.get_num_threads()

    smp, why = import_smp()
    if smp is None:
        print(f"vs_smp: skipped: {why}")
        return
    root = Path(args.workspace) if args.workspace else Path(tempfile.mkdtemp(prefix="cpx-vs-smp-"))
    args.workspace = str(root.resolve())
    ws, host = workspace_and_host(root.resolve())
    from cpx.kernel.config import build_config

    config, _ = build_config(args.recipe, {}, ws.experiments_dir, host)
    args.image_size = args.image_size or int(config.data.image_size)
    args.batch_size_used = args.batch_size or int(config.train.batch_size)
    if args.user_budget:
        print(json.dumps(user_budget(args)))
        return

    torch.set_num_threads(args.threads)
    sections = args.only.split(",") if args.only else [s for s in SECTIONS if s != "budget" or args.budget_minutes]
    if "budget" in sections and not args.budget_minutes:
        p.error("the budget section needs --budget-minutes")
    print(f"workspace {ws.root}; torch {torch.__version__}, smp {smp.__version__}; {cpu_line()}; "
          f"{args.threads} thread(s) of {os.cpu_count()} cpus; load {load_avg()}", flush=True)
    figures = {"cpu": cpu_line(), "threads": args.threads, "image_size": args.image_size,
               "batch_size": args.batch_size_used, "load_before": load_avg()}
    args.user_channels_last = False
    for name in sections:
        figures[name] = globals()[f"section_{name}"](args, ws, host, smp)
    figures["notes"] = NOTES
    for note in NOTES:
        print(f"note: {note}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2, default=str))
    print(json.dumps(figures, default=str))


if __name__ == "__main__":
    main()
