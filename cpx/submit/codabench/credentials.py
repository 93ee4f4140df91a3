"""Codabench credentials: where the token is stored and which server it may travel to.

The token lives in ``<config dir>/codabench.json`` (``~/.config/cpx`` unless
``CPX_CONFIG_DIR`` or ``XDG_CONFIG_HOME`` says otherwise), written readable by its owner only.
``CODABENCH_TOKEN`` and ``CODABENCH_URL`` override the stored values. Nothing here talks to a
server.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

from cpx.kernel.errors import CodabenchError

DEFAULT_URL = "https://www.codabench.org"
CONFIG_FILE = "codabench.json"
LOGIN_HINT = "run `cpx codabench login` (or set CODABENCH_TOKEN)"


def config_dir() -> Path:
    override = os.environ.get("CPX_CONFIG_DIR")
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "cpx"


def config_path() -> Path:
    return config_dir() / CONFIG_FILE


def normalize_url(url: str) -> str:
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise CodabenchError(f"not a Codabench server URL: {url!r} (expected https://host)")
    return url


def load_credentials(path: Optional[Path] = None) -> dict:
    """The stored ``{"url", "token", "username"}``, or ``{}`` when nothing is stored."""
    path = path or config_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise CodabenchError(f"{path}: unreadable Codabench credentials ({exc.__class__.__name__}); "
                             f"{LOGIN_HINT} again") from None
    return data if isinstance(data, dict) else {}


def save_credentials(url: str, token: str, username: Optional[str] = None,
                     path: Optional[Path] = None) -> Path:
    """Write the token so that only its owner can read it, without a window where it is
    readable or half written: a private temp file in the same folder, then a rename."""
    path = path or config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    record = {"url": normalize_url(url), "token": token}
    if username:
        record["username"] = username
    fd, tmp = tempfile.mkstemp(prefix=".codabench-", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(record, fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def forget_credentials(path: Optional[Path] = None) -> bool:
    """Delete the stored token; False when there was none."""
    path = path or config_path()
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def resolve_url(url: Optional[str] = None) -> str:
    """Explicit URL, then ``CODABENCH_URL``, then the stored one, then codabench.org."""
    chosen = url or os.environ.get("CODABENCH_URL") or load_credentials().get("url") or DEFAULT_URL
    return normalize_url(chosen)


def resolve_token(url: str) -> Optional[str]:
    """``CODABENCH_TOKEN``, else the stored token, but only if it was issued by this same
    server: a token must never travel to a host it was not made for."""
    env = os.environ.get("CODABENCH_TOKEN", "").strip()
    if env:
        return env
    stored = load_credentials()
    if stored.get("token") and stored.get("url") and normalize_url(stored["url"]) == normalize_url(url):
        return stored["token"]
    return None


def stored_username(url: Optional[str] = None) -> Optional[str]:
    stored = load_credentials()
    if url and stored.get("url") and normalize_url(stored["url"]) != normalize_url(url):
        return None
    return stored.get("username")


