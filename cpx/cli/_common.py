"""Shared pieces of the CLI: consoles, the plugin host, the workspace, error rendering."""

from __future__ import annotations

import json
import os
import sys
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
