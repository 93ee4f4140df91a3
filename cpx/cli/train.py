"""`cpx train`."""

import sys
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from cpx.kernel.config import SHORTCUTS, merge_overrides
from cpx.kernel.errors import ConfigError
from cpx.kernel.text import format_f

from . import _common
from ._common import console, err_console
from .options import Competition, Device, ImageSize, Precision, Quiet, Recipe, Set, TrainBatchSize, with_help

app = typer.Typer()

class RichProgress:
    """Epoch and batch bars with loss, the validation score, images/s and ETA."""

    def __init__(self):
        self.progress = _common.progress_bars(console, info=True, remaining=True, transient=False)
        self.epoch_task = self.batch_task = None

    def on_start(self, **info):
        _print_header(info)
        self.metric = info["metric"].name
        self.progress.start()
        self.epoch_task = self.progress.add_task("epochs", total=info["config"].train.epochs,
                                                 completed=info["start_epoch"], info="")
        self.batch_task = self.progress.add_task("batches", total=info["steps_per_epoch"], info="")

    def on_batch_end(self, trainer, i, loss):
        self.progress.update(self.batch_task, completed=i + 1)

    def on_epoch_end(self, trainer, record):
        from cpx.train.callbacks import Validation  # imported with the trainer: torch is loaded by now

        ema = f" (EMA {format_f(record.val_score_ema)})" if record.val_score_ema is not None else ""
        best = trainer.callback(Validation)
        info = (f"loss {record.train_loss:.4f}  val {self.metric} {format_f(record.val_score)}{ema}  "
                f"best {format_f(best.best_score if best else None)}  {record.images_per_s:.1f} img/s")
        self.progress.update(self.epoch_task, completed=trainer.epoch, total=trainer.epochs, info=info)
        self.progress.update(self.batch_task, completed=0)

    def on_train_end(self, trainer):
        self.progress.stop()

    def on_notice(self, text):
        err_console.print(f"[yellow]waiting:[/] {text}", highlight=False, soft_wrap=True)


class LogProgress:
    """One plain line per epoch, for logs and CI."""

    def on_start(self, **info):
        _print_header(info)
        self.metric = info["metric"].name

    def on_notice(self, text):
        print(f"waiting: {text}", file=sys.stderr, flush=True)

    def on_epoch_end(self, trainer, record):
        ema = f" (EMA {format_f(record.val_score_ema)})" if record.val_score_ema is not None else ""
        print(f"epoch {record.epoch}/{trainer.epochs} loss {record.train_loss:.4f} "
              f"val {self.metric} {format_f(record.val_score)}{ema} lr {record.lr:.2e} "
              f"{record.images_per_s:.1f} img/s {record.seconds:.1f}s", flush=True)


def _print_header(info):
    c = info["config"]
    console.print(f"[bold]run[/] {info['run_id']}  recipe {c.recipe}  competition {c.competition}  "
                  f"model {c.model.name} "
                  f"({info['params']:,} params)  {info['device']}/{info['precision']}  "
                  f"train {info['train_images']} / val {info['val_images']} images at {c.data.image_size}px",
                  highlight=False, soft_wrap=True)
    if info.get("budget_choice"):
        console.print(f"budget variant: {info['budget_choice']}", highlight=False, soft_wrap=True)


@app.command("train")
def train_command(
    recipe: Recipe = None,
    dice: Annotated[Optional[float], typer.Option(help="Dice weight of the combined loss")] = None,
    ce: Annotated[Optional[float], typer.Option(help="cross-entropy weight of the combined loss")] = None,
    lr: Annotated[Optional[float], typer.Option(help="peak learning rate")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="maximum epochs")] = None,
    batch_size: TrainBatchSize = None,
    image_size: ImageSize = None,
    seed: Annotated[Optional[int], typer.Option(help="random seed")] = None,
    data: Annotated[Optional[str], typer.Option(help="competition data folder (default: synthetic data)")] = None,
    competition: with_help(Competition, "competition profile (default: cpx.yaml's, else the recipe's); "
                                        "see `cpx competitions`") = None,
    device: Device = None,
    precision: Precision = None,
    budget: Annotated[Optional[str], typer.Option(
        help="wall-clock budget, e.g. 20m, 2h or 1h30m (a plain number is minutes): fits the schedule to it and, "
             "unless you set what they set, picks among the recipe's budget_variants by this machine's pace")] = None,
    name: Annotated[Optional[str], typer.Option(help="a name for the run")] = None,
    set_: Set = None,
    resume: Annotated[Optional[str], typer.Option(help="continue run RUN from its last.pt")] = None,
    refit: Annotated[Optional[str], typer.Option(help="retrain run RUN's config on every labelled image (train + "
                                                      "validation) for the epochs RUN chose; its val score is "
                                                      "carried from RUN, marked as not measurable")] = None,
    allow_changed_data: Annotated[bool, typer.Option(
        "--allow-changed-data", help="--refit although RUN's data folder no longer holds the labelled images "
                                     "it trained on")] = False,
    log_to: Annotated[Optional[list[str]], typer.Option(
        "--log-to", help="log the run live to a tracker, NAME:TARGET: mlflow:URI (e.g. mlflow:sqlite:///mlruns.db), "
                         "tensorboard:DIR (repeatable; `cpx plugins` lists the loggers)")] = None,
    quiet: Quiet = False,
    nproc: Annotated[int, typer.Option(help="data-parallel processes on this node (batch size stays global)")] = 1,
    nnodes: Annotated[str, typer.Option(help="nodes taking part: N, or MIN:MAX for elastic membership")] = "1",
    rdzv_endpoint: Annotated[Optional[str], typer.Option(
        help="HOST:PORT every node meets at (needed with --nnodes > 1)")] = None,
):
    """Train a recipe; the run lands in experiments/runs/ and the ledger."""
    from cpx.train.budget import parse_budget
    from cpx.train.loop import StopReason
    from cpx.train.run import TrainRequest, command_line, train

    values = dict(dice=dice, ce=ce, lr=lr, epochs=epochs, batch_size=batch_size, image_size=image_size,
                  seed=seed, data=data, device=device, precision=precision, budget_minutes=parse_budget(budget),
                  competition=competition)
    overrides = merge_overrides(set_ or [], {SHORTCUTS[field]: value for field, value in values.items()})
    if resume and (recipe or overrides):
        raise ConfigError("--resume continues a run with its own config; drop the recipe and overrides")
    request = TrainRequest(recipe=recipe, overrides=overrides, name=name, resume=resume, refit=refit,
                           command=command_line(), allow_changed_data=allow_changed_data, log_to=log_to or [])
    if nproc != 1 or nnodes != "1" or rdzv_endpoint:
        from cpx.train.distributed import launch

        # workers are separate processes: plain log lines from rank 0, no live progress bars
        result = launch(request, _common.workspace(), _common.host(), nproc=nproc, nnodes=nnodes,
                        rdzv_endpoint=rdzv_endpoint, callbacks=(LogProgress(),))
        if result is None:
            console.print("this node's ranks finished; the run is recorded by the node holding rank 0")
            return
    else:
        progress = LogProgress() if quiet or not console.is_terminal else RichProgress()
        result = train(request, _common.workspace(), _common.host(), callbacks=(progress,))
    _render_result(result)
    if result.stop_reason is StopReason.INTERRUPTED:
        raise typer.Exit(130)


def _render_result(result) -> None:
    from cpx.report.leaderboard import collapse_switches

    table = Table(show_header=False, box=None)
    table.add_row("run", result.run_id)
    table.add_row("status", result.status + (f" ({result.message})" if result.message else ""))
    if result.refit_of:
        table.add_row(f"val {result.metric}", f"{format_f(result.best_val_score)}, carried from {result.refit_of} "
                                              "(not measurable: every labelled image trained)")
    else:
        table.add_row(f"best val {result.metric}", f"{format_f(result.best_val_score)} (epoch {result.best_epoch})")
    table.add_row("epochs", str(result.epochs))
    table.add_row("parameters", f"{result.params:,}")
    table.add_row("wall time", f"{result.wall_seconds:.0f} s")
    changed = collapse_switches(result.config_diff or {})
    table.add_row("changed", ", ".join(f"{k}={v}" for k, v in changed.items()) or "(recipe as is)")
    table.add_row("folder", str(result.run_dir))
    console.print(table)
    for report in result.trackers:  # what live logging did, and what it cost each epoch
        if report.problems:
            err_console.print(f"[yellow]warning:[/] {escape(report.describe())}", highlight=False, soft_wrap=True)
        else:
            console.print(f"[dim]{escape(report.describe())}[/]", highlight=False, soft_wrap=True)
