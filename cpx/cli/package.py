"""`cpx package`: a verified submission zip from a run, or `--check` of any zip."""

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from cpx.kernel.errors import ConfigError
from cpx.kernel.text import format_f
from cpx.submit.checkreport import CheckReport

from . import _common
from ._common import console, err_console, print_json
from .options import (
    OVERRIDES,
    AllowChangedData,
    Calibration,
    Checkpoint,
    Competition,
    Device,
    Json,
    OfficialPython,
    Post,
    Yes,
    with_help,
)

app = typer.Typer()


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def render_check(report: CheckReport) -> None:
    """Every problem in red, or a green summary of what was verified."""
    name = Path(report.path).name
    if report.problems:
        err_console.print(f"[bold red]{name}: {len(report.problems)} problem"
                          f"{'s' if len(report.problems) != 1 else ''}[/]", highlight=False)
        for p in report.problems:
            err_console.print(f"  [red]x[/] {p}", highlight=False, soft_wrap=True)
        kinds: dict[str, int] = {}
        for p in report.problems:
            kinds[p.kind] = kinds.get(p.kind, 0) + 1
        if len(report.problems) > 5:
            err_console.print("  [bold red]by kind:[/] " + ", ".join(f"{n} {k}" for k, n in kinds.items()),
                              highlight=False, soft_wrap=True)
    else:
        console.print(f"[bold green]ok[/] {name}", highlight=False)
    lines = []
    if report.test_images is not None:
        lines.append(f"{report.masks} masks for {report.test_images} test images ({report.test_dir})")
    else:
        lines.append(f"{report.masks} masks")
    if report.classes_seen:
        lines.append(f"class ids seen: {', '.join(map(str, report.classes_seen))}")
    if report.solution_required:
        lines.append(f"solution: {', '.join(report.solution_files) or 'missing'}")
    if report.params is not None:
        limit = f" (limit < {report.max_params:,})" if report.max_params else ""
        source = report.params_source
        if report.weights_params == report.params and source == "manifest.json":
            source += " and ckpt.pth"
        lines.append(f"parameters: {report.params:,}{limit}, from {source}")
    if report.manifest:
        m = report.manifest
        lines.append(f"manifest: run {m.get('run_id')}, "
                     f"val {m.get('metric') or 'score'} {format_f(m.get('val_score'))}, "
                     f"tta {','.join(m.get('tta') or []) or 'none'}, cpx {m.get('cpx_version')}")
    lines.append(f"{report.entries} entries, {_size(report.size_bytes)}, checked in {report.seconds:.1f} s")
    colour = "red" if report.problems else "green"
    for line in lines:
        console.print(f"  [{colour}]-[/] {line}", highlight=False, soft_wrap=True)
    for note in report.notes:
        console.print(f"  [yellow]note:[/] {note}", highlight=False, soft_wrap=True)


def render_result(result) -> None:
    table = Table(show_header=False, box=None)
    table.add_row("zip", result.zip_path)
    table.add_row("run", f"{result.run_id} ({result.checkpoint} checkpoint, "
                         f"val {result.metric or 'score'} {format_f(result.val_score)})")
    table.add_row("masks", f"{result.masks} (tta {','.join(result.tta) or 'none'})")
    table.add_row("parameters", f"{result.params:,}"
                  + (f" < {result.check.max_params:,}" if result.check.max_params else ""))
    if result.solution_images:
        table.add_row("solution/run.py", f"re-run on all {result.solution_images} test images: identical masks")
    table.add_row("size", _size(result.size_bytes))
    if result.budget:
        table.add_row("budget", result.budget.describe())
        if result.budget.remote_note:
            table.add_row("", f"[dim]{result.budget.remote_note}[/]")
    table.add_row("sha256", result.sha256)
    table.add_row("time", f"{result.seconds:.1f} s (predict {result.predict_seconds:.1f} s, "
                          f"solution check {result.solution_seconds:.1f} s)")
    for line in result.rule_breaks:
        table.add_row("[bold red]rule break[/]", line)
    official = result.official or {}
    if official.get("skipped"):
        table.add_row("official", f"not run: {official['skipped']}")
    elif official:
        table.add_row("official", f"the organisers' program on the zip's layout with the validation predictions: "
                                  f"{official['column']} {official['value']:.4f} (cpx {official['metric']} "
                                  f"{official['cpx_score']:.4f}); output in {official['folder']}")
    console.print(table)
    if official.get("warning"):
        err_console.print(f"[yellow]warning:[/] {official['warning']}", highlight=False, soft_wrap=True)
    console.print(f"[bold green]packaged[/] {result.name}; the check passed", highlight=False)


def _confirm_paused(bars: "_Bars", question: str) -> bool:
    # a question under live progress bars would be redrawn over: stop them while asking
    bars.progress.stop()
    try:
        return _common.confirm(question)
    finally:
        bars.progress.start()


class _Bars:
    def __init__(self):
        self.progress = _common.progress_bars(console)
        self.tasks: dict[str, int] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, total=total)
        self.progress.update(self.tasks[stage], completed=done, total=total)


@app.command("package")
def package_command(
    run: Annotated[Optional[str], typer.Argument(help="run id, id prefix or name")] = None,
    name: Annotated[Optional[str], typer.Option(help="submission name, e.g. v2 (never reused)")] = None,
    tta: Annotated[Optional[list[str]], typer.Option(
        help="test-time augmentation: flip, scale (comma-separated or repeated)")] = None,
    test: Annotated[Optional[Path], typer.Option(
        help="test image folder (default: the run's data + the competition's test folder)")] = None,
    checkpoint: Checkpoint = "best",
    allow_rule_break: Annotated[bool, typer.Option(
        "--allow-rule-break", rich_help_panel=OVERRIDES,
        help="package even what the competition's rules forbid (recorded in the manifest)")] = False,
    device: Device = "auto",
    post: with_help(Post, "post-processing steps (see cpx validate --post); solution/run.py repeats them") = None,
    calibration: with_help(Calibration, "apply the run's stored logit offsets (cpx calibrate); "
                                        "solution/run.py repeats them") = True,
    check: Annotated[Optional[Path], typer.Option(
        "--check", help="only verify this zip (any zip, hand-made too)")] = None,
    competition: with_help(Competition, "with --check: the competition (default: the zip's manifest's, cpx.yaml's, "
                                        "the ledger's runs')") = None,
    yes: with_help(Yes, "package for the last submission left without asking") = False,
    official: Annotated[bool, typer.Option(
        "--official/--no-official", help="run the organisers' scoring program named by the workspace's profile "
                                         "(cpx init --bundle) once on the zip's layout with the validation "
                                         "predictions, before the zip is kept; it is code from the bundle "
                                         "you chose")] = True,
    official_python: OfficialPython = None,
    allow_changed_data: AllowChangedData = False,
    json_: Json = False,
):
    """Predict the test images and write a verified submission zip to submissions/; when the
    workspace's profile names the organisers' scoring program, it is run once on the zip's
    layout first (--no-official skips it)."""
    if check is not None:
        if run or name:
            raise ConfigError("--check verifies an existing zip; drop the run and --name")
        _check_zip(check, competition, test, json_)
        return
    if not run:
        raise ConfigError("give a RUN to package, or --check ZIP")
    if not name:
        raise ConfigError("--name: every submission needs a name, e.g. --name v2")
    from cpx.eval.predict import parse_tta
    from cpx.submit.package import PackageRequest, package

    views = [view for item in tta or [] for view in parse_tta(item)]  # --tta flip,scale or --tta flip --tta scale
    request = PackageRequest(run=run, name=name, tta=parse_tta(views),
                             test_dir=str(test) if test else None, checkpoint=checkpoint,
                             allow_rule_break=allow_rule_break, device=device, yes=yes, calibration=calibration,
                             post=(post,) if post else (), allow_changed_data=allow_changed_data)
    checker = None
    if official:
        from cpx.bundle.official import package_check

        checker = package_check(_common.workspace(), _common.host(),
                                python=str(official_python) if official_python else None)
    if json_ or not console.is_terminal:
        result = package(request, _common.workspace(), _common.host(), confirm=_common.confirm, official=checker)
    else:
        bars = _Bars()
        with bars.progress:
            result = package(request, _common.workspace(), _common.host(), progress=bars,
                             confirm=lambda q: _confirm_paused(bars, q), official=checker)
    if json_:
        print_json(result.to_dict())
    else:
        render_result(result)


def _check_zip(path: Path, competition: Optional[str], test: Optional[Path], json_: bool) -> None:
    """`cpx package --check ZIP`: every problem, or what was verified; exit code 1 on a problem."""
    from cpx.submit.zipcheck import check_submission

    report = check_submission(path, _common.workspace(), _common.host(), competition=competition, test_dir=test)
    if json_:
        print_json(report.to_dict())
    else:
        render_check(report)
    if report.problems:
        raise typer.Exit(1)
