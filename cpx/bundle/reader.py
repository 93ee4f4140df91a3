"""``competition.yaml`` as a :class:`Bundle`: what a Codabench bundle says that cpx uses.

Both versions Codabench unpacks (``src/apps/competitions/unpackers``):

* v2 (``version: 2``): ``tasks`` (each with its ``scoring_program``, ``reference_data``, and
  an optional ``ingestion_program`` and ``input_data``), ``phases`` (``name``, ``start``,
  ``end``, ``tasks``, ``max_submissions``, ``max_submissions_per_day``,
  ``execution_time_limit``, ``accepts_only_result_submissions``), ``leaderboards`` with
  ``columns`` (``key``, ``index``, ``sorting``; the leaderboard's ``primary_index`` names the
  ranked one, 0 by default);
* v1.5 (CodaLab; no version, or ``1``/``1.5``): ``html`` pages, ``phases`` keyed by number
  (``phasenumber``, ``label``, ``start_date``, each with its own ``scoring_program`` and
  ``reference_data``; a phase ends the day before the next starts, the last at ``end_date``),
  and ``leaderboard`` with ``leaderboards`` and ``columns`` keyed by score key (``rank``,
  ``sort``), the first by rank being the ranked one.

As on Codabench, a phase that does not say allows 100 submissions and 5 a day, and its scoring
may take 600 seconds. Keys neither version knows are reported as warnings, never errors:
organisers' bundles carry keys of older and newer versions.
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from cpx.kernel.errors import BundleError
from cpx.kernel.yamlfile import parse_yaml

# Codabench's defaults (unpackers/v1.py and v2.py; the worker's execution time limit)
DEFAULT_MAX_SUBMISSIONS = 100
DEFAULT_MAX_PER_DAY = 5
DEFAULT_EXECUTION_TIME_LIMIT = 600

V2_TOP = {"version", "title", "description", "image", "terms", "pages", "phases", "tasks", "solutions",
          "leaderboards", "leaderboard", "registration_auto_approve", "docker_image", "make_programs_available",
          "make_input_data_available", "queue", "enable_detailed_results",
          "show_detailed_results_in_submission_panel", "show_detailed_results_in_leaderboard", "contact_email",
          "reward", "auto_run_submissions", "can_participants_make_submissions_public", "forum_enabled",
          "competition_type", "fact_sheet"}
V2_PHASE = {"index", "name", "description", "start", "end", "tasks", "solutions", "max_submissions",
            "max_submissions_per_day", "auto_migrate_to_this_phase", "execution_time_limit", "hide_output",
            "hide_prediction_output", "hide_score_output", "starting_kit", "public_data",
            "accepts_only_result_submissions"}
V2_TASK = {"index", "name", "description", "scoring_program", "reference_data", "input_data", "ingestion_program",
           "ingestion_only_during_scoring", "key"}
V2_BOARD = {"title", "key", "columns", "submission_rule", "hidden", "primary_index"}
V2_COLUMN = {"title", "key", "index", "sorting", "computation", "computation_indexes", "precision", "hidden"}
V15_TOP = {"version", "title", "description", "image", "has_registration", "html", "phases", "leaderboard",
           "end_date", "competition_docker_image", "force_submission_to_leaderboard",
           "disallow_leaderboard_modifying", "enable_forum", "admin_names", "enable_detailed_results",
           "show_detailed_results_in_submission_panel", "show_detailed_results_in_leaderboard",
           "auto_run_submissions", "make_programs_available", "make_input_data_available", "queue",
           "allow_teams", "anonymous_leaderboard", "allow_public_submissions", "allow_organizer_teams",
           "enable_per_submission_metadata", "show_datasets_from_yaml", "reward", "contact_email"}
V15_PHASE = {"phasenumber", "label", "description", "start_date", "is_scoring_only", "execution_time_limit",
             "max_submissions", "max_submissions_per_day", "scoring_program", "reference_data", "input_data",
             "ingestion_program", "public_data", "starting_kit", "color", "auto_migration",
             "leaderboard_management_mode", "force_best_submission_to_leaderboard", "datasets",
             "is_parallel_parent", "parent_phasenumber", "hide_output", "hide_prediction_output",
             "hide_score_output", "ingestion_program_only_during_scoring", "default_docker_image",
             "disable_custom_docker_image", "phase_never_ends"}
V15_COLUMN = {"leaderboard", "label", "rank", "sort", "numeric_format", "hidden", "selection_default", "computed"}


@dataclass
class BundlePhase:
    """One phase as the bundle gives it; ``defaults`` names the limits Codabench's defaults fill."""

    name: str
    start: Optional[_dt.datetime] = None
    end: Optional[_dt.datetime] = None
    max_submissions: Optional[int] = DEFAULT_MAX_SUBMISSIONS
    max_submissions_per_day: Optional[int] = DEFAULT_MAX_PER_DAY
    execution_time_limit: Optional[float] = None
    accepts_only_result_submissions: bool = False
    scoring_program: Optional[str] = None  # path inside the bundle (a folder or a .zip)
    reference_data: Optional[str] = None
    ingestion_program: Optional[str] = None
    defaults: list[str] = field(default_factory=list)


@dataclass
class Column:
    """A leaderboard column: the key the scoring program writes, its title and direction."""

    key: str
    title: str = ""
    sorting: str = "desc"
    index: int = 0


@dataclass
class Bundle:
    """What ``competition.yaml`` says (see the module docstring)."""

    version: str  # "2" or "1.5"
    title: str
    description: str
    phases: list[BundlePhase]
    columns: list[Column]
    ranked: Optional[Column]
    leaderboard_title: str = ""
    warnings: list[str] = field(default_factory=list)


def read_bundle_yaml(text: str, source: str = "competition.yaml") -> Bundle:
    """The :class:`Bundle` of the text of a ``competition.yaml``.

    :raises BundleError: not YAML, not a mapping, an unknown version, no phases, a phase without
        a scoring program (or a task it names), a malformed field: one line naming the field.
    """
    try:
        data = parse_yaml(text, source)
    except Exception as exc:  # ConfigError: one line already
        raise BundleError(str(exc)) from None
    if not isinstance(data, dict):
        raise BundleError(f"{source}: not a mapping of fields (title, phases, ...)")
    version = str(data.get("version", "1")).strip()
    if version in ("1", "1.5", "1.0"):
        return _read_v15(data, source)
    if version in ("2", "2.0"):
        return _read_v2(data, source)
    raise BundleError(f"{source}: version: {version!r} is neither 2 nor 1.5; cpx reads Codabench v2 and CodaLab "
                      "v1.5 bundles")


def _unknown(data: Any, known: set, where: str, warnings: list[str]) -> None:
    if isinstance(data, dict):
        for key in data:
            if key not in known:
                warnings.append(f"{where}{key}: not a key cpx knows in a Codabench bundle; ignored")


def _int(value: Any, where: str, source: str) -> Optional[int]:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise BundleError(f"{source}: {where}: {value!r} is not a number")
    try:
        number = int(float(value))
    except (TypeError, ValueError):
        raise BundleError(f"{source}: {where}: {value!r} is not a number") from None
    return number if number > 0 else None


def parse_date(value: Any, where: str, source: str, warnings: list[str]) -> Optional[_dt.datetime]:
    """A bundle's date or date-time (UTC): a YAML date, an ISO string (``2024-12-31 14:30:00``)
    or the US order Codabench's parser also reads (``8-7-2019``, ``8/7/2019``); None (with a
    warning) when it is none of these."""
    if value is None or value == "" or value == "null":
        return None
    if isinstance(value, _dt.datetime):
        out = value
    elif isinstance(value, _dt.date):
        out = _dt.datetime.combine(value, _dt.time())
    else:
        text = str(value).strip()
        out = None
        try:
            out = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            match = re.fullmatch(r"(\d{1,2})[-/](\d{1,2})[-/](\d{4})(?:[ T](\d{1,2}):(\d{2})(?::(\d{2}))?)?", text)
            if match:
                month, day, year, hour, minute, second = (int(g) if g else 0 for g in match.groups())
                try:
                    out = _dt.datetime(year, month, day, hour, minute, second)
                except ValueError:
                    out = None
        if out is None:
            warnings.append(f"{where}: {text!r} is not a date cpx can read; left out (write it as "
                            "YYYY-MM-DD HH:MM:SS in the profile)")
            return None
    return out if out.tzinfo else out.replace(tzinfo=_dt.timezone.utc)


def _limits(phase: BundlePhase, raw: dict, where: str, source: str) -> None:
    for key, attr, default in (("max_submissions", "max_submissions", DEFAULT_MAX_SUBMISSIONS),
                               ("max_submissions_per_day", "max_submissions_per_day", DEFAULT_MAX_PER_DAY)):
        if key in raw:
            setattr(phase, attr, _int(raw[key], f"{where}.{key}", source))
        else:
            setattr(phase, attr, default)
            phase.defaults.append(key)
    limit = raw.get("execution_time_limit")
    if limit not in (None, ""):
        phase.execution_time_limit = _int(limit, f"{where}.execution_time_limit", source)


def _program_path(value: Any, where: str, source: str) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise BundleError(f"{source}: {where}: {value!r} is not a path in the bundle")
    value = value.strip()
    if re.fullmatch(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}", value):
        raise BundleError(f"{source}: {where}: {value} is the key of a program stored on a Codabench server, not "
                          "a file in the bundle; cpx needs the program's files")
    return value


def _read_v2(data: dict, source: str) -> Bundle:
    warnings: list[str] = []
    _unknown(data, V2_TOP, "", warnings)
    tasks_raw = data.get("tasks")
    if not isinstance(tasks_raw, list) or not tasks_raw:
        raise BundleError(f"{source}: tasks: none listed; a v2 bundle lists its tasks, each with a scoring_program")
    tasks: dict[Any, dict] = {}
    for i, task in enumerate(tasks_raw):
        where = f"tasks[{i}]"
        if not isinstance(task, dict):
            raise BundleError(f"{source}: {where}: not a mapping")
        _unknown(task, V2_TASK, f"{where}.", warnings)
        if "index" not in task:
            raise BundleError(f"{source}: {where}: no index")
        if "key" in task and "scoring_program" not in task:
            raise BundleError(f"{source}: {where}: key {task['key']} names a task stored on a Codabench server; "
                              "cpx needs its scoring program's files in the bundle")
        if "scoring_program" not in task:
            raise BundleError(f"{source}: {where}: task {task.get('name') or task['index']!r} has no scoring_program")
        tasks[task["index"]] = task
    phases_raw = data.get("phases")
    if not isinstance(phases_raw, list) or not phases_raw:
        raise BundleError(f"{source}: phases: none listed")
    phases = []
    ordered = sorted(enumerate(phases_raw), key=lambda p: (p[1].get("index", p[0]) if isinstance(p[1], dict)
                                                           else p[0]))
    for i, raw in ordered:
        where = f"phases[{i}]"
        if not isinstance(raw, dict):
            raise BundleError(f"{source}: {where}: not a mapping")
        _unknown(raw, V2_PHASE, f"{where}.", warnings)
        name = str(raw.get("name") or f"Phase {i + 1}")
        phase = BundlePhase(name=name, start=parse_date(raw.get("start"), f"{where}.start", source, warnings),
                            end=parse_date(raw.get("end"), f"{where}.end", source, warnings),
                            accepts_only_result_submissions=bool(raw.get("accepts_only_result_submissions", False)))
        _limits(phase, raw, where, source)
        task_ids = raw.get("tasks")
        if not isinstance(task_ids, list) or not task_ids:
            raise BundleError(f"{source}: {where}.tasks: phase {name!r} names no task")
        missing = [t for t in task_ids if t not in tasks]
        if missing:
            raise BundleError(f"{source}: {where}.tasks: no task of index {missing[0]!r}")
        if len(task_ids) > 1:
            warnings.append(f"{where}: phase {name!r} has {len(task_ids)} tasks; cpx runs the scoring program of "
                            f"the first (task {task_ids[0]})")
        task = tasks[task_ids[0]]
        phase.scoring_program = _program_path(task.get("scoring_program"), f"tasks[{task_ids[0]}].scoring_program",
                                              source)
        phase.reference_data = task.get("reference_data")
        phase.ingestion_program = task.get("ingestion_program")
        phases.append(phase)
    boards = data.get("leaderboards", data.get("leaderboard"))
    columns, ranked, title = _v2_columns(boards, source, warnings)
    return Bundle(version="2", title=str(data.get("title") or ""), description=str(data.get("description") or ""),
                  phases=phases, columns=columns, ranked=ranked, leaderboard_title=title, warnings=warnings)


def _v2_columns(boards: Any, source: str, warnings: list[str]) -> tuple[list[Column], Optional[Column], str]:
    if not isinstance(boards, list) or not boards:
        warnings.append("leaderboards: none listed, so the ranked column is unknown (set leaderboard.column in "
                        "the profile)")
        return [], None, ""
    if len(boards) > 1:
        warnings.append(f"leaderboards: {len(boards)} leaderboards; cpx ranks by the first")
    board = boards[0]
    if not isinstance(board, dict):
        raise BundleError(f"{source}: leaderboards[0]: not a mapping")
    _unknown(board, V2_BOARD, "leaderboards[0].", warnings)
    columns = []
    for j, col in enumerate(board.get("columns") or []):
        where = f"leaderboards[0].columns[{j}]"
        if not isinstance(col, dict) or not col.get("key"):
            raise BundleError(f"{source}: {where}: a column needs a key (the scoring program's score name)")
        _unknown(col, V2_COLUMN, f"{where}.", warnings)
        sorting = str(col.get("sorting") or "desc").lower()
        if sorting not in ("asc", "desc"):
            raise BundleError(f"{source}: {where}.sorting: {sorting!r} is neither asc nor desc")
        columns.append(Column(key=str(col["key"]), title=str(col.get("title") or ""), sorting=sorting,
                              index=int(col.get("index", j))))
    if not columns:
        raise BundleError(f"{source}: leaderboards[0].columns: none listed")
    primary = board.get("primary_index", 0)
    ranked = next((c for c in columns if c.index == primary), min(columns, key=lambda c: c.index))
    return columns, ranked, str(board.get("title") or "")


def _read_v15(data: dict, source: str) -> Bundle:
    warnings: list[str] = []
    _unknown(data, V15_TOP, "", warnings)
    phases_raw = data.get("phases")
    if not isinstance(phases_raw, dict) or not phases_raw:
        raise BundleError(f"{source}: phases: none listed (a v1.5 bundle keys its phases by number)")
    items = []
    for key, raw in phases_raw.items():
        if not isinstance(raw, dict):
            raise BundleError(f"{source}: phases.{key}: not a mapping")
        items.append((raw.get("phasenumber", key), key, raw))
    try:
        items.sort(key=lambda item: float(item[0]))
    except (TypeError, ValueError):
        raise BundleError(f"{source}: phases: a phasenumber is not a number") from None
    if any(raw.get("is_parallel_parent") or raw.get("parent_phasenumber") for _, _, raw in items):
        items = items[1:]  # v1.8: the first phase is the parent of the others, as Codabench reads it
    phases = []
    for n, (_, key, raw) in enumerate(items):
        where = f"phases.{key}"
        _unknown(raw, V15_PHASE, f"{where}.", warnings)
        name = str(raw.get("label") or f"Phase {key}")
        if not raw.get("scoring_program"):
            raise BundleError(f"{source}: {where}: phase {name!r} has no scoring_program")
        phase = BundlePhase(name=name, start=parse_date(raw.get("start_date"), f"{where}.start_date", source, warnings),
                            accepts_only_result_submissions=bool(raw.get("is_scoring_only", False)),
                            scoring_program=_program_path(raw["scoring_program"], f"{where}.scoring_program", source),
                            reference_data=raw.get("reference_data"), ingestion_program=raw.get("ingestion_program"))
        _limits(phase, raw, where, source)
        phases.append(phase)
    # v1.5 phases have no end: the day before the next starts; the last ends with the competition
    for phase, following in zip(phases, phases[1:]):
        if following.start is not None:
            phase.end = following.start - _dt.timedelta(days=1)
    if phases:
        phases[-1].end = parse_date(data.get("end_date"), "end_date", source, warnings)
    columns, ranked, title = _v15_columns(data.get("leaderboard"), source, warnings)
    return Bundle(version="1.5", title=str(data.get("title") or ""), description=str(data.get("description") or ""),
                  phases=phases, columns=columns, ranked=ranked, leaderboard_title=title, warnings=warnings)


def _v15_columns(board: Any, source: str, warnings: list[str]) -> tuple[list[Column], Optional[Column], str]:
    if not isinstance(board, dict) or not isinstance(board.get("columns"), dict) or not board["columns"]:
        warnings.append("leaderboard.columns: none listed, so the ranked column is unknown (set leaderboard.column "
                        "in the profile)")
        return [], None, ""
    boards = board.get("leaderboards") or {}
    title = next(iter(boards), "") if isinstance(boards, dict) else ""
    columns = []
    for key, col in board["columns"].items():
        col = col if isinstance(col, dict) else {}
        _unknown(col, V15_COLUMN, f"leaderboard.columns.{key}.", warnings)
        sorting = str(col.get("sort") or "desc").lower()
        if sorting not in ("asc", "desc"):
            raise BundleError(f"{source}: leaderboard.columns.{key}.sort: {sorting!r} is neither asc nor desc")
        try:
            rank = float(col.get("rank", 1))
        except (TypeError, ValueError):
            raise BundleError(f"{source}: leaderboard.columns.{key}.rank: {col.get('rank')!r} is not a "
                              "number") from None
        columns.append((rank, Column(key=str(key), title=str(col.get("label") or key), sorting=sorting)))
    columns.sort(key=lambda c: c[0])  # stable: ties keep the order of the file, as Codabench sorts them
    out = []
    for i, (_, col) in enumerate(columns):
        col.index = i
        out.append(col)
    return out, out[0], str(title)
