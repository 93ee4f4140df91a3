"""What the procedural generators share: the argument checks of ``synthesize``, the three
random streams one sample draws from, and shifting a mask (cast shadows).

Each generator (:mod:`.faces`, :mod:`.vegetation`, :mod:`.landcover`) renders sample ``index``
from ``(seed, index)`` alone, so a dataset can address any sample directly and a run's data is
reproducible from its seed.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

Sample = tuple[np.ndarray, np.ndarray]


def samples(render: Callable[[int, int, int], Sample], count: int, size: int, seed: int) -> Iterator[Sample]:
    """``render(size, seed, i)`` for ``i`` in ``0..count-1``, lazily.

    The arguments are checked now, so a wrong one fails at the call rather than at the first
    ``next()``.

    :raises ValueError: ``count`` below 0 or ``size`` (pixels) below 16.
    """
    count, size, seed = int(count), int(size), int(seed)
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if size < 16:
        raise ValueError(f"size must be >= 16, got {size}")
    return (render(size, seed, i) for i in range(count))


def streams(salt: int, seed: int, index: int) -> tuple[np.random.Generator, ...]:
    """Three independent generators (geometry, smooth fields, pixel noise) for one sample,
    spawned from ``(salt, seed, index)``; ``salt`` keeps the generators of different
    competitions apart for the same seed."""
    root = np.random.SeedSequence([salt, seed % (1 << 64), index])
    return tuple(np.random.default_rng(s) for s in root.spawn(3))


def shift(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``a`` (H x W) moved by ``dy`` rows and ``dx`` columns, the uncovered edge zero (False)."""
    out = np.zeros_like(a)
    h, w = a.shape
    if abs(dy) >= h or abs(dx) >= w:
        return out
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = a[max(-dy, 0):h - max(dy, 0),
                                                                  max(-dx, 0):w - max(dx, 0)]
    return out
