"""Which competition a command means when none is named: the one rule every command (and the
notebook API) follows, so ``cpx score`` and ``cpx.score()`` never disagree."""

from __future__ import annotations

import os
from typing import Optional

from cpx.data.competition import matching_profiles
from cpx.kernel.errors import ConfigError
from cpx.kernel.manager import PluginHost
from cpx.kernel.workspace import Workspace
from cpx.runs.ledger import Ledger


def ledger_competitions(workspace: Workspace) -> list[str]:
    """The competitions of the runs in the workspace's ledger, sorted (none without a ledger)."""
    if not workspace.ledger_path.is_file():
        return []
    with Ledger(workspace.ledger_path) as ledger:
        return sorted({r["competition"] for r in ledger.list_runs() if r.get("competition")})


def pick_competition(name: Optional[str], workspace: Workspace, host: PluginHost,
                     data: Optional[os.PathLike] = None, option: str = "--competition") -> str:
    """The name of the competition to use: ``name`` when given (it must be registered), else the
    workspace's ``cpx.yaml`` (``competition:``), else the one profile whose layout the ``data``
    folder follows, else the only one registered, else the competition of the ledger's runs
    when they share one.

    :raises UnknownComponent: ``name`` is not registered.
    :raises ConfigError: nothing decides; the message names ``option`` and the choices.
    """
    if name:
        host.competitions.get(name)
        return name
    configured = workspace.settings().get("competition")
    if configured:
        return configured
    names = host.competitions.names()
    if data is not None and os.path.isdir(data):
        fits = matching_profiles(data, [host.competitions.get(n).target for n in names])
        if len(fits) == 1:
            return fits[0].name
        if fits:
            names = [c.name for c in fits]
    if len(names) == 1:
        return names[0]
    used = ledger_competitions(workspace)
    if len(used) == 1 and used[0] in names:
        return used[0]
    raise ConfigError(f"{option}: choose one of {', '.join(names) or '(none registered)'} "
                      "(or set competition: in the workspace's cpx.yaml)")
