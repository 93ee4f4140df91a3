"""`cpx bench`."""

from typing import Annotated, Optional

import typer
from rich.table import Table

from cpx.bench.measure import ACCELERATORS
from cpx.kernel.config import parse_assignment

from . import _common
from ._common import console
from .options import Device, ImageSize, Json, Precision, Recipe, Set, TrainBatchSize, with_help

app = typer.Typer()

SHORTCUTS = {"image_size": "data.image_size", "batch_size": "train.batch_size", "precision": "train.precision",
             "device": "train.device", "data": "data.path"}


def _si(value: float, unit: str) -> str:
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value:.2f} {unit}"


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.2g} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _predict_sizes(r) -> str:
    if r.predict_size == r.image_size:
        return f"{r.predict_size}px images"
    return f"{r.predict_size}px images, run by the model at {r.image_size}px"


def render(r) -> Table:
    table = Table(title=f"cpx bench {r.recipe}: {r.model} at {r.image_size}px, batch {r.batch_size}, "
                        f"{r.device}/{r.precision}, {r.threads} thread{'s' if r.threads != 1 else ''}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    rows = [
        ("parameters", f"{r.params:,}"),
        ("FLOPs per image", f"{_si(r.forward_flops, 'FLOP')} forward, {_si(r.train_flops, 'FLOP')} forward+backward"),
        ("attainable (matmul)", f"{_si(r.attainable_flops, 'FLOP/s')} in {r.precision}"),
        ("memory bandwidth", f"{_si(r.memory_bandwidth, 'B/s')} (a large tensor copy)"),
        ("training", f"{r.train_images_per_s:.2f} images/s = {_si(r.train_flops_per_s, 'FLOP/s')} "
                     f"({100 * r.train_fraction:.1f}% of attainable)"),
        ("prediction", f"{r.predict_images_per_s:.2f} images/s plain, {r.predict_flip_images_per_s:.2f} with flip TTA "
                       f"({_predict_sizes(r)}; {100 * r.predict_fraction:.1f}% of attainable)"),
        ("peak memory (training)", f"{r.peak_memory_bytes / 2 ** 30:.2f} GiB {r.memory_kind}; the full data set "
                                   f"adds {r.data_bytes / 2 ** 30:.2f} GiB"),
        ("data", f"{r.train_images} train / {r.val_images} val images; measured on {r.data}"),
        ("one epoch", _duration(r.epoch_seconds) + " (training + validation)"),
        ("whole recipe", f"{_duration(r.recipe_seconds)} for {r.epochs} epochs"
                         + (f" (budget {r.budget_minutes:g} min)" if r.budget_minutes else "")),
    ]
    for key, value in rows:
        table.add_row(key, value)
    return table


@app.command("bench")
def bench_command(
    recipe: Recipe,
    image_size: ImageSize = None,
    batch_size: TrainBatchSize = None,
    precision: Precision = None,
    device: Device = None,
    data: Annotated[Optional[str], typer.Option(help="competition data folder: real pixels and image counts")] = None,
    steps: Annotated[int, typer.Option(help="timed training steps and prediction batches")] = 4,
    warmup: Annotated[int, typer.Option(help="untimed steps first")] = 2,
    set_: with_help(Set, "override any field: section.key=value") = None,
    gpu: Annotated[Optional[list[str]], typer.Option(
        "--gpu", help="also project the times onto this GPU at the share of its peak measured here: "
                      + ", ".join(sorted(ACCELERATORS)) + " (repeatable)")] = None,
    gpu_fraction: Annotated[Optional[float], typer.Option(
        help="with --gpu: the share of the GPU's peak to assume instead of the one measured here")] = None,
    epochs: Annotated[Optional[int], typer.Option(
        help="with --gpu: project this many epochs (default: the recipe's), e.g. those a budget run trained")] = None,
    json_: Json = False,
):
    """Measure a recipe's cost here: FLOPs, throughput vs the machine's ceiling, memory, epoch time."""
    from cpx.bench.measure import BenchRequest, project, project_check, run_bench

    overrides = dict(parse_assignment(assignment) for assignment in set_ or [])
    values = dict(image_size=image_size, batch_size=batch_size, precision=precision, device=device, data=data)
    overrides.update({SHORTCUTS[k]: v for k, v in values.items() if v is not None})
    request = BenchRequest(recipe=recipe, overrides=overrides, steps=steps, warmup=warmup)
    for key in gpu or []:  # an unknown name fails before the minutes of measuring
        project_check(key, gpu_fraction)

    def starting(config) -> None:
        if not json_:
            console.print(f"measuring {config.recipe} at {config.data.image_size}px in a fresh process (a minute "
                          "or two on a small CPU) ...", style="dim", highlight=False)

    with _common.progress_bar("measuring", json_) as bar:
        result = run_bench(request, _common.workspace(), _common.host(), progress=bar, starting=starting)
    projections = [project(result, key, epochs, gpu_fraction) for key in gpu or []]
    if json_:
        _common.print_json({**result.to_dict(), "projections": [p.to_dict() for p in projections]})
    else:
        _render_bench(result, projections)


def _render_bench(result, projections) -> None:
    console.print(render(result))
    for p in projections:
        a = p.accelerator
        console.print(f"projected on {a.name} ({_si(a.peak_flops, 'FLOP/s')}, {_si(a.bandwidth, 'B/s')}; "
                      f"{p.bound}-bound): one epoch {_duration(p.epoch_seconds)}, {p.epochs} epochs "
                      f"{_duration(p.total_seconds)}", highlight=False)
    if projections:
        console.print("projection: the slower of the FLOPs at the share of the peak measured here and the "
                      "epoch measured here scaled by memory bandwidth (datasheet figures); launch overhead "
                      "and data loading are left out, so read the times as lower bounds", style="dim",
                      highlight=False)
    for note in result.notes:
        console.print(f"note: {note}", style="yellow", highlight=False)
