"""Submissions after packaging, by concern:

* :mod:`.scores`: the score that stands for a submission in a phase, and scores typed by hand;
* :mod:`.budget`: what counts against the phase's limit, the listing and the final pick;
* :mod:`.records`: recording scores, the final mark, and registering zips made elsewhere;
* :mod:`.remote`: uploading to Codabench and syncing the ledger with the server.
"""

from cpx.submit.submissions.budget import (
                                           NOT_COUNTED,
                                           Budget,
                                           SubmissionReport,
                                           SubmissionRow,
                                           final_not_best,
                                           phase_budget,
                                           phase_limits,
                                           server_phase,
                                           submission_report,
                                           used_in_phase,
)
from cpx.submit.submissions.records import (
                                           Recorded,
                                           Registered,
                                           mark_final,
                                           record_score,
                                           register_submission,
                                           run_test_dir,
)
from cpx.submit.submissions.remote import (
                                           RemoteLeaderboard,
                                           SyncReport,
                                           UploadOutcome,
                                           connect_to_leaderboard,
                                           my_names,
                                           remote_leaderboard,
                                           sync_submissions,
                                           upload_submission,
)
from cpx.submit.submissions.scores import DEFAULT_PHASE, default_phase, main_score, parse_score

__all__ = [
    "Budget", "DEFAULT_PHASE", "default_phase", "NOT_COUNTED", "Recorded", "Registered", "RemoteLeaderboard",
    "SubmissionReport", "SubmissionRow", "SyncReport", "UploadOutcome", "connect_to_leaderboard",
    "final_not_best", "main_score", "mark_final", "my_names", "parse_score", "phase_budget", "phase_limits",
    "record_score", "register_submission", "remote_leaderboard", "run_test_dir", "server_phase",
    "submission_report", "sync_submissions", "upload_submission", "used_in_phase",
]
