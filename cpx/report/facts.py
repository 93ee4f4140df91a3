"""Numbers in the report as traced facts: each formatter records the value with the ledger
cells it comes from (:meth:`Document.fact`) and returns the text to print; ``None`` prints ``-``."""

from __future__ import annotations

from typing import Optional

from cpx.kernel.text import format_f, format_signed
from cpx.report.document import Document, Ref


def fact_f(doc: Document, value: Optional[float], ref: Optional[Ref], how: str = "value", refs=None, detail=None) -> str:
    """A score (the competition's metric, on its scale) to 4 decimals, traced to ``refs`` (else
    to ``ref``)."""
    if value is None:
        return "-"
    return doc.fact(value, format_f(value), refs if refs is not None else ([ref] if ref else []), how, detail)


def fact_signed(doc: Document, value: Optional[float], refs, how: str, detail=None) -> str:
    """A difference of scores with its sign (``+0.0123``), traced to ``refs``."""
    if value is None:
        return "-"
    return doc.fact(value, format_signed(value), refs, how, detail)


def fact_int(doc: Document, value: Optional[int], refs, how: str = "value") -> str:
    """A count or an epoch, traced to ``refs``."""
    if value is None:
        return "-"
    return doc.fact(int(value), str(int(value)), refs, how)


def p_text(p: float) -> str:
    """A p-value as printed: three decimals, or ``<0.001``."""
    return "<0.001" if p < 0.001 else f"{p:.3f}"
