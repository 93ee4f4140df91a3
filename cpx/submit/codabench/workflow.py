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
from pathlib import Path
from typing import Any, Optional

import requests

from cpx.kernel.errors import CodabenchError, SubmissionError
from cpx.submit.codabench.client import CodabenchClient, CodabenchHTTPError, Progress
from cpx.submit.codabench.credentials import (LOGIN_HINT, resolve_token, resolve_url,
                                              save_credentials)
from cpx.submit.codabench.schema import Phase, SubmissionResult, _result


def client_from_config(url: Optional[str] = None, **kwargs: Any) -> "CodabenchClient":
    base = resolve_url(url)
    return CodabenchClient(base, token=resolve_token(base), **kwargs)


def login(username: str, password: str, url: Optional[str] = None, *,
          session: Optional[requests.Session] = None, timeout: float = 30,
          path: Optional[Path] = None) -> Path:
    """Trade a username and password for an API token and store it; returns the file."""
    base = resolve_url(url)
    client = CodabenchClient(base, session=session, timeout=timeout)
    token = client.obtain_token(username, password)
    return save_credentials(base, token, username=username, path=path)




def choose_phase(phases: list[Phase], phase_id: Optional[int] = None,
                 competition_id: Optional[int] = None) -> Phase:
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
               phase_id: Optional[int] = None, wait: bool = False, *, timeout: float = 3600,
               initial_interval: float = 2.0, max_interval: float = 30.0,
               progress: Optional[Progress] = None) -> SubmissionResult:
    """Submit a zip to the competition's current phase (or ``phase_id``); with ``wait``,
    also poll until it is scored. ``progress`` hears each step and status change."""
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

    say("uploading")
    key, sassy_url = client.create_dataset(path.name, path.stat().st_size)
    client.upload_to_storage(sassy_url, path)
    client.complete_dataset(key)
    say("uploaded")

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


