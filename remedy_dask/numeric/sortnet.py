"""Sorting networks: many short columns sorted (or their medians found) at once, with the
columns as SIMD lanes.  Used by the compiled kernels of trace_shift.py and fibermodel.py."""

from __future__ import annotations

import functools

import numpy as np
from numba import njit


@functools.lru_cache(maxsize=16)
def sorting_network(n: int) -> np.ndarray:
    """Compare-exchange pairs (lower, upper) that sort n values: Batcher's merge-exchange
    network (Knuth 5.2.2 M).  (n_pairs, 2) int64."""
    pairs: list[tuple[int, int]] = []
    t = max(n - 1, 1).bit_length()
    p = 1 << (t - 1) if n > 1 else 0
    while p > 0:
        q, r, d = 1 << (t - 1), 0, p
        while True:
            pairs += [(i, i + d) for i in range(n - d) if i & p == r]
            if q == p:
                break
            d, q, r = q - p, q // 2, p
        p //= 2
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


@functools.lru_cache(maxsize=16)
def median_network(n: int) -> np.ndarray:
    """The pairs of :func:`sorting_network` that can reach positions (n - 1) // 2 and n // 2:
    enough to put the two middle values of n values in place."""
    needed, kept = {(n - 1) // 2, n // 2}, []
    for a, b in sorting_network(n)[::-1].tolist():
        if a in needed or b in needed:
            kept.append((a, b))
            needed |= {a, b}
    return np.array(kept[::-1], dtype=np.int64).reshape(-1, 2)


@njit(cache=True, nogil=True)
def sort_lanes(buf, pairs):  # pragma: no cover - compiled
    """Sort every column of ``buf`` (n, n_lanes) in place with the network ``pairs``
    (values without NaN; use +inf for values that should sort last)."""
    n_lanes = buf.shape[1]
    for p in range(pairs.shape[0]):
        ra, rb = buf[pairs[p, 0]], buf[pairs[p, 1]]
        for j in range(n_lanes):
            x, y = ra[j], rb[j]
            ra[j] = x if x < y else y
            rb[j] = y if x < y else x
