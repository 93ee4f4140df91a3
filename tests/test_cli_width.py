"""At 80 columns (issue 19, item 21): progress bars keep their times whole, help text is never
cut short, command listings keep sentences whole, and the slow commands draw a bar."""

import io
import re

import pytest
import typer
from rich.console import Console

from cpx.cli import _common, create_app, main
from cpx.data import write_dataset

INFO = "loss 0.1234  val fscore 0.7512 (EMA 0.7600)  best 0.7700  12.3 img/s"


def _terminal(width: int) -> Console:
    return Console(file=io.StringIO(), force_terminal=True, width=width, color_system=None)


@pytest.mark.parametrize("width", [80, 60])
@pytest.mark.parametrize("info,remaining", [(True, True), (True, False), (False, True), (False, False)])
def test_progress_bars_keep_their_times_whole(width, info, remaining):
    console = _terminal(width)
    bars = _common.progress_bars(console, info=info, remaining=remaining)
    bars.add_task("epochs", total=30, completed=3, info=INFO)
    bars.add_task("batches", total=300, completed=30, info="")
    console.print(bars.get_renderable())
    text = console.file.getvalue()
    assert "…" not in text, text
    assert "3/30" in text and "30/300" in text and text.count("0:00:00") == 2, text
    assert all(len(line) <= width for line in text.splitlines())
    if info:  # the info wraps under itself: every word of it is there
        assert INFO.split() == [w for w in text.split() if w in INFO.split()][-len(INFO.split()):]


def _paths(command, path=()):
    yield list(path)
    for name, sub in getattr(command, "commands", {}).items():
        yield from _paths(sub, (*path, name))


PATHS = list(_paths(typer.main.get_command(create_app())))


def _help(argv, monkeypatch, capsys, columns: int) -> str:
    monkeypatch.setenv("COLUMNS", str(columns))
    capsys.readouterr()
    main([*argv, "--help"])
    return capsys.readouterr().out


@pytest.mark.parametrize("argv", PATHS, ids=[" ".join(p) or "cpx" for p in PATHS])
def test_help_is_never_cut_at_80_columns(argv, monkeypatch, capsys):
    text = _help(argv, monkeypatch, capsys, 80)
    assert "Usage" in text
    assert "…" not in text, "\n".join(line for line in text.splitlines() if "…" in line)
    assert all(len(line) <= 80 for line in text.splitlines())


@pytest.mark.parametrize("argv", [p for p in PATHS if len(p) < 1 or p[0] in ("runs", "data", "codabench", "bundle")
                                  and len(p) == 1], ids=lambda p: " ".join(p) or "cpx")
def test_a_listing_gives_each_command_one_line_when_there_is_room(argv, monkeypatch, capsys):
    # docstrings are wrapped at 100 characters: a listing must not keep those line breaks
    width = 200
    lines = _help(argv, monkeypatch, capsys, width).split("Commands")[1].splitlines()
    # a line continues the one before only when that one ran out of room (wrapped, not broken)
    for before, line in zip(lines, lines[1:]):
        if re.match(r"^│ {6,}\S", line):
            assert len(before.rstrip("│ ")) > width - 30, (before, line)


@pytest.fixture
def terminal(monkeypatch) -> Console:
    """The console progress bars draw on, made an 80-column terminal (the command's other output
    stays where pytest captures it)."""
    console = _terminal(80)
    monkeypatch.setattr(_common, "console", console)
    return console


def _drawn(console: Console) -> str:
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "\n", console.file.getvalue())


def test_data_check_with_labels_draws_a_bar(terminal, cpx_host, tmp_path, capsys):
    comp = cpx_host.competition("celebamask-mini")
    write_dataset(tmp_path / "data", comp, comp.synthesize(6, 32, 0), test_count=2)
    assert main(["data", "check", str(tmp_path / "data"), "--labels", "--competition", "celebamask-mini"]) == 0
    drawn = _drawn(terminal)
    assert "checking labels" in drawn and "6/6" in drawn and "0:00:0" in drawn and "…" not in drawn


def test_report_draws_a_bar_by_section(terminal, cpx_workspace, cpx_host, capsys):
    from cpx.report.results import build_report

    seen = []
    build_report(cpx_workspace, cpx_host, progress=lambda *step: seen.append(step))
    assert seen[0] == ("ranking", 0, 8) and seen[-2] == ("figures", 7, 8) and seen[-1] == ("written", 8, 8)
    assert main(["report"]) == 0
    drawn = _drawn(terminal)  # a bar refreshes ten times a second: the last section drawn is sure
    assert "written" in drawn and "8/8" in drawn and "0:00:0" in drawn and "…" not in drawn
