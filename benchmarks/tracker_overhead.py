"""What live logging to a tracker costs an epoch (issue 22: under 1%).

Trains the same recipe (same seed, same synthetic data) without a tracker and with each of
``--log-to mlflow:sqlite:///...`` (a fresh store each time) and ``tensorboard:DIR``, alternating
so a change of load hits both sides, and prints for each: the median wall time of an epoch
(training, validation and the checkpoint commit; the first epoch left out as warm-up) and the
process's CPU time per epoch (every thread's: steadier than wall time on a shared machine), their
difference from the run without a tracker, and what the run's own TrackerReport measured: the
time spent in the training thread per epoch and its share of an epoch, and the tracker's own
time per epoch, spent beside training on a worker thread. The machine comes first (the CPU
model and vector extensions, cores, torch's threads, the load), and the load again at the end.
Printed, never asserted: timings depend on the machine and its load.

    python benchmarks/tracker_overhead.py                       # msf-lmsa at 64 px, 6 epochs, 2 rounds
    python benchmarks/tracker_overhead.py --image-size 128 --epochs 8 --rounds 3
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

from cpx.kernel.manager import create_plugin_host
from cpx.kernel.workspace import Workspace
from cpx.train.loop import Callback
from cpx.train.run import TrainRequest, train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_line, load_avg  # noqa: E402


class EpochClock(Callback):
    """Wall time and the process's CPU time (every thread's, the tracker's worker included)
    between epoch ends (the first epoch: from the start of training)."""

    def __init__(self):
        self.ends: list[tuple[float, float]] = []
        self.start = (0.0, 0.0)

    def on_fit_start(self, trainer) -> None:
        self.start = (time.perf_counter(), time.process_time())

    def on_epoch_end(self, trainer, record) -> None:
        self.ends.append((time.perf_counter(), time.process_time()))

    def epochs(self) -> list[tuple[float, float]]:
        """(wall seconds, CPU seconds) of each epoch."""
        marks = [self.start, *self.ends]
        return [(b[0] - a[0], b[1] - a[1]) for a, b in zip(marks, marks[1:])]


def one_run(recipe: str, overrides: dict, log_to: list[str], workspace: Workspace, host) -> dict:
    clock = EpochClock()
    result = train(TrainRequest(recipe=recipe, overrides=overrides, log_to=log_to), workspace, host,
                   callbacks=(clock,))
    epochs = clock.epochs()[1:]  # the first one pays for warm-up (and the tracker's import, beside it)
    out = {"epoch_seconds": statistics.median(w for w, _ in epochs) if epochs else None,
           "epoch_cpu_seconds": statistics.median(c for _, c in epochs) if epochs else None, "epochs": len(epochs) + 1}
    for report in result.trackers:
        out["loop_ms_per_epoch"] = 1e3 * report.loop_seconds / max(1, report.epochs)
        out["loop_share"] = report.overhead
        out["tracker_ms_per_epoch"] = 1e3 * report.background.get("log_metrics", 0.0) / max(1, report.epochs)
        out["tracker_start_s"] = report.background.get("start", 0.0)
        out["tracker_finish_s"] = report.background.get("finish", 0.0)
        out["problems"] = report.problems
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="msf-lmsa")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--trackers", default="mlflow,tensorboard")
    args = parser.parse_args()
    import torch

    machine = {"cpu": cpu_line(), "cores": os.cpu_count(), "torch": torch.__version__,
               "threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
               "load": load_avg()}
    print(f"{machine['cpu']}, {machine['cores']} cores, torch {machine['torch']} with {machine['threads']} threads "
          f"(OMP_WAIT_POLICY={machine['omp_wait_policy']}); load {machine['load']}")
    host = create_plugin_host(entry_points=False)
    overrides = {"train.epochs": args.epochs, "data.image_size": args.image_size, "train.patience": None,
                 "data.synthetic_size": args.image_size, "schedule.warmup_epochs": 1}
    rows: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="cpx-tracker-bench-") as tmp:
        root = Path(tmp)
        os.chdir(root)  # MLflow's SQLite store puts artifacts in ./mlruns
        workspace = Workspace(root / "ws")
        workspace.root.mkdir()
        one_run(args.recipe, {**overrides, "train.epochs": 1}, [], workspace, host)  # data cache, imports
        names = ["none", *args.trackers.split(",")]
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:  # each round starts elsewhere
                target = f"sqlite:///{root / f'mlflow-{r}.db'}" if name == "mlflow" else str(root / f"{name}-{r}")
                log_to = [] if name == "none" else [f"{name}:{target}"]
                rows.setdefault(name, []).append(one_run(args.recipe, overrides, log_to, workspace, host))
    base = statistics.median(r["epoch_seconds"] for r in rows["none"])
    base_cpu = statistics.median(r["epoch_cpu_seconds"] for r in rows["none"])
    print(f"{args.recipe} at {args.image_size} px, {args.epochs} epochs, {args.rounds} rounds; median epoch "
          f"without a tracker {base:.3f} s wall, {base_cpu:.3f} s CPU (all threads)")
    summary = {"recipe": args.recipe, "image_size": args.image_size, "epochs": args.epochs, "rounds": args.rounds,
               "epoch_seconds_without": base, "epoch_cpu_seconds_without": base_cpu}
    for name, runs in rows.items():
        if name == "none":
            continue
        epoch = statistics.median(r["epoch_seconds"] for r in runs)
        cpu = statistics.median(r["epoch_cpu_seconds"] for r in runs)
        loop = statistics.median(r["loop_ms_per_epoch"] for r in runs)
        share = statistics.median(r["loop_share"] for r in runs)
        worker = statistics.median(r["tracker_ms_per_epoch"] for r in runs)
        print(f"{name:12s} epoch {epoch:.3f} s wall ({(epoch - base) / base:+.2%} against none), {cpu:.3f} s CPU "
              f"({(cpu - base_cpu) / base_cpu:+.2%}); in the training loop "
              f"{loop:.3f} ms per epoch ({share:.4%} of an epoch); the tracker's own {worker:.1f} ms per epoch "
              f"({worker / 1e3 / epoch:.2%} of an epoch, on its worker thread); start "
              f"{runs[0]['tracker_start_s']:.1f} s, finish {runs[0]['tracker_finish_s']:.2f} s; problems "
              f"{sum(len(r['problems']) for r in runs)}")
        summary[name] = {"epoch_seconds": epoch, "vs_none": (epoch - base) / base, "epoch_cpu_seconds": cpu,
                         "cpu_vs_none": (cpu - base_cpu) / base_cpu, "loop_ms_per_epoch": loop,
                         "loop_share": share, "tracker_ms_per_epoch": worker}
    summary["machine"] = {**machine, "load_after": load_avg()}
    print(f"load at the end {summary['machine']['load_after']}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
