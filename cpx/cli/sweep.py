"""`cpx sweep RECIPE --grid/--search ...` (run or resume a sweep) and `cpx sweep show SWEEP`."""

import difflib
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from pydantic import ValidationError
from rich.table import Table

from cpx.kernel.config import SHORTCUTS, parse_assignment
from cpx.kernel.errors import ConfigError
from cpx.kernel.registry import format_validation_error
from cpx.kernel.text import format_f
from cpx.runs.ledger import Ledger

from . import _common
from ._common import console, err_console, print_json
from .options import Json, Quiet, with_help

app = typer.Typer()

SHOW = "show"


def _params_text(params: dict) -> str:
    from cpx.report.sweeps import short_key, show_value

    return ", ".join(f"{short_key(k)}={show_value(v)}" for k, v in params.items())


def _eta(seconds: Optional[float]) -> str:
    if seconds is None:
        return "ETA -"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"ETA {h}h{m:02d}m" if h else f"ETA {m}m{s:02d}s"


def _summary(status) -> str:
    best = f"best {format_f(status.best_value)}" if status.best_value is not None else "best -"
    if status.best_params:
        best += f" ({_params_text(status.best_params)})"
    extra = "".join(f", {n} {what}" for n, what in ((status.pruned, "pruned"), (status.failed, "failed")) if n)
    return (f"{status.done}/{status.total} done{extra}, {status.running} running, {status.left} left  "
            f"{best}  {_eta(status.eta_seconds)}")


class LiveSweep:
    """A bar over the sweep's trials with done/running/left, best so far and ETA; one line per
    finished trial above it."""

    def __init__(self):
        self.progress = _common.progress_bars(console, info=True, transient=False)
        self.task = None
        self.trial_text = ""

    def __call__(self, event) -> None:
        s = event.status
        if event.kind == "start":
            console.print(f"[bold]sweep[/] {s.name}  {event.message}", highlight=False)
            self.progress.start()
            self.task = self.progress.add_task("trials", total=s.total, completed=s.done, info=_summary(s))
            return
        if event.kind == "end":
            self.progress.update(self.task, completed=s.done, info=_summary(s))
            self.progress.stop()
            return
        if event.kind == "epoch":
            self.trial_text = (f"  [dim]trial {event.trial} ({_params_text(event.params)}) epoch "
                               f"{event.epoch}/{event.epochs} val F {format_f(event.value)}[/]")
        elif event.kind == "trial_end":
            colour = {"complete": "green", "pruned": "yellow"}.get(event.state or "", "red")
            self.progress.console.print(
                f"trial {event.trial} [{colour}]{event.state}[/] {_params_text(event.params)}  val F "
                f"{format_f(event.value)}  run {event.run_id or '-'}" + (f"  [dim]{event.message}[/]" if
                                                                       event.state == "failed" else ""),
                highlight=False)
            self.trial_text = ""
        self.progress.update(self.task, completed=s.done, total=s.total, info=_summary(s) + self.trial_text)


def log_event(event) -> None:
    """Plain lines for logs and CI."""
    s = event.status
    if event.kind == "start":
        print(f"sweep {s.name}  {event.message}\n{_summary(s)}", flush=True)
    elif event.kind == "trial_start":
        print(f"trial {event.trial} started: {_params_text(event.params)}  run {event.run_id}", flush=True)
    elif event.kind == "trial_end":
        print(f"trial {event.trial} {event.state}: {_params_text(event.params)}  val F {format_f(event.value)}"
              f"  run {event.run_id or '-'}" + (f"  ({event.message})" if event.state == "failed" else ""), flush=True)
        print(_summary(s), flush=True)


def _check_key(key: str) -> None:
    """A factor's key is a shortcut (dice, lr, ...) or a section.key path.

    :raises ConfigError: neither, naming the closest shortcuts.
    """
    if not key or "." in key or key in SHORTCUTS:
        return
    close = difflib.get_close_matches(key, list(SHORTCUTS), n=3)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    raise ConfigError(f"{key}: not a shortcut nor a section.key path; {hint}(shortcuts: {', '.join(SHORTCUTS)})")


def _spec(recipe, grid, search, seeds, trials, budget, prune, set_, ablate=None):
    from cpx.sweep.spec import SweepSpec, parse_ablate, parse_grid, parse_search
    from cpx.train.budget import parse_budget

    if grid and search:
        raise ConfigError("use --grid or --search, not both in one sweep")
    overrides = {}
    for assignment in set_ or []:
        key, value = parse_assignment(assignment)
        overrides[SHORTCUTS.get(key, key)] = value
    for text in [*(grid or []), *(search or []), *(set_ or []), *(a.partition(":")[2] for a in ablate or [])]:
        _check_key(text.partition("=")[0].strip())
    factors = [parse_grid(g, SHORTCUTS) for g in grid or []] + [parse_search(s, SHORTCUTS) for s in search or []]
    if ablate:
        factors.insert(0, parse_ablate(ablate, SHORTCUTS))
    try:
        return SweepSpec(recipe=recipe, mode="search" if search else "grid", factors=factors, seeds=seeds,
                         trials=trials, overrides=overrides, budget_minutes=parse_budget(budget), prune=prune)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, "sweep")) from None


def _show(name: Optional[str], output: Optional[Path], json_: bool) -> None:
    from cpx.report.sweeps import describe_effect, describe_slope, plot_sweep, sweep_results

    ws = _common.workspace()
    with Ledger(ws.ledger_path) as ledger:
        if not name:
            sweeps = ledger.list_sweeps()
            if json_:
                print_json(sweeps)
                return
            table = Table(title=f"sweeps ({len(sweeps)})")
            for col in ("sweep", "recipe", "mode", "trials", "factors", "created"):
                table.add_column(col)
            for s in sweeps:
                table.add_row(s["name"], s.get("recipe") or "", s.get("mode") or "", str(s.get("trials") or "-"),
                              ", ".join(f.get("key", "") for f in s.get("factors") or []), (s.get("created_at") or "")[:16])
            console.print(table)
            return
        results = sweep_results(ledger, name)
    path = Path(output) if output else ws.experiments_dir / "sweeps" / f"{name}.png"
    figure = plot_sweep(results, path)
    if json_:
        print_json({**results.to_dict(), "figure": str(figure) if figure else None})
        return
    counts = results.status_counts()
    console.print(f"[bold]sweep[/] {name}  {results.kind}, {len(results.runs)} runs ("
                  + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + ")", highlight=False)
    for f in results.factors:
        for variant, changes in (f.variants or {}).items():
            console.print(f"  {variant}: " + ", ".join(f"{k}={v}" for k, v in changes.items()), highlight=False)
    table = Table(title="best val F per cell, over seeds" if results.mode == "grid" else "trials")
    for f in results.factors:
        table.add_column(f.key.split(".")[-1], justify="right")
    for col in ("runs", "mean", "sd", "min", "max"):
        table.add_column(col, justify="right")
    best = results.best_cell
    for cell in sorted(results.cells, key=lambda c: -(c.summary.mean if c.summary else -1)):
        values = [r.value for r in cell.runs if r.counted]
        mark = "[bold]" if cell is best else ""
        table.add_row(*[f"{mark}{cell.params.get(f.key)}" for f in results.factors], str(len(values)),
                      f"{mark}{format_f(cell.summary.mean) if cell.summary else '-'}",
                      format_f(cell.summary.sd) if cell.summary and cell.summary.sd is not None else "-",
                      format_f(min(values)) if values else "-", format_f(max(values)) if values else "-")
    console.print(table)
    if results.noise is not None:
        nz = results.noise
        if nz.sd is None:
            console.print("noise: one run per cell and no spare degrees of freedom: effects cannot be judged; "
                          "add --seeds", highlight=False)
        else:
            console.print(f"noise: seed-to-seed sd {format_f(nz.sd)} "
                          f"({'replicate seeds' if nz.source == 'seeds' else 'residual of an additive model'}, "
                          f"{nz.dof} degrees of freedom)", highlight=False)
    if results.effects:
        console.print("[bold]effects[/] (difference of mean best val F against the reference level, 95% interval):")
        for e in results.effects:
            colour = "green" if e.significant and e.estimate > 0 else "red" if e.significant else "dim"
            console.print(f"  [{colour}]{describe_effect(e)}[/]", highlight=False)
    for s in results.slopes:
        console.print(f"  {describe_slope(s)}", highlight=False)
    if figure:
        console.print(f"figure: {figure}", highlight=False, soft_wrap=True)


@app.command("sweep")
def sweep_command(
    recipe: Annotated[Optional[str], typer.Argument(
        help="recipe to sweep; or `show` to list sweeps, `show SWEEP` for one sweep's statistics")] = None,
    name: Annotated[Optional[str], typer.Argument(help="with `show`: the sweep", show_default=False)] = None,
    grid: Annotated[Optional[list[str]], typer.Option(
        "--grid", help="a grid factor: key=v1,v2,... (dice, lr, ... or a key path; repeatable)")] = None,
    search: Annotated[Optional[list[str]], typer.Option(
        "--search", help="a searched factor: key=low..high[:log|:int] or key=a,b (repeatable; TPE)")] = None,
    ablate: Annotated[Optional[list[str]], typer.Option(
        "--ablate", help="an ablation variant: NAME:key=value, each scored against the recipe unchanged "
                         "(baseline); a NAME given twice sets several keys (repeatable)")] = None,
    seeds: Annotated[int, typer.Option(help="grid: train every cell with seeds 0..N-1")] = 1,
    trials: Annotated[Optional[int], typer.Option(help="search: number of trials")] = None,
    budget: Annotated[Optional[str], typer.Option(help="wall-clock budget of each trial, e.g. 30m")] = None,
    prune: Annotated[bool, typer.Option("--prune", help="stop trials whose per-epoch val F falls below "
                                        "the median of earlier trials (recorded as pruned)")] = False,
    set_: Annotated[Optional[list[str]], typer.Option(
        "--set", help="a fixed override of every trial: key=value (repeatable)")] = None,
    storage: Annotated[Optional[str], typer.Option(
        help="Optuna storage shared by workers: an RDB URL (sqlite:///f.db, postgresql://...) or "
             "journal:PATH (default: experiments/sweeps/optuna.db)")] = None,
    study: Annotated[Optional[str], typer.Option(help="study name (default: derived from the sweep)")] = None,
    worker: Annotated[bool, typer.Option(
        "--worker", help="join the study --study in --storage and take its definition from it")] = False,
    max_trials: Annotated[Optional[int], typer.Option(help="train at most this many trials in this process")] = None,
    quiet: with_help(Quiet, "plain log lines instead of a live bar") = False,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="with `show`: the factor plot's path (default experiments/sweeps/SWEEP.png)")] = None,
    json_: with_help(Json, "with `show`: machine-readable output") = False,
):
    """Run a sweep (or resume it: the same command again) on Optuna: --grid with --seeds, --ablate
    (one change at a time against the recipe) with --seeds, or --search with --trials; each trial is a normal run tagged with the sweep. Several workers can share one
    study (--storage URL --study NAME --worker). `cpx sweep show SWEEP`: per cell mean and sd over
    seeds, each factor's effect with its 95% interval, and a factor plot."""
    if recipe == SHOW:
        _show(name, output, json_)
        return
    if name:
        raise ConfigError(f"unexpected argument {name!r} (did you mean `cpx sweep show {name}`?)")
    from cpx.sweep import SweepRequest, run_sweep
    from cpx.train.run import command_line

    if worker and not (grid or search or ablate):
        if recipe or not study:
            raise ConfigError("--worker without --grid/--search joins an existing study: give --study NAME "
                              "(and --storage URL) and no recipe")
        spec = None
    else:
        if not recipe:
            raise ConfigError("name a recipe and give --grid, --search or --ablate factors (or `cpx sweep show`)")
        spec = _spec(recipe, grid, search, seeds, trials, budget, prune, set_, ablate)
    request = SweepRequest(spec=spec, storage=storage, study=study, command=command_line(),
                           max_trials=max_trials)
    handler = log_event if quiet or not console.is_terminal else LiveSweep()
    started = time.perf_counter()
    outcome = run_sweep(request, _common.workspace(), _common.host(), on_event=handler)
    _render_outcome(outcome, time.perf_counter() - started)


def _render_outcome(outcome, seconds: float) -> None:
    s = outcome.status
    console.print(f"sweep {outcome.name}: {_summary(s).split('  ETA')[0]}; this process trained "
                  f"{len(outcome.trained)} trial(s) in {seconds:.0f} s", highlight=False)
    if outcome.recovered:
        err_console.print(f"[yellow]note:[/] trial(s) {', '.join(map(str, outcome.recovered))} had died and "
                          "were marked failed (each is retried once)", highlight=False)
    if outcome.interrupted:
        from cpx.sweep.study import public_url

        console.print(f"interrupted: run the same command again to resume (study {outcome.name} in "
                      f"{public_url(outcome.storage)})", highlight=False, soft_wrap=True)
        raise typer.Exit(130)
    if s.left == 0 and s.running == 0:
        console.print(f"statistics: cpx sweep show {outcome.name}", highlight=False)
    elif s.left == 0:
        console.print(f"{s.running} trial(s) still run in other workers", highlight=False)

