"""`cpx data check` and `cpx data synth`."""

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from cpx.kernel.errors import DataError

from . import _common
from ._common import console, print_json
from .options import Competition, Json

app = typer.Typer(name="data", help="Inspect and generate data folders.", no_args_is_help=True)


@app.command("check")
def check_command(
    folder: Annotated[Path, typer.Argument(help="a data folder in the competition's layout")],
    competition: Competition = None,
    labels: Annotated[bool, typer.Option("--labels", help="also list masks whose left/right classes sit on the "
                                                          "wrong side of the face, with a confidence")] = False,
    json_: Json = False,
):
    """Count images, show per-class pixel share and presence, and list every problem."""
    from cpx.data.checks import check_dataset

    comp = _common.host().competition(_common.pick_competition(competition, folder))
    if not folder.is_dir():
        raise DataError(f"data folder {folder} does not exist")
    with _common.progress_bar("checking labels" if labels else "checking", json_) as bar:
        report = check_dataset(folder, comp, labels=labels, progress=bar)
    if json_:
        print_json(report.to_dict())
    else:
        render_report(report, comp)
        if report.labels is not None:
            render_labels(report.labels, comp)
    if report.problems:
        raise typer.Exit(1)


@app.command("synth")
def synth_command(
    folder: Annotated[Path, typer.Argument(help="where to write the data set (must not exist or be empty)")],
    count: Annotated[int, typer.Option(help="labelled images")] = 64,
    size: Annotated[int, typer.Option(help="image side in pixels")] = 128,
    seed: Annotated[int, typer.Option(help="generator seed")] = 0,
    test_count: Annotated[int, typer.Option(help="extra unlabelled test images")] = 0,
    competition: Competition = None,
):
    """Write a procedural data set in the competition's layout."""
    from cpx.data.layout import write_dataset

    comp = _common.host().competition(_common.pick_competition(competition))
    if comp.synthesize is None:
        raise DataError(f"competition {comp.name} has no synthetic generator")
    if folder.exists() and any(folder.iterdir()):
        raise DataError(f"{folder} is not empty; choose a new folder")
    if count < 1 or size < 8 or test_count < 0:
        raise DataError("--count must be >= 1, --size >= 8, --test-count >= 0")
    # a layout with the organisers' validation folders gets a fifth of the labelled pairs there
    val_count = max(1, count // 5) if comp.layout.has_val and count > 1 else 0
    write_dataset(folder, comp, comp.synthesize(count + test_count, size, seed), test_count=test_count,
                  val_count=val_count)
    shape = f"{size}x{size}" if comp.size != "variable" else f"{size} pixels high, widths varying"
    split = f" ({val_count} of them in {comp.layout.val_images})" if val_count else ""
    console.print(f"wrote {count} labelled{split} and {test_count} test images ({shape}) to {folder}",
                  highlight=False)


def size_summary(sizes: dict) -> str:
    """``512x512 (900)``, or for many sizes their ranges: ``48 different, heights 384, widths 442..741``
    (it follows the word ``sizes``)."""
    if len(sizes) <= 4:
        return ", ".join(f"{h}x{w} ({n})" for (h, w), n in sorted(sizes.items())) or "-"
    hs, ws = sorted({h for h, _ in sizes}), sorted({w for _, w in sizes})
    span = lambda v: str(v[0]) if len(v) == 1 else f"{v[0]}..{v[-1]}"  # noqa: E731
    return f"{len(sizes)} different, heights {span(hs)}, widths {span(ws)}"


def render_labels(check, comp) -> None:
    """The label check: the side convention and its support, then every suspect mask."""
    pairs = ", ".join(f"{comp.classes[a]}/{comp.classes[b]}" for a, b in comp.flip_pairs)
    origin = "the profile says" if check.declared else "most masks say"
    console.print(f"[bold]label check[/] ({pairs}): the first class of each pair belongs on the image "
                  f"{check.side} ({origin}); {check.agree} of {check.agree + check.disagree} pairs with both classes "
                  f"present sit that way", highlight=False)
    for line in check.warnings:
        console.print(f"[yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True)
    if not check.suspects:
        console.print(f"[green]no suspect masks[/] among {check.checked}")
        return
    strong = len(check.selected(0.5))
    table = Table(title=f"{len(check.suspects)} suspect mask(s) of {check.checked} ({strong} with confidence >= 0.5): "
                        "left/right classes reversed against each other and the midline", title_justify="left")
    for col, just in (("mask", "left"), ("confidence", "right"), ("reversed pairs (confidence)", "left")):
        table.add_column(col, justify=just)
    for s in check.suspects:
        table.add_row(s.name, f"{s.confidence:.2f}", s.describe(comp.classes))
    console.print(table)
    console.print("[dim]train without them: --set data.exclude_suspect=true; or corrected: "
                  "--set data.fix_suspect=true (data.suspect_min_confidence, default 0.5)[/]", highlight=False)


def render_report(report, comp) -> None:
    sizes = size_summary(report.image_sizes)
    val = f"{report.val_pairs} validation pairs, " if report.val_images or report.val_masks else ""
    console.print(f"[bold]{report.root}[/]: {report.train_pairs} labelled pairs "
                  f"({report.train_images} images, {report.train_masks} masks), {val}{report.test_images} test images; "
                  f"sizes {sizes}; checked in {report.seconds:.1f} s", highlight=False)
    if report.pixel_share is not None and report.train_pairs:
        table = Table(title=f"classes of {comp.name}")
        for col in ("id", "class", "pixel share", "images containing"):
            table.add_column(col, justify="left" if col == "class" else "right")
        for i, name in enumerate(comp.classes):
            table.add_row(str(i), name, f"{100 * report.pixel_share[i]:.2f}%",
                          f"{100 * report.presence_share[i]:.1f}%")
        console.print(table)
    for w in report.warnings:
        console.print(f"[yellow]warning:[/] {escape(str(w))}", highlight=False, soft_wrap=True)
    if report.problems:
        console.print(f"[bold red]{len(report.problems)} problem(s):[/]")
        for p in report.problems:
            console.print(f"  {p}", highlight=False, soft_wrap=True, markup=False)
    else:
        console.print("[green]no problems found[/]")
