"""Shared pieces of the CLI: consoles, the plugin host, the workspace, error rendering."""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from typing import Any, Iterable, Optional

from rich.console import Console
from rich.markup import escape

from cpx.kernel.errors import CpxError
from cpx.kernel.manager import get_host
from cpx.kernel.workspace import Workspace

# Piped output (logs, README examples) gets a wide fixed width instead of rich's 80 columns.
_WIDTH = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 150
console = Console(width=_WIDTH)
err_console = Console(stderr=True, width=_WIDTH)
_warned = False


def host():
    return get_host()


def workspace() -> Workspace:
    return Workspace.current()


def print_error(exc: CpxError) -> None:
    for line in str(exc).splitlines() or [type(exc).__name__]:
        err_console.print(f"[bold red]error:[/] {escape(line)}", markup=True, highlight=False, soft_wrap=True)


def warn(lines: Iterable[str], label: str = "warning") -> None:
    """Each line on stderr as ``warning: ...`` (or ``note: ...``), never read as rich markup."""
    for line in lines:
        err_console.print(f"[yellow]{label}:[/] {escape(str(line))}", highlight=False, soft_wrap=True)


def print_plugin_failures() -> None:
    global _warned
    if _warned:
        return
    _warned = True
    warn(host().failures)


def print_json(data: Any) -> None:
    # plain print: rich would wrap long lines and break JSON for scripts
    print(json.dumps(data, indent=2, default=str))


def pick_competition(name: Optional[str], data: Optional[os.PathLike] = None) -> str:
    """The competition to use (:func:`cpx.runs.competition.pick_competition`): the option, the
    workspace's ``cpx.yaml``, the one profile whose layout the ``data`` folder follows, the only
    one registered, or the competition of the ledger's runs when they share one."""
    from cpx.runs.competition import pick_competition as pick

    return pick(name, workspace(), host(), data)


def confirm(question: str) -> bool:
    """Ask ``question`` on the terminal; without one (a pipe, a script) the answer is no, and
    the caller's error says which option answers yes."""
    if not sys.stdin.isatty():
        return False
    import typer

    return typer.confirm(question, default=False)


def progress_bars(console: Console = console, *, info: bool = False, remaining: bool = False,
                  transient: bool = True):
    """A rich ``Progress`` laid out for any width, the one every command draws with: description,
    bar, done/total, elapsed time, time left (``remaining``) and a task's ``info`` field
    (``info``). The times never shrink (at 80 columns rich would cut them to "0:0…"): the bar
    narrows, then the info text wraps under itself."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.table import Column

    def fixed() -> Column:
        return Column(no_wrap=True)

    columns = [TextColumn("[bold]{task.description}", table_column=fixed()),
               BarColumn(bar_width=None, table_column=Column(ratio=1, min_width=8)),
               MofNCompleteColumn(table_column=fixed()), TimeElapsedColumn(table_column=fixed())]
    if remaining:
        columns.append(TimeRemainingColumn(table_column=fixed()))
    if info:
        columns.append(TextColumn("{task.fields[info]}", table_column=Column(ratio=3, overflow="fold")))
    return Progress(*columns, console=console, transient=transient, expand=True)


@contextmanager
def progress_bar(description: str, quiet: bool = False):
    """A callback(done, total) drawing a rich bar on a terminal; a no-op in pipes and --json."""
    if quiet or not console.is_terminal:
        yield None
        return
    bar = progress_bars(console, remaining=True)
    task = bar.add_task(description, total=None)

    def update(*args):
        # (done, total) or (stage, done, total)
        if len(args) == 3:
            bar.update(task, description=args[0], completed=args[1], total=args[2])
        else:
            bar.update(task, completed=args[0], total=args[1])

    with bar:
        yield update
