"""``cpx init DIR --bundle PATH [--from-data DATA]``: a workspace from the organisers' bundle.

Writes, into a new (or empty) folder ``DIR``::

    cpx.yaml                          competition: NAME (and data: DATA)
    competitions/NAME.yaml            the profile: what the bundle says, what DATA says (marked)
    competitions/NAME/competition.yaml  the bundle's own file, kept for reference
    competitions/NAME/<program>/      each phase's scoring program, unpacked

The profile holds what the bundle says (title, phases with their dates, limits, time limit and
kind of submission, the ranked leaderboard column and its direction, each phase's scoring
program) and, from ``--from-data``, what no bundle says (layout, classes, mask values, bands,
sizes; :mod:`cpx.bundle.infer`). The metric cpx computes itself and the submission format are
guessed from the ranked column's key and the scoring program's source. Every guess carries a
comment ending in ``confirm``: the user checks it against the competition's pages and deletes
the mark. Nothing of the bundle is run; a failure leaves ``DIR`` as it was.
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from cpx.bundle.archive import COMPETITION_YAML, BundleArchive
from cpx.bundle.export import read_scorer_config
from cpx.bundle.infer import Inferred, infer_data
from cpx.bundle.program import metadata_file
from cpx.bundle.reader import DEFAULT_EXECUTION_TIME_LIMIT, Bundle, read_bundle_yaml
from cpx.data.competition import NAME_RE, load_profile
from cpx.kernel.errors import BundleError, ConfigError
from cpx.kernel.files import atomic_write_text, filling_empty_folder, require_empty_folder
from cpx.kernel.workspace import SETTINGS_FILE

CONFIRM = "confirm"
# the source files of a program read for hints of its submission format
_SOURCE_SUFFIXES = (".py", ".r", ".m", ".sh", ".txt", ".yaml", ".json")
_SOURCE_LIMIT = 2 * 2**20


@dataclass
class InitRequest:
    """What ``cpx init`` was asked for: the new workspace ``folder``, the ``bundle`` (a zip or a
    folder), an optional labelled ``data`` folder and profile ``name`` (default: from the title)."""

    folder: str
    bundle: str
    data: Optional[str] = None
    name: Optional[str] = None


@dataclass
class InitResult:
    """What ``cpx init`` wrote and what the user must confirm."""

    folder: str
    name: str
    profile: str
    version: str
    title: str
    phases: list[dict]
    column: Optional[str]
    sorting: Optional[str]
    programs: list[str]
    data: Optional[str]
    to_confirm: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def init_workspace(request: InitRequest, host: Any = None) -> InitResult:
    """Write the workspace of :class:`InitRequest` (see the module docstring); with ``host`` the
    profile's metric and submission format are checked against its registries.

    :raises BundleError: an unsafe or malformed bundle, or a phase without a usable scoring
        program; :raises DataError: a data folder cpx cannot read; :raises ConfigError: ``DIR``
        is not empty, or the written profile does not validate. ``DIR`` is left as it was.
    """
    folder = Path(request.folder).expanduser()
    refusal = "cpx init writes a new workspace"
    require_empty_folder(folder, refusal)  # before reading the data, which takes a while
    inferred = infer_data(request.data) if request.data else None
    with filling_empty_folder(folder, refusal):
        return _write(folder, request, inferred, host)


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._")[:64]
    return slug if NAME_RE.match(slug or "") else "competition"


def _write(folder: Path, request: InitRequest, inferred: Optional[Inferred], host: Any) -> InitResult:
    with BundleArchive(request.bundle) as archive:
        bundle = read_bundle_yaml(archive.read_text(COMPETITION_YAML), f"{request.bundle}: {COMPETITION_YAML}")
        name = request.name or _slug(bundle.title)
        if not NAME_RE.match(name):
            raise ConfigError(f"--name {name!r}: use lower-case letters, digits, '.', '_' or '-' (at most 64)")
        home = folder / "competitions" / name
        home.mkdir(parents=True)
        (home / COMPETITION_YAML).write_text(archive.read_text(COMPETITION_YAML), encoding="utf-8")
        programs = _unpack_programs(archive, bundle, home, request.bundle)
        warnings = archive.notes + bundle.warnings
    sources = _program_text([home / p for p in sorted(set(programs.values()))])
    stated = next((c for c in (read_scorer_config(home / p) for p in sorted(set(programs.values()))) if c), None)
    profile_path = folder / "competitions" / f"{name}.yaml"
    text, to_confirm = profile_text(name, bundle, programs, inferred, sources, request, stated)
    atomic_write_text(profile_path, text)
    try:
        profile = load_profile(profile_path)
        if host is not None:
            profile.bind(host)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (cpx init wrote this profile; edit it or give --from-data)") from None
    settings = [f"# written by cpx init from {request.bundle}", f"competition: {name}"]
    if request.data:
        settings.append(f"data: {Path(request.data).expanduser().resolve()}")
    atomic_write_text(folder / SETTINGS_FILE, "\n".join(settings) + "\n")
    if inferred is None:
        warnings.append("no --from-data: classes, mask values, sizes and the layout are cpx's defaults; edit "
                        f"{profile_path} before training")
    return InitResult(
        folder=str(folder), name=name, profile=str(profile_path), version=bundle.version, title=bundle.title,
        phases=[{"name": p.name, "start": _when(p.start), "end": _when(p.end), "max_submissions": p.max_submissions,
                 "max_submissions_per_day": p.max_submissions_per_day,
                 "execution_time_limit": p.execution_time_limit or DEFAULT_EXECUTION_TIME_LIMIT,
                 "submissions": "result" if p.accepts_only_result_submissions else "result or code",
                 "scoring_program": f"competitions/{name}/{programs[p.scoring_program]}"} for p in bundle.phases],
        column=bundle.ranked.key if bundle.ranked else None, sorting=bundle.ranked.sorting if bundle.ranked else None,
        programs=[f"competitions/{name}/{p}" for p in sorted(set(programs.values()))],
        data=str(Path(request.data).expanduser().resolve()) if request.data else None,
        to_confirm=to_confirm, warnings=warnings)


def _unpack_programs(archive: BundleArchive, bundle: Bundle, home: Path, label: str) -> dict[str, str]:
    """Unpack each distinct scoring program under ``home``; bundle path -> folder (relative to
    ``home``) holding its metadata."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for phase in bundle.phases:
        path = phase.scoring_program
        if path in out:
            continue
        clean = path.strip().strip("/")
        if not (archive.has_file(clean) or archive.has_folder(clean)):
            raise BundleError(f"{label}: phase {phase.name!r}: its scoring program {path} is not in the bundle")
        base = re.sub(r"\.zip$", "", Path(clean).name, flags=re.I) or "scoring_program"
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", base)
        slot, n = base, 2
        while slot in used:
            slot, n = f"{base}-{n}", n + 1
        used.add(slot)
        archive.extract(clean, home / slot)
        program = home / slot
        if metadata_file(program) is None:
            # a program zipped with its folder: look through one wrapping folder
            inner = [d for d in program.iterdir() if d.is_dir() and d.name != "__MACOSX"]
            if len(inner) == 1 and metadata_file(inner[0]) is not None:
                out[path] = f"{slot}/{inner[0].name}"
                continue
            raise BundleError(f"{label}: phase {phase.name!r}: its scoring program {path} has no metadata.yaml (or "
                              "metadata) giving its command; it is not a scoring program cpx can run")
        out[path] = slot
    return out


def _program_text(folders: list[Path]) -> str:
    """The programs' source text (lower case, at most a few MiB), for format hints."""
    parts, total = [], 0
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.suffix.lower() in _SOURCE_SUFFIXES and total < _SOURCE_LIMIT:
                text = path.read_text(encoding="utf-8", errors="replace")[:_SOURCE_LIMIT - total]
                parts.append(text.lower())
                total += len(text)
    return "\n".join(parts)


def _when(value: Optional[_dt.datetime]) -> Optional[str]:
    return None if value is None else value.astimezone(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


# --------------------------------------------------------------------------------------------
# Guesses the profile marks


def guess_metric(column: Optional[str], classes: list[str]) -> tuple[dict, str]:
    """cpx's own metric for the organisers' ranked column, from its key: (metric section, why)."""
    key = (column or "").lower().replace("-", "_")
    binary = len(classes) == 2
    if any(w in key for w in ("miou", "mean_iou", "meaniou", "mjaccard")):
        return {"name": "miou"}, f"the ranked column {column!r} reads as a mean IoU"
    if "iou" in key or "jaccard" in key:
        if binary:
            return ({"name": "class-iou", "class": classes[1]},
                    f"the ranked column {column!r} reads as the IoU of the foreground class")
        return {"name": "miou"}, f"the ranked column {column!r} reads as an IoU, of several classes"
    if "dice" in key:
        return {"name": "dice"}, f"the ranked column {column!r} reads as a Dice score"
    if any(w in key for w in ("fscore", "f_score", "f1", "fmeasure")):
        return {"name": "fscore"}, f"the ranked column {column!r} reads as an F-score"
    if "acc" in key:
        return {"name": "pixel-accuracy"}, f"the ranked column {column!r} reads as an accuracy"
    return {"name": "miou"}, f"the ranked column {column!r} names no metric cpx knows; mIoU assumed"


def guess_format(source: str, classes: list[str]) -> tuple[dict, str]:
    """The submission format the scoring program reads, from its source: (section, why)."""
    json_file = re.search(r"[\w.-]+\.json", source.replace("scores.json", "").replace("metadata.json", ""))
    if json_file and ("counts" in source or "rle" in source):
        order = "row-major" if re.search(r"order\s*=\s*['\"]c['\"]|row.?major", source) else "column-major"
        base = 0 if re.search(r"index_base\s*=\s*0|zero.?based|0.?based", source) else 1
        spec: dict[str, Any] = {"name": "rle-json", "file": json_file.group(0), "order": order, "index_base": base}
        if len(classes) != 2:
            spec["class"] = classes[1] if len(classes) > 1 else 0
        return spec, f"the scoring program reads {json_file.group(0)} of run lengths ({order}, {base}-based assumed)"
    if ".npz" in source:
        return {"name": "npz"}, "the scoring program reads an .npz"
    if ".tif" in source:
        return {"name": "masks-tiff"}, "the scoring program reads .tif masks"
    return {"name": "masks-png"}, "no other format named in the scoring program: masks/<stem>.png assumed"


# --------------------------------------------------------------------------------------------
# The profile's text


def _dump(key: str, value: Any, flow: Optional[bool] = None) -> list[str]:
    # collections of scalars in flow style ({name: miou}), unless ``flow`` is False; scalars plain
    flow = False if not isinstance(value, (dict, list)) else flow
    return yaml.safe_dump({key: value}, sort_keys=False, default_flow_style=flow, width=100,
                          allow_unicode=True).rstrip("\n").splitlines()


def profile_text(name: str, bundle: Bundle, programs: dict[str, str], inferred: Optional[Inferred],
                 source: str, request: InitRequest, stated: Optional[dict] = None) -> tuple[str, list[str]]:
    """The profile's YAML with a comment on each guess; (text, the fields to confirm). ``stated``
    is the ``score_config.json`` of a program ``cpx bundle export`` wrote: its classes, mask
    values, metric and format are the organisers' statement, taken as they are."""
    data = f"--from-data {request.data}" if request.data else None
    to_confirm: list[str] = []
    lines = [f"# Competition profile written by `cpx init` from the Codabench v{bundle.version} bundle {request.bundle}"
             + (f" and {request.data}" if request.data else "") + ".",
             "# A comment ending in 'confirm' marks a guess: check it against the competition's pages, then",
             "# delete the mark. Phases and the leaderboard come from the bundle; times are UTC.",
             f"name: {name}"]
    if bundle.title:
        lines += _dump("title", bundle.title)

    def guessed(key: str, value: Any, why: str) -> None:
        to_confirm.append(key)
        lines.append(f"# {key}: {why}: {CONFIRM}")
        lines.extend(_dump(key, value))

    fields = dict(inferred.fields) if inferred else {}
    notes = inferred.notes if inferred else {}
    if stated is not None:
        lines.append("# classes, masks, metric and submission: stated by the bundle's scoring program "
                     "(score_config.json, written by cpx bundle export)")
        lines += _dump("classes", stated["classes"])
        profile = dict(stated.get("profile") or {})
        masks = profile.pop("masks", None) or {
            k: v for k, v in (("values", {int(a): b for a, b in (stated.get("values") or {}).items()} or None),
                              ("ignore_index", stated.get("ignore_index"))) if v is not None}
        if masks:
            lines += _dump("masks", masks)
        lines += _dump("metric", stated["metric_spec"])
        lines += _dump("submission", stated["submission_spec"])
        fields.pop("classes", None)
        fields.pop("masks", None)
        if "layout" in fields:  # the data folder given is laid out its own way
            profile.pop("layout", None)
        rest = {k: v for k, v in profile.items() if k not in ("classes", "metric", "submission") and v not in ((), [])}
        if rest:
            lines.append("# the rest of the exporting profile (score_config.json): rules, sizes, parameter cap, ...")
            for key, value in rest.items():
                lines += _dump(key, value)
                fields.pop(key, None)
    classes = fields.get("classes", stated["classes"] if stated else ["background", "foreground"])
    if inferred is not None:
        for key in ("classes", "channels", "size", "pixel_max", "layout", "masks"):
            if key in fields and not (key == "masks" and not fields[key]):
                why = notes.get(key, notes.get("classes") if key == "masks" else "")
                guessed(key, fields[key], f"inferred from {data} ({why})" if why else f"inferred from {data}")
    elif stated is None:
        guessed("classes", classes, "no --from-data: two placeholder classes")
    if stated is None:
        column = bundle.ranked.key if bundle.ranked else None
        metric, why = guess_metric(column, classes)
        guessed("metric", metric, f"cpx's own metric, beside the organisers' program: {why}")
        fmt, why = guess_format(source, classes)
        guessed("submission", fmt, f"what the zip holds: {why}")
    # what the bundle says
    phases = []
    for p in bundle.phases:
        entry: dict[str, Any] = {"name": p.name}
        if p.start is not None:
            entry["start"] = _when(p.start)
        if p.end is not None:
            entry["end"] = _when(p.end)
        for key in ("max_submissions", "max_submissions_per_day", "execution_time_limit"):
            value = getattr(p, key)
            if value is not None:
                entry[key] = value
        entry["accepts_only_result_submissions"] = p.accepts_only_result_submissions
        entry["scoring_program"] = f"{name}/{programs[p.scoring_program]}"
        phases.append(entry)
    defaults = sorted({d for p in bundle.phases for d in p.defaults})
    lines.append("# phases: from the bundle" + (f"; {' and '.join(defaults)} where it says none are Codabench's "
                                               "defaults (100, 5 a day)" if defaults else ""))
    lines += _dump("phases", phases, flow=False)
    if bundle.ranked is not None:
        column_spec = {"column": bundle.ranked.key, "sorting": bundle.ranked.sorting}
        if bundle.ranked.title:
            column_spec["title"] = bundle.ranked.title
        others = [c.key for c in bundle.columns if c.key != bundle.ranked.key]
        lines.append("# leaderboard: the ranked column of the bundle's leaderboard"
                     + (f" (it also shows {', '.join(others)})" if others else ""))
        lines += _dump("leaderboard", column_spec, flow=False)
    return "\n".join(lines) + "\n", to_confirm
