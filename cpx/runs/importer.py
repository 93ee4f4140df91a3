"""Bringing runs made by other training scripts into the ledger (``cpx runs import``).

Such a folder usually holds a config (YAML or JSON), a per-epoch history (a JSON mapping
of lists such as ``val_f_score`` and ``train_loss``, or a list of per-epoch mappings) and
checkpoints (``best_model.pth``, ``*.pth``, ``*.pt``). Whatever can be read is recorded
as a run of kind ``imported``; whatever cannot is reported, one line per item.

The folder is only ever read: nothing is written, renamed or touched there, and the
checkpoints are opened with ``weights_only`` so no code inside them runs.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from cpx.kernel.config import flatten
from cpx.kernel.errors import CpxError, RunError
from cpx.runs.checkpoint import read_checkpoint
from cpx.runs.ledger import Ledger

CONFIG_NAMES = ("config.yaml", "config.yml", "config.json", "hparams.yaml", "hparams.json",
                "args.json", "args.yaml", "params.yaml", "params.json", "settings.yaml", "settings.json")
HISTORY_NAMES = ("history.json", "metrics.json", "train_history.json", "training_history.json", "log.json",
                 "history.csv", "metrics.csv", "log.csv")
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt")
SPLIT_NAMES = ("val_list.txt", "val_names.txt", "split.json", "splits.json")

# validation F columns, best first
_VAL_F = re.compile(r"^(val|valid|validation)[_\-. ]?(mean[_\-]?)?(f[_\-]?score|fscore|f1|f|f_measure|score)$", re.I)
_ANY_F = re.compile(r"^(mean[_\-]?)?(f[_\-]?score|fscore|f1)$", re.I)
_EPOCH = ("epoch", "epochs", "ep")
# config fields worth showing in a leaderboard; matched against the last key part
_INTERESTING = re.compile(
    r"^(name|model|arch|architecture|backbone|encoder|lr|learning_rate|base_lr|weight_decay|wd|"
    r"batch_size|bs|epochs|num_epochs|max_epochs|image_size|img_size|input_size|size|dropout|"
    r"drop_rate|warmup|warmup_epochs|scheduler|schedule|optimizer|optim|loss|seed|"
    r"dice|ce|focal|lovasz|[a-z]+_weight|flip|rotation|rotate|scale|augment|augmentation|"
    r"channels|width|depth|dims|embed_dims|label_smoothing|ema|tta|val_fraction|val_split)$", re.I)
_KEY_CONFIG_LIMIT = 16
_SECTION_ORDER = ("model", "arch", "loss", "optim", "lr", "train", "sched", "aug", "data")


@dataclass
class ImportResult:
    """What ``cpx runs import`` recorded (``run``) and, in one line each, what it read, could
    not read, and warnings (a model over the parameter limit).
    """

    run: dict
    read: list[str] = field(default_factory=list)
    unread: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- reading


def _load_structured(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return json.loads(text)
    if path.suffix == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
        return [{k: _number(v) for k, v in row.items() if k} for row in rows]
    return yaml.safe_load(text)


def _number(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return float(value) if any(c in value for c in ".eE") or "nan" in value.lower() else int(value)
        except ValueError:
            return value
    return value


def _finite(value: Any) -> Optional[float]:
    if isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def key_config(config: dict, limit: int = _KEY_CONFIG_LIMIT) -> dict[str, Any]:
    """The fields of a foreign config worth seeing in a ranking (model, loss weights,
    learning rate, batch size, ...), flattened to dotted keys; paths and long lists left out."""
    out: dict[str, Any] = {}
    flat = flatten(config)
    # the model first, then the loss, then the optimizer: the order a ranking is read in
    order = sorted(flat, key=lambda k: next((i for i, word in enumerate(_SECTION_ORDER) if word in k.lower()),
                                            len(_SECTION_ORDER)))
    for key in order:
        value = flat[key]
        last = key.rsplit(".", 1)[-1]
        if not _INTERESTING.match(last):
            continue
        if value is None or isinstance(value, dict):
            continue
        if isinstance(value, str) and ("/" in value or "\\" in value or len(value) > 40):
            continue
        if isinstance(value, (list, tuple)) and (len(value) > 4 or any(isinstance(v, (dict, list)) for v in value)):
            continue
        out[key] = value
        if len(out) >= limit:
            break
    return out


def _find(folder: Path, names: tuple[str, ...]) -> Optional[Path]:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    return None


def _history_series(data: Any) -> tuple[dict[str, list], Optional[list]]:
    """Per-epoch series by name, and the epoch numbers when the history gives them."""
    if isinstance(data, dict):
        for wrapper in ("history", "metrics", "log"):
            if isinstance(data.get(wrapper), (dict, list)) and len(data) <= 3:
                return _history_series(data[wrapper])
        series = {}
        for key, value in flatten(data).items():
            if isinstance(value, list) and value and all(_finite(v) is not None or v is None for v in value):
                series[key] = value
        epochs = next((series.pop(k) for k in list(series) if k.rsplit(".", 1)[-1].lower() in _EPOCH), None)
        return series, epochs
    if isinstance(data, list) and data and all(isinstance(r, dict) for r in data):
        keys: list[str] = []
        for row in data:
            for k in flatten(row):
                if k not in keys:
                    keys.append(k)
        flat_rows = [flatten(r) for r in data]
        series = {k: [r.get(k) for r in flat_rows] for k in keys}
        epochs = next((series.pop(k) for k in list(series) if k.lower() in _EPOCH), None)
        series = {k: v for k, v in series.items() if any(_finite(x) is not None for x in v)}
        return series, epochs
    return {}, None


def _val_f_key(series: dict[str, list]) -> Optional[str]:
    for pattern in (_VAL_F, _ANY_F):
        for key in series:
            last = key.rsplit(".", 1)[-1]
            joined = key.replace(".", "_")
            if pattern.match(last) or pattern.match(joined):
                return key
    return None


_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def _read_checkpoint(path: Path) -> tuple[int, dict]:
    """(parameter count, scalar metadata) of a checkpoint, without running code from it.

    :raises RunError: the file is unsafe, unreadable or holds no weights (the message says why).
    """
    checkpoint = read_checkpoint(path)
    params = sum(int(v.numel()) for k, v in checkpoint.weights.items() if k.rsplit(".", 1)[-1] not in _BUFFERS)
    meta = {str(k): v for k, v in checkpoint.extra.items()
            if isinstance(v, (int, float, str)) and not isinstance(v, bool) and len(str(v)) < 60}
    return params, meta


def _iso(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).isoformat(timespec="seconds")


def _config_value(config: dict, *paths: str) -> Any:
    flat = flatten(config)
    for path in paths:
        if path in flat:
            return flat[path]
    for path in paths:
        for key, value in flat.items():
            if key.rsplit(".", 1)[-1] == path:
                return value
    return None


# ---------------------------------------------------------------- import


@dataclass
class _Findings:
    """What reading a run folder has found so far: the run's ledger ``fields``, the
    modification ``times`` of the files read, and one line per item read, not read, or
    worth a warning.
    """

    fields: dict[str, Any]
    times: list[float] = field(default_factory=list)
    read: list[str] = field(default_factory=list)
    unread: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def import_run(folder: Path, ledger: Ledger, *, name: Optional[str] = None,
               competition: Optional[str] = None, host=None) -> ImportResult:
    """Record the training run in ``folder`` (made by another script) as an imported run.

    ``competition`` applies when the config does not name one. With a plugin ``host``,
    a cpx-shaped config is diffed against its recipe like a run trained here.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise CpxError(f"{folder}: not a folder")
    folder = folder.resolve()
    for run in ledger.list_runs(kind="imported"):
        if run.get("run_dir") == str(folder):
            raise RunError(f"{folder} was already imported as run {run['id']}")

    found = _Findings(fields={"kind": "imported", "status": "imported", "run_dir": str(folder)})
    config, config_path = _read_config(folder, found)
    if config is not None:
        competition = _record_config(config, config_path, host, found) or competition
    if competition:
        found.fields["competition"] = competition
    _read_history(folder, found)
    _read_checkpoints(folder, found)

    if _find(folder, SPLIT_NAMES) is None:
        found.unread.append("no validation list (val_list.txt): its F may come from another split than yours")
    _check_params(host, found)

    fields = found.fields
    if found.times:
        fields["created_at"] = _iso(min(found.times))
        fields["finished_at"] = _iso(max(found.times))
    label = name or folder.name
    fields["name"] = label
    fields["notes"] = f"imported from {folder}"
    run = ledger.add_run(**fields)
    return ImportResult(run=run, read=found.read, unread=found.unread, warnings=found.warnings)


def _read_config(folder: Path, found: _Findings) -> tuple[Optional[dict], Optional[Path]]:
    """The config mapping in ``folder`` and its path, each None when there is none (or the
    config cannot be read); notes in ``found`` what was read or why not.
    """
    config_path = _find(folder, CONFIG_NAMES)
    if config_path is None:
        loose = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".yaml", ".yml"))
        config_path = loose[0] if len(loose) == 1 else None
    if config_path is None:
        found.unread.append(f"no config file ({', '.join(CONFIG_NAMES[:3])}, ...): settings unknown")
        return None, None
    try:
        loaded = _load_structured(config_path)
    except (OSError, ValueError, yaml.YAMLError, UnicodeDecodeError) as exc:
        found.unread.append(f"{config_path.name}: not readable as {config_path.suffix[1:].upper()} "
                            f"({type(exc).__name__})")
        return None, config_path
    if not isinstance(loaded, dict):
        found.unread.append(f"{config_path.name}: expected a mapping of settings, found {type(loaded).__name__}")
        return None, config_path
    found.times.append(config_path.stat().st_mtime)
    found.read.append(f"config from {config_path.name}")
    return loaded, config_path


def _record_config(config: dict, config_path: Path, host, found: _Findings) -> Optional[str]:
    """Record ``config``, its diff (to its recipe, or its key fields) and the planned epochs
    and seed in ``found``; returns the competition the config names, if any.
    """
    fields = found.fields
    fields["config"] = config
    diff = _recipe_diff(config, host)
    fields["config_diff"] = diff if diff is not None else key_config(config)
    model = _config_value(config, "model.name", "model.arch", "model.type", "arch", "model")
    if not isinstance(model, str):
        found.unread.append(f"{config_path.name}: no model name (model.name, arch)")
    named = config.get("competition")
    epochs = _config_value(config, "training.epochs", "train.epochs", "epochs", "num_epochs", "max_epochs")
    if isinstance(epochs, int) and not isinstance(epochs, bool):
        fields["epochs_planned"] = epochs
    seed = _config_value(config, "seed", "training.seed", "train.seed")
    if isinstance(seed, int) and not isinstance(seed, bool):
        fields["seed"] = seed
    return named if isinstance(named, str) and named else None


def _read_history(folder: Path, found: _Findings) -> None:
    """Record in ``found`` the best validation F, the last epoch and the wall time from the
    per-epoch history in ``folder``, or why they are unknown.
    """
    history_path = _find(folder, HISTORY_NAMES)
    if history_path is None:
        found.unread.append(f"no per-epoch history ({', '.join(HISTORY_NAMES[:3])}, ...): "
                            f"best validation F unknown")
        return
    try:
        data = _load_structured(history_path)
    except (OSError, ValueError, yaml.YAMLError, UnicodeDecodeError, csv.Error) as exc:
        found.unread.append(f"{history_path.name}: not readable ({type(exc).__name__})")
        return
    if data is None:
        return
    found.times.append(history_path.stat().st_mtime)
    series, epochs = _history_series(data)
    key = _val_f_key(series)
    if key is None:
        shown = ", ".join(list(series)[:6]) or "no numeric lists"
        found.unread.append(f"{history_path.name}: no validation F series (found: {shown})")
        if series:
            found.fields["last_epoch"] = max(len(v) for v in series.values())
    else:
        _record_best_f(history_path, key, series[key], epochs, found)
    if series:
        seconds = [_finite(v) for k, vs in series.items() if k.rsplit(".", 1)[-1].lower() in
                   ("epoch_time", "time", "seconds", "epoch_seconds", "duration") for v in vs]
        if seconds and all(x is not None for x in seconds):
            found.fields["wall_seconds"] = round(sum(seconds), 2)


def _record_best_f(history_path: Path, key: str, values: list, epochs: Optional[list],
                   found: _Findings) -> None:
    """Record in ``found`` the best validation F in ``values`` (the series ``key``, read from
    ``history_path``), its epoch (from ``epochs`` when they match) and the last epoch.
    """
    given = [_finite(e) for e in epochs or []]
    usable = len(given) == len(values) and all(e is not None for e in given)
    numbers = [int(e) for e in given] if usable else list(range(1, len(values) + 1))
    curve = [(int(e), _finite(v)) for e, v in zip(numbers, values) if _finite(v) is not None]
    if not curve:
        found.unread.append(f"{history_path.name}: '{key}' holds no numbers")
    else:
        best_epoch, best = max(curve, key=lambda ev: (ev[1], -ev[0]))
        percent = 1.0 < best <= 100.0 and all(v >= 0 for _, v in curve)
        if percent:
            best /= 100.0
        if not 0.0 <= best <= 1.0:
            found.unread.append(f"{history_path.name}: '{key}' peaks at {best}, not an F value in 0..1")
        else:
            found.fields.update(best_val_score=best, best_epoch=best_epoch)
            found.read.append(f"validation F from '{key}' in {history_path.name}: best {best:.4f} "
                              f"at epoch {best_epoch} of {len(values)}"
                              + (" (given in percent)" if percent else ""))
    if numbers:
        found.fields["last_epoch"] = max(numbers)


def _read_checkpoints(folder: Path, found: _Findings) -> None:
    """Record in ``found`` the checkpoints under ``folder`` (best first), the parameter count
    of the first, and the validation F its metadata holds when the history gave none.
    """
    ckpts = sorted((p for p in folder.rglob("*") if p.suffix in CHECKPOINT_SUFFIXES and p.is_file()),
                   key=lambda p: (not p.stem.lower().startswith("best"), len(p.parts), str(p)))
    if not ckpts:
        found.unread.append("no checkpoint (*.pth, *.pt, *.ckpt): nothing to package from this run")
        return
    fields = found.fields
    fields["checkpoints"] = [str(p) for p in ckpts]
    found.times += [p.stat().st_mtime for p in ckpts]
    found.read.append(f"{len(ckpts)} checkpoint(s): " + ", ".join(str(p.relative_to(folder)) for p in ckpts[:4])
                      + (" ..." if len(ckpts) > 4 else ""))
    first = ckpts[0]
    try:
        params, meta = _read_checkpoint(first)
    except RunError as exc:  # pickled objects or code, not torch at all, or no weights inside
        found.unread.append(f"{str(exc).replace(str(first), str(first.relative_to(folder)))}; "
                            f"parameter count unknown")
        return
    fields["params"] = params
    found.read.append(f"{params:,} parameters in {first.relative_to(folder)} (BatchNorm statistics excluded)")
    if "best_val_score" in fields:
        return
    for key in ("best_f", "best_val_score", "val_f_score", "best_score", "f_score"):
        value = _finite(meta.get(key))
        if value is not None and 0.0 <= value <= 1.0:
            fields["best_val_score"] = value
            epoch = meta.get("epoch") or meta.get("best_epoch")
            if isinstance(epoch, int):
                fields["best_epoch"] = epoch
            found.read.append(f"validation F {value:.4f} from '{key}' in {first.name}")
            break


def _check_params(host, found: _Findings) -> None:
    """Add to ``found``'s warnings the competition's complaint about the parameter count, if any."""
    fields = found.fields
    if fields.get("params") and host is not None and fields.get("competition"):
        try:
            problem = host.competition(fields["competition"]).check_params(fields["params"])
        except CpxError:
            problem = None
        if problem:
            found.warnings.append(problem)


def _recipe_diff(config: dict, host) -> Optional[dict]:
    """For a cpx-shaped config (a run folder copied from elsewhere), the diff to its recipe."""
    if host is None or "recipe" not in config or "competition" not in config:
        return None
    from cpx.kernel.config import config_diff, load_recipe, resolve, validate
    from cpx.kernel.workspace import Workspace

    try:
        current = resolve(validate(config), host)
        baseline = resolve(validate(load_recipe(config["recipe"], Workspace.current().experiments_dir)), host)
    except CpxError:
        return None
    return config_diff(current, baseline)
