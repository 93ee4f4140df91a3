"""The one place that owns the plugin manager.

Load order: entry points of group ``cpx`` (third-party), then plugin files from the
workspace's plugin folders, then the built-ins from an explicit list. A plugin that fails to
import becomes one warning and is skipped; a misspelt hook name or a name registered twice
is an error.

A built-in is registered by name and imported the first time its hook is called, and each
registry is built when it is first needed, so a command that lists runs never imports the
models (torch) and ``cpx --help`` lists plugins' commands without them.

``CPX_LOAD_PLUGINS`` (comma-separated entry-point or distribution names, empty for none)
restricts which third-party plugins load, to isolate a broken one.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Optional

import pluggy

from cpx.kernel import hookspecs
from cpx.kernel.errors import ConfigError, PluginError
from cpx.kernel.registry import Registry

# built-in plugin module -> the hooks it implements (tests/test_plugins.py checks them against
# the module), so each is imported only when one of its hooks is called
BUILTIN_PLUGINS = {
    "cpx_plugins.competitions": ("register_competitions",),
    "cpx_plugins.metrics": ("register_metrics",),
    "cpx_plugins.formats": ("register_submission_formats",),
    "cpx_plugins.models": ("register_models",),
    "cpx_plugins.losses": ("register_losses",),
    "cpx_plugins.augmentations": ("register_augmentations",),
    "cpx_plugins.postprocess": ("register_postprocessors",),
    "cpx_plugins.loggers": ("register_loggers",),
}

# registration hook -> registry kind
KINDS = {
    "register_competitions": "competition",
    "register_models": "model",
    "register_losses": "loss",
    "register_augmentations": "augmentation",
    "register_postprocessors": "postprocessor",
    "register_metrics": "metric",
    "register_submission_formats": "submission format",
    "register_loggers": "logger",
}


@dataclass
class PluginHost:
    """A plugin manager plus the registries its plugins filled."""

    manager: pluggy.PluginManager
    origins: dict[str, str] = field(default_factory=dict)  # plugin name -> where it came from
    failures: list[str] = field(default_factory=list)
    _bound: set = field(default_factory=set)  # (competition, part) pairs checked by Competition.bind
    _registries: dict = field(default_factory=dict)  # kind -> Registry, built on first use

    def register(self, plugin: Any, name: Optional[str] = None, origin: str = "builtin") -> None:
        """Add a plugin object or module; registries built after this see it."""
        name = self.manager.register(plugin, name=name)
        try:
            # a misspelt hook name (register_model) would otherwise be silently ignored
            self.manager.check_pending()
        except pluggy.PluginValidationError as exc:
            self.manager.unregister(name=name)
            raise PluginError(f"plugin {origin}: {exc}") from None
        self.origins[name] = origin
        self._registries.clear()
        self._bound.clear()

    @property
    def registries(self) -> dict[str, Registry]:
        """Kind -> :class:`Registry`, every kind (see :meth:`registry`)."""
        return {kind: self.registry(kind) for kind in KINDS.values()}

    def registry(self, kind: str) -> Registry:
        """The :class:`Registry` of ``kind``, built on first use by calling its registration
        hook; a plugin that raises becomes one entry in ``failures``.
        """
        if kind in self._registries:
            return self._registries[kind]
        registry = Registry(kind)
        hook_name = next(hook for hook, k in KINDS.items() if k == kind)
        # Call each implementation on its own so each registration knows its origin.
        for impl in reversed(getattr(self.manager.hook, hook_name).get_hookimpls()):
            origin = self.origins.get(impl.plugin_name, impl.plugin_name)

            def register(name, target, options=None, description="", origin=None, _origin=origin):
                # ``origin`` lets a plugin name the file a component came from (a profile)
                registry.register(name, target, options=options, description=description, origin=origin or _origin)

            try:
                impl.function(register=register)
            except PluginError:
                raise
            except Exception as exc:  # a broken third-party plugin must not take the CLI down
                self.failures.append(f"plugin {origin} failed in {hook_name}: {type(exc).__name__}: {exc}")
        self._registries[kind] = registry
        return registry

    @property
    def models(self) -> Registry:
        return self.registry("model")

    @property
    def losses(self) -> Registry:
        return self.registry("loss")

    @property
    def augmentations(self) -> Registry:
        return self.registry("augmentation")

    @property
    def postprocessors(self) -> Registry:
        return self.registry("postprocessor")

    @property
    def metrics(self) -> Registry:
        return self.registry("metric")

    @property
    def submission_formats(self) -> Registry:
        return self.registry("submission format")

    @property
    def loggers(self) -> Registry:
        return self.registry("logger")

    @property
    def competitions(self) -> Registry:
        return self.registry("competition")

    def competition(self, name: str, parts: Optional[tuple[str, ...]] = None):
        """The :class:`cpx.data.competition.Competition` registered under ``name``, its metric
        and submission format checked against this host's registries (only ``parts`` of
        the profile's ``bound_parts`` when given: ranking needs the metric alone, and the
        submission formats import numpy and Pillow).

        :raises UnknownComponent: no such competition (close names suggested).
        :raises ConfigError: a profile file that does not validate, or names an unknown metric
            or format (one line naming the file and field).
        """
        entry = self.competitions.get(name)
        todo = tuple(part for part in (parts or entry.target.bound_parts) if (name, part) not in self._bound)
        if todo:
            try:
                entry.target.bind(self, todo)
            except ConfigError as exc:
                where = entry.origin if entry.origin.endswith((".yaml", ".yml")) else f"competition {name}"
                raise ConfigError("\n".join(f"{where}: {line}" for line in str(exc).splitlines())) from None
            self._bound.update((name, part) for part in todo)
        return entry.target

    def checked_competitions(self) -> tuple[list, list[tuple[str, str, str]]]:
        """Every competition, each checked as :meth:`competition` checks it before use:
        ``(entries that bind, [(name, origin, error) of the broken])``, the broken being the
        profiles that could not be read and those whose metric or submission format does not
        bind (the same one-line error a command naming them gets)."""
        good, broken = [], list(self.competitions.broken())
        for entry in self.competitions:
            try:
                self.competition(entry.name)
            except ConfigError as exc:
                broken.append((entry.name, entry.origin, str(exc)))
            else:
                good.append(entry)
        return good, sorted(broken)

    def add_commands(self, app: Any) -> None:
        """Let every plugin add commands to the CLI ``app`` (``register_commands``)."""
        for impl in reversed(self.manager.hook.register_commands.get_hookimpls()):
            try:
                impl.function(app=app)
            except Exception as exc:
                origin = self.origins.get(impl.plugin_name, impl.plugin_name)
                self.failures.append(f"plugin {origin} failed in register_commands: {type(exc).__name__}: {exc}")


def deferred_builtin(module_name: str, hooks: Iterable[str]) -> Any:
    """A stand-in for the built-in plugin ``module_name``: it implements ``hooks`` by importing
    the module on the first call and calling the module's own implementation."""
    stand_in = type(module_name, (), {})()
    for hook_name in hooks:
        def call(*args, _hook=hook_name, **kwargs):
            return getattr(importlib.import_module(module_name), _hook)(*args, **kwargs)

        # pluggy reads the hook's argument names from the signature
        call.__signature__ = inspect.signature(getattr(hookspecs, hook_name))
        setattr(stand_in, hook_name, hookspecs.hookimpl(call))
    return stand_in


def _allowed(ep: metadata.EntryPoint, only: Optional[set[str]]) -> bool:
    if only is None:
        return True
    dist = getattr(ep, "dist", None)
    return ep.name in only or (dist is not None and dist.name in only)


def load_entry_points(host: PluginHost, only: Optional[set[str]] = None) -> None:
    """Register the modules of the ``cpx`` entry-point group (only those named in ``only``
    when given); a module that fails to import becomes one entry in ``host.failures``.
    """
    seen = set()
    for ep in metadata.entry_points(group="cpx"):
        if not _allowed(ep, only) or ep.value in seen:
            continue
        seen.add(ep.value)
        dist = getattr(ep, "dist", None)
        origin = f"{dist.name} {dist.version}" if dist is not None else ep.value
        try:
            plugin = ep.load()
            host.register(plugin, name=f"{ep.name}", origin=origin)
        except Exception as exc:
            host.failures.append(f"plugin {ep.name} ({origin}) failed to load: {type(exc).__name__}: {exc}")


def load_plugin_files(host: PluginHost, folders: Iterable[Path]) -> None:
    """Register every ``*.py`` file of ``folders`` as a plugin (the workspace's ``plugin_dirs``);
    a file that fails to import becomes one entry in ``host.failures``.
    """
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            host.failures.append(f"plugin folder {folder} does not exist")
            continue
        for path in sorted(folder.glob("*.py")):
            if path.name.startswith("_"):
                continue
            mod_name = f"cpx_local_plugin_{abs(hash(str(path.resolve())))}_{path.stem}"
            try:
                spec = importlib.util.spec_from_file_location(mod_name, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[mod_name] = module
                spec.loader.exec_module(module)
                host.register(module, name=str(path), origin=str(path))
            except pluggy.PluginValidationError:
                raise
            except Exception as exc:
                sys.modules.pop(mod_name, None)
                host.failures.append(f"plugin file {path} failed to load: {type(exc).__name__}: {exc}")


def create_plugin_host(*, entry_points: bool = True, builtins: bool = True,
                       plugin_dirs: Iterable[Path] = (), only: Optional[set[str]] = None) -> PluginHost:
    """A fresh manager. Tests use ``entry_points=False`` and register fakes explicitly."""
    manager = pluggy.PluginManager("cpx")
    manager.add_hookspecs(hookspecs)
    host = PluginHost(manager)
    if entry_points:
        env = os.environ.get("CPX_LOAD_PLUGINS")
        if only is None and env is not None:
            only = {n.strip() for n in env.split(",") if n.strip()}
        load_entry_points(host, only)
    load_plugin_files(host, plugin_dirs)
    if builtins:
        for module_name, hooks in BUILTIN_PLUGINS.items():
            host.register(deferred_builtin(module_name, hooks), name=module_name, origin="builtin")
    try:
        manager.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(str(exc)) from None
    return host


_current: Optional[PluginHost] = None


def get_host() -> PluginHost:
    """The process-wide host, created on first use."""
    global _current
    if _current is None:
        from cpx.kernel.workspace import Workspace

        _current = create_plugin_host(plugin_dirs=Workspace.current().plugin_dirs())
    return _current


def set_host(host: Optional[PluginHost]) -> Optional[PluginHost]:
    """Install ``host`` as the current one (None resets); returns the previous host."""
    global _current
    previous, _current = _current, host
    return previous
