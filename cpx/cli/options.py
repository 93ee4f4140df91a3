"""Options shared by several commands, each declared once: its flags, type and help.

A command uses one as a parameter's type, with the default after it::

    def predict_command(..., device: Device = "auto", json_: Json = False): ...

Where a command means something more precise by the same option, :func:`with_help` keeps the
flags and type and says it for that command. An option only one command has is declared in
that command.
"""

import copy
from pathlib import Path
from typing import Annotated, Any, Optional, get_args

import typer


def with_help(option: Any, help: str) -> Any:
    """``option`` (one of this module's aliases) with another help text; ``{help}`` in it stands
    for the option's own."""
    kind, info = get_args(option)
    info = copy.copy(info)
    info.help = help.replace("{help}", info.help or "")
    return Annotated[kind, info]


# -- output ------------------------------------------------------------------------------------

Json = Annotated[bool, typer.Option("--json", help="machine-readable output")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="plain log lines instead of progress bars")]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="spend the last submission without asking")]

# -- what to run on ----------------------------------------------------------------------------

Run = Annotated[str, typer.Argument(help="run id, id prefix or name")]
Recipe = Annotated[Optional[str], typer.Argument(help="recipe name (see `cpx recipes`) or a YAML file")]
Competition = Annotated[Optional[str], typer.Option(
    "--competition", help="competition profile (default: cpx.yaml's, else the ledger's runs' or the only one); "
                          "see `cpx competitions`")]
Checkpoint = Annotated[str, typer.Option("--checkpoint", "-c", help="best, last or a checkpoint file")]

# -- how to compute ----------------------------------------------------------------------------

Device = Annotated[Optional[str], typer.Option("--device", help="auto, cpu, cuda, cuda:N")]
Precision = Annotated[Optional[str], typer.Option("--precision", help="auto, fp32, bf16 or fp16")]
BatchSize = Annotated[int, typer.Option("--batch-size", help="images per forward pass")]

# -- training (train and bench) ----------------------------------------------------------------

TrainBatchSize = Annotated[Optional[int], typer.Option("--batch-size", help="images per step")]
ImageSize = Annotated[Optional[int], typer.Option(
    "--image-size", help="training resolution (default: the recipe's, or the competition's native size)")]
Set = Annotated[Optional[list[str]], typer.Option(
    "--set", help="override any field: section.key=value (repeatable)")]

# -- prediction (validate, predict, package, show, compare) ------------------------------------

# Options that override a refusal (changed data, a competition rule) are listed in a panel of their
# own: apart from the others, and a long flag name is not cut short at 80 columns.
OVERRIDES = "Overriding a refusal"

# commands that reuse a run's data folder refuse one that no longer holds what the run trained on
AllowChangedData = Annotated[bool, typer.Option(
    "--allow-changed-data", rich_help_panel=OVERRIDES,
    help="use the run's data folder even though its labelled images are not the ones the run trained on (their "
         "fingerprint differs)")]

Tta = Annotated[Optional[str], typer.Option(
    "--tta", help="test-time augmentation: flip, scale or flip,scale (default: none; an ensemble's own)")]
Post = Annotated[Optional[str], typer.Option(
    "--post", help="post-processing steps, comma-separated, each NAME or NAME:key=value, e.g. fill-holes or "
                   "small-components (see `cpx plugins` for the names and their options)")]
Calibration = Annotated[bool, typer.Option(
    "--calibration/--no-calibration", help="apply the per-class logit offsets `cpx calibrate` stored with the run")]
Tile = Annotated[Optional[int], typer.Option(
    "--tile", help="predict in sliding windows of this many pixels (of the training canvas), overlapping by a "
                   "third and averaged (mmsegmentation's slide mode), e.g. the run's crop size")]

# -- the organisers' scoring program (validate, score, package) -------------------------------

Official = Annotated[bool, typer.Option(
    "--official", help="also run the organisers' scoring program (named by a phase of the profile, copied "
                       "by cpx init --bundle) on the same predictions, as Codabench lays them out; it is code from "
                       "the bundle you chose")]
OfficialPython = Annotated[Optional[Path], typer.Option(
    "--official-python", help="the Python that runs the scoring program (default: this one), e.g. a venv with "
                              "its requirements")]

# -- submissions and Codabench -----------------------------------------------------------------

Phase = Annotated[Optional[str], typer.Option(
    "--phase", help="leaderboard phase (default: the profile's current phase from its bundle, else test)")]
CodabenchCompetition = Annotated[Optional[str], typer.Option("--competition", help="Codabench competition id")]
CodabenchUrl = Annotated[Optional[str], typer.Option("--url", help="Codabench server (default: the one logged in to)")]
