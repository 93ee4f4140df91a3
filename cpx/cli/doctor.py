"""`cpx doctor`."""

import math
from typing import Annotated

import typer
from rich.markup import escape

from cpx.doctor import MIN_FREE_BYTES
from cpx.kernel.errors import ConfigError

from . import _common
from ._common import console, print_json
from .options import Json

app = typer.Typer()


@app.command("doctor")
def doctor_command(
    min_free: Annotated[float, typer.Option(
        "--min-free", min=0, help="report less free disk space than this many GiB")] = MIN_FREE_BYTES / (1 << 30),
    json_: Json = False,
):
    """Check the workspace: the ledger's integrity, its runs against their folders, damaged
    checkpoints and files, the data each run trained on, the Codabench login file's mode and the
    free disk space. One line per problem with what to do; exit 1 when there is any. Only reads."""
    from cpx.doctor import check_workspace

    if not math.isfinite(min_free):
        raise ConfigError(f"--min-free: give a number of GiB, not {min_free}")
    report = check_workspace(_common.workspace(), _common.host(), min_free=int(min_free * (1 << 30)))
    if json_:
        print_json({"workspace": str(report.workspace), "ok": report.ok, "checked": report.checked,
                    "problems": [{"path": p.path, "kind": p.kind, "message": p.message} for p in report.problems]})
    else:
        console.print(f"workspace {escape(str(report.workspace))}", highlight=False, soft_wrap=True)
        for line in report.checked:
            console.print(f"  [dim]checked[/]  {escape(line)}", highlight=False, soft_wrap=True)
        for problem in report.problems:
            console.print(f"  [bold red]problem[/]  {escape(str(problem))}", highlight=False, soft_wrap=True)
        console.print(f"{len(report.problems)} problem(s)" if report.problems else "no problems found",
                      highlight=False)
    if not report.ok:
        raise typer.Exit(1)
