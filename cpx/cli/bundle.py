"""`cpx init --bundle` and `cpx bundle export`: Codabench bundles in and out."""

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from . import _common
from ._common import console, print_json
from .options import Json

app = typer.Typer()
bundle_app = typer.Typer(name="bundle", help="Codabench bundles: export a competition profile as one.",
                         no_args_is_help=True)


def _day(when: Optional[str]) -> Optional[str]:
    """``2020-01-01`` for midnight, else the date and time."""
    return when[:10] if when and when.endswith(" 00:00:00") else when


@app.command("init")
def init_command(
    folder: Annotated[Path, typer.Argument(help="the new workspace (a folder that does not exist or is empty)")],
    bundle: Annotated[Path, typer.Option(help="the organisers' Codabench bundle: a zip or a folder holding "
                                              "competition.yaml (v2 or v1.5)")],
    from_data: Annotated[Optional[Path], typer.Option(help="a labelled data folder: classes, mask values, sizes, "
                                                           "bands and the layout are read from it (marked for you "
                                                           "to confirm)")] = None,
    name: Annotated[Optional[str], typer.Option(help="the competition profile's name (default: from the "
                                                     "bundle's title)")] = None,
    json_: Json = False,
):
    """Start a workspace from the organisers' bundle: cpx.yaml, a competition profile (phases, limits, the ranked
    leaderboard column, the scoring program) and the scoring program, copied in. Nothing of the bundle is run."""
    from cpx.bundle.init import InitRequest, init_workspace

    result = init_workspace(InitRequest(folder=str(folder), bundle=str(bundle),
                                        data=str(from_data) if from_data else None, name=name), _common.host())
    if json_:
        print_json(result.to_dict())
    else:
        _render_init(result)


def _render_init(result) -> None:
    console.print(f"[bold]{escape(result.title or result.name)}[/] (Codabench v{result.version} bundle) -> "
                  f"{escape(result.folder)}", highlight=False)
    table = Table(title="phases (UTC)", title_justify="left")
    for col in ("phase", "start", "end", "submissions", "per day", "time limit", "accepts"):
        table.add_column(col, overflow="fold")
    for p in result.phases:
        table.add_row(escape(p["name"]), _day(p["start"]) or "-", _day(p["end"]) or "never",
                      str(p["max_submissions"] or "-"), str(p["max_submissions_per_day"] or "-"),
                      f"{p['execution_time_limit']:g} s", p["submissions"])
    console.print(table)
    console.print(f"scoring program{'s' if len(result.programs) > 1 else ''}: "
                  f"{escape(', '.join(result.programs))}", highlight=False)
    if result.column:
        better = "larger" if result.sorting == "desc" else "smaller"
        console.print(f"ranked leaderboard column: [bold]{escape(result.column)}[/] ({better} is better)",
                      highlight=False)
    console.print(f"wrote {escape(result.profile)} and cpx.yaml (competition: {result.name}"
                  + (f", data: {escape(result.data)}" if result.data else "") + ")", highlight=False)
    if result.to_confirm:
        console.print(f"[bold yellow]confirm[/] in the profile (comments ending in 'confirm'): "
                      f"{', '.join(result.to_confirm)}", highlight=False)
    _common.warn(result.warnings)
    console.print("[dim]the scoring program is code from this bundle: cpx runs it only for validate/score "
                  "--official and in package (--no-official skips it)[/]", highlight=False)


@bundle_app.command("export")
def export_command(
    name: Annotated[str, typer.Argument(help="the competition profile (see `cpx competitions`)")],
    folder: Annotated[Path, typer.Argument(help="where to write the bundle (a folder that does not exist or is "
                                                "empty)")],
    data: Annotated[Optional[Path], typer.Option(help="a labelled data folder: the reference data are its "
                                                      "validation masks (the organisers' val folders, else "
                                                      "every labelled image)")] = None,
    zip_: Annotated[bool, typer.Option("--zip", help="also write FOLDER.zip, ready to upload")] = False,
    json_: Json = False,
):
    """Write a Codabench v2 bundle for a competition profile: competition.yaml, a standalone scoring program
    computing the profile's metric from its submission format, and reference data from a labelled folder."""
    from cpx.bundle.export import ExportRequest, export_bundle

    result = export_bundle(ExportRequest(name=name, folder=str(folder), data=str(data) if data else None,
                                         zip=zip_), _common.host())
    if json_:
        print_json(result.to_dict())
        return
    console.print(f"wrote the Codabench v2 bundle of [bold]{escape(result.name)}[/] to {escape(result.folder)}",
                  highlight=False)
    for line in result.lines():
        console.print(f"  - {escape(line)}", highlight=False, soft_wrap=True)
    _common.warn(result.warnings)
