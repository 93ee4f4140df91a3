"""`cpx report`."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from cpx.report import TOP

from . import _common
from ._common import console

app = typer.Typer()


@app.command("report")
def report_command(
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="folder for report.md, report.html and figures/ (default experiments/report/)")] = None,
    top: Annotated[int, typer.Option(help="rank this many runs (and draw the first few)")] = TOP,
):
    """Write the results report from the ledger: ranking, submissions, factor effects with their
    significance, convergence, val→test generalisation, next experiments and figures, as Markdown
    with PNGs and as one self-contained HTML page."""
    from cpx.report.results import build_report

    with _common.progress_bar("report") as bar:
        result = build_report(_common.workspace(), _common.host(), output=output, top=top, progress=bar)
    console.print(f"report:  {result.markdown}", highlight=False, soft_wrap=True)
    console.print(f"html:    {result.html}", highlight=False, soft_wrap=True)
    console.print(f"figures: {len(result.figures)} in {result.markdown.parent / 'figures'}", highlight=False,
                  soft_wrap=True)
