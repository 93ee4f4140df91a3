"""Where a training run starts from: a new run of a recipe, a refit of a validated run on every
labelled image, or a resume of a stopped one; each gives the run's id, folder and config."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from cpx.kernel.config import ExperimentConfig, apply_overrides, build_config, config_diff, resolve, validate
from cpx.kernel.errors import ConfigError, RunError
from cpx.kernel.manager import PluginHost
from cpx.kernel.workspace import Workspace
from cpx.runs.checkpoint import load_file
from cpx.runs.folder import RunFolder, new_run_id, run_folder
from cpx.runs.ledger import Ledger
from cpx.train.collective import rank0_object
from cpx.train.variants import weigh_budget_variants


@dataclass
class TrainRequest:
    """What to train: a recipe with overrides (key path -> value) and a name, or a run to resume;
    ``command`` is recorded with the run.
    """

    recipe: Optional[str] = None
    overrides: dict[str, Any] = field(default_factory=dict)
    name: Optional[str] = None
    resume: Optional[str] = None
    # retrain this run's config on every labelled image for the epochs it chose (``overrides``
    # still apply on top, e.g. the device)
    refit: Optional[str] = None
    command: str = ""
    # experiment trackers to log the run to as it trains, each NAME:TARGET (``mlflow:sqlite:///mlruns.db``,
    # ``tensorboard:tb``; see ``cpx plugins``)
    log_to: list[str] = field(default_factory=list)
    # refit a run although its data folder no longer holds the data it trained on
    allow_changed_data: bool = False
    # a budget run may pick among the recipe's budget_variants; a sweep keeps every trial on the
    # recipe as written (or the variant pinned with train.budget_variant), so its trials compare
    choose_variant: bool = True


@dataclass
class RunStart:
    """What a new or resumed run starts from."""

    run_id: str
    folder: RunFolder
    config: ExperimentConfig
    diff: dict
    resume_state: Optional[dict] = None
    parent: Optional[dict] = None  # a refit's parent ledger row
    select_weights: Optional[str] = None  # a refit keeps the kind of weights its parent's best.pt held
    budget_choice: Optional[Any] = None  # the budget variant chosen and why (cpx.train.variants.BudgetChoice)


def new_run(request: TrainRequest, workspace: Workspace, host: PluginHost, ledger: Optional[Ledger]) -> RunStart:
    """A new run of ``request.recipe``: its config from the recipe, the overrides, the workspace's
    competition and data, and (with a budget) the budget variant chosen.

    :raises ConfigError: no recipe named, or a bad recipe or override."""
    if not request.recipe:
        raise ConfigError("name a recipe (or a YAML file), or --resume RUN")
    overrides = dict(request.overrides)
    # the competition: --competition, else the workspace's cpx.yaml, else the recipe's default
    if "competition" not in overrides and workspace.settings().get("competition"):
        overrides["competition"] = workspace.settings()["competition"]
    # the data likewise: --data, else cpx.yaml's data (cpx init --from-data writes it), else the recipe's
    if "data.path" not in overrides and workspace.settings().get("data"):
        overrides["data.path"] = str(workspace.root / Path(str(workspace.settings()["data"])).expanduser())
    config, diff = build_config(request.recipe, overrides, workspace.experiments_dir, host)
    config, diff, choice = weigh_budget_variants(request.recipe, overrides, config, diff, workspace.experiments_dir,
                                                 host, choose=request.choose_variant)
    if config.data.path:  # recorded resolved: a later command run from elsewhere means this folder
        config.data.path = str(Path(config.data.path).expanduser().resolve())
        if "data.path" in diff:
            diff["data.path"] = config.data.path
    run_id = rank0_object(new_run_id(config.recipe))
    return RunStart(run_id, RunFolder(workspace.runs_dir / run_id), config, diff, budget_choice=choice)


def refit_overrides(parent: dict) -> dict[str, Any]:
    """The config changes that turn a validated run into its refit: every labelled image trains
    (``data.val_fraction=0``), no budget or patience, and the parent's schedule
    (``train.epochs`` = the epochs it planned) cut at its best epoch (``train.stop_after``).

    :raises RunError: a run without a validated best epoch.
    """
    best = parent.get("best_epoch")
    if not best or parent.get("best_val_score") is None:
        raise RunError(f"run {parent['id']} has no validated best epoch; only a run that validated can be refitted")
    config = parent.get("config") or {}
    planned = int(parent.get("epochs_planned") or (config.get("train") or {}).get("epochs") or best)
    out: dict[str, Any] = {"data.val_fraction": 0.0, "train.budget_minutes": None, "train.patience": None}
    if best < planned:
        out.update({"train.epochs": planned, "train.stop_after": int(best)})
    else:
        out.update({"train.epochs": int(best), "train.stop_after": None})
    return out


def refit_run(request: TrainRequest, workspace: Workspace, host: PluginHost, ledger: Ledger) -> RunStart:
    """A refit of run ``request.refit`` (:func:`refit_overrides` on its config), keeping the kind
    of weights (EMA or raw) its best checkpoint held.

    :raises RunError: not a cpx training run, itself a refit, or without a config."""
    parent = ledger.get_run(request.refit)
    if parent.get("kind") != "train":
        raise RunError(f"run {parent['id']} is an {parent.get('kind')} run; only cpx training runs can be refitted")
    if parent.get("refit_of"):
        raise RunError(f"run {parent['id']} is itself a refit of {parent['refit_of']}; refit that run instead")
    changes = refit_overrides(parent)
    folder = run_folder(parent, workspace.runs_dir)
    raw = folder.read_config() or parent.get("config")
    if not raw:
        raise RunError(f"run {parent['id']} has no config to refit")
    config = resolve(validate(apply_overrides(raw, {**changes, **request.overrides})), host)
    diff = {**(parent.get("config_diff") or {}), **config_diff(config, resolve(validate(raw), host))}
    kind = None
    if folder.best_path.is_file():
        kind = load_file(folder.best_path, "best checkpoint").get("weights")
    run_id = rank0_object(new_run_id(f"{config.recipe}-refit"))
    return RunStart(run_id, RunFolder(workspace.runs_dir / run_id), config, diff, parent=parent,
                  select_weights=kind if kind in ("ema", "raw") else None)


def resume_run(request: TrainRequest, workspace: Workspace, host: PluginHost, ledger: Ledger) -> RunStart:
    """Run ``request.resume`` again from its folder's config and ``last.pt``.

    :raises RunError: an imported, ensemble or completed run, or one without ``last.pt``."""
    row = ledger.get_run(request.resume)
    run_id = row["id"]
    if row.get("kind") == "imported":
        raise RunError(f"run {run_id} was imported from another tool's folder, which cpx never writes into; "
                       "it cannot be resumed (train a cpx run instead)")
    if row.get("kind") != "train":
        raise RunError(f"run {run_id} is an {row.get('kind')} run; there is no training to resume")
    if row.get("status") == "completed":
        raise RunError(f"run {run_id} already completed {row.get('last_epoch')} epochs; nothing to resume "
                       "(train a new run to go further)")
    folder = run_folder(row, workspace.runs_dir)
    if not folder.last_path.is_file():
        raise RunError(f"run {run_id} has no {folder.last_path.name}: it stopped before its first epoch finished; "
                       "nothing to resume (train it again)")
    config = resolve(validate(folder.read_config() or row.get("config") or {}), host)
    parent = ledger.get_run(row["refit_of"]) if row.get("refit_of") else None
    return RunStart(run_id, folder, config, row.get("config_diff") or {}, parent=parent)
