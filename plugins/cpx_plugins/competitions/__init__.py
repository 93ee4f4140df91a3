"""Competition profiles: the built-in ones (one YAML file each, beside this module, with a
procedural generator for ``cpx data synth`` and the quick start) and the workspace's own
``competitions/*.yaml``, which need no Python at all.

A workspace profile that does not validate is registered as broken: asking for it raises its
error, which names the file and the field.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from cpx.data.competition import load_profile
from cpx.kernel.errors import ConfigError
from cpx.kernel.hookspecs import hookimpl
from cpx.kernel.workspace import Workspace

PROFILES = Path(__file__).resolve().parent

# profile name -> module beside this one whose ``synthesize(count, size, seed)`` draws its data
GENERATORS = {"celebamask-mini": "faces",
              "drone-vegetation": "vegetation",
              "landcover-tiles": "landcover"}


def _generator(name: str):
    module = GENERATORS.get(name)
    if module is None:
        return None

    def synthesize(count, size, seed):
        # imported on first use: a generator is only needed when synthetic data is asked for
        return importlib.import_module(f"{__name__}.{module}").synthesize(count, size, seed)

    return synthesize


def _describe(profile) -> str:
    size = profile.size if profile.size == "variable" else "x".join(str(s) for s in (
        (profile.size, profile.size) if isinstance(profile.size, int) else profile.size))
    metric = profile.metric.name + "".join(f" {k}={v}" for k, v in profile.metric.options.items())
    return (f"{profile.title or profile.name}: {profile.num_classes} classes, {profile.channels} channels, "
            f"{size}, {metric}, {profile.submission.name}")


def workspace_profiles() -> list[Path]:
    """The ``competitions/*.yaml`` files of the current workspace (none when there is none)."""
    try:
        folder = Workspace.current().competitions_dir
    except ConfigError:  # a --workspace that does not exist is reported by the command itself
        return []
    return sorted(p for p in folder.glob("*.y*ml") if p.suffix in (".yaml", ".yml")) if folder.is_dir() else []


@hookimpl
def register_competitions(register):
    for path in sorted(PROFILES.glob("*.yaml")):
        profile = load_profile(path, synthesize=_generator(path.stem))
        register(profile.name, profile, description=_describe(profile), origin="builtin")
    for path in workspace_profiles():
        try:
            profile = load_profile(path)
        except ConfigError as exc:
            register(path.stem, exc, origin=str(path))
            continue
        register(profile.name, profile, description=_describe(profile), origin=str(path))
