"""Opening a recorded run: its config, competition, validation list and checkpoints."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch

from cpx.data.competition import Competition
from cpx.kernel.config import ExperimentConfig, validate
from cpx.kernel.errors import ConfigError, RunError
from cpx.kernel.manager import PluginHost, get_host
from cpx.kernel.workspace import Workspace
from cpx.runs.checkpoint import load_weights, read_checkpoint
from cpx.runs.folder import CONFIG, RunFolder, run_folder
from cpx.runs.ledger import Ledger


@dataclass
class RunHandle:
    """A recorded run opened for use: its ledger row, folder, validated config and competition."""

    row: dict
    folder: RunFolder
    config: ExperimentConfig
    competition: Competition

    def __repr__(self) -> str:
        return (f"RunHandle({self.id!r}, model={self.config.model.name!r}, competition={self.competition.name!r}, "
                f"best_val_score={self.row.get('best_val_score')}, folder={str(self.folder.path)!r})")

    @property
    def id(self) -> str:
        return self.row["id"]

    @property
    def run_dir(self) -> Path:
        return self.folder.path

    @property
    def data_root(self) -> Optional[Path]:
        """The data folder the run was trained on (``data.json``, else the config's ``data.path``)."""
        root = self.folder.data_root()
        if root is not None:
            return root
        return Path(self.config.data.path) if self.config.data.path else None

    @property
    def val_names(self) -> list[str]:
        return self.folder.read_val_names()

    @property
    def image_size(self) -> int:
        return int(self.config.data.image_size or self.competition.image_size)

    def checkpoint_path(self, which: str = "best") -> Path:
        """``best``, ``last`` or a path. An imported run without ``best.pt`` uses the best of the
        checkpoints its import found (``best_model.pth``, ...).

        :raises RunError: the file does not exist.
        """
        path = self.folder.checkpoint(which)
        if which == "best" and not path.is_file() and self.row.get("checkpoints"):
            path = Path(self.row["checkpoints"][0])
        if not path.is_file():
            raise RunError(f"run {self.id}: checkpoint {path} does not exist (give best, last or a checkpoint file)")
        return path

    @property
    def history(self) -> list[dict]:
        """The per-epoch records (``history.json``): epoch, train_loss, val_loss, val_score, lr, ..."""
        return self.folder.read_history()

    def create_model(self, host: Optional[PluginHost] = None) -> torch.nn.Module:
        """A freshly initialised model of the run's architecture and options, for its
        competition's classes and channels."""
        return build_model(self.config, self.competition, host or get_host())

    def load_model(self, checkpoint: str = "best", device: Union[str, torch.device] = "cpu",
                   host: Optional[PluginHost] = None) -> torch.nn.Module:
        """The run's model with the weights of ``checkpoint`` (``best``, ``last`` or a path), in
        eval mode on ``device``.

        The file is read with ``weights_only=True`` (see :mod:`cpx.runs.checkpoint`): wrapper
        prefixes are stripped and bare state_dicts accepted.

        :raises RunError: missing or unsafe file, or weights that do not fit the architecture
            (with counts and examples of the keys that differ).
        """
        model = self.create_model(host)
        load_weights(model, read_checkpoint(self.checkpoint_path(checkpoint)), f"model {self.config.model.name}")
        return model.to(device).eval()


def build_model(config: ExperimentConfig, competition: Competition, host: PluginHost) -> torch.nn.Module:
    """The model ``config`` names, freshly initialised for ``competition``'s classes and channels
    (``in_channels`` goes to a factory that takes it; one that does not builds RGB models).

    :raises ConfigError: options that do not validate; a factory without ``in_channels`` for a
        competition whose images are not RGB.
    """
    entry = host.models.get(config.model.name)
    extra = {}
    if entry.accepts("in_channels"):
        extra["in_channels"] = competition.channels
    elif competition.channels != 3:
        raise ConfigError(f"model.name: {config.model.name} takes 3-channel images, but competition "
                          f"{competition.name} has {competition.channels} channels")
    return entry.create(config.model.options, competition.num_classes, where="model.options", **extra)


def default_competition(workspace: Workspace, host: PluginHost, data: Optional[os.PathLike] = None) -> Optional[str]:
    """The competition a command given none works for: ``competition:`` in the workspace's
    ``cpx.yaml``, else the one every run in the ledger belongs to, else the one profile whose
    layout the ``data`` folder (or ``cpx.yaml``'s ``data``) follows, else the only one
    registered; None when that leaves a choice (the one owner of this rule)."""
    from cpx.data.competition import matching_profiles

    configured = workspace.settings().get("competition")
    if configured:
        return str(configured)
    names = host.competitions.names()
    if workspace.ledger_path.is_file():
        with Ledger(workspace.ledger_path) as ledger:
            used = ledger.competitions()
        if len(used) == 1 and used[0] in names:
            return used[0]
    data = data or workspace.settings().get("data")
    if data and Path(data).is_dir():
        fits = matching_profiles(Path(data), [host.competitions.get(n).target for n in names])
        if len(fits) == 1:
            return fits[0].name
    return names[0] if len(names) == 1 else None


def pick_competition(workspace: Workspace, host: PluginHost, name: Optional[str] = None,
                     data: Optional[os.PathLike] = None) -> str:
    """``name`` (checked to be registered), else :func:`default_competition`.

    :raises UnknownComponent: ``name`` is not registered; :raises ConfigError: no name and no
        default, in one line listing the choices.
    """
    if name:
        host.competitions.get(name)
        return name
    found = default_competition(workspace, host, data)
    if found is None:
        raise ConfigError(f"--competition: choose one of {', '.join(host.competitions.names()) or '(none registered)'}"
                          " (or set competition: in the workspace's cpx.yaml)")
    return found


def open_run(ref: str, workspace: Optional[Workspace] = None, host: Optional[PluginHost] = None,
             ledger: Optional[Ledger] = None) -> RunHandle:
    """A recorded run by id, unique id prefix or name, from the workspace's ledger (default:
    the current workspace and plugin host).

    :raises RunError: no such run, an ambiguous prefix, or a run without a readable config.
    """
    workspace = workspace or Workspace.current()
    host = host or get_host()
    own = ledger is None
    ledger = ledger or Ledger(workspace.ledger_path)
    try:
        row = ledger.get_run(ref)
    finally:
        if own:
            ledger.close()
    folder = run_folder(row, workspace.runs_dir)
    data = folder.read_config() or row.get("config")
    if not data:
        raise RunError(f"run {row['id']} has no config (looked in {folder.file(CONFIG)} and the ledger)")
    config = validate(data)
    return RunHandle(row, folder, config, host.competition(config.competition))
