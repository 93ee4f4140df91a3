"""The crash-safe commit of a training epoch: the one order every epoch's files are written in,
beside :mod:`cpx.runs.recovery`, which relies on it to roll a run forward after a kill.

1. a new best checkpoint to ``.best.pt.next`` (only when the epoch improved);
2. ``last.pt``, atomically: **the commit point** — the epoch counts once this file is whole;
3. the rename of ``.best.pt.next`` to ``best.pt``;
4. ``history.json``;
5. (the caller) the ledger row, and at the end ``status.json``.

A kill between any two steps leaves a run :func:`cpx.runs.recovery.reconcile` brings back to
the epoch ``last.pt`` holds: a pending best of that epoch is renamed, one of an epoch that never
committed is dropped, and the history and the ledger are rewritten from ``last.pt``.
"""

from __future__ import annotations

import os
from typing import Optional

from cpx.kernel.files import atomic_torch_save
from cpx.runs.folder import RunFolder


def commit_epoch(folder: RunFolder, last_state: dict, best: Optional[dict], history: list[dict]) -> None:
    """Write one epoch's checkpoints and history in the crash-safe order (module docstring).

    :param last_state: everything a resume needs (``last.pt``), tensors and plain types.
    :param best: the ``best.pt`` payload when the epoch improved on the best, else None.
    :param history: every epoch's record so far (``history.json``).
    """
    if best is not None:
        atomic_torch_save(best, folder.pending_best_path)
    atomic_torch_save(last_state, folder.last_path)
    if best is not None:
        os.replace(folder.pending_best_path, folder.best_path)
    folder.write_history(history)
