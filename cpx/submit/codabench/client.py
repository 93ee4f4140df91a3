"""The HTTP client for Codabench's API: one method per endpoint cpx uses, retries for GETs
only, and every error status turned into one line that says what to do.

Every path is under ``/api/`` with its trailing slash. The token goes in an
``Authorization: Token ...`` header to the API host only; uploads go to the signed storage URL
without it.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional
from urllib.parse import urlsplit

from cpx import __version__
from cpx.kernel.errors import CodabenchError
from cpx.submit.codabench.credentials import normalize_url, token_hint
from cpx.submit.codabench.schema import (
    CANCELLED,
    FAILED,
    FINAL_STATUSES,
    FINISHED,
    WAIT_TIMEOUT,
    Leaderboard,
    Phase,
    SubmissionResult,
    _leaderboard,
    _phase,
    _phase_id,
    _result,
    _same,
    _scores,
)

if TYPE_CHECKING:  # requests is imported where a request is made: commands that only read the ledger skip it
    import requests

Progress = Callable[[str], None]


class CodabenchHTTPError(CodabenchError):
    """The server answered with an error status; keeps the status for callers that adapt."""

    def __init__(self, message: str, status_code: int, method: str, path: str, detail: str = ""):
        super().__init__(message)
        self.status_code = status_code
        self.detail = detail
        self.method = method
        self.path = path


class CodabenchConnectionError(CodabenchError):
    """No answer at all: refused, dropped or timed out."""


class _TotalTimeout(Exception):
    """A call ran past its total deadline (internal: turned into CodabenchConnectionError)."""


class _NoNetrc:
    """Passing any auth keeps requests from reading ~/.netrc, whose Basic credentials
    would otherwise replace our token or reach the storage host (requests takes any callable
    as auth, as it takes its own ``AuthBase``)."""

    def __call__(self, r):
        return r


_NO_NETRC = _NoNetrc()


class CodabenchClient:
    """Codabench's API at ``base_url`` with ``token`` (sent to that server only).

    ``timeout`` is the total seconds one API call may take (its retries included), however the
    server answers: a server trickling one byte a second would keep a per-read timeout from
    ever firing. ``upload_timeout`` is the total for the zip's upload. GETs are tried
    ``retries`` times with exponential backoff from ``retry_backoff`` seconds.
    Plain ``http://`` is refused unless the server is loopback or ``allow_http``.

    :raises CodabenchError: (from every method) the server refused, answered something that
        is not Codabench's JSON, or could not be reached; one line that says what to do.
    """

    def __init__(self, base_url: str, token: Optional[str] = None, timeout: float = 30,
                 session: Optional[requests.Session] = None, *, retries: int = 3,
                 retry_backoff: float = 0.5, upload_timeout: float = 600, allow_http: bool = False):
        self.base_url = normalize_url(base_url, allow_http=allow_http)
        self.token = token
        self.timeout = timeout
        if session is None:
            import requests

            session = requests.Session()
        self.session = session
        self.retries = max(1, retries)
        self.retry_backoff = retry_backoff
        self.upload_timeout = upload_timeout
        # while :meth:`wait` polls, no call may run past its deadline (a monotonic time)
        self._until: Optional[float] = None

    # -- low level

    def _send(self, call: Callable[[float], requests.Response], limit: float, what: str,
              total: Optional[float] = None) -> requests.Response:
        """``call(read_timeout)`` (a request that reads its whole body) within ``limit`` seconds
        in total. It runs in a daemon thread: past the deadline it is abandoned (its socket
        closes with the process) and :class:`CodabenchConnectionError` says so in one line."""
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                resp = call(max(0.001, limit))
                resp.content  # the body too: a trickled body counts against the deadline
                box["resp"] = resp
            except BaseException as exc:  # handed to the caller's thread
                box["exc"] = exc

        worker = threading.Thread(target=run, name="cpx-codabench-call", daemon=True)
        worker.start()
        worker.join(max(0.0, limit))
        if worker.is_alive():
            raise _TotalTimeout(f"{what} within {limit if total is None else total:g}s in all (it answers too "
                                "slowly or not at all)")
        if "exc" in box:
            raise box["exc"]
        return box["resp"]

    def _limit(self) -> float:
        if self._until is None:
            return self.timeout
        return max(0.0, min(self.timeout, self._until - time.monotonic()))

    def _headers(self) -> dict:
        headers = {"Accept": "application/json", "User-Agent": f"cpx/{__version__}"}
        if self.token:
            headers["Authorization"] = f"Token {self.token}"
        return headers

    def request(self, method: str, path: str, *, params: Optional[dict] = None,
                json_body: Any = None, form: Optional[dict] = None) -> Any:
        """Send one API call and return its decoded JSON. Only GETs are retried: a POST or
        PUT whose answer was lost may still have taken effect (a submission counts
        against the daily limit even if we never saw the reply)."""
        import requests

        if not path.startswith("/api/") or not path.endswith("/"):
            raise ValueError(f"API paths start with /api/ and end with a slash: {path!r}")
        method = method.upper()
        attempts = self.retries if method == "GET" else 1
        url = self.base_url + path
        failure: Optional[CodabenchError] = None
        total = self._limit()
        deadline = time.monotonic() + total  # one total for the call, its retries included
        for attempt in range(1, attempts + 1):
            try:
                resp = self._send(
                    lambda read: self.session.request(method, url, params=params, json=json_body, data=form,
                                                      headers=self._headers(), timeout=read, auth=_NO_NETRC),
                    deadline - time.monotonic(), f"Codabench did not answer {method} {path}", total)
            except _TotalTimeout as exc:
                raise CodabenchConnectionError(f"{exc}" + _maybe_applied(method, exc)) from None
            except requests.Timeout as exc:
                failure = CodabenchConnectionError(
                    f"Codabench did not answer {method} {path} within {self.timeout:g}s"
                    + _maybe_applied(method, exc))
            except requests.ConnectionError as exc:
                failure = CodabenchConnectionError(
                    f"cannot reach Codabench at {self.base_url} ({_short_reason(exc)}) on {method} {path}"
                    + _maybe_applied(method, exc))
            except requests.RequestException as exc:
                raise CodabenchConnectionError(f"request to Codabench failed: {_short_reason(exc)}") from None
            else:
                if method == "GET" and resp.status_code in (502, 503, 504) and attempt < attempts:
                    failure = None
                else:
                    return self._decode(resp, method, path)
            if attempt < attempts:
                pause = self.retry_backoff * 2 ** (attempt - 1)
                if time.monotonic() + pause >= deadline:
                    break
                time.sleep(pause)
        if failure is None:
            raise CodabenchConnectionError(f"Codabench kept failing {method} {path} (502-504) for "
                                           f"{self._limit():g} s; try again later")
        raise failure

    def _decode(self, resp: requests.Response, method: str, path: str) -> Any:
        status = resp.status_code
        body: Any = None
        if resp.content.strip():
            try:
                body = resp.json()
            except ValueError:
                body = None
        if 200 <= status < 300:
            if body is None and resp.content.strip():
                raise CodabenchHTTPError(
                    f"Codabench answered {method} {path} with something that is not JSON "
                    f"({_snippet(resp)}); is {self.base_url} a Codabench server?", status, method, path)
            return {} if body is None else body

        def fail(message: str) -> CodabenchHTTPError:
            return CodabenchHTTPError(message, status, method, path, detail)

        detail = _join_errors(body) if body is not None else ""
        if status == 400:
            raise fail(f"Codabench rejected {method} {path}: {detail or _snippet(resp)}")
        if status in (401, 403):
            text = detail or "permission denied"
            if not self.token:
                raise fail(f"Codabench needs a login ({text}); {token_hint(self.base_url)}")
            if status == 401 or _about_credentials(text):
                raise fail(f"Codabench refused the token ({text}); {token_hint(self.base_url)}")
            raise fail(f"Codabench refused {method} {path}: {text}")
        if status == 404:
            raise fail(f"Codabench has no {path} ({detail or 'not found'})")
        if status == 429:
            raise fail(f"Codabench is throttling requests ({detail or 'too many requests'}); try again later")
        if status >= 500:
            if method == "POST" and path == "/api/submissions/":
                raise fail(f"Codabench failed with {status} while creating the submission; older servers "
                           "answer this way when the phase's submission limit is reached")
            raise fail(f"Codabench server error {status} on {method} {path}"
                       + (f": {detail}" if detail else "") + "; try again later")
        raise fail(f"Codabench answered {status} to {method} {path}: {detail or _snippet(resp)}")

    def _get_dict(self, path: str, **kwargs: Any) -> dict:
        data = self.request("GET", path, **kwargs)
        if not isinstance(data, dict):
            raise CodabenchError(f"Codabench answered GET {path} with an unexpected shape ({type(data).__name__})")
        return data

    # -- endpoints

    def obtain_token(self, username: str, password: str) -> str:
        """``POST /api/api-token-auth/`` with a username (or the account's e-mail) and password;
        the token is kept on the client and returned. The password goes in the form body only.

        :raises CodabenchError: the credentials were refused (one line, without the password).
        """
        # a stale token must not ride along: some servers reject the login because of it
        saved, self.token = self.token, None
        try:
            data = self.request("POST", "/api/api-token-auth/",
                                form={"username": username, "password": password})
        except CodabenchHTTPError as exc:
            self.token = saved
            if exc.status_code == 400:
                raise CodabenchError(f"Codabench login failed for {username!r}: "
                                     f"{exc.detail or 'credentials refused'}") from None
            raise
        token = data.get("token") if isinstance(data, dict) else None
        if not token:
            self.token = saved
            raise CodabenchError("Codabench login answered without a token")
        self.token = token
        return token

    def my_profile(self) -> dict:
        """``GET /api/my_profile/``: the logged-in user (``username``, ``email``, ...)."""
        return self._get_dict("/api/my_profile/")

    def competition(self, competition_id: int) -> dict:
        """``GET /api/competitions/<id>/``: the competition with its phases."""
        return self._get_dict(f"/api/competitions/{int(competition_id)}/")

    def phases(self, competition_id: int) -> list[Phase]:
        """The competition's phases with their limits and, for the token's user, used counts."""
        data = self.competition(competition_id)
        raw = data.get("phases")
        if not isinstance(raw, list):
            raise CodabenchError(f"competition {competition_id} lists no phases")
        return [_phase(p) for p in raw if isinstance(p, dict) and "id" in p]

    def can_make_submission(self, phase_id: int) -> tuple[bool, Optional[str]]:
        """Whether the token's user may submit to the phase now, and the server's reason if not."""
        data = self._get_dict(f"/api/can_make_submission/{int(phase_id)}/")
        if "can" not in data:
            raise CodabenchError("Codabench answered can_make_submission without a 'can' field")
        reason = data.get("reason")
        return bool(data["can"]), (str(reason) if reason else None)

    def create_dataset(self, file_name: str, file_size: int, name: Optional[str] = None,
                       competition_id: Optional[int] = None) -> tuple[str, str]:
        """Register a submission upload of ``file_size`` bytes; returns (key, signed storage
        URL). As the web client does, the dataset names its competition and file, so the
        upload appears under the competition."""
        body: dict[str, Any] = {
            "type": "submission",
            # the server refuses a second dataset of the same name from one user
            "name": name or _unique_name(file_name),
            "request_sassy_file_name": file_name,
            "file_name": file_name,
            # the server answers 400 without it: it checks the user's storage quota
            "file_size": int(file_size),
        }
        if competition_id is not None:
            body["competition"] = int(competition_id)
        data = self.request("POST", "/api/datasets/", json_body=body)
        if not isinstance(data, dict) or not data.get("key") or not data.get("sassy_url"):
            raise CodabenchError("Codabench created the dataset but gave no key or upload URL")
        return str(data["key"]), str(data["sassy_url"])

    def upload_to_storage(self, sassy_url: str, zip_path: Path) -> None:
        """PUT the zip to the signed URL. It belongs to the storage host, so this is a bare
        request without our session: the token must not leak there, and S3-style stores
        reject a request carrying a second auth scheme besides the signature."""
        import requests

        headers = {"Content-Type": "application/zip"}
        if urlsplit(sassy_url).hostname and urlsplit(sassy_url).hostname.endswith(".blob.core.windows.net"):
            # Azure refuses a blob PUT that does not name the blob type
            headers["x-ms-blob-type"] = "BlockBlob"
        host = urlsplit(sassy_url).netloc or sassy_url
        def put(read: float) -> requests.Response:
            with open(zip_path, "rb") as fh:
                return requests.put(sassy_url, data=fh, headers=headers, auth=_NO_NETRC,
                                    timeout=(min(self.timeout, read), read))

        try:
            resp = self._send(put, self.upload_timeout, f"the upload to storage at {host} did not finish")
        except _TotalTimeout as exc:
            raise CodabenchConnectionError(str(exc)) from None
        except requests.Timeout:
            raise CodabenchConnectionError(f"upload to storage at {host} timed out") from None
        except requests.RequestException as exc:
            raise CodabenchConnectionError(f"cannot upload to storage at {host} ({_short_reason(exc)})") from None
        if not 200 <= resp.status_code < 300:
            raise CodabenchError(f"storage at {host} refused the upload ({resp.status_code}): {_snippet(resp)}")

    def complete_dataset(self, key: str) -> None:
        """Tell the server the upload of dataset ``key`` to storage is complete."""
        self.request("PUT", f"/api/datasets/completed/{key}/")

    def create_submission(self, phase_id: int, data_key: str) -> dict:
        """``POST /api/submissions/`` of the uploaded dataset ``data_key`` to the phase; the
        server's record of the new submission (with its ``id``). Never retried: it counts."""
        data = self.request("POST", "/api/submissions/", json_body={"phase": int(phase_id), "data": data_key})
        if not isinstance(data, dict) or data.get("id") is None:
            raise CodabenchError("Codabench accepted the submission but gave no id")
        return data

    def add_to_leaderboard(self, submission_id: int) -> None:
        """Put the submission on its phase's leaderboard
        (``POST /api/submissions/<id>/submission_leaderboard_connection/``). Under the default
        rule this is how an upload reaches the public leaderboard, replacing the owner's
        previous entry; competitions with an automatic rule answer 403."""
        self.request("POST", f"/api/submissions/{int(submission_id)}/submission_leaderboard_connection/")

    def leaderboard(self, phase_id: int) -> Leaderboard:
        """The phase's public leaderboard, rows in the server's ranking order."""
        return _leaderboard(self.request("GET", f"/api/phases/{int(phase_id)}/get_leaderboard/"), int(phase_id))

    def submission(self, submission_id: int) -> dict:
        """``GET /api/submissions/<id>/``: the submission's raw record."""
        return self._get_dict(f"/api/submissions/{int(submission_id)}/")

    def submission_details(self, submission_id: int) -> dict:
        """``GET /api/submissions/<id>/get_details/``: logs and leaderboard column titles."""
        return self._get_dict(f"/api/submissions/{int(submission_id)}/get_details/")

    def result(self, submission_id: int, *, titles: bool = True) -> SubmissionResult:
        """The submission's state now, with a failed child turning a finished parent into
        a failure (multi-task phases report per task in children)."""
        sub = self.submission(submission_id)
        result = _result(sub)
        if _same(result.status, FINISHED):
            self._fold_children(sub, result)
        if titles and result.ok and result.scores:
            result.titles = self._titles(result.id)
        return result

    def _fold_children(self, sub: dict, result: SubmissionResult) -> None:
        children = []
        for child in sub.get("children") or []:
            if isinstance(child, dict) and child.get("status"):
                children.append(child)
            else:
                child_id = child.get("id") if isinstance(child, dict) else child
                children.append(self.submission(int(child_id)))
        for info in children:
            status = str(info.get("status") or "")
            if _same(status, FAILED, CANCELLED):
                why = info.get("status_details")
                result.status = FAILED
                result.detail = (f"child submission {info.get('id')} {status.lower()}"
                                 + (f": {_one_line(str(why))}" if why else ""))
                return
        if not result.scores:
            # multi-task phases may keep the numbers on the per-task children only
            for info in children:
                for key, value in _scores(info.get("scores")).items():
                    result.scores.setdefault(key, value)

    def _titles(self, submission_id: int) -> dict[str, str]:
        try:
            details = self.submission_details(submission_id)
        except CodabenchError:
            return {}
        titles: dict[str, str] = {}
        for board in details.get("leaderboards") or []:
            if not isinstance(board, dict):
                continue
            for column in board.get("columns") or []:
                if isinstance(column, dict) and column.get("key") and column.get("title"):
                    titles.setdefault(str(column["key"]), str(column["title"]))
        return titles

    def wait(self, submission_id: int, timeout: float = WAIT_TIMEOUT, *, initial_interval: float = 2.0,
             max_interval: float = 30.0, progress: Optional[Progress] = None) -> SubmissionResult:
        """Poll until Finished, Failed or Cancelled, backing off exponentially. A brief
        outage is ridden out until the deadline, since the submission runs regardless."""
        deadline = time.monotonic() + timeout
        interval = initial_interval
        last_status: Optional[str] = None
        last_error: Optional[CodabenchError] = None
        while True:
            # no poll may outlast the wait: each call's own deadline ends at the wait's
            saved, self._until = self._until, deadline
            try:
                sub = self.submission(submission_id)
                final = _same(str(sub.get("status") or "unknown"), *FINAL_STATUSES)
                result = self.result(submission_id) if final else None
            except CodabenchConnectionError as exc:
                last_error = exc
            else:
                last_error = None
                status = str(sub.get("status") or "unknown")
                if status != last_status:
                    last_status = status
                    if progress:
                        progress(status)
                if result is not None:
                    return result
            finally:
                self._until = saved
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                state = f"still {last_status}" if last_status else "not reachable"
                extra = f" (last error: {last_error})" if last_error else ""
                raise CodabenchError(
                    f"submission {submission_id} is {state} after {timeout:g}s; Codabench keeps "
                    f"working on it, so check it again later by its id {submission_id}{extra}")
            time.sleep(min(interval, remaining))
            interval = min(interval * 2, max_interval)

    def list_submissions(self, phase_id: int, owner: Optional[str] = None) -> list[SubmissionResult]:
        """The phase's top-level submissions, newest first, only ``owner``'s when given
        (organizers see everyone's, and multi-task children would double count)."""
        data = self.request("GET", "/api/submissions/", params={"phase": int(phase_id)})
        if isinstance(data, dict) and isinstance(data.get("results"), list):
            data = data["results"]
        if not isinstance(data, list):
            raise CodabenchError("Codabench answered the submission list with an unexpected shape")
        out = []
        for sub in data:
            if not isinstance(sub, dict) or sub.get("parent") not in (None, ""):
                continue
            if _phase_id(sub.get("phase")) not in (None, int(phase_id)):
                continue
            if owner and str(sub.get("owner") or "").casefold() != owner.casefold():
                continue
            out.append(_result(sub))
        return out




def _unique_name(file_name: str) -> str:
    stem, dot, suffix = file_name.rpartition(".")
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
    return f"{stem}-{stamp}.{suffix}" if dot and stem else f"{file_name}-{stamp}"


def _flatten(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [s for item in value for s in _flatten(item)]
    if isinstance(value, dict):
        return [_join_errors(value)]
    return [str(value)] if value not in (None, "") else []


def _join_errors(body: Any) -> str:
    """DRF error bodies as one line: ``{"name": ["taken"], "non_field_errors": ["x"]}``
    becomes ``name: taken; x``."""
    if isinstance(body, dict):
        parts = []
        for key, value in body.items():
            messages = "; ".join(_flatten(value))
            if not messages:
                continue
            parts.append(messages if key in ("detail", "non_field_errors", "__all__", "error", "reason")
                         else f"{key}: {messages}")
        return _one_line("; ".join(parts))
    return _one_line("; ".join(_flatten(body)))


def _maybe_applied(method: str, exc: BaseException) -> str:
    """A lost answer to a write leaves its effect unknown; say so, unless the request
    provably never left (no connection was made)."""
    import requests

    if method == "GET" or isinstance(exc, requests.ConnectTimeout):
        return ""
    if "Failed to establish a new connection" in str(exc):
        return ""
    return "; it may still have been applied, so check before sending it again"


def _about_credentials(text: str) -> bool:
    lowered = text.casefold()
    return any(word in lowered for word in ("token", "credential", "authenticat", "not logged"))


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _snippet(resp: requests.Response) -> str:
    kind = resp.headers.get("Content-Type", "").split(";")[0].strip()
    text = resp.text or ""
    if "html" in kind or text.lstrip()[:1] == "<":
        title = re.search(r"<title>(.*?)</title>", text, re.I | re.S)
        return f"an HTML page{': ' + _one_line(title.group(1), 80) if title else ''}"
    return _one_line(text, 160) or f"empty body, status {resp.status_code}"


def _short_reason(exc: BaseException) -> str:
    text = str(exc)
    errno = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if errno:
        return errno.group(1).strip()
    if "RemoteDisconnected" in text or "closed connection" in text:
        return "the server closed the connection"
    if "Connection aborted" in text or "ConnectionReset" in text:
        return "connection reset"
    if "SSL" in text or "certificate" in text:
        return "TLS error"
    return exc.__class__.__name__

