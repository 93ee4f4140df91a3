"""`cpx runs`."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from ..ledger import Ledger
from . import _common
from ._common import console, fmt_f, print_json


def register(app: typer.Typer) -> None:
    runs_app = typer.Typer(help="Runs recorded in the ledger.", invoke_without_command=True, no_args_is_help=False)
    app.add_typer(runs_app, name="runs")

    @runs_app.callback(invoke_without_command=True)
    def runs_command(
        ctx: typer.Context,
        json_: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
        limit: Annotated[Optional[int], typer.Option(help="at most this many, newest first")] = None,
        status: Annotated[Optional[str], typer.Option(help="only runs with this status")] = None,
    ):
        """List runs, newest first."""
        if ctx.invoked_subcommand:
            return
        with Ledger(_common.workspace().ledger_path) as ledger:
            rows = ledger.list_runs(status=status, limit=limit)
        if json_:
            print_json(rows)
            return
        table = Table(title=f"runs ({len(rows)})")
        for col in ("id", "name", "recipe", "status", "val F", "best ep", "epochs", "params", "wall", "changed"):
            table.add_column(col, overflow="fold")
        for r in rows:
            diff = r.get("config_diff") or {}
            table.add_row(r["id"], r.get("name") or "", r.get("recipe") or "", r.get("status") or "",
                          fmt_f(r.get("best_val_f")), str(r.get("best_epoch") or "-"), str(r.get("last_epoch") or "-"),
                          f"{r['params']:,}" if r.get("params") else "-",
                          f"{r['wall_seconds']:.0f}s" if r.get("wall_seconds") else "-",
                          ", ".join(f"{k.split('.')[-1]}={v}" for k, v in diff.items()))
        console.print(table)
