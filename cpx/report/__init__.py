"""Reports: figures (pure drawing), pictures of runs (show, compare, curves), the
leaderboard with its predicted test scores, and the speed benchmark.

May import: every core package (``kernel``, ``data``, ``runs``, ``eval``, ``train``, ``submit``).
"""
