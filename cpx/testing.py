"""Pytest fixtures for cpx and for authors of cpx plugins (registered as a pytest plugin).

* ``cpx_workspace``: a fresh temporary workspace, made current (cwd and ``CPX_WORKSPACE``).
* ``cpx_host``: a fresh plugin host with the built-ins and no installed entry points, made
  current for the test; register fakes with ``cpx_host.register(module_or_object)``.
* ``cpx_synthetic``: a small synthetic data folder in the competition layout.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cpx.kernel.manager import create_plugin_host, set_host
from cpx.kernel.workspace import Workspace


@pytest.fixture
def cpx_workspace(tmp_path, monkeypatch) -> Workspace:
    root = tmp_path / "workspace"
    root.mkdir()
    monkeypatch.chdir(root)
    monkeypatch.setenv("CPX_WORKSPACE", str(root))
    monkeypatch.setenv("CPX_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.delenv("CODABENCH_TOKEN", raising=False)
    return Workspace(root)


@pytest.fixture
def cpx_host():
    host = create_plugin_host(entry_points=False)
    previous = set_host(host)
    yield host
    set_host(previous)


@pytest.fixture
def cpx_synthetic(tmp_path_factory, cpx_host) -> Path:
    """24 synthetic 64x64 images of the first registered competition with a generator (+4 test)."""
    from cpx.data import write_dataset

    competition = next(c.target for c in cpx_host.competitions if c.target.synthesize)
    root = tmp_path_factory.mktemp("synthetic")
    write_dataset(root, competition, competition.synthesize(28, 64, 0), test_count=4)
    return root
