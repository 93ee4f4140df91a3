"""Reports: figures (pure drawing), pictures of runs (show, compare, curves), the
leaderboard with its predicted test scores, and the speed benchmark.

May import: every core package (``kernel``, ``data``, ``runs``, ``eval``, ``train``, ``submit``).
"""

# How many runs `cpx report` ranks (and draws the first few of). Here rather than in results.py so
# that `cpx report --help` shows it without importing what the report is built from.
TOP = 12
