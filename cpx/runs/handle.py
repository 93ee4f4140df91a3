"""Opening a recorded run: its config, competition, validation list and checkpoints."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import yaml

from cpx.data.competition import Competition
from cpx.kernel.config import ExperimentConfig, validate
from cpx.kernel.errors import RunError
from cpx.runs.ledger import Ledger
from cpx.kernel.manager import PluginHost
from cpx.kernel.workspace import Workspace


@dataclass
class RunHandle:
    row: dict
    run_dir: Path
    config: ExperimentConfig
    competition: Competition

    @property
    def id(self) -> str:
        return self.row["id"]

    @property
    def data_root(self) -> Optional[Path]:
        info = self.run_dir / "data.json"
        if info.is_file():
            return Path(json.loads(info.read_text())["path"])
        return Path(self.config.data.path) if self.config.data.path else None

    @property
    def val_names(self) -> list[str]:
        path = self.run_dir / "val_list.txt"
        return [line.strip() for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []

    @property
    def image_size(self) -> int:
        return int(self.config.data.image_size or self.competition.image_size)

    def checkpoint_path(self, which: str = "best") -> Path:
        path = self.run_dir / f"{which}.pt" if which in ("best", "last") else Path(which)
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
    run_dir = Path(row["run_dir"]) if row.get("run_dir") else workspace.runs_dir / row["id"]
    config_file = run_dir / "config.yaml"
    if config_file.is_file():
        data = yaml.safe_load(config_file.read_text())
    elif row.get("config"):
        data = row["config"]
    else:
        raise RunError(f"run {row['id']} has no config (looked in {config_file})")
    config = validate(data)
    return RunHandle(row, run_dir, config, host.competition(config.competition))
