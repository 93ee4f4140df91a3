"""A run folder and the files in it: the only module that knows their names.

``experiments/runs/<run id>/`` holds, for a trained run::

    config.yaml        the fully resolved experiment config
    config_diff.json   the fields that differ from the recipe
    command.txt        the command line that started the run
    val_list.txt       the validation image stems, one a line
    data.json          where the data came from (path, fingerprint, counts)
    history.json       one record per epoch (loss, val score, learning rate, ...)
    best.pt / last.pt  the best checkpoint (weights under ``state_dict``) / the resume state
    curves.png         training curves
    status.json        how the run ended (written at the end, before the ledger)
    calibration.json   per-class logit offsets from ``cpx calibrate`` (and how they were measured)
    official/<stamp>/  each ``cpx validate --official``: the organisers' scoring program's input,
                       output and logs

and, for an ensemble run, ``ensemble.json`` (members and weights). Every write is atomic; a
file that exists but cannot be read raises :class:`~cpx.kernel.errors.RunError` naming it,
the same way for every file.
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import math
import os
import re
import secrets
import socket
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import yaml

from cpx.kernel.errors import RunError
from cpx.kernel.files import atomic_write_text, read_json, remove_stale_temps, write_json

CONFIG = "config.yaml"
CONFIG_DIFF = "config_diff.json"
COMMAND = "command.txt"
VAL_LIST = "val_list.txt"
DATA = "data.json"
HISTORY = "history.json"
BEST = "best.pt"
LAST = "last.pt"
CURVES = "curves.png"
STATUS = "status.json"
ENSEMBLE = "ensemble.json"
CALIBRATION = "calibration.json"
OFFICIAL = "official"
PENDING_BEST = ".best.pt.next"  # a new best checkpoint until last.pt commits its epoch
LOCK = ".lock"
CHECKPOINTS = {"best": BEST, "last": LAST}


def new_run_id(name: Optional[str] = None, when: Optional[_dt.datetime] = None) -> str:
    """A fresh run id such as ``20261124-130501-msf-lmsa-3f2a``: UTC time to the second, the
    name made filename-safe (``run`` when empty) and 16 random bits."""
    when = (when or _dt.datetime.now(_dt.timezone.utc)).astimezone(_dt.timezone.utc)
    slug = re.sub(r"[^a-z0-9]+", "-", (name or "").lower()).strip("-") or "run"
    return f"{when:%Y%m%d-%H%M%S}-{slug}-{secrets.token_hex(2)}"


class RunFolder:
    """The files of one run at ``path``; reading never creates anything."""

    def __init__(self, path: os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @classmethod
    def create(cls, runs_dir: os.PathLike, run_id: str) -> "RunFolder":
        """Make the folder of a new run; never reuses an existing one.

        :raises RunError: a folder of that id already exists (another run owns it).
        """
        path = Path(runs_dir) / run_id
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            path.mkdir()
        except FileExistsError:
            raise RunError(f"{path}: a run folder of that id exists already; not overwriting it") from None
        return cls(path)

    # ------------------------------------------------------------------ ownership

    def lock_owner(self) -> Optional[dict]:
        """Who holds this folder's lock: ``{"pid", "host", "since"}`` of a live process, or None
        when nobody does (no lock file, or its process is gone: a stale lock). A lock taken on
        another host cannot be checked from here and counts as held."""
        path = self.path / LOCK
        try:
            owner = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(owner, dict) or not isinstance(owner.get("pid"), int):
            return None
        if owner.get("host") != socket.gethostname():
            return owner
        return owner if pid_alive(owner["pid"]) else None

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold this folder for the current process (a lock file with its PID and host).

        A stale lock, whose process is gone, is taken over; the temp files its writers left
        are removed then.

        :raises RunError: a live process holds the folder (naming its PID and host).
        """
        path = self.path / LOCK
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": _dt.datetime.now(_dt.timezone.utc)
              .isoformat(timespec="seconds")}
        for _ in range(2):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                owner = self.lock_owner()
                if owner is not None and owner.get("pid") != os.getpid():
                    raise RunError(f"{self.path}: in use by process {owner['pid']} on {owner.get('host')} "
                                   f"since {owner.get('since')}; wait for it or stop it first") from None
                path.unlink(missing_ok=True)  # stale: its owner died
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            break
        else:
            raise RunError(f"{self.path}: cannot take the lock {path}")
        remove_stale_temps(self.path)
        try:
            yield
        finally:
            path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ paths

    def file(self, name: str) -> Path:
        """The path of the file called ``name`` in this folder."""
        return self.path / name

    @property
    def best_path(self) -> Path:
        return self.path / BEST

    @property
    def last_path(self) -> Path:
        return self.path / LAST

    @property
    def pending_best_path(self) -> Path:
        return self.path / PENDING_BEST

    @property
    def curves_path(self) -> Path:
        return self.path / CURVES

    @property
    def history_path(self) -> Path:
        return self.path / HISTORY

    def checkpoint(self, which: str = "best") -> Path:
        """``best`` or ``last`` in this folder, else ``which`` as a path (not checked)."""
        return self.path / CHECKPOINTS[which] if which in CHECKPOINTS else Path(which)

    # ------------------------------------------------------------------ config

    def read_config(self) -> Optional[dict]:
        """The config mapping from ``config.yaml``; None when the file does not exist."""
        path = self.path / CONFIG
        if not path.is_file():
            return None
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise RunError(f"{path}: cannot read the run's config ({type(exc).__name__})") from None
        if not isinstance(data, dict):
            raise RunError(f"{path}: expected a mapping of config sections")
        return data

    def write_config(self, config: dict, diff: Optional[dict] = None, command: Optional[str] = None) -> None:
        """Write ``config.yaml`` (and ``config_diff.json`` and ``command.txt`` when given)."""
        atomic_write_text(self.path / CONFIG, yaml.safe_dump(config, sort_keys=False))
        if diff is not None:
            write_json(self.path / CONFIG_DIFF, diff, indent=2)
        if command is not None:
            atomic_write_text(self.path / COMMAND, command + "\n")

    # ------------------------------------------------------------------ data

    def read_val_names(self) -> list[str]:
        """The validation stems in ``val_list.txt``; empty when there is none."""
        path = self.path / VAL_LIST
        if not path.is_file():
            return []
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]

    def write_val_names(self, names: list[str]) -> None:
        """Write ``val_list.txt``, one stem a line."""
        atomic_write_text(self.path / VAL_LIST, "".join(n + "\n" for n in names))

    def read_data_info(self) -> Optional[dict]:
        """The mapping in ``data.json``; None when the file does not exist."""
        path = self.path / DATA
        if not path.is_file():
            return None
        info = read_json(path, RunError)
        if not isinstance(info, dict):
            raise RunError(f"{path}: expected a JSON object")
        return info

    def data_root(self, workspace_root: Optional[os.PathLike] = None) -> Optional[Path]:
        """The data folder the run was trained on; None when ``data.json`` does not exist.

        Data inside the workspace is recorded relative to it too (``workspace_path``): in a
        copied or moved workspace that is the folder meant, when it exists. A relative ``path``
        (runs recorded before paths were resolved) is taken relative to ``workspace_root``,
        never to the current directory. Whether the folder still holds the same data is
        :func:`cpx.runs.handle.checked_data_root`'s question.

        :raises RunError: ``data.json`` exists but records no data ``path``.
        """
        info = self.read_data_info()
        if info is None:
            return None
        if not isinstance(info.get("path"), str):
            raise RunError(f"{self.path / DATA}: no data 'path' recorded")
        inside = info.get("workspace_path")
        if isinstance(inside, str) and workspace_root is not None and (Path(workspace_root) / inside).is_dir():
            return Path(workspace_root) / inside
        root = Path(info["path"]).expanduser()
        if not root.is_absolute() and workspace_root is not None:
            root = Path(workspace_root) / root
        return root

    def write_data_info(self, info: dict[str, Any], workspace_root: Optional[os.PathLike] = None) -> None:
        """Write ``data.json`` (path, fingerprint, counts); the ``path`` is made absolute, and a
        folder inside ``workspace_root`` is recorded relative to it as well (``workspace_path``),
        so a copied or moved workspace finds its own data."""
        info = dict(info)
        if isinstance(info.get("path"), str):
            root = Path(info["path"]).expanduser().resolve()
            info["path"] = str(root)
            if workspace_root is not None:
                try:
                    info["workspace_path"] = root.relative_to(Path(workspace_root).resolve()).as_posix()
                except ValueError:
                    info.pop("workspace_path", None)
        write_json(self.path / DATA, info, indent=2)

    # ------------------------------------------------------------------ soundness

    def damage(self) -> list[tuple[Path, str]]:
        """Files of this folder that exist but do not read back, each ``(path, what is wrong)``:
        a checkpoint cut short or failing its checksums (read as the zip archive ``torch.save``
        writes, without loading torch or unpickling anything), a JSON or YAML file that does not
        parse. Missing files are not damage. Reads every checkpoint byte: seconds for big ones.
        """
        found = []
        for name, read in ((CONFIG, self.read_config), (HISTORY, self.read_history), (STATUS, self.read_status),
                           (DATA, self.read_data_info), (ENSEMBLE, self.read_ensemble),
                           (CALIBRATION, self.read_calibration)):
            try:
                read()
            except RunError as exc:
                path = self.path / name
                found.append((path, str(exc).removeprefix(f"{path}: ")))
        for name in (BEST, LAST):
            problem = checkpoint_damage(self.path / name)
            if problem:
                found.append((self.path / name, problem))
        return found

    # ------------------------------------------------------------------ history

    def read_history(self) -> list[dict]:
        """The per-epoch records in ``history.json``; empty when there is none."""
        path = self.path / HISTORY
        if not path.is_file():
            return []
        history = read_json(path, RunError)
        if not isinstance(history, list):
            raise RunError(f"{path}: expected a JSON list of epoch records")
        return [_renamed(h) for h in history if isinstance(h, dict)]

    def write_history(self, history: list[dict]) -> None:
        """Write the epoch records; a non-finite number (a NaN loss) is stored as ``null``, so
        the file stays valid JSON."""
        write_json(self.path / HISTORY, _finite(history), indent=1)

    # ------------------------------------------------------------------ final status

    def read_status(self) -> Optional[dict]:
        """How the run ended (``status.json``: status, message, finished_at); None while it has
        not ended or for runs made before cpx wrote it."""
        path = self.path / STATUS
        if not path.is_file():
            return None
        info = read_json(path, RunError)
        if not isinstance(info, dict) or not isinstance(info.get("status"), str):
            raise RunError(f"{path}: expected an object with a 'status'")
        return info

    def write_status(self, status: str, message: str = "", finished_at: str = "") -> None:
        """Write ``status.json``: how the run ended, with a message and the time."""
        write_json(self.path / STATUS, {"status": status, "message": message, "finished_at": finished_at}, indent=2)

    def clear_status(self) -> None:
        """Remove ``status.json`` (a resumed run has not ended)."""
        (self.path / STATUS).unlink(missing_ok=True)

    # ------------------------------------------------------------------ calibration

    def read_calibration(self) -> Optional[dict]:
        """The logit offsets ``cpx calibrate`` stored (``calibration.json``: offsets, classes,
        checkpoint and its sha256, held-out gains); None when the run was never calibrated."""
        path = self.path / CALIBRATION
        if not path.is_file():
            return None
        spec = read_json(path, RunError)
        if not isinstance(spec, dict) or not isinstance(spec.get("offsets"), list):
            raise RunError(f"{path}: expected an object with a list of 'offsets'")
        return spec

    def write_calibration(self, spec: dict) -> None:
        """Write ``calibration.json``."""
        write_json(self.path / CALIBRATION, spec, indent=1)

    @property
    def calibration_path(self) -> Path:
        return self.path / CALIBRATION

    # ------------------------------------------------------------------ ensembles

    def new_official_dir(self) -> Path:
        """A fresh folder for one run of the organisers' scoring program on this run's
        predictions, ``official/<UTC time>[-n]/`` (created)."""
        base = self.path / OFFICIAL
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
        for n in range(1000):
            path = base / (stamp if n == 0 else f"{stamp}-{n}")
            try:
                path.mkdir(parents=True)
                return path
            except FileExistsError:
                continue
        raise RunError(f"{base}: cannot make a new folder")

    def read_ensemble(self) -> Optional[dict]:
        """The ensemble spec in ``ensemble.json``; None for a run that is not an ensemble."""
        path = self.path / ENSEMBLE
        if not path.is_file():
            return None
        spec = read_json(path, RunError)
        if not isinstance(spec, dict):
            raise RunError(f"{path}: expected a JSON object")
        return spec

    def write_ensemble(self, spec: dict) -> None:
        """Write ``ensemble.json`` (members, weights, TTA, score)."""
        write_json(self.path / ENSEMBLE, spec, indent=2)

    @property
    def is_ensemble(self) -> bool:
        return (self.path / ENSEMBLE).is_file()


# history keys of runs trained before scores were any competition's metric, not only F
_OLD_HISTORY_KEYS = {"val_f": "val_score", "val_f_ema": "val_score_ema"}


def _renamed(record: dict) -> dict:
    return {_OLD_HISTORY_KEYS.get(k, k): v for k, v in record.items()}


def pid_alive(pid: int) -> bool:
    """Whether a process of this PID exists on this machine."""
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM  # exists, owned by someone else
    return True


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def run_folder(row: dict, runs_dir: os.PathLike) -> RunFolder:
    """The folder of a ledger row: its recorded ``run_dir`` (the ledger hands it back absolute,
    resolved against the workspace it is in now), else ``runs_dir/<id>``; a recorded folder that
    no longer exists gives way to ``runs_dir/<id>`` when that does."""
    own = Path(runs_dir) / row["id"]
    if not row.get("run_dir"):
        return RunFolder(own)
    recorded = Path(row["run_dir"])
    return RunFolder(own if not recorded.is_dir() and own.is_dir() else recorded)


def checkpoint_damage(path: os.PathLike) -> Optional[str]:
    """What is wrong with the checkpoint file at ``path``, or None when it reads back whole (or
    does not exist). ``torch.save`` writes a zip archive with a CRC per member: a file cut short
    (a full disk, a killed copy) has no central directory, a flipped byte fails its CRC. Files
    in the legacy pickle format (before torch 1.6) cannot be checked this way and pass.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except FileNotFoundError:
        return None
    except zipfile.BadZipFile:
        try:
            with open(path, "rb") as fh:
                head = fh.read(2)
        except OSError as exc:
            return f"cannot be read ({exc.strerror or exc})"
        if head[:1] == b"\x80" and len(head) == 2:  # a pickle: the legacy format
            return None
        return "not a whole checkpoint (cut short while it was written?)"
    except (OSError, EOFError) as exc:
        return f"cannot be read ({getattr(exc, 'strerror', None) or exc})"
    return f"damaged: its part {bad} fails its checksum" if bad else None


def damage_advice(run_id: str, folder: "RunFolder", path: os.PathLike) -> str:
    """What to do about the damaged file ``path`` of run ``run_id`` (in ``folder``): the
    wording ``cpx doctor`` reports and loading a damaged checkpoint refuses with."""
    path = Path(path)
    if path == folder.last_path:
        return (f"run {run_id} cannot be resumed from it: restore it from a backup, or delete it to make the run "
                "final at its best.pt")
    if path == folder.best_path:
        return (f"restore it from a backup; until then use the run with --checkpoint last (or train again) "
                f"for run {run_id}")
    return f"restore it from a backup, or delete it if run {run_id} is not needed"

