"""A workspace is a folder cpx works in: recipes, runs, the ledger and submissions.

The current directory by default; ``--workspace`` or ``CPX_WORKSPACE`` choose another.
An optional ``cpx.yaml`` at its root may name plugin folders::

    plugin_dirs: [my_plugins]
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

from cpx.kernel.errors import ConfigError

SETTINGS_FILE = "cpx.yaml"


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def current(cls, override: Optional[os.PathLike] = None) -> "Workspace":
        root = override or os.environ.get("CPX_WORKSPACE") or os.getcwd()
        return cls(Path(root).expanduser().resolve())

    @property
    def experiments_dir(self) -> Path:
        return self.root / "experiments"

    @property
    def runs_dir(self) -> Path:
        return self.experiments_dir / "runs"

    @property
    def ledger_path(self) -> Path:
        return self.experiments_dir / "ledger.db"

    @property
    def cache_dir(self) -> Path:
        return self.experiments_dir / "cache"

    @property
    def submissions_dir(self) -> Path:
        return self.root / "submissions"

    def settings(self) -> dict:
        path = self.root / SETTINGS_FILE
        if not path.is_file():
            return {}
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc.__class__.__name__})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        return data

    def plugin_dirs(self) -> list[Path]:
        dirs = [self.root / d for d in self.settings().get("plugin_dirs", []) or []]
        env = os.environ.get("CPX_PLUGIN_DIRS")
        if env:
            dirs += [Path(p) for p in env.split(os.pathsep) if p]
        return dirs
