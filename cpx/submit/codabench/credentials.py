"""Codabench credentials: where the token is stored and which server it may travel to.

The token lives in ``<config dir>/codabench.json`` (``~/.config/cpx`` unless
``CPX_CONFIG_DIR`` or ``XDG_CONFIG_HOME`` says otherwise, and the workspace's ``.cpx/`` when
there is no home directory), written readable by its owner only;
a file that others can read is refused until its mode is fixed. Nothing here talks to a server.

Where a token may go:

* the stored token only to the server that issued it (the URL stored beside it);
* ``CODABENCH_TOKEN`` only to one server: ``CODABENCH_URL`` when set, else the server of the
  stored login, else codabench.org; never to a ``--url`` naming another one;
* never over plain ``http://`` unless the server is this machine (loopback), or the user
  accepted it explicitly with ``cpx codabench login --allow-http`` for that one server;
* a URL carrying ``user:password@`` or a query string is refused without being echoed, so
  credentials in URLs are never stored or printed.
"""

from __future__ import annotations

import ipaddress
import json
import os
import stat
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

from cpx.kernel.errors import CodabenchError, CpxError
from cpx.kernel.files import atomic_write
from cpx.kernel.workspace import Workspace

DEFAULT_URL = "https://www.codabench.org"
CONFIG_FILE = "codabench.json"
LOGIN_HINT = "run `cpx codabench login` (or set CODABENCH_TOKEN)"
TOKEN_ENV, URL_ENV = "CODABENCH_TOKEN", "CODABENCH_URL"
_LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


def config_dir() -> Path:
    """The folder holding cpx's own settings: ``CPX_CONFIG_DIR``, else
    ``$XDG_CONFIG_HOME/cpx``, else ``~/.config/cpx``; without a home directory (a container
    started with a user id that has no passwd entry) the workspace's ``.cpx/`` folder.

    :raises CodabenchError: none of them can be found (one line: set ``CPX_CONFIG_DIR``).
    """
    override = os.environ.get("CPX_CONFIG_DIR")
    if override:
        return Path(override)
    if os.environ.get("XDG_CONFIG_HOME"):
        return Path(os.environ["XDG_CONFIG_HOME"]) / "cpx"
    try:
        return Path.home() / ".config" / "cpx"
    except (RuntimeError, KeyError):  # no HOME and no passwd entry for this user id
        pass
    try:
        return Workspace.current().root / ".cpx"
    except (CpxError, OSError):
        raise CodabenchError("no home directory to keep cpx's settings in (a user id without a passwd entry?) and "
                             "no workspace; set CPX_CONFIG_DIR to a folder, or CODABENCH_TOKEN") from None


def config_path() -> Path:
    """The stored Codabench login, ``<config dir>/codabench.json``."""
    return config_dir() / CONFIG_FILE


def is_loopback(host: Optional[str]) -> bool:
    """Whether ``host`` (a name or an IP address) is this machine."""
    if not host:
        return False
    if host.casefold() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def normalize_url(url: str, *, allow_http: bool = False) -> str:
    """``url`` as cpx keeps it: ``scheme://host[:port][/path]`` without a trailing slash.

    :raises CodabenchError: not an http(s) URL; it carries a user name, password, query or
        fragment (the message never repeats them); or plain ``http://`` to a host that is not
        this machine while ``allow_http`` is False (the token would travel in clear).
    """
    url = str(url).strip().rstrip("/")
    parts = urlsplit(url)
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if parts.scheme not in ("http", "https") or not host:
        shown = url if "@" not in url else "(a URL with credentials, not shown)"
        raise CodabenchError(f"not a Codabench server URL: {shown!r} (expected https://host)")
    if parts.username is not None or parts.password is not None:
        raise CodabenchError(f"the server URL holds a user name or password ({parts.scheme}://***@{host}/...); "
                             f"give the URL without them and log in with `cpx codabench login`")
    if parts.query or parts.fragment:
        raise CodabenchError(f"the server URL {parts.scheme}://{parts.netloc} has a query or fragment; "
                             f"give only the server, e.g. https://www.codabench.org")
    if parts.scheme == "http" and not allow_http and not is_loopback(host):
        raise CodabenchError(f"refusing plain http://{parts.netloc}: your password and token would travel "
                             f"unencrypted; use https://, or if this server is on a network you trust, "
                             f"log in with `cpx codabench login --url http://{parts.netloc} --allow-http`")
    netloc = host if ":" not in host else f"[{host}]"
    netloc += f":{port}" if port is not None else ""
    return f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"


def load_credentials(path: Optional[Path] = None, *, check_mode: bool = True) -> dict:
    """The stored ``{"url", "token", "username", ...}``, or ``{}`` when nothing is stored.

    :raises CodabenchError: the file cannot be read or parsed; or (``check_mode``) other users
        may read it, with the command that fixes it.
    """
    path = path or config_path()
    try:
        mode = path.stat().st_mode
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise CodabenchError(f"{path}: unreadable Codabench credentials ({exc.__class__.__name__}); "
                             f"{LOGIN_HINT} again") from None
    if check_mode and stat.S_IMODE(mode) & 0o077:
        raise CodabenchError(f"{path} holds your Codabench token and other users can read it "
                             f"(mode {stat.S_IMODE(mode):o}); make it private with `chmod 600 {path}` "
                             f"(or log in again), and consider the token leaked if this machine is shared")
    return data if isinstance(data, dict) else {}


def save_credentials(url: str, token: str, username: Optional[str] = None,
                     path: Optional[Path] = None, *, display_name: Optional[str] = None,
                     allow_http: bool = False) -> Path:
    """Store a login: ``url`` (normalised), ``token``, the ``username`` submissions are owned by
    and, when the user accepted plain HTTP for this server, ``allow_http``. Returns the file.

    Written so that only its owner can read it, without a window where it is readable or
    half written: a private temp file in the same folder, then a rename.
    """
    path = path or config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    record: dict = {"url": normalize_url(url, allow_http=allow_http), "token": token}
    if username:
        record["username"] = username
    if display_name and display_name != username:
        record["display_name"] = display_name
    if allow_http and urlsplit(record["url"]).scheme == "http":
        record["allow_http"] = True
    text = json.dumps(record, indent=2) + "\n"
    atomic_write(path, lambda fh: fh.write(text.encode()), mode=0o600)  # private before a byte is written
    return path


def forget_credentials(path: Optional[Path] = None) -> bool:
    """Delete the stored token; False when there was none."""
    path = path or config_path()
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def _stored_login(url: str) -> dict:
    """The stored login when it is for the server ``url`` (normalised), else ``{}``."""
    stored = load_credentials()
    if stored.get("url") and _same_server(stored["url"], url):
        return stored
    return {}


def _same_server(a: str, b: str) -> bool:
    return a.strip().rstrip("/").casefold() == b.strip().rstrip("/").casefold()


def resolve_url(url: Optional[str] = None, *, allow_http: bool = False, for_login: bool = False) -> str:
    """The server to talk to: ``url``, then ``CODABENCH_URL``, then the stored one, then
    codabench.org. Plain HTTP to another machine is accepted with ``allow_http`` or when the
    stored login accepted it for this very server.

    :raises CodabenchError: see :func:`normalize_url`.
    """
    # logging in again is how a file with a wrong mode gets fixed, so it may read one
    stored = load_credentials(check_mode=not for_login)
    chosen = url or os.environ.get(URL_ENV) or stored.get("url") or DEFAULT_URL
    accepted = bool(stored.get("allow_http") and stored.get("url") and _same_server(stored["url"], chosen))
    return normalize_url(chosen, allow_http=allow_http or accepted)


def env_token_server() -> str:
    """The one server ``CODABENCH_TOKEN`` may be sent to: ``CODABENCH_URL``, else the server of
    the stored login, else codabench.org."""
    bound = os.environ.get(URL_ENV) or load_credentials().get("url") or DEFAULT_URL
    try:
        return normalize_url(bound, allow_http=True)
    except CodabenchError:
        return bound.strip().rstrip("/")


def resolve_token(url: str) -> Optional[str]:
    """The token for the server ``url``: ``CODABENCH_TOKEN`` when it is bound to that server
    (see :func:`env_token_server`), else the stored token when that server issued it; None
    otherwise. A token never travels to a host it was not made for."""
    env = os.environ.get(TOKEN_ENV, "").strip()
    if env and _same_server(env_token_server(), url):
        return env
    stored = _stored_login(url)
    return stored.get("token") or None


def token_hint(url: str) -> str:
    """What to do when there is no token for ``url``."""
    if os.environ.get(TOKEN_ENV, "").strip() and not _same_server(env_token_server(), url):
        return (f"{TOKEN_ENV} is only sent to {env_token_server()}; set {URL_ENV}={url} to use it "
                f"with this server, or run `cpx codabench login --url {url}`")
    return LOGIN_HINT


def stored_username(url: Optional[str] = None) -> Optional[str]:
    """The username of the stored login (for ``url``'s server when given), else None."""
    stored = load_credentials() if url is None else _stored_login(url)
    return stored.get("username")


def stored_identity(url: str) -> tuple[str, ...]:
    """The names the stored login for ``url`` appears under on a leaderboard (username and
    display name), possibly empty."""
    stored = _stored_login(url)
    return tuple(n for n in (stored.get("username"), stored.get("display_name")) if n)
