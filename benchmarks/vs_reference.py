#!/usr/bin/env python3
"""cpx against the reference training loop, side by side in one run on one machine.

The reference (``seedstyle.py``) is the per-sample PIL + DataLoader + fp32 loop that cpx
replaces; it trains the very same model (``cpx.bench.measure:recipe_model`` builds the recipe's
network for it), so the ratios measure the pipelines, not the architectures.

Sections (all but ``budget`` run by default; the sizes are options, 512px and batch 8 unless
given, so a test can run every section on tiny input):

* ``throughput``: training images/s end to end at 512px, batch 8 (reference: its
  ``throughput`` mode; cpx: ``cpx bench`` in a fresh process, which also gives the peak
  training memory);
* ``predict``: the test images at 512px: a reference-style per-image fp32 loop without TTA
  (decode, forward, upsample, argmax, write PNG) against ``cpx.eval.predict_folder.predict_folder``
  with flip TTA in the automatic precision;
* ``precision``: the same short recipe trained in bf16 and in fp32, final validation F of each;
* ``budget`` (``--budget-minutes 20``, 40 minutes in all): the reference's ``budget`` mode and
  ``cpx train cpu-budget --budget``, one after the other, at 256px on the same split; each
  final model is also scored by the other side's evaluator, so the metric is not the difference.

Usage::

    python benchmarks/vs_reference.py --data /work/shared/data/celebamask-mini
    python benchmarks/vs_reference.py --data DIR --only budget --budget-minutes 20

Prints one block per section and, last, one JSON line with every figure.
``tests/test_benchmarks.py`` runs every section on tiny data with a stand-in reference.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common, also when loaded from its file
from _common import emit, load_avg, workspace_and_host  # noqa: E402, I001 (cpx before torch: OpenMP's wait policy)
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

REFERENCE = "/work/shared/bench/seedstyle.py"
FACTORY = "cpx.bench.measure:recipe_model"
SECTIONS = ("throughput", "predict", "precision", "budget")


def load_reference(path: str):
    spec = importlib.util.spec_from_file_location("seedstyle_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_reference(args, mode: str, *extra: str) -> dict:
    cmd = [sys.executable, args.reference, mode, "--data", args.data, "--factory", FACTORY, *extra]
    print("  $", " ".join(cmd), flush=True)
    env = {**os.environ, "CPX_BENCH_RECIPE": args.recipe}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"reference {mode} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------


def section_throughput(args, ws, host) -> dict:
    from cpx.bench.measure import BenchRequest, run_bench

    size, batch = args.image_size, args.batch_size
    print(f"[throughput] {size}px, batch {batch}, {args.steps} timed steps each (load {load_avg()})", flush=True)
    ref = run_reference(args, "throughput", "--image-size", str(size), "--batch-size", str(batch),
                        "--steps", str(args.steps))
    print(f"  reference: {ref['images_per_s']:.3f} images/s", flush=True)
    overrides = {"data.path": args.data, "data.image_size": size, "train.batch_size": batch}
    print(f"  $ cpx bench {args.recipe} --data {args.data} --image-size {size} --batch-size {batch} "
          f"--steps {args.steps}", flush=True)
    r = run_bench(BenchRequest(recipe=args.recipe, overrides=overrides, steps=args.steps), ws, host)
    ratio = r.train_images_per_s / ref["images_per_s"]
    print(f"  cpx ({r.precision}): {r.train_images_per_s:.3f} images/s -> {ratio:.2f}x the reference", flush=True)
    print(f"  cpx peak training memory: {r.peak_memory_bytes / 2 ** 30:.2f} GiB ({r.memory_kind}, "
          f"{r.batch_size * (2 + args.steps)} images in memory; the full data set adds "
          f"{r.data_bytes / 2 ** 30:.2f} GiB)", flush=True)
    print(f"  FLOPs/image {r.forward_flops / 1e9:.2f} G forward, {r.train_flops / 1e9:.2f} G train; "
          f"attainable {r.attainable_flops / 1e9:.0f} GFLOP/s; achieved {r.train_flops_per_s / 1e9:.1f} GFLOP/s "
          f"({100 * r.train_fraction:.1f}%)", flush=True)
    return {"reference_images_per_s": ref["images_per_s"], "cpx_images_per_s": r.train_images_per_s,
            "ratio": ratio, "cpx_precision": r.precision, "cpx_peak_memory_gib": r.peak_memory_bytes / 2 ** 30,
            "cpx_bench": r.to_dict(), "load_after": load_avg()}


def reference_style_predict(model, images: list[Path], out_dir: Path, size: int, palette: list[int]) -> float:
    """The old way: one image at a time, fp32, no TTA; decode, forward, upsample, argmax, PNG."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    t0 = time.perf_counter()
    with torch.no_grad():
        for path in images:
            img = Image.open(path).convert("RGB")
            w, h = img.size
            x = torch.from_numpy(np.array(img.resize((size, size))).astype(np.float32) / 255.0).permute(2, 0, 1)[None]
            logits = F.interpolate(model(x), size=(h, w), mode="bilinear", align_corners=False)
            mask = Image.fromarray(logits.argmax(1)[0].numpy().astype(np.uint8), mode="P")
            mask.putpalette(palette + [0] * (768 - len(palette)))
            mask.save(out_dir / f"{path.stem}.png")
    return time.perf_counter() - t0


def section_predict(args, ws, host) -> dict:
    from cpx import data as datalib
    from cpx.bench.measure import recipe_model
    from cpx.eval.predict import Member, Predictor
    from cpx.eval.predict_folder import predict_folder

    competition = host.competition("celebamask-mini")
    paths = datalib.test_image_paths(Path(args.data), competition)
    test_dir = paths[0].parent
    size = args.image_size
    print(f"[predict] {len(paths)} test images at {size}px (load {load_avg()})", flush=True)
    torch.manual_seed(0)
    model = recipe_model(args.recipe)
    reference_model = copy.deepcopy(model)
    palette = [int(v) for v in competition.palette_bytes()]
    out = {"images": len(paths), "cpx": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        reference_style_predict(reference_model, paths[:2], tmp / "warm-ref", size, palette)
        ref_s = reference_style_predict(reference_model, paths, tmp / "ref", size, palette)
        out["reference_seconds"] = ref_s
        print(f"  reference-style loop (fp32, no TTA, one image at a time): {ref_s:.1f} s = "
              f"{len(paths) / ref_s:.2f} images/s", flush=True)
        for tta, batch in [(("flip",), b) for b in args.predict_batches] + [((), args.predict_batches[0])]:
            label = f"tta {'flip' if tta else 'none'}, batch {batch}"
            predictor = Predictor([Member(model, size)], competition, tta=tta, precision="auto")
            predict_folder(predictor, test_dir, tmp / "warm", batch_size=batch, overwrite=True)  # kernel selection
            t0 = time.perf_counter()
            report = predict_folder(predictor, test_dir, tmp / "cpx", batch_size=batch, overwrite=True)
            seconds = time.perf_counter() - t0
            assert len(report.written) == len(paths)
            out["cpx"][label] = {"seconds": seconds, "speedup": ref_s / seconds, "precision": predictor.precision}
            print(f"  cpx predict_folder ({label}, {predictor.precision}): {seconds:.1f} s = "
                  f"{len(paths) / seconds:.2f} images/s -> {ref_s / seconds:.2f}x the reference's speed", flush=True)
    out["load_after"] = load_avg()
    return out


def section_precision(args, ws, host) -> dict:
    from cpx.train.run import TrainRequest, train

    print(f"[precision] recipe {args.precision_recipe} at {args.precision_size}px for {args.precision_epochs} "
          f"epochs, bf16 vs fp32 (load {load_avg()})", flush=True)
    out = {}
    for precision in ("bf16", "fp32"):
        overrides = {"data.path": args.data, "data.image_size": args.precision_size,
                     "train.epochs": args.precision_epochs, "train.precision": precision,
                     "train.budget_minutes": None, "train.val_every": args.precision_epochs}
        print(f"  $ cpx train {args.precision_recipe} --data {args.data} --image-size {args.precision_size} "
              f"--epochs {args.precision_epochs} --precision {precision} --set train.budget_minutes=null "
              f"--set train.val_every={args.precision_epochs}", flush=True)
        t0 = time.perf_counter()
        result = train(TrainRequest(recipe=args.precision_recipe, overrides=overrides, name=f"precision-{precision}"),
                       ws, host)
        history = json.loads((result.run_dir / "history.json").read_text())
        out[precision] = {"val_f": history[-1]["val_score"], "seconds": time.perf_counter() - t0,
                          "run_dir": str(result.run_dir)}
        print(f"  {precision}: final val F {out[precision]['val_f']:.4f} in {out[precision]['seconds']:.0f} s",
              flush=True)
    out["difference"] = abs(out["bf16"]["val_f"] - out["fp32"]["val_f"])
    print(f"  |bf16 - fp32| = {out['difference']:.4f}", flush=True)
    return out


@torch.no_grad()
def cpx_score(model, args, host, size: int, val_names: list[str]) -> float:
    """Validation F of ``model`` on ``val_names`` the way cpx validates (the one prediction-and-
    scoring loop, :func:`cpx.eval.validate.evaluate`, at each mask's own size)."""
    from cpx.eval.metrics import create_metric
    from cpx.eval.predict import Member, Predictor
    from cpx.eval.validate import evaluate_files

    competition = host.competition("celebamask-mini")
    predictor = Predictor([Member(model.eval(), size)], competition, precision="fp32")
    return evaluate_files(predictor, args.data, val_names, competition, create_metric(competition, host)).scores.score


def section_budget(args, ws, host) -> dict:
    from cpx.bench.measure import recipe_model
    from cpx.runs.handle import open_run
    from cpx.train.run import TrainRequest, train

    minutes, size, recipe = args.budget_minutes, args.budget_size, args.budget_recipe
    print(f"[budget] {minutes:g} minutes each at {size}px, one after the other (load {load_avg()})", flush=True)
    ref_weights = ws.root / "reference-budget.pt"
    ref = run_reference(args, "budget", "--image-size", str(size), "--minutes", f"{minutes:g}", "--val-fraction",
                        "0.1", "--save", str(ref_weights))
    print(f"  reference: val F {ref['val_f_score']:.4f} after {ref['epochs']} epochs "
          f"({ref['train_seconds']} s of training)  (load {load_avg()})", flush=True)

    overrides = {"data.path": args.data, "data.image_size": size, "train.budget_minutes": minutes}
    print(f"  $ cpx train {recipe} --data {args.data} --image-size {size} --budget {minutes:g}m", flush=True)
    t0 = time.perf_counter()
    result = train(TrainRequest(recipe=recipe, overrides=overrides, name=recipe), ws, host)
    wall = time.perf_counter() - t0
    history = json.loads((result.run_dir / "history.json").read_text())
    validated = [h for h in history if h.get("val_score") is not None]
    final_f = validated[-1]["val_score"]
    print(f"  cpx: final val F {final_f:.4f} (best {result.best_val_score:.4f}) after {result.epochs} epochs; "
          f"{result.wall_seconds:.0f} s of training, {wall:.0f} s with data loading  (load {load_avg()})", flush=True)

    # the other side's scorer on each final model: the gap is the training, not the metric
    reference = load_reference(args.reference)
    from cpx import data as datalib

    _, val_names = datalib.split_names(datalib.train_names(Path(args.data), host.competition("celebamask-mini")), 0.1, 42)
    val_files = [f"{n}.jpg" for n in val_names]
    ref_model = recipe_model(args.recipe)
    ref_model.load_state_dict(torch.load(ref_weights, map_location="cpu", weights_only=True)["state_dict"])
    ref_by_cpx = cpx_score(ref_model, args, host, size, val_names)
    handle = open_run(result.run_id, ws, host)
    cpx_model = handle.load_model("last", torch.device("cpu"), host)
    cpx_by_ref = reference.evaluate(cpx_model.float(), args.data, val_files, size)
    print(f"  cross-check: reference model scored by cpx {ref_by_cpx:.4f}; cpx final model scored by the "
          f"reference's evaluate() {cpx_by_ref:.4f}", flush=True)
    gain = final_f - ref["val_f_score"]
    print(f"  cpx - reference = {gain:+.4f}", flush=True)
    return {"minutes": minutes, "reference": ref, "cpx_final_val_f": final_f, "cpx_best_val_f": result.best_val_score,
            "cpx_epochs": result.epochs, "cpx_train_seconds": result.wall_seconds, "cpx_wall_seconds": wall,
            "reference_scored_by_cpx": ref_by_cpx, "cpx_scored_by_reference": cpx_by_ref, "gain": gain,
            "run_dir": str(result.run_dir), "notes": result.message}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="competition data folder")
    p.add_argument("--reference", default=REFERENCE, help="path of seedstyle.py")
    p.add_argument("--recipe", default="msf-lmsa", help="recipe whose model both sides train")
    p.add_argument("--steps", type=int, default=6, help="timed training steps per side")
    p.add_argument("--image-size", type=int, default=512, help="training and prediction size of throughput and predict")
    p.add_argument("--batch-size", type=int, default=8, help="training batch of the throughput section")
    p.add_argument("--only", default=None, help=f"comma-separated sections from {', '.join(SECTIONS)}")
    p.add_argument("--predict-batches", default="1,8", type=lambda v: [int(b) for b in v.split(",")],
                   help="batch sizes to run cpx's flip-TTA prediction with")
    p.add_argument("--precision-recipe", default="cpu-budget")
    p.add_argument("--precision-size", type=int, default=128)
    p.add_argument("--precision-epochs", type=int, default=8)
    p.add_argument("--budget-minutes", type=float, default=None, help="run the budget section with this many minutes")
    p.add_argument("--budget-recipe", default="cpu-budget", help="the recipe cpx trains in the budget section")
    p.add_argument("--budget-size", type=int, default=256, help="the image size of the budget section")
    p.add_argument("--workspace", default=None, help="where runs go (default: a new temporary folder)")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    args = p.parse_args(argv)
    args.data = str(Path(args.data).resolve())

    sections = args.only.split(",") if args.only else [s for s in SECTIONS if s != "budget" or args.budget_minutes]
    if "budget" in sections and not args.budget_minutes:
        p.error("the budget section needs --budget-minutes")
    root = Path(args.workspace) if args.workspace else Path(tempfile.mkdtemp(prefix="cpx-vs-reference-"))
    ws, host = workspace_and_host(root.resolve())
    print(f"workspace {ws.root}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} cpus; load {load_avg()}", flush=True)
    figures = {"load_before": load_avg()}
    for name in sections:
        figures[name] = globals()[f"section_{name}"](args, ws, host)
    return emit(figures, args.json)


if __name__ == "__main__":
    main()
