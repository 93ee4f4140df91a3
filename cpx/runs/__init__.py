"""Runs: the SQLite ledger and its migrations, the run folder and the files in it, opening a
recorded run, and importing runs made by other scripts.

May import: ``cpx.kernel``, ``cpx.data``.
"""
