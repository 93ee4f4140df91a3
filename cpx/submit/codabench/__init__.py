"""A Codabench client for robot submissions, by concern:

* :mod:`.credentials`: the stored token, the server URL and which server a token may reach;
* :mod:`.schema`: phases and submissions as plain data, parsed from the server's JSON;
* :mod:`.client`: the HTTP client, one method per endpoint, errors as one line each;
* :mod:`.workflow`: log in, choose a phase, submit a zip and wait for its score.

Everything returns plain data and raises :class:`~cpx.kernel.errors.CodabenchError`; nothing
prints. The names below are the public interface.
"""

from cpx.submit.codabench.client import CodabenchClient, CodabenchConnectionError, CodabenchHTTPError
from cpx.submit.codabench.credentials import (
                                              CONFIG_FILE,
                                              DEFAULT_URL,
                                              LOGIN_HINT,
                                              config_dir,
                                              config_path,
                                              forget_credentials,
                                              is_loopback,
                                              load_credentials,
                                              normalize_url,
                                              resolve_token,
                                              resolve_url,
                                              save_credentials,
                                              stored_identity,
                                              stored_username,
                                              token_hint,
)
from cpx.submit.codabench.schema import (
                                              CANCELLED,
                                              FAILED,
                                              FINAL_STATUSES,
                                              FINISHED,
                                              PENDING_STATUSES,
                                              Leaderboard,
                                              LeaderboardColumn,
                                              LeaderboardEntry,
                                              Phase,
                                              SubmissionResult,
)
from cpx.submit.codabench.workflow import Identity, choose_phase, client_from_config, login, submit_zip, whoami

__all__ = [
    "CANCELLED", "CONFIG_FILE", "DEFAULT_URL", "FAILED", "FINAL_STATUSES", "FINISHED", "LOGIN_HINT",
    "PENDING_STATUSES", "CodabenchClient", "CodabenchConnectionError", "CodabenchHTTPError", "Identity",
    "Leaderboard", "LeaderboardColumn", "LeaderboardEntry", "Phase", "SubmissionResult", "choose_phase",
    "client_from_config", "config_dir", "config_path", "forget_credentials", "is_loopback",
    "load_credentials", "login", "normalize_url", "resolve_token", "resolve_url", "save_credentials",
    "stored_identity", "stored_username", "submit_zip", "token_hint", "whoami",
]
