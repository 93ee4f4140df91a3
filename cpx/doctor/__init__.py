"""The workspace check behind ``cpx doctor``: the ledger's integrity, its rows against the run
folders, the files in those folders, the data the runs trained on, the stored Codabench
credentials and the free disk space, each problem reported in one line with what to do.

It only reads: nothing is repaired, migrated or marked.

May import: ``cpx.kernel``, ``cpx.data``, ``cpx.runs``, ``cpx.submit``.
"""

from cpx.doctor.checks import MIN_FREE_BYTES, DoctorReport, check_workspace

__all__ = ["MIN_FREE_BYTES", "DoctorReport", "check_workspace"]
