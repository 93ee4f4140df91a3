"""A training run's ledger writes, which wait while another program holds the ledger's lock
(a database browser with an open transaction, a second cpx) instead of ending the run."""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Optional

from cpx.kernel.errors import LedgerBusy
from cpx.runs.ledger import Ledger


class LedgerWriter:
    """Ledger updates that never end a training run: while another program holds the ledger's
    lock past the busy timeout the fields wait here and go in with the next update."""

    def __init__(self, ledger: Ledger, run_id: str):
        self.ledger, self.run_id = ledger, run_id
        self.pending: dict[str, Any] = {}
        self.busy_since: Optional[float] = None

    def update(self, **fields: Any) -> bool:
        self.pending.update(fields)
        try:
            self.ledger.update_run(self.run_id, **self.pending)
        except LedgerBusy:
            self.busy_since = self.busy_since or time.monotonic()
            return False
        self.pending.clear()
        self.busy_since = None
        return True

    def flush(self, tries: int = 5) -> bool:
        """Write what is pending, retrying with backoff (1, 2, 4, 8 s between tries, each try
        itself waiting up to the ledger's busy timeout)."""
        delay = 1.0
        for attempt in range(tries):
            if not self.pending or self.update():
                return True
            if attempt + 1 < tries:
                time.sleep(delay)
                delay *= 2
        return False


# minutes a training waits for a ledger another program holds before it starts (the run's row
# must exist before its first file); CPX_LEDGER_START_WAIT overrides
START_WAIT_MINUTES = 10.0


def waiting_for_the_ledger(ledger: Ledger, callbacks: tuple, write: Callable[[], Any]) -> Any:
    """``write()`` (the run's first ledger row), retried while another program holds the ledger's
    lock, for up to ``CPX_LEDGER_START_WAIT`` minutes (:data:`START_WAIT_MINUTES`); callbacks with
    ``on_notice(text)`` hear once that training waits, and why.

    :raises LedgerBusy: still locked at the end of the wait (naming the limit and how to change it).
    """
    minutes = float(os.environ.get("CPX_LEDGER_START_WAIT") or START_WAIT_MINUTES)
    deadline = time.monotonic() + minutes * 60
    told = False
    while True:
        try:
            return write()
        except LedgerBusy as exc:
            if time.monotonic() >= deadline:
                raise LedgerBusy(f"{exc}; training waited {minutes:g} min for it before starting "
                                 "(CPX_LEDGER_START_WAIT sets how many minutes)") from None
            if not told:
                told = True
                for cb in callbacks:
                    if hasattr(cb, "on_notice"):
                        cb.on_notice(f"the ledger {ledger.path} is locked by another program (a database browser "
                                     f"with an open transaction?); training starts once it is free, waiting up to "
                                     f"{minutes:g} min (CPX_LEDGER_START_WAIT)")
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
