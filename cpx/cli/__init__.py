"""The `cpx` command line: a thin typer + rich skin over the core.

Each command module holds its commands as plain functions on a module-level ``typer.Typer``
(``app``, plus a named one for a command group such as ``cpx data``); :func:`create_app` puts
them together with the commands plugins add. Options several commands share are declared once,
in :mod:`cpx.cli.options`. A command builds a request, calls one core function and renders the
result; the core modules it needs are imported when it runs, so ``cpx --help`` and the quick
listings start without torch. Domain errors (`cpx.kernel.errors.CpxError`) become one line per
problem on stderr and exit code 2.

May import: every cpx package (and it alone imports typer and rich).
"""

import inspect
import os
import sys
from typing import Annotated, Optional

import typer

from cpx import __version__
from cpx.kernel.errors import CpxError

from . import (
    _common,
    bench,
    bundle,
    data,
    doctor,
    evaluate,
    package,
    pictures,
    plugins,
    report,
    runs,
    submit,
    sweep,
    train,
)

# The order `cpx --help` lists them in: single commands, then plugins' commands, then groups.
COMMANDS = [bundle.app, train.app, plugins.app, pictures.app, evaluate.app, package.app, submit.app, bench.app,
            sweep.app, report.app, doctor.app]
GROUPS = [bundle.bundle_app, runs.app, data.app, submit.codabench_app]


def create_app(host=None) -> typer.Typer:
    """A fresh application; plugins add their commands through ``register_commands``."""
    app = typer.Typer(name="cpx", no_args_is_help=True, add_completion=True,
                      help="Train, validate, package and track models for Codabench segmentation challenges.",
                      pretty_exceptions_enable=False, rich_markup_mode="rich")
    app.callback()(_root)
    for commands in COMMANDS:
        app.add_typer(commands)
    # plugins get an application of their own, merged like the built-ins' (listed after them)
    added = typer.Typer()
    (host or _common.host()).add_commands(added)
    app.add_typer(added)
    for group in GROUPS:
        app.add_typer(group)
    _flow_listings(app)
    return app


def _flow_listings(app: typer.Typer) -> None:
    """Give each command a one-line listing (``short_help``): the first paragraph of its help
    with the docstring's line breaks taken out. In rich markup mode typer lists a command's
    first paragraph with its hard line breaks, which cut sentences at any width."""
    for info in app.registered_commands:
        text = info.help or inspect.getdoc(info.callback) or ""
        if info.short_help is None and text:
            info.short_help = " ".join(text.split("\n\n", 1)[0].split())
    for group in app.registered_groups:
        _flow_listings(group.typer_instance)


def _print_version(value: bool) -> None:
    if value:
        # torch's version from its metadata: importing torch would take seconds
        from importlib.metadata import version

        print(f"cpx {__version__} (torch {version('torch')}, python {sys.version.split()[0]})")
        raise typer.Exit()


def _root(
    workspace: Annotated[Optional[str], typer.Option(
        "--workspace", "-w", envvar="CPX_WORKSPACE",
        help="workspace folder (runs, ledger, submissions); default: the nearest folder upwards holding "
             "cpx.yaml or experiments/ledger.db, else the current directory")] = None,
    version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_print_version,
                                          help="print the version of cpx and exit")] = False,
):
    if workspace:
        os.environ["CPX_WORKSPACE"] = workspace


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
