"""Running an organisers' scoring program as the Codabench worker runs it.

The worker (``compute_worker/compute_worker.py`` in codalab/codabench) mounts the program at
``/app/program`` (the working directory), the references at ``/app/input/ref``, the
participant's files at ``/app/input/res`` and an empty ``/app/output``, and runs the
``command`` of the program's ``metadata.yaml`` (or ``metadata``), in which ``$program``,
``$input``, ``$output``, ``$shared``, ``$hidden`` (the references) and ``$predictions`` (the
participant's files) stand for those folders. The program writes ``scores.json`` (an object of
scores) or, in older bundles, ``scores.txt`` (``key: value`` lines) into the output folder.

Here the same layout is a local folder (:class:`Layout`): ``program/`` (a copy of the program),
``input/ref``, ``input/res``, ``output/``, ``shared/``, and the program's ``stdout.txt`` and
``stderr.txt``. The command's variables and ``/app/...`` paths point into it; a command starting
with ``python`` or ``python3`` runs in the given interpreter (the current one unless
``--official-python`` names another, e.g. a venv holding the program's requirements). It runs in
a subprocess of its own process group, killed with the group when it passes the phase's time
limit. Everything it wrote stays in the layout folder.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from cpx.kernel.errors import BundleError
from cpx.kernel.yamlfile import parse_yaml
from cpx.submit.zipentries import READ_LIMIT, mib

METADATA_FILES = ("metadata.yaml", "metadata")
SCORES_FILES = ("scores.json", "scores.txt")
_SHELL = set(";&|<>`$(){}")
_PYTHON = re.compile(r"python(\d+(\.\d+)?)?")


@dataclass(frozen=True)
class Layout:
    """The folders of one scoring run (see the module docstring), under ``root``."""

    root: Path

    @property
    def program(self) -> Path:
        return self.root / "program"

    @property
    def input(self) -> Path:
        return self.root / "input"

    @property
    def ref(self) -> Path:
        return self.input / "ref"

    @property
    def res(self) -> Path:
        return self.input / "res"

    @property
    def output(self) -> Path:
        return self.root / "output"

    @property
    def shared(self) -> Path:
        return self.root / "shared"

    @property
    def stdout(self) -> Path:
        return self.root / "stdout.txt"

    @property
    def stderr(self) -> Path:
        return self.root / "stderr.txt"

    def make(self) -> "Layout":
        for folder in (self.ref, self.res, self.output, self.shared):
            folder.mkdir(parents=True, exist_ok=True)
        return self


@dataclass
class ProgramRun:
    """What a scoring program wrote: every score it gave (``scores``), the ranked ``column`` and
    its ``value``, the file they came from, the seconds it took and the layout folder."""

    scores: dict[str, float]
    column: str
    value: float
    scores_file: str
    seconds: float
    folder: Path
    command: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"column": self.column, "value": self.value, "scores": dict(self.scores),
                "scores_file": self.scores_file, "seconds": round(self.seconds, 3), "folder": str(self.folder),
                "command": list(self.command)}


def metadata_file(program: Path) -> Optional[Path]:
    """The program's ``metadata.yaml`` (or ``metadata``), or None."""
    for name in METADATA_FILES:
        if (Path(program) / name).is_file():
            return Path(program) / name
    return None


def program_command(program: os.PathLike) -> str:
    """The ``command`` of a program folder's metadata.

    :raises BundleError: no folder, no metadata file, not YAML, or no command.
    """
    program = Path(program)
    if not program.is_dir():
        raise BundleError(f"scoring program {program}: no such folder")
    meta = metadata_file(program)
    if meta is None:
        raise BundleError(f"scoring program {program}: no metadata.yaml (or metadata) holding its command")
    try:
        data = parse_yaml(meta.read_text(encoding="utf-8", errors="replace"), str(meta))
    except Exception as exc:  # ConfigError, one line
        raise BundleError(str(exc)) from None
    command = data.get("command") if isinstance(data, dict) else None
    if not isinstance(command, str) or not command.strip():
        raise BundleError(f"{meta}: no command (e.g. command: python3 $program/score.py $input $output)")
    return command.strip()


def _paths(layout: Layout) -> dict[str, Path]:
    return {"program": layout.program, "ingestion_program": layout.program, "input": layout.input,
            "output": layout.output, "tmp": layout.output, "hidden": layout.ref, "predictions": layout.res,
            "shared": layout.shared, "submission_program": layout.root / "ingested_program"}


def expand(command: str, layout: Layout) -> str:
    """``command`` with Codabench's variables and ``/app/...`` folders pointing into ``layout``."""
    paths = _paths(layout)
    app = {"input_data": layout.root / "input_data", "input": layout.input, "output": layout.output,
           "program": layout.program, "shared": layout.shared, "ingested_program": paths["submission_program"],
           "data": layout.root / "data"}

    def var(match: re.Match) -> str:
        path = paths.get(match.group(1))
        return shlex.quote(str(path)) if path is not None else match.group(0)

    command = re.sub(r"\$(\w+)", var, command)
    return re.sub(r"/app/(input_data|ingested_program|input|output|program|shared|data)(?![\w.-])",
                  lambda m: shlex.quote(str(app[m.group(1)])), command)


def command_args(command: str, layout: Layout, python: Optional[str] = None) -> list[str]:
    """The argument list the command runs as: a plain command as its words, with a leading
    ``python``/``python3`` replaced by ``python`` (default: this interpreter); a command using the
    shell (``&&``, pipes, redirections) through ``/bin/sh -c``, every ``python`` word replaced."""
    python = python or sys.executable
    expanded = expand(command, layout)
    try:
        words = shlex.split(expanded)
    except ValueError as exc:
        raise BundleError(f"the scoring program's command cannot be read ({exc}): {command}") from None
    if not words:
        raise BundleError("the scoring program's command is empty")
    plain = not any(ch in _SHELL for ch in re.sub(r"\$\w+", "", command))
    if plain:
        if _PYTHON.fullmatch(Path(words[0]).name):
            words[0] = python
        return words
    shell = re.sub(r"(?<![\w/.-])python(\d+(\.\d+)?)?(?![\w/.-])", lambda m: shlex.quote(python), expanded)
    return ["/bin/sh", "-c", shell]


def _tail(path: Path, limit: int = 400) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, path.stat().st_size - 4096))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:limit] if lines else ""


def run_program(program: os.PathLike, layout: Layout, *, time_limit: float, column: Optional[str] = None,
                python: Optional[str] = None) -> ProgramRun:
    """Copy ``program`` into ``layout`` and run it on the ``input/ref`` and ``input/res`` already
    there (see the module docstring); its scores read back, ``column`` the one ranked (default:
    the only score it wrote).

    :raises BundleError: no command, a program that exits non-zero, passes ``time_limit``
        seconds (stopped with its process group), or writes no scores, malformed scores or none
        for ``column``; one line naming the layout folder, where its output stays.
    """
    command = program_command(program)
    layout.make()
    if layout.program.exists():
        shutil.rmtree(layout.program)
    shutil.copytree(program, layout.program)
    args = command_args(command, layout, python)
    interpreter = Path(python or sys.executable)
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1")
    # a `python` the program starts itself finds the same interpreter first
    env["PATH"] = os.pathsep.join([str(interpreter.parent), env.get("PATH", "")])
    where = f"its output is in {layout.root}"
    start = time.perf_counter()
    with open(layout.stdout, "wb") as out, open(layout.stderr, "wb") as err:
        try:
            proc = subprocess.Popen(args, cwd=layout.program, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    env=env, start_new_session=True)
        except OSError as exc:
            raise BundleError(f"the scoring program could not start ({exc.strerror or exc}): "
                              f"{' '.join(args)}") from None
        try:
            code = proc.wait(timeout=time_limit)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise BundleError(f"the scoring program ran past the phase's time limit of {time_limit:g} s and was "
                              f"stopped; {where}") from None
        except BaseException:  # Ctrl-C: the program must not outlive cpx
            _kill_group(proc)
            raise
    seconds = time.perf_counter() - start
    if code != 0:
        last = _tail(layout.stderr) or _tail(layout.stdout)
        raise BundleError(f"the scoring program exited with code {code}" + (f" ({last})" if last else "")
                          + f"; {where}")
    scores, name = read_scores(layout.output, where)
    chosen, value = ranked_score(scores, column, name, where)
    return ProgramRun(scores=scores, column=chosen, value=value, scores_file=name, seconds=seconds,
                      folder=layout.root, command=args)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the program's own group: its children go too
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def read_scores(output: Path, where: str = "") -> tuple[dict[str, float], str]:
    """The scores a program wrote into ``output``: ``scores.json`` (a JSON object), else
    ``scores.txt`` (``key: value`` lines, read as YAML as the worker does); numbers only
    (numeric strings read as numbers, other values left out). Returns (scores, file name).

    :raises BundleError: neither file, too large, not an object of scores, or no number in it.
    """
    import json

    suffix = f"; {where}" if where else ""
    for name in SCORES_FILES:
        path = Path(output) / name
        if not path.is_file():
            continue
        if path.stat().st_size > READ_LIMIT["text"]:
            raise BundleError(f"output/{name} is larger than {mib(READ_LIMIT['text'])}{suffix}")
        text = path.read_text(encoding="utf-8", errors="replace")
        try:
            data = json.loads(text) if name.endswith(".json") else parse_yaml(text, f"output/{name}")
        except Exception:
            data = None
        if not isinstance(data, dict):
            shown = text.strip().splitlines()[0][:60] if text.strip() else "empty"
            kind = "a JSON object" if name.endswith(".json") else "key: value lines"
            raise BundleError(f"the scoring program's output/{name} is not {kind} of scores ({shown!r}){suffix}")
        scores = {str(k): v for k, v in ((k, _number(v)) for k, v in data.items()) if v is not None}
        if not scores:
            raise BundleError(f"the scoring program's output/{name} holds no number{suffix}")
        return scores, name
    raise BundleError(f"the scoring program wrote neither scores.json nor scores.txt in output/{suffix}")


def ranked_score(scores: dict[str, float], column: Optional[str], name: str = "scores.json",
                 where: str = "") -> tuple[str, float]:
    """(column, value) of the ranked column.

    :raises BundleError: the column is missing, or not finite; with no column named, more
        than one score to choose from.
    """
    suffix = f"; {where}" if where else ""
    if column is None:
        if len(scores) != 1:
            raise BundleError(f"output/{name} holds {len(scores)} scores ({', '.join(scores)}) and the profile names "
                              f"no leaderboard.column to rank by{suffix}")
        column = next(iter(scores))
    if column not in scores:
        raise BundleError(f"output/{name} has no score {column!r}, the ranked leaderboard column (it has "
                          f"{', '.join(scores) or 'none'}){suffix}")
    value = scores[column]
    if not math.isfinite(value):
        raise BundleError(f"output/{name}: {column} is {value}, not a finite number{suffix}")
    return column, value
