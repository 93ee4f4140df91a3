"""A Codabench client for robot submissions, by concern:

* :mod:`.credentials`: the stored token, the server URL and which server a token may reach;
* :mod:`.schema`: phases and submissions as plain data, parsed from the server's JSON;
* :mod:`.client`: the HTTP client, one method per endpoint, errors as one line each;
* :mod:`.workflow`: log in, choose a phase, submit a zip and wait for its score.

Everything returns plain data and raises :class:`~cpx.kernel.errors.CodabenchError`; nothing
prints. The names below are the public interface.
"""

from cpx.kernel.lazy import lazy_exports

# imported on first use: the client and the workflow need requests, which the credentials, the
# schema and the commands that only read the ledger do not
_EXPORTS = {
    "client": ("CodabenchClient", "CodabenchConnectionError", "CodabenchHTTPError"),
    "credentials": ("CONFIG_FILE", "DEFAULT_URL", "LOGIN_HINT", "config_dir", "config_path", "forget_credentials",
                    "is_loopback", "load_credentials", "normalize_url", "resolve_token", "resolve_url",
                    "save_credentials", "stored_identity", "stored_username", "token_hint"),
    "schema": ("CANCELLED", "FAILED", "FINAL_STATUSES", "FINISHED", "PENDING_STATUSES", "WAIT_TIMEOUT",
               "Leaderboard", "LeaderboardColumn", "LeaderboardEntry", "Phase", "SubmissionResult"),
    "workflow": ("Identity", "choose_phase", "client_from_config", "login", "submit_zip", "whoami"),
}
__all__ = sorted(name for names in _EXPORTS.values() for name in names)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
