"""A workspace is a folder cpx works in: recipes, runs, the ledger and submissions.

``--workspace`` or ``CPX_WORKSPACE`` name it; otherwise it is the nearest folder, from the
current directory upwards, that holds ``cpx.yaml`` or ``experiments/ledger.db`` (so cpx works
from a subfolder of a workspace), and the current directory when there is none.
An optional ``cpx.yaml`` at its root may name plugin folders::

    plugin_dirs: [my_plugins]
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from cpx.kernel.errors import ConfigError
from cpx.kernel.yamlfile import read_yaml

SETTINGS_FILE = "cpx.yaml"


@dataclass(frozen=True)
class Workspace:
    """A folder cpx works in (see the module docstring for how it is found) and the paths of
    what it keeps there.
    """

    root: Path

    @classmethod
    def current(cls, override: Optional[os.PathLike] = None) -> "Workspace":
        """The workspace named by ``override`` or ``CPX_WORKSPACE``, else the one found upwards
        from the current directory (see the module docstring)."""
        root = override or os.environ.get("CPX_WORKSPACE")
        if root:
            path = Path(root).expanduser().resolve()
            if not path.is_dir():  # a typo must not grow an empty ledger somewhere
                raise ConfigError(f"--workspace: {path} is not a folder (create it first, or check the path)")
            return cls(path)
        return cls(cls.find(Path.cwd()) or Path.cwd().resolve())

    @staticmethod
    def find(start: os.PathLike) -> Optional[Path]:
        """The nearest folder at or above ``start`` holding ``cpx.yaml`` or
        ``experiments/ledger.db``; None when there is none."""
        here = Path(start).expanduser().resolve()
        for folder in (here, *here.parents):
            if (folder / SETTINGS_FILE).is_file() or (folder / "experiments" / "ledger.db").is_file():
                return folder
        return None

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
    def competitions_dir(self) -> Path:
        """The workspace's own competition profiles, ``competitions/NAME.yaml``."""
        return self.root / "competitions"

    @property
    def submissions_dir(self) -> Path:
        return self.root / "submissions"

    def settings(self) -> dict:
        """The mapping in ``cpx.yaml`` (empty without one).

        :raises ConfigError: the file is not valid YAML (a key given twice included) or not a mapping.
        """
        path = self.root / SETTINGS_FILE
        if not path.is_file():
            return {}
        data = read_yaml(path) or {}  # a key given twice is refused, naming both lines
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        return data

    def plugin_dirs(self) -> list[Path]:
        """Plugin folders: ``cpx.yaml``'s ``plugin_dirs`` (relative to the workspace) and
        ``CPX_PLUGIN_DIRS`` (``os.pathsep``-separated).
        """
        dirs = [self.root / d for d in self.settings().get("plugin_dirs", []) or []]
        env = os.environ.get("CPX_PLUGIN_DIRS")
        if env:
            dirs += [Path(p) for p in env.split(os.pathsep) if p]
        return dirs
