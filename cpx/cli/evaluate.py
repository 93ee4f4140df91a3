"""`cpx validate`, `cpx score`, `cpx predict`, `cpx calibrate` and `cpx ensemble`."""

import math
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from cpx.kernel.errors import DataError
from cpx.kernel.text import format_f

from . import _common
from ._common import console, err_console, print_json, progress_bar
from .options import (
    OVERRIDES,
    AllowChangedData,
    BatchSize,
    Calibration,
    Checkpoint,
    Competition,
    Device,
    Json,
    Official,
    OfficialPython,
    Post,
    Precision,
    Run,
    Tile,
    Tta,
    with_help,
)

app = typer.Typer()

@app.command("validate")
def validate_command(
    run: with_help(Run, "run id, id prefix or name (an ensemble run too)"),
    checkpoint: Checkpoint = "best",
    data: Annotated[Optional[Path], typer.Option(
        help="score every labelled image of this data folder instead of the run's validation list")] = None,
    tta: Tta = None,
    batch_size: BatchSize = 8,
    device: Device = "auto",
    precision: Precision = "auto",
    record: Annotated[bool, typer.Option("--record/--no-record", help="add the result to the ledger")] = True,
    post: with_help(Post, "{help}; the score is reported with and without") = None,
    calibration: Calibration = True,
    tile: Tile = None,
    official: Official = False,
    official_python: OfficialPython = None,
    allow_changed_data: AllowChangedData = False,
    json_: Json = False,
):
    """Score a run with its competition's metric, at each mask's own size; recorded in the ledger.
    With --official, the organisers' scoring program scores the same predictions too."""
    from cpx.eval.predict import parse_tta

    options = dict(checkpoint=checkpoint, data=data, tta=None if tta is None else parse_tta(tta),
                   record=record, batch_size=batch_size, device=device, precision=precision,
                   calibration=calibration, post=post, tile=tile, allow_changed_data=allow_changed_data)
    result = None
    with progress_bar("validating", json_) as cb:
        if official:
            from cpx.bundle.official import validate_official

            ev, result = validate_official(run, _common.workspace(), _common.host(), progress=cb,
                                           python=str(official_python) if official_python else None, **options)
        else:
            from cpx.eval.validate import validate_run

            ev = validate_run(run, _common.workspace(), _common.host(), progress=cb, **options)
    if json_:
        print_json({**ev.to_dict(), "official": result.to_dict()} if result else ev.to_dict())
    else:
        _render_validation(ev, result)


def _render_validation(ev, official) -> None:
    from cpx.eval.predict import tta_label

    where = "its validation list" if ev.data == "val_list" else ev.data
    extra = ("  calibrated" if ev.calibrated else "") + (f"  post {ev.post}" if ev.post != "none" else "")
    render_scores(ev.scores, ev.class_names,
                  f"run {ev.run_id}  checkpoint {ev.checkpoint}  tta {tta_label(ev.tta)}{extra}  on {where}  "
                  f"({ev.seconds:.1f} s)")
    render_stages(ev)
    if official is not None:
        render_official(official)
    _common.warn(ev.warnings)
    if ev.validation_id is not None:
        console.print(f"[dim]recorded in the ledger as a validation of {ev.run_id}[/]", highlight=False)


@app.command("score")
def score_command(
    pred_dir: Annotated[Path, typer.Argument(help="folder of predicted masks (<stem> + the mask suffix)")],
    gt_dir: Annotated[Path, typer.Argument(help="folder of ground-truth masks (<stem> + the mask suffix)")],
    competition: Competition = None,
    official: Official = False,
    official_python: OfficialPython = None,
    json_: Json = False,
):
    """Score a folder of predicted masks against ground truth with the competition's metric
    (with --official, with the organisers' scoring program too)."""
    host = _common.host()
    comp = host.competition(_common.pick_competition(competition))
    result = None
    if official:
        from cpx.bundle.official import score_official

        report, result = score_official(pred_dir, gt_dir, comp, host, _common.workspace(),
                                        python=str(official_python) if official_python else None)
    else:
        from cpx.eval.metrics import create_metric
        from cpx.eval.validate import score_folders

        report = score_folders(pred_dir, gt_dir, comp, create_metric(comp, host))
    if json_:
        print_json({**report.to_dict(), "official": result.to_dict()} if result else report.to_dict())
    else:
        _common.warn(report.warnings)
        for line in report.problems:
            err_console.print(f"[bold red]error:[/] {line}", highlight=False, soft_wrap=True)
        if report.ok:
            render_scores(report.scores, report.class_names,
                          f"{pred_dir} vs {gt_dir}  ({len(report.names)} masks, {comp.name})")
        if result is not None:
            render_official(result)
    if not report.ok:
        # a CpxError rather than typer.Exit: main() turns it into exit code 2 either way
        raise DataError(f"{len(report.problems)} problem(s) in {pred_dir}: nothing scored")


@app.command("predict")
def predict_command(
    run: Run,
    input: Annotated[Path, typer.Option("--input", "-i", help="folder of images")],
    output: Annotated[Path, typer.Option("--output", "-o", help="folder for the masks (created)")],
    tta: Tta = None,
    batch_size: BatchSize = 8,
    checkpoint: Checkpoint = "best",
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="skip unreadable files instead of failing")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace masks already in --output")] = False,
    allow_rule_break: Annotated[bool, typer.Option(
        "--allow-rule-break", rich_help_panel=OVERRIDES, help="predict with an ensemble even where the competition forbids ensembles")] = False,
    device: Device = "auto",
    precision: Precision = "auto",
    post: Post = None,
    calibration: Calibration = True,
    tile: Tile = None,
    json_: Json = False,
):
    """Write one mask per input image (same stem, same size), stored as the competition's
    masks are (its mask suffix, value map and mode)."""
    from cpx.eval.predict import parse_tta
    from cpx.eval.predict_folder import predict_run

    with progress_bar("predicting", json_) as cb:
        report = predict_run(run, _common.workspace(), _common.host(), input, output, checkpoint=checkpoint,
                             tta=None if tta is None else parse_tta(tta), batch_size=batch_size,
                             skip_bad=skip_bad, overwrite=overwrite, allow_rule_break=allow_rule_break,
                             device=device, precision=precision, calibration=calibration, post=post,
                             tile=tile, progress=cb)
    if json_:
        print_json(report.to_dict())
    else:
        _render_predictions(report)


def _render_predictions(report) -> None:
    from cpx.eval.predict import tta_label

    _common.warn(report.warnings)
    _common.warn(f"skipped {p}: {why}" for p, why in report.skipped)
    n = len(report.written)
    extra = ("  calibrated" if report.calibrated else "") + (f"  post {report.post}" if report.post != "none" else "")
    console.print(f"wrote {n} mask(s) to {report.output_dir}  tta {tta_label(report.tta)}{extra}  "
                  f"{report.seconds:.1f} s ({n / max(report.seconds, 1e-9):.1f} images/s)"
                  + (f", skipped {len(report.skipped)}" if report.skipped else ""), highlight=False)


@app.command("calibrate")
def calibrate_command(
    run: with_help(Run, "run id, id prefix or name (a trained run with validation images)"),
    checkpoint: Checkpoint = "best",
    tta: with_help(Tta, "test-time augmentation of the logits fitted on") = None,
    store: Annotated[bool, typer.Option("--store/--no-store", help="store the offsets with the run")] = True,
    force: Annotated[bool, typer.Option("--force", help="store even when the held-out gain is not positive")] = False,
    seed: Annotated[int, typer.Option(help="seed of the split into two halves")] = 0,
    batch_size: BatchSize = 8,
    device: Device = "auto",
    precision: Precision = "auto",
    allow_changed_data: AllowChangedData = False,
    json_: Json = False,
):
    """Fit per-class logit offsets for the competition's metric on the validation images; report the
    held-out gain (2-fold: fitted on one half, scored on the other, both ways); store the
    offsets fitted on all images, which validate, predict and package then apply."""
    from cpx.eval.calibrate import calibrate_run
    from cpx.eval.predict import parse_tta

    with progress_bar("calibrating", json_) as cb:
        result = calibrate_run(run, _common.workspace(), _common.host(), checkpoint=checkpoint,
                               tta=parse_tta(tta), store=store, force=force, seed=seed, batch_size=batch_size,
                               device=device, precision=precision, progress=cb,
                               allow_changed_data=allow_changed_data)
    if json_:
        print_json(result.to_dict())
    else:
        _render_calibration(result)


def _render_calibration(result) -> None:
    from cpx.eval.predict import tta_label

    console.print(f"[bold]run {result.run_id}[/]  checkpoint {result.checkpoint}  tta {tta_label(result.tta)}  "
                  f"{result.images} validation images  ({result.seconds:.1f} s)", highlight=False)
    table = Table(title="held-out gain: offsets fitted on one half, scored on the other", title_justify="left")
    for col in ("fitted on", "scored on", f"{result.metric} before", "after", "gain"):
        table.add_column(col, justify="right")
    for f in result.folds:
        table.add_row(f"{f.fit_on} images", f"{f.scored_on} images", format_f(f.before), format_f(f.after),
                      f"{f.gain:+.4f}")
    console.print(table)
    console.print(f"mean held-out gain: [bold]{result.mean_gain:+.4f}[/]", highlight=False)
    console.print(f"[dim]fitted on all {result.images} images: {result.metric} {format_f(result.before)} -> "
                  f"{format_f(result.after)} in-sample (optimistic; the held-out gain is the honest one)[/]",
                  highlight=False)
    offsets = ", ".join(f"{name} {v:+.1f}" for name, v in zip(result.classes, result.offsets) if v)
    console.print(f"offsets: {offsets or 'none (no class gained)'}", highlight=False)
    if result.stored:
        console.print(f"stored in {result.path}; validate, predict and package apply them "
                      "(--no-calibration to leave them out)", highlight=False)
    else:
        _common.warn([result.message])


@app.command("ensemble")
def ensemble_command(
    runs: Annotated[Optional[list[str]], typer.Argument(
        help="runs to average (default: the --top K by validation score)")] = None,
    weights: Annotated[Optional[str], typer.Option(help="comma-separated weights, one per run")] = None,
    tta: with_help(Tta, "test-time augmentation: flip, scale or flip,scale") = None,
    top: Annotated[int, typer.Option(help="with no runs named: the best K completed runs")] = 3,
    search: Annotated[bool, typer.Option(
        "--search", help="greedy selection with replacement of members and weights")] = False,
    name: Annotated[Optional[str], typer.Option(help="a name for the ensemble run")] = None,
    checkpoint: with_help(Checkpoint, "best or last, for every member") = "best",
    batch_size: BatchSize = 8,
    device: Device = "auto",
    precision: Precision = "auto",
    record: Annotated[bool, typer.Option("--record/--no-record", help="record the ensemble as a run")] = True,
    allow_changed_data: AllowChangedData = False,
    json_: Json = False,
):
    """Average runs' softmax outputs and score the mix on their shared validation images."""
    from cpx.eval.ensemble import build_ensemble, parse_weights
    from cpx.eval.predict import parse_tta
    from cpx.train.run import command_line

    runs = runs or []
    with progress_bar("scoring members", json_) as cb:
        result = build_ensemble(runs, _common.workspace(), _common.host(),
                                weights=parse_weights(weights, len(runs) or None),
                                tta=parse_tta(tta), top=top, search=search, name=name, checkpoint=checkpoint,
                                record=record, batch_size=batch_size, device=device, precision=precision,
                                command=command_line(), progress=cb, allow_changed_data=allow_changed_data)
    if json_:
        print_json(result.to_dict())
    else:
        _render_ensemble(result)


def _render_ensemble(result) -> None:
    from cpx.eval.predict import tta_label

    _common.warn(result.warnings)
    table = Table(title=f"members  (alone, on the {len(result.names)} shared validation images, "
                        f"tta {tta_label(result.tta)})", title_justify="left")
    for col, just in (("run", "left"), ("weight", "right"), ("alone", "right"), ("recorded val", "right")):
        table.add_column(col, justify=just)
    for m in result.members:
        label = m.run if m.name == m.run else f"{m.name}\n[dim]{m.run}[/]"
        table.add_row(label, f"{m.weight:.3f}", format_f(m.score), format_f(m.recorded_val_score))
    console.print(table)
    if result.search_steps:
        console.print("search: " + " -> ".join(f"+{s['add']} ({s['score']:.4f})" for s in result.search_steps),
                      highlight=False)
    if result.message:
        console.print(result.message, highlight=False)
    if result.evaluation is not None:
        render_scores(result.evaluation.scores, result.evaluation.class_names,
                      f"ensemble of {len(result.members)}  ({result.seconds:.1f} s)")
        console.print(f"gain over the best single member ({result.best_single.name}, "
                      f"{result.best_single.score:.4f}): [bold]{result.gain:+.4f}[/]", highlight=False)
    if result.run_id:
        console.print(f"recorded as ensemble run [bold]{result.run_id}[/]", highlight=False)


# -- rendering shared by these commands ---------------------------------------------------------


def metric_name(scores) -> str:
    """``class-iou (x100)``: the metric's name, with its scale when it is not 1."""
    return scores.metric + (f" (x{scores.scale:g})" if scores.scale != 1 else "")


def render_scores(scores, class_names, title: str) -> None:
    """The summary (the competition's metric first) and the metric's per-class values, worst
    class first."""
    console.print(f"[bold]{title}[/]", highlight=False)
    summary = Table(show_header=False)
    summary.add_column("metric")
    summary.add_column("value", justify="right")
    summary.add_row(f"[bold]{metric_name(scores)}: {scores.label} (the competition's metric)[/]",
                    f"[bold]{format_f(scores.score)}[/]")
    # the reference figures on the ranked metric's scale, so one table reads on one scale
    scale = [f"x{scores.scale:g}"] if scores.scale != 1 else []
    accuracy_label = f"pixel accuracy ({scale[0]})" if scale else "pixel accuracy"
    miou_label = f"mIoU ({', '.join([*scale, 'counts pooled over the set'])})"
    summary.add_row(accuracy_label, format_f(scores.pixel_acc * scores.scale))
    summary.add_row(miou_label, format_f(scores.miou * scores.scale))
    summary.add_row("images", str(scores.num_images))
    console.print(summary)
    sign = 1 if scores.greater_is_better else -1
    rows = sorted(range(len(scores.per_class)),
                  key=lambda i: (math.isnan(scores.per_class[i]), sign * scores.per_class[i]))
    console.print(f"per class, worst first ({scores.metric}'s value for each class)", highlight=False)
    table = Table()
    for col, just in (("id", "right"), ("class", "left"), (scores.metric, "right"), ("images with it", "right")):
        table.add_column(col, justify=just)
    for i in rows:
        name = class_names[i] if i < len(class_names) else str(i)
        table.add_row(str(i), name, format_f(scores.per_class[i]), f"{scores.class_images[i]}/{scores.num_images}")
    console.print(table)


def render_stages(ev) -> None:
    """The score of each stage (plain argmax, calibrated, post-processed), each with its gain
    over the one before: with and without calibration and post-processing, from one forward
    pass."""
    if not ev.stages:
        return
    rows = [("plain argmax", ev.stages["raw"])]
    if ev.calibrated:
        rows.append(("with the calibrated offsets", ev.stages.get("calibrated", ev.score)))
    if ev.post != "none":
        rows.append((f"after post-processing ({ev.post})", ev.score))
    table = Table(title=f"{ev.scores.metric} by stage", title_justify="left")
    for col, just in (("stage", "left"), (ev.scores.metric, "right"), ("gain", "right")):
        table.add_column(col, justify=just)
    for i, (label, value) in enumerate(rows):
        table.add_row(label, format_f(value), "" if i == 0 else f"{value - rows[i - 1][1]:+.4f}")
    console.print(table)


def render_official(result) -> None:
    """The organisers' ranked column beside cpx's metric, and where the program's files are."""
    table = Table(title="the organisers' scoring program", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row(f"[bold]{result.column} (the ranked column, {result.scores_file})[/]", f"[bold]{result.value:.6f}[/]")
    table.add_row(f"cpx's {result.metric}", f"{result.cpx_score:.6f}")
    difference = result.difference if abs(result.difference) >= 5e-7 else 0.0  # no "-0.000000"
    table.add_row("difference", f"{difference:+.6f}" + ("" if result.agrees else " [red](!)[/]"))
    for key, value in result.scores.items():
        if key != result.column:
            table.add_row(key, f"{value:g}")
    console.print(table)
    phase = f" (phase {result.phase})" if result.phase else ""
    console.print(f"[dim]program {result.program}{phase} ran in {result.seconds:.1f} s; its input, output and logs "
                  f"are in {result.folder}[/]", highlight=False)
    _common.warn(result.notes)
    if result.warning():
        _common.warn([result.warning()])
