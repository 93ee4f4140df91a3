"""Reports: ``cpx report`` (a document of facts traced to ledger cells, rendered to Markdown and
HTML), the effects of sweep factors with their statistics, the gains of evaluation-time
ingredients, and the leaderboard with its predicted test scores. Its figures are drawn by
``cpx.draw``.

May import: ``cpx.kernel``, ``cpx.data``, ``cpx.runs``, ``cpx.eval``, ``cpx.draw``, ``cpx.train``,
``cpx.submit``, ``cpx.sweep``.
"""

# How many runs `cpx report` ranks (and draws the first few of). Here rather than in results.py so
# that `cpx report --help` shows it without importing what the report is built from.
TOP = 12
