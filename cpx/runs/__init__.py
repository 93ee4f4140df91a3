"""Runs: the SQLite ledger and its migrations, the run folder and the files in it, opening a
recorded run, importing runs made by other scripts, and which competition a workspace works on
when a command names none.

May import: ``cpx.kernel``, ``cpx.data``.
"""
