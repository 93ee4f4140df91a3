"""Submissions after packaging, by concern:

* :mod:`.scores`: the score that stands for a submission in a phase, and scores typed by hand;
* :mod:`.budget`: what counts against the phase's limit, the listing and the final pick;
* :mod:`.records`: recording scores, the final mark, and registering zips made elsewhere;
* :mod:`.remote`: uploading to Codabench and syncing the ledger with the server.
"""

from cpx.kernel.lazy import lazy_exports

# imported on first use: registering a zip checks it with torch and uploads need requests, while
# the leaderboard and the scores need neither
_EXPORTS = {
    "budget": ("NOT_COUNTED", "Budget", "SubmissionReport", "SubmissionRow", "final_not_best", "phase_budget",
               "phase_limits", "server_phase", "submission_report", "used_in_phase"),
    "records": ("Recorded", "Registered", "mark_final", "record_score", "register_submission", "run_test_dir"),
    "remote": ("RemoteLeaderboard", "SyncReport", "UploadOutcome", "connect_to_leaderboard", "my_names",
               "remote_leaderboard", "sync_submissions", "upload_submission"),
    "scores": ("DEFAULT_PHASE", "default_phase", "main_score", "parse_score"),
}
__all__ = sorted(name for names in _EXPORTS.values() for name in names)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
