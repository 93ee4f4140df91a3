"""Submissions: everything between a trained run and a score on the leaderboard.

* :mod:`.zipcheck` owns the zip rules (one checker for ``cpx package``, ``package --check``
  and ``submit --zip``) and the resource limits for reading untrusted zips;
* :mod:`.package` packages a run as a verified zip, a pipeline of named steps;
* :mod:`.solution` writes the standalone ``solution/`` folder, whose ``run.py`` is
  :mod:`.standalone_run` (cpx's exact prediction, TTA included, needing only torch, numpy and
  Pillow);
* :mod:`.submissions` keeps the records in the ledger: scores, the final pick, the budget, and
  uploads to and syncs with Codabench;
* :mod:`.codabench` is the Codabench client (credentials, schema, HTTP client, workflow);
* :mod:`.submit` is ``cpx submit`` as one core function.

May import: ``cpx.kernel``, ``cpx.data``, ``cpx.runs``, ``cpx.eval``. So never the trainer, the
reports or the command line, and never typer or rich.
"""
