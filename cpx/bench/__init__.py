"""Measurement: what a recipe costs on this machine (``cpx bench``), measured rather than guessed.

:mod:`.measure` counts a model's parameters and FLOPs, the machine's matmul ceiling and copy
bandwidth, training and prediction images/s and peak memory, in a fresh process, and projects
the time of an epoch and of a whole recipe (onto GPUs too). It also offers ``recipe_model``, a
``module:callable`` factory for scripts that train a recipe's network their own way
(``benchmarks/vs_reference.py``).

May import: ``cpx.kernel``, ``cpx.data``, ``cpx.runs``, ``cpx.eval``, ``cpx.train``.
"""
