"""Every command, driven with random arguments (hypothesis): whatever the arguments, paths and
file contents, a command succeeds or fails with exit 1 or 2 and its message, never a traceback
(issue 19).

The commands are read from the application itself, so a new command is driven the moment it is
added. Each gets every positional argument and a random choice of its options, filled from a
pool of values people get wrong: missing, empty and unreadable paths, a file where a folder is
meant, a folder of images, numbers out of range, ``inf`` and ``nan``, text that is not UTF-8.
No value names a real recipe or run, so no example trains (that is
``tests/test_bad_inputs.py``'s and the trainers' tests' job); stdin is empty, as under a script,
and the only server URL is a closed port on this machine.
"""

import io
import os
import sys

import pytest
import typer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cpx.cli import create_app, main
from cpx.data import write_dataset


def _leaves(command, path=()):
    """(argv prefix, click command) for every command that runs something."""
    if hasattr(command, "commands"):
        if path and command.params:  # a group that is a command too (`cpx runs`)
            yield list(path), command
        for name, sub in sorted(command.commands.items()):
            yield from _leaves(sub, (*path, name))
    else:
        yield list(path), command


COMMANDS = list(_leaves(typer.main.get_command(create_app())))
# examples per command: a few in the plain suite; CPX_PROPERTY_EXAMPLES=50 for a longer hunt
EXAMPLES = int(os.environ.get("CPX_PROPERTY_EXAMPLES", "4"))
# {placeholders} are filled per test with paths in its own folder
VALUES = ["", "nope", "-", "..", "1", "0", "-1", "2", "inf", "nan", "1e400", "abc", "0.5", "a=b", "x.y=1",
          "é", "caf\udce9", "{missing}", "{file}", "{folder}", "{empty}", "{data}", "{zip}",
          "http://127.0.0.1:9"]


def _options(command) -> list:
    return [p for p in command.params if p.param_type_name == "option" and not p.is_eager]


@st.composite
def _argv(draw, prefix, command):
    argv = list(prefix)
    for param in command.params:
        if param.param_type_name == "argument":
            argv += [draw(st.sampled_from(VALUES)) for _ in range(1 if param.nargs == 1 else draw(st.integers(1, 2)))]
    for option in draw(st.lists(st.sampled_from(_options(command)), unique_by=lambda p: p.name, max_size=4)
                       if _options(command) else st.just([])):
        flag = draw(st.sampled_from(option.opts + option.secondary_opts))
        argv += [flag] if option.is_flag else [flag, draw(st.sampled_from(VALUES))]
    return argv


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    root = tmp_path_factory.mktemp("places")
    from cpx.kernel.manager import create_plugin_host

    comp = create_plugin_host(entry_points=False).competition("celebamask-mini")
    write_dataset(root / "data", comp, comp.synthesize(3, 16, 0), test_count=1)
    (root / "file.txt").write_text("not what anything expects\n")
    (root / "empty").mkdir()
    (root / "junk.zip").write_bytes(b"PK\x03\x04 but not a zip")
    return {"missing": str(root / "missing" / "x"), "file": str(root / "file.txt"), "folder": str(root),
            "empty": str(root / "empty"), "data": str(root / "data"), "zip": str(root / "junk.zip")}


@pytest.mark.filterwarnings("ignore::getpass.GetPassWarning")  # the password prompt, on a pipe
@pytest.mark.parametrize("prefix,command", COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_any_arguments_give_success_or_a_message_never_a_traceback(prefix, command, places, capsys, monkeypatch):
    monkeypatch.setenv("CODABENCH_URL", "http://127.0.0.1:9")

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(argv=_argv(prefix, command))
    def check(argv):
        argv = [a.format(**places) if "{" in a else a for a in argv]
        monkeypatch.setattr(sys, "stdin", io.StringIO(""))
        capsys.readouterr()
        code = main(argv)
        out = capsys.readouterr()
        assert "Traceback" not in out.out + out.err, argv
        assert code in (0, 1, 2), (argv, code, out.err[-500:])
        if code:
            assert out.err.strip(), argv

    check()
