#!/usr/bin/env python3
"""How long the quick commands take to answer: `cpx --help`, `--version`, `runs`, `leaderboard`
and `recipes`, each started as a user starts it (the ``cpx`` console script, a fresh process).

For each command: the median over ``--runs`` runs of its own time (user + system CPU seconds of
the process, which other processes on the machine do not add to) and of its wall time, after one
untimed run that writes the bytecode caches (an installed cpx has them; ``PYTHONDONTWRITEBYTECODE``
is left out so they are written); then the heavy libraries the command imported, from one more
run that lists them. The machine comes first: the CPU model (``lscpu``), the cores and the load
(``uptime``), since wall times on a busy machine say more about the other jobs than about cpx;
and the bare interpreter (``python -c pass``) is timed the same way, the floor of any command
(on a busy machine even own times grow, the interpreter's with them).

The commands run in a fresh workspace shaped like a competitor's after a few days: ``cpx.yaml``
naming celebamask-mini and a ledger with four runs and two scored submissions, so ``leaderboard``
predicts test scores (``--workspace DIR`` times a real one instead).

Usage::

    python benchmarks/startup.py              # 7 runs per command
    python benchmarks/startup.py --runs 3 --workspace ~/my-competition

Prints one line per command and, last, one JSON line with every figure (``main`` returns it).
It prints figures only: ``tests/test_cli_startup.py`` checks the property (no torch on the
start-up path), not the time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

COMMANDS = (["--help"], ["--version"], ["runs"], ["leaderboard"], ["recipes"])
# the libraries issue 20 names: none of them should be needed to answer these commands
HEAVY = ("torch", "scipy", "optuna", "matplotlib", "kornia", "PIL", "numpy", "requests", "mlflow", "tensorboard")
# one line of Python that runs a command and lists the heavy libraries it imported (on stderr,
# after whatever the command printed)
PROBE = ("import sys, json\nfrom cpx.cli import main\ncode = main(sys.argv[1:])\n"
         "print(json.dumps([m for m in %r if m in sys.modules]), file=sys.stderr)\nsys.exit(code)\n" % (HEAVY,))


def machine() -> dict:
    """CPU model, cores, load averages and ``uptime``'s line."""
    model = platform.processor() or "unknown"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    try:
        uptime = subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        uptime = ""
    return {"cpu": model, "cores": os.cpu_count(), "load": [round(x, 2) for x in os.getloadavg()],
            "uptime": uptime, "python": platform.python_version()}


def sample_workspace(root: Path) -> None:
    """A workspace with a profile named in cpx.yaml, four runs and two scored submissions."""
    from cpx.runs.ledger import Ledger

    (root / "cpx.yaml").write_text("competition: celebamask-mini\n")
    (root / "experiments").mkdir()
    with Ledger(root / "experiments" / "ledger.db") as ledger:
        runs = [ledger.add_run(name=name, recipe="msf-lmsa", competition="celebamask-mini", status="completed",
                               best_val_score=score, best_epoch=epoch, config_diff=diff)
                for name, score, epoch, diff in (("ref", 0.6889, 120, {}),
                                                 ("dice2", 0.7000, 98, {"loss.options.dice": 2.0}),
                                                 ("lr", 0.6950, 110, {"optimizer.lr": 0.0008}),
                                                 ("unet", 0.6500, 60, {"model.name": "unet"}))]
        ledger.add_submission("v1", run_id=runs[0]["id"], val_score=0.6889, checkpoint="best", tta="none")
        ledger.add_submission("v2", run_id=runs[1]["id"], val_score=0.7050, checkpoint="best", tta="flip")
        ledger.record_score("v1", 0.7200)
        ledger.record_score("v2", 0.7400)


def cpx_command() -> list[str]:
    """The console script beside this Python, as a user runs it; else ``python -m cpx``."""
    script = Path(sys.executable).with_name("cpx")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "cpx"]


def timed(argv: list[str], env: dict, cwd: Path) -> tuple[float, float, int]:
    """(own CPU seconds, wall seconds, exit code) of one run of ``argv``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    code = subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall, code


def imported(args: list[str], env: dict, cwd: Path) -> list[str]:
    out = subprocess.run([sys.executable, "-c", PROBE, *args], env=env, cwd=cwd, capture_output=True, text=True)
    try:
        return json.loads(out.stderr.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return ["?"]


def main(argv: Optional[list[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="timed runs per command (the median is printed)")
    parser.add_argument("--workspace", type=Path, help="time in this workspace (default: a sample one)")
    args = parser.parse_args(argv)

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "CPX_WORKSPACE")}
    env["COLUMNS"] = "100"
    scratch = None
    if args.workspace:
        workspace = args.workspace.expanduser().resolve()
    else:
        scratch = Path(tempfile.mkdtemp(prefix="cpx-startup-"))
        workspace = scratch / "workspace"
        workspace.mkdir()
        sample_workspace(workspace)
    info = machine()
    print(f"cpx start-up on {info['cpu']} ({info['cores']} cores), python {info['python']}")
    print(f"load before: {info['uptime'] or info['load']}")
    print(f"workspace: {workspace}; median of {args.runs} runs after one untimed run\n")
    print(f"{'command':<20} {'own time':>9} {'wall':>8}   heavy libraries imported")
    rows = []
    try:
        for command in [None, *COMMANDS]:
            argv = [sys.executable, "-c", "pass"] if command is None else [*cpx_command(), *command]
            timed(argv, env, workspace)  # writes the bytecode caches
            samples = [timed(argv, env, workspace) for _ in range(args.runs)]
            own = statistics.median(s[0] for s in samples)
            wall = statistics.median(s[1] for s in samples)
            codes = sorted({s[2] for s in samples})
            heavy = [] if command is None else imported(command, env, workspace)
            name = "python -c pass" if command is None else "cpx " + " ".join(command)
            print(f"{name:<20} {own:>8.3f}s {wall:>7.3f}s   {'-' if command is None else ', '.join(heavy) or 'none'}"
                  + (f"  (exit code {codes})" if codes != [0] else ""), flush=True)
            rows.append({"command": name, "own_seconds": round(own, 4), "wall_seconds": round(wall, 4),
                         "runs": args.runs, "exit_codes": codes, "imported": heavy})
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    after = machine()
    print(f"\nload after: {after['uptime'] or after['load']}")
    figures = {"machine": info, "load_after": after["load"], "commands": rows}
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
