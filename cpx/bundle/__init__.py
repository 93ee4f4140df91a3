"""Codabench competition bundles: reading the organisers' bundle into a workspace, running their
scoring program as the Codabench worker does, and exporting a profile as a bundle of its own.

A bundle is a zip (or a folder) with ``competition.yaml`` at its root plus the programs and data
it names; v2 (``version: 2``) and CodaLab's v1.5 are read. Modules, by concern:

* :mod:`.archive`: a bundle's files read without trusting them (the zip rules of
  ``package --check``: no path escape, no links, size and ratio caps), nested zips included;
* :mod:`.reader`: ``competition.yaml`` as a :class:`~cpx.bundle.reader.Bundle` (phases, dates,
  limits, the ranked leaderboard column), unknown keys as warnings;
* :mod:`.infer`: what no bundle says (classes, mask values, sizes, channels, suffixes), guessed
  from a labelled data folder and marked for the user to confirm;
* :mod:`.init`: ``cpx init DIR --bundle PATH``: the workspace, its profile and the program;
* :mod:`.program`: a scoring program run in a subprocess on ``input/ref`` and ``input/res``
  under the phase's time limit, its ``scores.json`` / ``scores.txt`` parsed;
* :mod:`.official`: ``validate --official``, ``score --official`` and the check ``package``
  runs: the references and predictions laid out through the competition's submission format;
* :mod:`.export`: ``cpx bundle export``: a v2 bundle with a standalone scorer
  (:mod:`.standalone_score`, numpy, Pillow and the standard library only).

A scoring program is code from a file the user chose: cpx runs it only when asked
(``--official``), or in ``cpx package`` when the workspace's profile names one (``--no-official``
skips it), and never while reading a bundle.

It writes through the submission formats and reuses the zip rules, so it sits above ``submit``;
the packaging pipeline in ``submit`` reaches the official check only through a callback the
command line passes.

May import: ``cpx.kernel``, ``cpx.data``, ``cpx.runs``, ``cpx.eval``, ``cpx.submit``.
"""
