"""Matplotlib, headless: the one way cpx opens pyplot and writes a figure (PNG, atomically).
"""

from __future__ import annotations

import io
from pathlib import Path

from cpx.kernel.files import atomic_write_bytes

# Run colours for curves and comparisons; chosen to stay apart from each other in greyscale too.
RUN_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def pyplot():
    """matplotlib.pyplot on the Agg backend (never needs a display)."""
    import matplotlib

    matplotlib.use("Agg")  # never needs a display
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, dpi: int = 100) -> Path:
    """Write ``fig`` as a PNG at ``dpi`` to ``path`` atomically, close it, return ``path``."""
    plt = pyplot()
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)

