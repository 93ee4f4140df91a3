"""The robot-submission workflow on top of the client: log in, pick the phase, submit a zip
and (optionally) wait for its score.

The flow follows Codabench's own web client: a token from ``api-token-auth``, the
competition's phases, ``can_make_submission``, a submission dataset whose zip goes straight to
storage through a signed ("sassy") URL, the submission itself, then polling until a final
status. Everything returns plain data and raises :class:`~cpx.kernel.errors.CodabenchError`;
nothing prints.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from cpx.kernel.errors import CodabenchError, SubmissionError
from cpx.submit.codabench.client import CodabenchClient, CodabenchHTTPError, Progress
from cpx.submit.codabench.credentials import LOGIN_HINT, resolve_token, resolve_url, save_credentials
from cpx.submit.codabench.schema import WAIT_TIMEOUT, Phase, SubmissionResult, _result

if TYPE_CHECKING:
    import requests


def client_from_config(url: Optional[str] = None, **kwargs: Any) -> CodabenchClient:
    """A client for ``url`` (else ``CODABENCH_URL``, the stored login's server, codabench.org)
    with the token meant for that server, if any (see :mod:`.credentials`).

    :raises CodabenchError: a URL cpx refuses (plain HTTP to another machine, credentials in it).
    """
    base = resolve_url(url)
    # resolve_url has refused plain HTTP unless it is loopback or was accepted at login
    return CodabenchClient(base, token=resolve_token(base), allow_http=True, **kwargs)


@dataclass
class Identity:
    """Who a token belongs to: the ``username`` that owns submissions (the server accepts an
    e-mail address at login, but never shows it as an owner) and the display name."""

    username: Optional[str]
    display_name: Optional[str] = None


def whoami(client: CodabenchClient, fallback: Optional[str] = None) -> Identity:
    """The user of ``client``'s token, from ``GET /api/my_profile/``. On a server without that
    endpoint, ``fallback`` when it is a username (not an e-mail address), else no name."""
    try:
        profile = client.my_profile()
    except CodabenchHTTPError as exc:
        if exc.status_code != 404:
            raise
        profile = {}
    username = profile.get("username") or (fallback if fallback and "@" not in fallback else None)
    display = profile.get("display_name") or None
    return Identity(str(username) if username else None, str(display) if display else None)


def login(username: str, password: str, url: Optional[str] = None, *,
          session: Optional[requests.Session] = None, timeout: float = 30,
          path: Optional[Path] = None, allow_http: bool = False) -> Path:
    """Trade a username (or the account's e-mail address) and password for an API token,
    learn the account's username, and store them; returns the file.

    ``allow_http`` accepts plain HTTP to this one server (stored with the login).

    :raises CodabenchError: the server refused the credentials or the URL is refused.
    """
    base = resolve_url(url, allow_http=allow_http, for_login=True)
    client = CodabenchClient(base, session=session, timeout=timeout, allow_http=True)
    token = client.obtain_token(username, password)
    who = whoami(client, fallback=username)
    return save_credentials(base, token, username=who.username, path=path,
                            display_name=who.display_name, allow_http=allow_http)


def choose_phase(phases: list[Phase], phase_id: Optional[int] = None,
                 competition_id: Optional[int] = None) -> Phase:
    """The phase ``phase_id``, else the one phase whose status is Current.

    :raises CodabenchError: no such phase, several or no current phases, or the server does
        not say which is current; the message lists the phases to choose from.
    """
    where = f"competition {competition_id}" if competition_id is not None else "the competition"
    listing = ", ".join(f"{p.id} ({p.name}, {p.status or 'status unknown'})" for p in phases) or "none"
    if phase_id is not None:
        for phase in phases:
            if phase.id == int(phase_id):
                return phase
        raise CodabenchError(f"phase {phase_id} is not part of {where}; its phases: {listing}")
    current = [p for p in phases if p.is_current]
    if len(current) == 1:
        return current[0]
    if len(current) > 1:
        raise CodabenchError(f"{where} has several current phases; choose one by id: {listing}")
    if any(p.status is None for p in phases):
        raise CodabenchError(f"the server does not say which phase of {where} is current; "
                             f"choose one by id: {listing}")
    raise CodabenchError(f"no phase of {where} is open now; its phases: {listing}")


def submit_zip(client: CodabenchClient, zip_path: os.PathLike | str, competition_id: int,
               phase_id: Optional[int] = None, wait: bool = False, *, timeout: float = WAIT_TIMEOUT,
               initial_interval: float = 2.0, max_interval: float = 30.0,
               progress: Optional[Progress] = None,
               before_upload: Optional[Callable[[Phase], None]] = None,
               before_post: Optional[Callable[[Phase], None]] = None) -> SubmissionResult:
    """Submit a zip to the competition's current phase (or ``phase_id``); with ``wait``,
    also poll until it is scored (``timeout`` seconds at most, polling from
    ``initial_interval`` up to ``max_interval`` seconds). ``progress`` hears each step and
    status change; ``before_upload(phase)`` runs once the server said a submission is possible
    and before anything is sent (raise there to stop); ``before_post(phase)`` runs once the zip
    is in storage, right before the one request that spends a submission (record the attempt
    there: its answer may be lost).

    :raises SubmissionError: the file is missing or not a zip (before any request).
    :raises CodabenchError: no token, no open phase, the server will not take a submission,
        or any request failed.
    """
    path = Path(zip_path)
    if not path.is_file():
        raise SubmissionError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):
        raise SubmissionError(f"{path}: not a zip file")
    if not client.token:
        raise CodabenchError(f"no Codabench token for {client.base_url}; {LOGIN_HINT}")

    last: list[str] = []

    def say(text: str) -> None:
        # the creation reply and the first poll often repeat the same status
        if progress and (not last or last[-1] != text):
            last.append(text)
            progress(text)

    phase = choose_phase(client.phases(competition_id), phase_id, competition_id)
    can, reason = client.can_make_submission(phase.id)
    if not can:
        limits = phase.limits_text()
        raise CodabenchError(f"Codabench will not take a submission to phase {phase.id} ({phase.name}): "
                             f"{reason or 'no reason given'}" + (f" [used {limits}]" if limits else ""))

    if before_upload is not None:
        before_upload(phase)
    say("uploading")
    key, sassy_url = client.create_dataset(path.name, path.stat().st_size, competition_id=competition_id)
    client.upload_to_storage(sassy_url, path)
    client.complete_dataset(key)
    say("uploaded")

    if before_post is not None:
        before_post(phase)
    try:
        created = client.create_submission(phase.id, key)
    except CodabenchHTTPError as exc:
        limits = phase.limits_text()
        if exc.status_code >= 500 and limits:
            raise CodabenchHTTPError(f"{exc} (used {limits})", exc.status_code, exc.method, exc.path,
                                     exc.detail) from None
        raise
    result = _result(created)
    result.phase_id = result.phase_id or phase.id
    if not result.status or result.status == "unknown":
        result.status = "Submitted"
    say(result.status)
    if not wait:
        return result
    final = client.wait(result.id, timeout, initial_interval=initial_interval,
                        max_interval=max_interval, progress=say if progress else None)
    final.phase_id = final.phase_id or phase.id
    return final


