"""The `cpx` command line: a thin typer + rich skin over the core.

Each command builds a config, calls one core function and renders the result. Domain
errors (`cpx.kernel.errors.CpxError`) become one line per problem on stderr and exit code 2.

May import: every cpx package (and it alone imports typer and rich).
"""

from __future__ import annotations

import os
import sys
from typing import Optional

import typer

from cpx import __version__
from cpx.kernel.errors import CpxError

from . import _common, bench, bundle, data, evaluate, package, pictures, plugins, report, runs, submit, sweep, train

COMMAND_MODULES = [bundle, train, runs, plugins, data, pictures, evaluate, package, submit, bench, sweep, report]


def create_app(host=None) -> typer.Typer:
    """A fresh application; plugins add their commands through ``register_commands``."""
    app = typer.Typer(name="cpx", no_args_is_help=True, add_completion=True,
                      help="Train, validate, package and track models for Codabench segmentation challenges.",
                      pretty_exceptions_enable=False, rich_markup_mode="rich")

    @app.callback()
    def _root(workspace: Optional[str] = typer.Option(
            None, "--workspace", "-w", envvar="CPX_WORKSPACE",
            help="workspace folder (runs, ledger, submissions); default: the nearest folder upwards holding "
                 "cpx.yaml or experiments/ledger.db, else the current directory"),
              version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                           help="print the version of cpx and exit")):
        if workspace:
            os.environ["CPX_WORKSPACE"] = workspace

    for module in COMMAND_MODULES:
        module.register(app)
    host = host or _common.host()
    host.add_commands(app)
    return app


def _print_version(value: bool) -> None:
    if value:
        import torch

        print(f"cpx {__version__} (torch {torch.__version__}, python {sys.version.split()[0]})")
        raise typer.Exit()


def _workspace_from_argv(argv: list[str]) -> Optional[str]:
    # The workspace decides which plugin folders load, and plugins add commands, so it is
    # needed before the application (and its argument parser) exists.
    for i, arg in enumerate(argv):
        if arg in ("--workspace", "-w") and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--workspace="):
            return arg.split("=", 1)[1]
    return None


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point; returns the exit code (the console script passes it to sys.exit)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for arg in argv:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:  # bytes the locale could not decode reach Python as lone surrogates
            shown = arg.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            _common.print_error(CpxError(f"argument {shown!r} is not valid UTF-8 text; cpx records names and paths "
                                         "in its ledger as UTF-8: use another name (or rename the file)"))
            return CpxError.exit_code
    ws = _workspace_from_argv(argv)
    if ws:
        os.environ["CPX_WORKSPACE"] = ws
    try:
        app = create_app()
        _common.print_plugin_failures()
        # standalone mode: typer renders usage errors and turns typer.Exit into SystemExit
        app(args=argv, prog_name="cpx")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except CpxError as exc:
        _common.print_error(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        _common.err_console.print("[yellow]interrupted[/] (Ctrl-C): files already written are complete; nothing "
                                  "half-written was kept", highlight=False)
        return 130
    return 0
