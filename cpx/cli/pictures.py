"""`cpx show`, `cpx compare` and `cpx curves`: pictures of runs."""

from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Callable, Iterator, Optional

import typer
from rich.table import Table

from cpx.kernel.text import format_f

from . import _common
from ._common import console, err_console, print_json
from .options import AllowChangedData, Checkpoint, Device, Json, Run, Tta, with_help

app = typer.Typer()

# show and compare validate without an ensemble's own views: none unless asked
Views = with_help(Tta, "test-time views: flip, scale, flip,scale or none")


@contextmanager
def _validation_bar(enabled: bool) -> Iterator[Optional[Callable[[str, int, int], None]]]:
    """A transient bar on stderr while images are scored, so stdout stays clean for --json."""
    if not enabled or not err_console.is_terminal:
        yield None
        return
    progress = _common.progress_bars(err_console)
    tasks: dict[str, int] = {}

    def update(label: str, done: int, total: int) -> None:
        if label not in tasks:
            tasks[label] = progress.add_task(f"validating {label}", total=total)
        progress.update(tasks[label], completed=done, total=total)

    with progress:
        yield update


def _f_diff(value: Optional[float]) -> str:
    if value is None:
        return "-"
    colour = "green" if value > 0.0005 else "red" if value < -0.0005 else "dim"
    return f"[{colour}]{value:+.4f}[/]"


def _compare_stats(run_a: str, run_b: str, checkpoint: str, tta: Optional[str], json_: bool) -> None:
    from cpx.eval.predict import parse_tta, tta_label
    from cpx.report.paired import compare_recorded
    from cpx.runs.ledger import Ledger

    with Ledger(_common.workspace().ledger_path) as ledger:
        result = compare_recorded(ledger, run_a, run_b, checkpoint=checkpoint, tta=tta_label(parse_tta(tta)))
    if json_:
        print_json(result.to_dict())
        return
    t = result.test
    for tag, label, run, v in (("A", result.label_a, result.run_a, result.validation_a),
                               ("B", result.label_b, result.run_b, result.validation_b)):
        extra = f" ({run['id']})" if label != run["id"] else ""
        console.print(f"[bold]{tag}[/] {label}{extra}: validation #{v['id']} ({v.get('checkpoint')}, TTA "
                      f"{v.get('tta') or 'none'}), {len(v['per_image'])} images", highlight=False, soft_wrap=True)
    table = Table(title=f"paired over the {t.n} images both runs were scored on", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("mean score of A", format_f(t.mean_a))
    table.add_row("mean score of B", format_f(t.mean_b))
    ci = f"  ({t.level * 100:g}% bootstrap CI {t.low:+.4f}..{t.high:+.4f})" if t.low is not None else ""
    table.add_row("[bold]B − A[/]", f"[bold]{t.diff:+.4f}[/]{ci}")
    table.add_row("paired t-test p", f"{t.t_p:.4f}" if t.t_p is not None else "-")
    table.add_row("Wilcoxon signed-rank p", f"{t.wilcoxon_p:.4f}" if t.wilcoxon_p is not None else "-")
    colour = ("green" if t.diff > 0 else "red") if t.significant else "yellow"
    table.add_row("verdict", f"[{colour}]{t.verdict}[/]")
    console.print(table)
    if t.only_a or t.only_b:
        err_console.print(f"[yellow]warning:[/] {t.only_a} image(s) scored for A only and {t.only_b} for B only "
                          "are left out", highlight=False)


@app.command("show")
def show_command(
    run: Run,
    images: Annotated[int, typer.Option(
        "--images", "-n", help="draw this many worst validation images (0: none)")] = 8,
    per_class: Annotated[bool, typer.Option(
        "--per-class", help="only the per-class chart, no image grid")] = False,
    checkpoint: Checkpoint = "best",
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="PNG path (default: show.png in the run folder)")] = None,
    tta: Views = None,
    device: Device = "auto",
    allow_changed_data: AllowChangedData = False,
    json_: Json = False,
):
    """Validate a run and draw its worst validation images (image, truth, prediction, errors)
    and the per-class chart of the competition's metric (per_class.png beside the grid)."""
    from cpx.draw.pictures import show_run
    from cpx.eval.predict import parse_tta

    with _validation_bar(not json_) as bar:
        result = show_run(run, _common.workspace(), _common.host(), images=0 if per_class else images,
                          checkpoint=checkpoint, tta=parse_tta(tta), output=output, device=device,
                          progress=(lambda d, t: bar(run, d, t)) if bar else None,
                          allow_changed_data=allow_changed_data)
    if json_:
        print_json(result.to_dict())
    else:
        _render_show(result)


def _render_show(result) -> None:
    ev = result.evaluation
    console.print(f"[bold]{result.label}[/]  score {format_f(ev.scores.score)} on {len(ev.names)} validation "
                  f"images ({ev.checkpoint}, TTA {'+'.join(ev.tta) or 'none'})", highlight=False)
    if result.worst:
        table = Table(title=f"{len(result.worst)} worst validation images")
        table.add_column("#", justify="right")
        table.add_column("image")
        table.add_column(ev.scores.metric, justify="right")
        for i, (name, value) in enumerate(result.worst, 1):
            table.add_row(str(i), name, format_f(value))
        console.print(table)
    if result.grid_path:
        console.print(f"images:    {result.grid_path}", highlight=False, soft_wrap=True)
    console.print(f"per class: {result.per_class_path}", highlight=False, soft_wrap=True)


@app.command("compare")
def compare_command(
    run_a: Annotated[str, typer.Argument(help="run A (the baseline)")],
    run_b: Annotated[str, typer.Argument(help="run B (compared with A)")],
    checkpoint: Checkpoint = "best",
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="PNG path (default: experiments/compare/A__vs__B.png)")] = None,
    tta: Views = None,
    device: Device = "auto",
    allow_changed_data: AllowChangedData = False,
    json_: Json = False,
    stats: Annotated[bool, typer.Option(
        "--stats", help="a paired test over the images both runs were scored on, from their recorded "
                        "per-image scores (no evaluation, no picture)")] = False,
):
    """Per-class scores of two runs side by side, each validated on its own validation list; with --stats,
    the difference B − A with its bootstrap interval and paired t / Wilcoxon p-values."""
    if stats:
        _compare_stats(run_a, run_b, checkpoint, tta, json_)
        return
    from cpx.draw.pictures import compare_runs
    from cpx.eval.predict import parse_tta

    with _validation_bar(not json_) as bar:
        result = compare_runs(run_a, run_b, _common.workspace(), _common.host(), checkpoint=checkpoint,
                              tta=parse_tta(tta), output=output, device=device, progress=bar,
                              allow_changed_data=allow_changed_data)
    if result.warning:
        _common.warn([result.warning])
    if json_:
        print_json(result.to_dict())
    else:
        _render_compare(result)


def _render_compare(result) -> None:
    for tag, label, run_id, n in (("A", result.label_a, result.run_a, result.images_a),
                                  ("B", result.label_b, result.run_b, result.images_b)):
        extra = f" ({run_id})" if label != run_id else ""
        console.print(f"[bold]{tag}[/] {label}{extra}: {n} validation images", highlight=False, soft_wrap=True)
    table = Table(title=f"per-class {result.metric}, sorted by B − A")
    table.add_column("class")
    table.add_column("A", justify="right")
    table.add_column("B", justify="right")
    table.add_column("B − A", justify="right")
    table.add_column("images A/B", justify="right")
    for c in result.by_difference():
        table.add_row(c.name, format_f(c.score_a), format_f(c.score_b), _f_diff(c.diff),
                      f"{c.images_a}/{c.images_b}")
    table.add_section()
    table.add_row("[bold]score[/]", f"[bold]{format_f(result.score_a)}[/]", f"[bold]{format_f(result.score_b)}[/]",
                  _f_diff(result.score_b - result.score_a), f"{result.images_a}/{result.images_b}")
    console.print(table)
    console.print(f"figure: {result.path}", highlight=False, soft_wrap=True)


@app.command("curves")
def curves_command(
    runs: Annotated[list[str], typer.Argument(help="one or more runs")],
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o",
        help="PNG path (default: curves.png in the run folder; experiments/compare/ for several runs)")] = None,
):
    """Training curves (loss, validation score, learning rate) of one or several runs in one PNG."""
    from cpx.draw.pictures import curves_for_runs

    path = curves_for_runs(runs, _common.workspace(), _common.host(), output=output)
    console.print(f"curves: {path}", highlight=False, soft_wrap=True)
