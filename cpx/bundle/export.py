"""``cpx bundle export NAME DIR``: a Codabench v2 bundle for a competition profile, so a course or
a lab can host its own challenge on Codabench.

The bundle holds ``competition.yaml`` (the profile's phases, else one open phase under its
rules; one task; one leaderboard ranking the metric's column in its direction), short pages, a
logo, ``scoring_program/`` (:mod:`cpx.bundle.standalone_score` as ``score.py``, its
``score_config.json`` and ``metadata.yaml``) and, from ``--data``, ``reference_data/``: the
labelled folder's validation masks (the organisers' val folders, else every labelled image)
written by the profile's submission format, as participants' predictions will be.

``cpx init --bundle`` reading such a bundle takes the classes, mask values, metric and format
from ``score_config.json`` (they are the organisers' own statement, nothing to guess), and the
rest of the profile (rules, parameter cap, flip pairs, palette, sizes, ...) from its
``profile``, so the round trip export -> init gives the same profile (the data folder's layout
excepted, inferred from ``--from-data``) and ``validate --official`` scores as ``cpx validate``.
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import yaml

from cpx.bundle.official import References
from cpx.data import read_mask, scan
from cpx.data.images import write_image
from cpx.eval.metrics import create_metric
from cpx.kernel.errors import BundleError, ConfigError, DataError
from cpx.kernel.files import atomic_write_text, filling_empty_folder
from cpx.kernel.manager import PluginHost

SCORER = Path(__file__).with_name("standalone_score.py")
CONFIG = "score_config.json"
# profile fields the bundle states in its own terms (competition.yaml's title, phases and
# leaderboard); every other field travels in score_config.json
NOT_CARRIED = {"name", "title", "phases", "leaderboard"}
WRITTEN_BY = "cpx bundle export"
FORMATS = ("masks-png", "masks-tiff", "rle-json", "npz")
METRICS = ("fscore", "miou", "class-iou", "dice", "pooled-dice", "pixel-accuracy", "mean-class-accuracy")
_ZIP_TIME = (2020, 1, 1, 0, 0, 0)


@dataclass
class ExportRequest:
    """The profile ``name`` to export into the new folder ``folder``; ``data``: a labelled data
    folder for the reference data; ``zip``: also write ``folder.zip``."""

    name: str
    folder: str
    data: Optional[str] = None
    zip: bool = False


@dataclass
class ExportResult:
    name: str
    folder: str
    column: str
    sorting: str
    references: int
    phases: list[str]
    zip_path: Optional[str] = None
    warnings: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"competition.yaml: {len(self.phases)} phase(s) ({', '.join(self.phases)}), leaderboard column "
               f"{self.column} ({self.sorting})",
               "scoring_program/: score.py (numpy, Pillow and the standard library), score_config.json, metadata.yaml",
               f"reference_data/: {self.references} reference mask(s)" if self.references else
               "reference_data/: none (no --data)"]
        if self.zip_path:
            out.append(f"{self.zip_path}: the bundle zipped, ready to upload")
        return out

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def column_key(competition) -> str:
    """The leaderboard column a profile ranks by: its ``leaderboard.column``, else its metric's name."""
    if competition.leaderboard is not None:
        return competition.leaderboard.column
    return competition.metric.name.replace("-", "_")


def scorer_config(competition, host: PluginHost) -> dict:
    """``score_config.json``: what the standalone scorer needs, every class given by id.

    :raises BundleError: a metric or format the standalone scorer does not implement.
    """
    spec, fmt_spec = competition.metric, competition.submission
    if spec.name not in METRICS:
        raise BundleError(f"metric {spec.name}: the exported scoring program computes {', '.join(METRICS)}")
    if fmt_spec.name not in FORMATS:
        raise BundleError(f"submission format {fmt_spec.name}: the exported scoring program reads {', '.join(FORMATS)}")
    from cpx.submit.formats import create_format

    metric = create_metric(competition, host)
    fmt = create_format(competition, host)
    metric_out: dict[str, Any] = {"name": spec.name}
    if hasattr(metric, "index"):
        metric_out["class"] = int(metric.index)
    if hasattr(metric, "scored"):
        metric_out["classes"] = [int(c) for c in metric.scored]
    if fmt_spec.name in ("masks-png", "masks-tiff"):
        format_out = {"name": fmt_spec.name, "folder": fmt.folder, "suffix": fmt.suffix}
    elif fmt_spec.name == "rle-json":
        format_out = {"name": "rle-json", "file": fmt.file, "order": fmt.options.order,
                      "index_base": fmt.base, "class": int(fmt.class_id)}
    else:
        format_out = {"name": "npz", "file": fmt.options.file, "key": fmt.options.key}
    masks = competition.masks
    return {"written_by": WRITTEN_BY, "column": column_key(competition), "scale": float(spec.scale),
            "greater_is_better": bool(metric.greater_is_better), "num_classes": competition.num_classes,
            "classes": list(competition.classes), "metric": metric_out, "metric_spec": spec.model_dump(by_alias=True),
            "format": format_out, "submission_spec": fmt_spec.model_dump(mode="json", exclude_none=True, by_alias=True),
            "values": None if masks.values is None else {str(k): v for k, v in masks.values.items()},
            "ignore_index": masks.ignore_index,
            "profile": competition.model_dump(mode="json", exclude_none=True, by_alias=True, exclude=NOT_CARRIED)}


def _when(value: Optional[_dt.datetime]) -> Optional[str]:
    return None if value is None else value.astimezone(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _phases(competition) -> list[dict]:
    if competition.phases:
        out = []
        for i, p in enumerate(competition.phases):
            entry: dict[str, Any] = {"index": i, "name": p.name}
            if p.start is not None:
                entry["start"] = _when(p.start)
            if p.end is not None:
                entry["end"] = _when(p.end)
            for key in ("max_submissions", "max_submissions_per_day", "execution_time_limit"):
                if getattr(p, key) is not None:
                    entry[key] = getattr(p, key)
            entry["accepts_only_result_submissions"] = p.accepts_only_result_submissions
            entry["tasks"] = [0]
            out.append(entry)
        return out
    rules = competition.rules
    today = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d 00:00:00")
    entry = {"index": 0, "name": "Development", "start": today, "accepts_only_result_submissions": True, "tasks": [0]}
    if rules.submissions_per_phase:
        entry["max_submissions"] = rules.submissions_per_phase
    if rules.submissions_per_day:
        entry["max_submissions_per_day"] = rules.submissions_per_day
    return [entry]


def _references(competition, host: PluginHost, data: Path, dest: Path) -> int:
    found = scan(data, competition)
    pairs = [(n, found.val_images[n], found.val_masks[n]) for n in found.val_pairs] if found.val_pairs else \
        [(n, found.images[n], found.masks[n]) for n in found.pairs]
    if not pairs:
        raise DataError(f"--data: {data} holds no labelled images (image + mask pairs) of {competition.name}")
    writers = References(competition, host, dest, None)
    for _, image, mask in pairs:
        writers.add_truth(image.name, read_mask(mask, competition))
    writers.close()
    return len(pairs)


def export_bundle(request: ExportRequest, host: PluginHost) -> ExportResult:
    """Write the bundle of :class:`ExportRequest` (see the module docstring).

    :raises BundleError: a metric or format the standalone scorer does not implement;
        :raises ConfigError: ``folder`` is not new or empty; :raises DataError: ``data`` is not
        a labelled folder of the competition. A failure leaves ``folder`` as it was.
    """
    competition = host.competition(request.name)
    config = scorer_config(competition, host)
    with filling_empty_folder(Path(request.folder).expanduser(), "cpx bundle export writes a new bundle") as folder:
        return _write(folder, competition, config, request, host)


def _write(folder: Path, competition, config: dict, request: ExportRequest, host: PluginHost) -> ExportResult:
    warnings = []
    program = folder / "scoring_program"
    program.mkdir()
    shutil.copyfile(SCORER, program / "score.py")
    atomic_write_text(program / CONFIG, json.dumps(config, indent=1) + "\n")
    atomic_write_text(program / "metadata.yaml", "command: python3 $program/score.py $input $output\n")
    references = 0
    if request.data:
        references = _references(competition, host, Path(request.data).expanduser(), folder / "reference_data")
    else:
        warnings.append("no --data: the bundle has no reference_data; add the hidden masks before uploading it")
    title = competition.title or competition.name
    metric = create_metric(competition, host)
    pages = {"overview.md": f"# {title}\n\nSegment the images into {competition.num_classes} classes: "
                            f"{', '.join(competition.classes)}.\n",
             "evaluation.md": f"# Evaluation\n\nSubmissions are scored by {metric.label or competition.metric.name}"
                              + (f" (x{competition.metric.scale:g})" if competition.metric.scale != 1 else "")
                              + f", the leaderboard column `{config['column']}`. The submission holds "
                              f"{_describe_format(config['format'])}.\n",
             "terms.md": "# Terms\n\nWritten by `cpx bundle export`: replace with the competition's terms.\n"}
    for name, text in pages.items():
        atomic_write_text(folder / name, text)
    write_image(folder / "logo.png", np.full((64, 64, 3), 200, np.uint8))
    task: dict[str, Any] = {"index": 0, "name": f"{title} task", "scoring_program": "scoring_program/"}
    if references:
        task["reference_data"] = "reference_data/"
    sorting = "desc" if metric.greater_is_better else "asc"
    data = {"version": 2, "title": title, "description": f"A {competition.num_classes}-class segmentation challenge "
                                                         f"(exported by cpx from the profile {competition.name})",
            "image": "logo.png", "terms": "terms.md",
            "pages": [{"title": "Overview", "file": "overview.md"}, {"title": "Evaluation", "file": "evaluation.md"}],
            "tasks": [task], "phases": _phases(competition),
            "leaderboards": [{"title": "Results", "key": "main", "columns": [
                {"title": metric.label or competition.metric.name, "key": config["column"], "index": 0,
                 "sorting": sorting, "precision": 4}]}]}
    atomic_write_text(folder / "competition.yaml", yaml.safe_dump(data, sort_keys=False, width=110))
    zip_path = None
    if request.zip:
        zip_path = folder.with_name(folder.name + ".zip")
        if zip_path.exists():
            raise ConfigError(f"{zip_path} already exists")
        _zip(folder, zip_path)
    return ExportResult(name=competition.name, folder=str(folder), column=config["column"], sorting=sorting,
                        references=references, phases=[p["name"] for p in data["phases"]],
                        zip_path=str(zip_path) if zip_path else None, warnings=warnings)


def _describe_format(fmt: dict) -> str:
    if fmt["name"] in ("masks-png", "masks-tiff"):
        return f"one mask per image, `{fmt['folder']}/<image stem>{fmt['suffix']}`"
    if fmt["name"] == "rle-json":
        return (f"one `{fmt['file']}` of run-length encoded masks keyed by image file name ({fmt['order']}, "
                f"{fmt['index_base']}-based)")
    return f"one `{fmt['file']}` of 2-D arrays"


def _zip(src: Path, dest: Path) -> None:
    with zipfile.ZipFile(dest, "x", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(p for p in src.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(path.relative_to(src).as_posix(), date_time=_ZIP_TIME)
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, path.read_bytes())


def read_scorer_config(program: Path) -> Optional[dict]:
    """The ``score_config.json`` of a program ``cpx bundle export`` wrote, or None."""
    path = Path(program) / CONFIG
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("written_by") == WRITTEN_BY else None
