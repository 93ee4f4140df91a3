"""`cpx runs` and `cpx runs import`."""

from typing import Annotated, Optional

import typer
from rich.table import Table

from cpx.kernel.text import format_f

from . import _common
from ._common import console, print_json
from .options import Json

app = typer.Typer(name="runs", help="Runs recorded in the ledger.", invoke_without_command=True,
                  no_args_is_help=False)


@app.callback(invoke_without_command=True)
def runs_command(
    ctx: typer.Context,
    json_: Json = False,
    limit: Annotated[Optional[int], typer.Option(help="at most this many, newest first")] = None,
    status: Annotated[Optional[str], typer.Option(help="only runs with this status")] = None,
):
    """List runs, newest first."""
    if ctx.invoked_subcommand:
        return
    from cpx.runs.recovery import list_runs

    rows = list_runs(_common.workspace(), status=status, limit=limit)
    if json_:
        print_json(rows)
    else:
        _render_runs(rows)


@app.command("import")
def import_command(
    folder: Annotated[str, typer.Argument(help="folder of a run made by another training script")],
    name: Annotated[Optional[str], typer.Option(help="name for the run (default: the folder's name)")] = None,
    competition: Annotated[Optional[str], typer.Option(help="competition, when the config does not say")] = None,
    json_: Json = False,
):
    """Record a run trained elsewhere (config, per-epoch history, checkpoints); the folder is only read."""
    from cpx.runs.importer import import_run
    from cpx.runs.ledger import Ledger

    competition = competition or _default_competition()
    with Ledger(_common.workspace().ledger_path) as ledger:
        result = import_run(folder, ledger, name=name, competition=competition, host=_common.host())
    if json_:
        print_json({"run": result.run, "read": result.read, "not_read": result.unread,
                    "warnings": result.warnings})
        return
    run = result.run
    console.print(f"imported [bold]{run['name']}[/] as run {run['id']}", highlight=False)
    for line in result.read:
        console.print(f"  read: {line}", highlight=False)
    _common.warn(result.unread, label="not read")
    _common.warn(result.warnings)


@app.command("export")
def export_command(
    runs: Annotated[Optional[list[str]], typer.Argument(
        help="runs (id, id prefix or name); default: every run")] = None,
    mlflow: Annotated[Optional[str], typer.Option(
        "--mlflow", help="MLflow tracking URI, e.g. sqlite:///mlruns.db (pip install 'cpx[mlflow]')")] = None,
    to: Annotated[Optional[str], typer.Option(
        "--to", help="any logger as NAME:TARGET, e.g. tensorboard:tb (`cpx plugins` lists them)")] = None,
    with_weights: Annotated[bool, typer.Option("--with-weights", help="upload best.pt too")] = False,
    json_: Json = False,
):
    """Write runs to an experiment tracker: params (the resolved config), per-epoch metrics,
    tags, files, submissions and their scores. Exporting again updates the same runs."""
    from cpx.kernel.errors import ConfigError
    from cpx.track.export import export_runs

    if (mlflow is None) == (to is None):
        raise ConfigError("give one of --mlflow URI or --to NAME:TARGET")
    result = export_runs(f"mlflow:{mlflow}" if mlflow is not None else to, _common.workspace(), _common.host(),
                         runs or (), with_weights=with_weights)
    if json_:
        print_json(result.to_dict())
    else:
        _render_export(result)


def _default_competition() -> Optional[str]:
    """The workspace's competition when one decides, else None: the run's config may say."""
    from cpx.kernel.errors import CpxError

    try:
        return _common.pick_competition(None)
    except CpxError:
        return None


def _render_runs(rows: list[dict]) -> None:
    table = Table(title=f"runs ({len(rows)})")
    table.add_column("run", no_wrap=True)
    metrics = {r.get("metric") for r in rows if r.get("best_val_score") is not None}
    val = f"val {metrics.pop()}" if len(metrics) == 1 and None not in metrics else "val score"
    for col in ("recipe", "status", val, "best ep", "epochs", "params", "wall"):
        table.add_column(col, justify="right" if col not in ("recipe", "status") else "left")
    table.add_column("changed", overflow="fold")
    for r in rows:
        diff = r.get("config_diff") or {}
        label = r["id"] if (r.get("name") or r["id"]) == r["id"] else f"{r['name']}\n[dim]{r['id']}[/]"
        score = format_f(r.get("best_val_score"))
        if r.get("refit_of"):  # nothing was held out: the parent's score, marked
            score += f"\n[dim]refit of {r['refit_of']}: its val score, not measurable[/]"
        status = r.get("status") or ""
        if r.get("folder_missing"):
            status += "\n[red]folder gone[/]"
        table.add_row(label, r.get("recipe") or "", status,
                      score, str(r.get("best_epoch") or "-"), str(r.get("last_epoch") or "-"),
                      f"{r['params']:,}" if r.get("params") else "-",
                      f"{r['wall_seconds']:.0f}s" if r.get("wall_seconds") else "-",
                      ", ".join(f"{k.split('.')[-1]}={v}" for k, v in diff.items()))
    console.print(table)


def _render_export(result) -> None:
    for run in result.runs:
        console.print(f"{run.name if run.name == run.run_id else f'{run.name} ({run.run_id})'}: "
                      f"{run.epochs} epoch{'s' if run.epochs != 1 else ''}, {', '.join(run.artifacts) or 'no files'} -> {run.where}",
                      highlight=False)
    console.print(f"[dim]{len(result.runs)} run{'s' if len(result.runs) != 1 else ''} written to {result.spec} "
                  f"in {result.seconds:.1f} s[/]", highlight=False)
