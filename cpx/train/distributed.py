"""Data-parallel training over several processes (and machines) with PyTorch's elastic launcher.

``launch`` starts ``nproc`` workers per node through ``torch.distributed.launcher.elastic_launch``;
each joins a process group (gloo on CPU; NCCL for CUDA tensors and gloo for CPU ones when a
GPU is present) and calls :func:`cpx.train.run.train`, which is rank-aware:

* every rank draws the same per-epoch permutation and takes a disjoint shard of each global
  batch (``train.batch_size`` stays the *global* batch), and DistributedDataParallel averages
  the gradients, so one step sees the same images as a single process would;
* epoch losses and validation scores are summed over ranks (each scores every world-th
  validation image), so all ranks take the same best/patience/budget decisions;
* rank 0 alone writes the run folder, checkpoints, history and ledger rows, and runs the
  progress callbacks.

What differs from a single process: BatchNorm statistics are per rank (each normalises over
its own shard), and augmentation and dropout draw per-rank random numbers; a batch-pooled loss
such as soft Dice is pooled per shard before the gradients are averaged. Mean-reduced losses
(cross-entropy) with no BatchNorm or dropout match a single process up to float rounding.

Failures: a worker that raises or dies ends the whole job (no restarts); the agent stops the
other ranks, and ``launch`` raises a :class:`~cpx.kernel.errors.CpxError` naming the rank, its exit
code and its message; each rank's stderr is kept under ``experiments/cache/dist-logs/``.
Several nodes need a shared workspace folder (the run folder, ledger and data cache).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Optional

from cpx.kernel import errors
from cpx.kernel.errors import ConfigError, CpxError, RunError
from cpx.kernel.workspace import Workspace

ERROR_FILE = "rank{rank}.error.json"


@dataclass(frozen=True)
class LaunchPlan:
    """How ``cpx train --nproc/--nnodes`` starts its processes: counts, rendezvous, threads per
    process and where the workers' logs go.
    """

    nproc: int
    min_nodes: int
    max_nodes: int
    rdzv_endpoint: str
    rdzv_id: str
    threads: int  # intra-op threads per worker
    log_dir: Path


def parse_nnodes(text: Any) -> tuple[int, int]:
    """``2`` or ``"1:4"`` (elastic min:max) -> (min, max)."""
    raw = str(text).strip()
    low, sep, high = raw.partition(":")
    try:
        lo, hi = int(low), int(high) if sep else int(low)
    except ValueError:
        raise ConfigError(f"--nnodes: expected N or MIN:MAX, got {raw!r}") from None
    if lo < 1 or hi < lo:
        raise ConfigError(f"--nnodes: need 1 <= MIN <= MAX, got {raw!r}")
    return lo, hi


def plan_launch(workspace: Workspace, nproc: int, nnodes: Any = 1, rdzv_endpoint: Optional[str] = None,
                rdzv_id: str = "cpx-train") -> LaunchPlan:
    """The launch plan for ``nproc`` processes on each of ``nnodes`` nodes (``N`` or ``MIN:MAX``).

    :raises ConfigError: fewer than one process, a bad node count, or several nodes without a
        rendezvous endpoint.
    """
    if nproc < 1:
        raise ConfigError(f"--nproc: need at least 1 process, got {nproc}")
    lo, hi = parse_nnodes(nnodes)
    if hi > 1 and not rdzv_endpoint:
        raise ConfigError("--nnodes above 1 needs --rdzv-endpoint HOST:PORT (the same on every node)")
    # OMP_NUM_THREADS, when set, is the user's choice; otherwise the node's cores are shared out
    threads = int(os.environ.get("OMP_NUM_THREADS") or 0) or max(1, (os.cpu_count() or 1) // nproc)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-%f")
    return LaunchPlan(nproc=nproc, min_nodes=lo, max_nodes=hi, rdzv_endpoint=rdzv_endpoint or "localhost:0",
                      rdzv_id=rdzv_id, threads=threads, log_dir=workspace.cache_dir / "dist-logs" / stamp)


@contextmanager
def _quiet_elastic() -> Iterator[None]:
    # the agent logs its configuration and every failure at length; launch() reports instead
    loggers = [logging.getLogger(name) for name in ("torch.distributed.elastic", "torch.multiprocessing")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def launch(request, workspace: Workspace, host=None, *, nproc: int, nnodes: Any = 1,
           rdzv_endpoint: Optional[str] = None, callbacks: tuple = ()):
    """Train ``request`` (a :class:`cpx.train.run.TrainRequest`) data-parallel; the TrainResult of
    global rank 0 (None on a node that does not hold rank 0).

    ``callbacks`` are pickled to the workers and run on rank 0 only (plain objects, no consoles).
    The recipe or the run to resume is checked here first, so a typo fails before any process starts.
    """
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    plan = plan_launch(workspace, nproc, nnodes, rdzv_endpoint)
    _check_request(request, workspace, host)
    plan.log_dir.mkdir(parents=True, exist_ok=True)
    config = LaunchConfig(
        min_nodes=plan.min_nodes, max_nodes=plan.max_nodes, nproc_per_node=plan.nproc,
        run_id=plan.rdzv_id, rdzv_backend="c10d", rdzv_endpoint=plan.rdzv_endpoint,
        max_restarts=0, monitor_interval=0.2, start_method="spawn",
        # stdout (rank 0's progress) goes straight to the terminal; stderr to per-rank files
        logs_specs=DefaultLogsSpecs(log_dir=str(plan.log_dir), redirects=Std.ERR),
    )
    try:
        with _quiet_elastic():
            results = elastic_launch(config, _worker)(request, str(workspace.root), tuple(callbacks),
                                                      plan.threads, str(plan.log_dir))
    except ChildFailedError as exc:
        raise _failure_error(exc, plan.log_dir) from None
    except SignalException:  # Ctrl-C or a scheduler's SIGTERM reached the launcher
        raise KeyboardInterrupt from None
    return next((r for r in results.values() if r is not None), None)


def _check_request(request, workspace: Workspace, host) -> None:
    from cpx.kernel.config import build_config
    from cpx.kernel.manager import get_host
    from cpx.runs.ledger import Ledger

    if request.resume:
        with Ledger(workspace.ledger_path) as ledger:
            ledger.get_run(request.resume)
    elif request.recipe:
        build_config(request.recipe, request.overrides, workspace.experiments_dir, host or get_host())
    else:
        raise ConfigError("name a recipe (or a YAML file), or --resume RUN")


def _is_cpx(record: dict) -> bool:
    cls = getattr(errors, record.get("type", ""), None)
    return isinstance(cls, type) and issubclass(cls, CpxError)


def _is_knock_on(record: dict) -> bool:
    # when a peer dies, the survivors fail inside a collective; that is a consequence, not the cause
    text = f"{record.get('type', '')} {record.get('message', '')}".lower()
    return record.get("type", "").startswith("Dist") or any(
        word in text for word in ("connection closed", "connection reset", "gloo", "nccl", "broken pipe"))


def _failure_error(exc, log_dir: Path) -> CpxError:
    """One line naming the rank that caused the failure: its own error if it left one (a cpx
    error keeps its class), else its exit code or signal. Ranks that only failed because a
    peer vanished mid-collective are passed over."""
    records = {}
    for path in log_dir.glob("rank*.error.json"):
        try:
            record = json.loads(path.read_text())
            records[int(record["rank"])] = record
        except (OSError, ValueError, KeyError, TypeError):
            continue
    failures = dict(getattr(exc, "failures", {}) or {})

    def order(rank: int):
        record = records.get(rank)
        if record is None:
            return (1, failures[rank].timestamp if rank in failures else 0, rank)
        kind = 0 if _is_cpx(record) else 3 if _is_knock_on(record) else 2
        return (kind, record.get("time", 0), rank)

    ranks = sorted(set(failures) | set(records), key=order)
    if not ranks:
        return RunError(f"data-parallel training failed (worker logs in {log_dir})")
    rank = ranks[0]
    record = records.get(rank)
    if record is not None:
        text = f"rank {rank}: {record['message']}"
        if _is_cpx(record):
            return getattr(errors, record["type"])(text)
        return RunError(f"data-parallel training failed on {text} ({record['type']}; traceback in {log_dir})")
    failure = failures[rank]
    how = (f"was killed by {failure.signal_name()}" if failure.exitcode < 0
           else f"exited with code {failure.exitcode}")
    return RunError(f"data-parallel training failed: rank {rank} {how}; the other ranks were stopped "
                    f"(worker logs in {log_dir})")


def _terminated(signum, frame):
    signal.signal(signum, signal.SIG_DFL)  # a second SIGTERM, or one during exit, just ends the process
    raise SystemExit(128 + signum)


def _worker(request, root: str, callbacks: tuple, threads: int, log_dir: str):
    """One rank: join the process group, train, leave. Runs in a fresh (spawned) process."""
    import torch
    import torch.distributed as dist

    from cpx.kernel.manager import create_plugin_host, set_host
    from cpx.train.run import train

    rank = int(os.environ.get("RANK", "0"))
    # the agent stops survivors with SIGTERM; as an exception it still lets rank 0 mark the run failed
    signal.signal(signal.SIGTERM, _terminated)
    try:
        torch.set_num_threads(threads)
        os.environ["CPX_WORKSPACE"] = root
        workspace = Workspace(Path(root))
        host = create_plugin_host(plugin_dirs=workspace.plugin_dirs())
        set_host(host)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            backend = "cpu:gloo,cuda:nccl"
        else:
            backend = "gloo"
        dist.init_process_group(backend)
        try:
            result = train(request, workspace, host, callbacks)
        finally:
            dist.destroy_process_group()
        return result if rank == 0 else None
    except BaseException as exc:
        record = {"rank": rank, "type": type(exc).__name__, "message": str(exc).splitlines()[0] if str(exc) else "",
                  "time": datetime.now(timezone.utc).timestamp()}
        try:
            Path(log_dir, ERROR_FILE.format(rank=rank)).write_text(json.dumps(record))
        except OSError:
            pass
        traceback.print_exc()
        raise
    finally:
        # the handler is for the training; Python's exit handlers run after stderr is handed back
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
