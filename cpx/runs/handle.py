"""Opening a recorded run: its config, competition, validation list and checkpoints."""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch

from cpx.data.competition import Competition
from cpx.data.dataset import fingerprint
from cpx.kernel.config import ExperimentConfig, validate
from cpx.kernel.errors import ConfigError, DataError, RunError
from cpx.kernel.manager import PluginHost, get_host
from cpx.kernel.workspace import Workspace
from cpx.runs.checkpoint import load_weights, read_checkpoint
from cpx.runs.folder import CONFIG, RunFolder, checkpoint_damage, damage_advice, run_folder
from cpx.runs.ledger import Ledger


@dataclass
class RunHandle:
    """A recorded run opened for use: its ledger row, folder, validated config and competition."""

    row: dict
    folder: RunFolder
    config: ExperimentConfig
    competition: Competition
    workspace_root: Optional[Path] = None  # the workspace it was opened from (its data may live there)

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
        """The data folder the run was trained on (``data.json``, else the config's ``data.path``),
        unchecked; :meth:`checked_data_root` also makes sure it holds the same data."""
        return _recorded_root(self.row, self.folder, self.workspace_root)

    def checked_data_root(self, allow_changed: bool = False, hint: str = "") -> Path:
        """:func:`checked_data_root` of this run."""
        return checked_data_root(self.row, self.folder, self.competition, self.workspace_root,
                                 allow_changed=allow_changed, hint=hint)

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
        competition's classes and bands (as it was trained)."""
        return build_model(host or get_host(), self.config.model.name, self.config.model.options, self.competition)

    def load_model(self, checkpoint: str = "best", device: Union[str, torch.device] = "cpu",
                   host: Optional[PluginHost] = None) -> torch.nn.Module:
        """The run's model with the weights of ``checkpoint`` (``best``, ``last`` or a path), in
        eval mode on ``device``.

        The file is read with ``weights_only=True`` (see :mod:`cpx.runs.checkpoint`): wrapper
        prefixes are stripped and bare state_dicts accepted.

        A checkpoint whose recorded checksums fail (``cpx doctor``'s check,
        :func:`~cpx.runs.folder.checkpoint_damage`) is refused, never loaded.

        :raises RunError: missing, damaged or unsafe file, or weights that do not fit the
            architecture (with counts and examples of the keys that differ).
        """
        path = self.checkpoint_path(checkpoint)
        # only a zip archive records checksums; any other file is left to the loader's own error
        problem = checkpoint_damage(path) if zipfile.is_zipfile(path) else None
        if problem:
            own = path in (self.folder.best_path, self.folder.last_path)
            advice = damage_advice(self.id, self.folder, path) if own else "restore it from a backup"
            raise RunError(f"{path}: {problem}; {advice}")
        model = self.create_model(host)
        load_weights(model, read_checkpoint(path), f"model {self.config.model.name}")
        return model.to(device).eval()


def build_model(host: PluginHost, name: str, options: Any, competition: Competition) -> torch.nn.Module:
    """The model ``name`` with ``options`` for ``competition``'s classes and image bands: training
    builds it so, and so does every reload of a run's weights. ``in_channels`` goes to a factory
    that takes it; one that does not must be given 3-band images.

    :raises ConfigError: options that do not validate (``model.options.<field>``); a factory
        without ``in_channels`` for a competition whose images are not RGB.
    """
    entry = host.models.get(name)
    extra = {}
    if entry.accepts("in_channels"):
        extra["in_channels"] = competition.channels
    elif competition.channels != 3:
        raise ConfigError(f"model.name: {name} takes 3-channel images, but competition {competition.name} has "
                          f"{competition.channels} channels")
    return entry.create(options, competition.num_classes, where="model.options", **extra)


def _recorded_root(row: dict, folder: RunFolder, workspace_root: Optional[os.PathLike]) -> Optional[Path]:
    root = folder.data_root(workspace_root)
    if root is not None:
        return root
    path = ((folder.read_config() or row.get("config") or {}).get("data") or {}).get("path")
    if not path:
        return None
    root = Path(path).expanduser()
    return Path(workspace_root) / root if not root.is_absolute() and workspace_root is not None else root


def checked_data_root(row: dict, folder: RunFolder, competition: Competition,
                      workspace_root: Optional[os.PathLike] = None, *, allow_changed: bool = False,
                      hint: str = "") -> Path:
    """The data folder a run trained on, checked to hold the very labelled data it trained on:
    every command that reuses a run's data (validate, calibrate, ensemble, show, package, refit)
    asks here. Another folder of the same name (the recorded path was relative, the workspace
    was copied, files were added or edited) would otherwise be scored or zipped without a word.

    :raises RunError: the run records no data folder, or it is gone (``hint`` says what to do).
    :raises DataError: the folder's fingerprint differs from the one recorded at training, unless
        ``allow_changed``.
    """
    root = _recorded_root(row, folder, workspace_root)
    hint = f"; {hint}" if hint else ""
    if root is None:
        raise RunError(f"run {row['id']} records no data folder{hint}")
    if not root.is_dir():
        raise RunError(f"run {row['id']}: its data folder {root} is gone{hint}")
    recorded = (folder.read_data_info() or {}).get("fingerprint") or row.get("data_fingerprint")
    if recorded and not allow_changed:
        now = fingerprint(root, competition)
        if now != recorded:
            raise DataError(f"run {row['id']}: the labelled data in {root} is not what the run trained on "
                            f"(fingerprint {now}, recorded {recorded}); restore that data, or pass "
                            "--allow-changed-data to use this folder anyway")
    return root


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
    if row.get("kind") == "imported":
        # its folder's config.yaml is the other tool's, never cpx's: read the ledger's copy
        config = imported_config(row, workspace, host)
    else:
        data = folder.read_config() or row.get("config")
        if not data:
            raise RunError(f"run {row['id']} has no config (looked in {folder.file(CONFIG)} and the ledger)")
        config = validate(data)
    return RunHandle(row, folder, config, host.competition(config.competition), workspace.root)


def imported_config(row: dict, workspace: Workspace, host: PluginHost) -> ExperimentConfig:
    """The cpx config that rebuilds an imported run's model: its config as is when it is
    cpx-shaped, else its model name (``model.name``, ``model``, ``arch``) when cpx has that
    model, with the options cpx's model takes from that section, its image size and competition.

    :raises RunError: no model name, or one no plugin registers (one line: what to do instead).
    """
    from cpx.kernel.config import build_config, flatten
    from cpx.runs.competition import default_competition

    raw = row.get("config") or {}
    try:
        return validate(raw)
    except ConfigError:
        pass
    section = raw.get("model")
    name = section.get("name") or section.get("arch") if isinstance(section, dict) else section or raw.get("arch")
    if not isinstance(name, str) or name not in host.models:
        known = ", ".join(host.models.names())
        raise RunError(f"run {row['id']} was imported from another tool and names no model cpx can rebuild "
                       f"({name!r}; cpx has {known}); score its predictions with `cpx score PRED_DIR GT_DIR` instead")
    fields = host.models.get(name).options.model_fields
    options = {k: v for k, v in section.items() if k in fields} if isinstance(section, dict) else {}
    overrides: dict[str, Any] = {"model.name": name, "model.options": options}
    competition = row.get("competition") or default_competition(workspace, host)
    if competition:
        overrides["competition"] = competition
    size = next((v for k, v in flatten(raw).items() if k.rsplit(".", 1)[-1] in ("image_size", "input_size", "img_size")
                 and isinstance(v, int) and not isinstance(v, bool)), None)
    if size:
        overrides["data.image_size"] = size
    config, _ = build_config("msf-lmsa", overrides, workspace.experiments_dir, host)
    return config
