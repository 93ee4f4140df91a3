"""Training: the model-agnostic loop, a run's data in memory, the orchestration of one run
(config, run folder, ledger, checkpoints, resume), wall-clock budgets and multi-process training.

May import: ``cpx.kernel``, ``cpx.data``, ``cpx.runs``, ``cpx.eval``, ``cpx.draw``, ``cpx.track``.
"""
