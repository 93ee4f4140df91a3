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


def default_competition(workspace: Workspace, host: PluginHost, data: Optional[os.PathLike] = None) -> Optional[str]:
    """The competition a command given none works for: ``competition:`` in the workspace's
    ``cpx.yaml``, else the one every run in the ledger belongs to, else the one profile whose
    layout the ``data`` folder (or ``cpx.yaml``'s ``data``) follows, else the only one
    registered; None when that leaves a choice."""
    configured = workspace.settings().get("competition")
    if configured:
        return str(configured)
    names = host.competitions.names()
    used = ledger_competitions(workspace)
    if len(used) == 1 and used[0] in names:
        return used[0]
    data = data or workspace.settings().get("data")
    if data and os.path.isdir(data):
        fits = matching_profiles(data, [host.competitions.get(n).target for n in names])
        if len(fits) == 1:
            return fits[0].name
    return names[0] if len(names) == 1 else None


def pick_competition(name: Optional[str], workspace: Workspace, host: PluginHost,
                     data: Optional[os.PathLike] = None, option: str = "--competition") -> str:
    """The name of the competition to use: ``name`` when given (it must be registered), else
    :func:`default_competition`.

    :raises UnknownComponent: ``name`` is not registered.
    :raises ConfigError: nothing decides; the message names ``option`` and the choices.
    """
    if name:
        host.competitions.get(name)
        return name
    found = default_competition(workspace, host, data)
    if found is None:
        names = host.competitions.names()
        raise ConfigError(f"{option}: choose one of {', '.join(names) or '(none registered)'} "
                          "(or set competition: in the workspace's cpx.yaml)")
    return found
