"""File primitives every part of cpx shares: atomic writes, sha256, JSON with one rule for bad
files.

An atomic write goes to a temporary file beside the target (``.<name>.<random>.tmp``) and is
renamed over it, so a reader, or a process killed half-way, never leaves half a file behind.
Temporary files of killed writers match :data:`TEMP_GLOB` and are removed by
:func:`remove_stale_temps`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Type

from cpx.kernel.errors import ConfigError, CpxError


class NotWritable(CpxError):
    """A file or folder cpx must write is read-only."""


class DiskFull(CpxError):
    """The disk (or the user's quota) filled up while cpx wrote ``path``; the previous version
    of the file, if any, is untouched (writes are atomic)."""

    def __init__(self, path: os.PathLike, detail: str = ""):
        self.path = Path(path)
        super().__init__(f"{self.path}: no space left on the device while writing it{detail}; the file as it was "
                         "before is untouched")


_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def is_disk_full(exc: BaseException, folder: Optional[os.PathLike] = None) -> bool:
    """Whether ``exc`` means the disk is full: ENOSPC or EDQUOT, or torch's writer failing
    ("file write failed") on a ``folder`` with next to no space left."""
    if isinstance(exc, OSError):
        return exc.errno in _FULL
    text = str(exc)
    if "No space left on device" in text or "Disk quota exceeded" in text:
        return True
    if "file write failed" in text and folder is not None:
        try:
            return shutil.disk_usage(folder).free < 64 * 2 ** 20
        except OSError:
            return False
    return False

# mkstemp creates files 0600; saved results should get the usual permissions instead
_UMASK = os.umask(0)
os.umask(_UMASK)
_MODE = 0o666 & ~_UMASK

TEMP_GLOB = ".*.tmp"


def atomic_write(path: os.PathLike, write: Callable[[Any], None], mode: Optional[int] = None) -> None:
    """Create or replace ``path`` atomically: ``write(fileobj)`` fills a temp file in the same
    folder (binary mode), which is flushed, fsynced and renamed over ``path``. ``mode`` sets the
    file's permissions (default: the usual ones under the umask; 0o600 for secrets, set before
    anything is written).

    :raises DiskFull: the disk filled up (one line naming ``path``); nothing is left behind.
    :raises OSError: the folder cannot be created or written; nothing is left behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if mode is not None:
            os.chmod(tmp, mode)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        if mode is None:
            os.chmod(tmp, _MODE)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, Exception) and not isinstance(exc, CpxError) and is_disk_full(exc, path.parent):
            raise DiskFull(path) from None
        raise


def atomic_write_bytes(path: os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write_bytes(path, text.encode())


def atomic_torch_save(obj: Any, path: os.PathLike) -> None:
    """``torch.save(obj)`` to ``path`` atomically (see :func:`atomic_write`)."""
    import torch

    atomic_write(path, lambda fh: torch.save(obj, fh))


def write_json(path: os.PathLike, data: Any, indent: Optional[int] = 1) -> None:
    """Write ``data`` as strict JSON (no NaN or Infinity) atomically.

    :raises ValueError: ``data`` holds a non-finite float, which JSON cannot represent.
    """
    atomic_write_text(path, json.dumps(data, indent=indent, allow_nan=False))


def read_json(path: os.PathLike, error: Type[Exception] = ValueError) -> Any:
    """The JSON value in ``path``.

    :raises error: (the given exception type) the file cannot be read or is not valid JSON;
        the message names the file.
    """
    try:
        return json.loads(Path(path).read_text())
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise error(f"{path}: not valid JSON ({exc})") from None


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 digest of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_stream(stream: Any, limit: Optional[int] = None) -> str:
    """Hex SHA-256 digest of a binary stream read in 1 MiB blocks (at most ``limit`` bytes).

    :raises ValueError: the stream holds more than ``limit`` bytes.
    """
    digest = hashlib.sha256()
    seen = 0
    for block in iter(lambda: stream.read(1 << 20), b""):
        seen += len(block)
        if limit is not None and seen > limit:
            raise ValueError(f"more than {limit} bytes")
        digest.update(block)
    return digest.hexdigest()


def sha256_file(path: os.PathLike) -> str:
    """Hex SHA-256 digest of the file at ``path``."""
    with open(path, "rb") as fh:
        return sha256_stream(fh)


def remove_stale_temps(folder: os.PathLike, older_than: float = 0.0) -> list[Path]:
    """Delete temp files that killed atomic writers left in ``folder`` (not recursive).

    :param older_than: seconds since a temp file was last modified; younger ones may belong to
        a writer at work and are kept (callers holding the folder's lock pass 0).
    :returns: the paths removed.
    """
    removed = []
    now = time.time()
    for tmp in Path(folder).glob(TEMP_GLOB):
        if tmp.is_file() and now - tmp.stat().st_mtime >= older_than:
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def check_writable(*paths: os.PathLike) -> None:
    """Fail before any work when a file or folder cpx must write cannot be written: for a path
    that does not exist yet, its nearest existing parent must be a writable folder.

    :raises NotWritable: naming the path, in one line.
    """
    for path in map(Path, paths):
        probe = path
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        mode = os.W_OK if probe.is_file() else os.W_OK | os.X_OK
        if not os.access(probe, mode):
            raise NotWritable(f"{path}: not writable; cpx needs to write there (check its permissions)")


def require_empty_folder(folder: Path, refusal: str) -> None:
    """:raises ConfigError: ``folder`` exists and is not an empty folder (``refusal`` says what
    the command writes instead, e.g. "cpx init writes a new workspace")."""
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ConfigError(f"{folder}: not an empty folder; {refusal}")


@contextlib.contextmanager
def filling_empty_folder(folder: Path, refusal: str) -> Iterator[Path]:
    """Write into ``folder``, which must be missing or empty, and leave it as it was on failure.

    Yields ``folder``, made if it was missing. When the ``with`` block raises, a folder made here
    is removed and one that was empty is emptied again, then the exception goes on.

    :raises ConfigError: as :func:`require_empty_folder`.
    """
    require_empty_folder(folder, refusal)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder
    except BaseException:
        if created:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            for child in folder.iterdir():
                shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
        raise
