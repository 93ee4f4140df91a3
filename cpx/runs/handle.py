"""Opening a recorded run: its config, competition, validation list and checkpoints."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from cpx.data.competition import Competition
from cpx.kernel.config import ExperimentConfig, validate
from cpx.kernel.errors import RunError
from cpx.runs.ledger import Ledger
from cpx.kernel.manager import PluginHost
from cpx.kernel.workspace import Workspace
from cpx.runs.folder import CONFIG, RunFolder, run_folder


@dataclass
class RunHandle:
    """A recorded run opened for use: its ledger row, folder, validated config and competition."""

    row: dict
    folder: RunFolder
    config: ExperimentConfig
    competition: Competition

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
        """``best``, ``last`` or a path; :raises RunError: the file does not exist."""
        path = self.folder.checkpoint(which)
        if not path.is_file():
            raise RunError(f"run {self.id}: checkpoint {path} does not exist")
        return path

    def load_model(self, host: PluginHost, checkpoint: str = "best", device: str | torch.device = "cpu") -> torch.nn.Module:
        """The run's model with the checkpoint's weights, in eval mode."""
        path = self.checkpoint_path(checkpoint)
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise RunError(f"{path}: cannot read the checkpoint ({type(exc).__name__}: {exc})") from None
        weights = state.get("state_dict") or state.get("model")
        if weights is None:
            raise RunError(f"{path}: no 'state_dict' or 'model' weights inside")
        model = host.models.get(self.config.model.name).create(self.config.model.options, self.competition.num_classes)
        try:
            model.load_state_dict(weights)
        except RuntimeError as exc:
            raise RunError(f"{path}: weights do not fit model {self.config.model.name}: {str(exc).splitlines()[0]}") from None
        return model.to(device).eval()


def open_run(ref: str, workspace: Workspace, host: PluginHost, ledger: Optional[Ledger] = None) -> RunHandle:
    """A run by id, unique id prefix or name, as recorded in the workspace's ledger."""
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
