"""Submissions: checking a submission zip against the competition's layout, packaging a run
into one (with its standalone ``solution/``), the submission records in the ledger, and the
Codabench client.

May import: ``cpx.kernel``, ``cpx.data``, ``cpx.runs``, ``cpx.eval``.
"""
