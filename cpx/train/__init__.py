"""Training: the model-agnostic loop, the orchestration of one run (config, data, run folder,
ledger, checkpoints, resume), wall-clock budgets and multi-process training.

May import: ``cpx.kernel``, ``cpx.data``, ``cpx.runs``, ``cpx.eval``, ``cpx.draw``, ``cpx.track``.
"""
