"""Drawing: every picture cpx writes, as PNG through one headless matplotlib.

* :mod:`.pyplot`: matplotlib on the Agg backend, the run colours and the atomic PNG write;
* :mod:`.figures`: pure drawing (image grids, per-class bars, factor panels) from arrays and
  numbers, knowing nothing of runs or models;
* :mod:`.curves`: training curves from a run's history entries (each run's ``curves.png``);
* :mod:`.pictures`: pictures of recorded runs (``cpx show``, ``compare``, ``curves``): it
  evaluates or reads the runs and hands the numbers to :mod:`.figures`.

May import: ``cpx.kernel``, ``cpx.data``, ``cpx.runs``, ``cpx.eval``. It sits below ``cpx.train``,
which draws each run's ``curves.png``.
"""
