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
    return selection_network(n, ((n - 1) // 2, n // 2))


@functools.lru_cache(maxsize=16)
def selection_network(n: int, positions: tuple[int, ...]) -> np.ndarray:
    """The pairs of :func:`sorting_network` that can reach ``positions``: the values there are
    those of the full sort (the others are not sorted)."""
    needed, kept = set(positions), []
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


_LANE_BLOCK = 2048  # lanes per pass: the n rows of a block stay in cache


@njit(cache=True, nogil=True)
def _median_lanes(values, pairs, out):  # pragma: no cover - compiled
    """out[j] = median of values[:, j] (no NaN), by the network ``pairs`` on blocks of lanes."""
    n, n_lanes = values.shape
    lo, hi = (n - 1) // 2, n // 2
    buf = np.empty((n, _LANE_BLOCK))
    for start in range(0, n_lanes, _LANE_BLOCK):
        width = min(_LANE_BLOCK, n_lanes - start)
        for i in range(n):
            for j in range(width):
                buf[i, j] = values[i, start + j]
        view = buf[:, :width]
        sort_lanes(view, pairs)
        for j in range(width):
            out[start + j] = view[hi, j] if lo == hi else (view[lo, j] + view[hi, j]) / 2.0


def median_of_frames(stack: np.ndarray) -> np.ndarray:
    """Median over the first axis of ``stack`` (n, ...), float64: equal to ``np.median(stack,
    axis=0)`` (the middle value, or the mean of the two middle values), several times faster for
    the few frames of a master.  Lanes holding NaN get NaN as with numpy."""
    values = np.asarray(stack, dtype=float)
    n = values.shape[0]
    flat = np.ascontiguousarray(values.reshape(n, -1))
    out = np.empty(flat.shape[1])
    _median_lanes(flat, median_network(n), out)
    nan = np.isnan(flat).any(axis=0)
    out[nan] = np.nan
    return out.reshape(values.shape[1:])


@njit(cache=True, nogil=True)
def _running_median_rows(padded, pairs, width, out):  # pragma: no cover - compiled
    """out[r, c] = median of padded[r, c:c + width] (no NaN) by the network ``pairs``."""
    n_rows, n_cols = out.shape
    buf = np.empty((width, n_cols))
    for r in range(n_rows):
        for i in range(width):
            for c in range(n_cols):
                buf[i, c] = padded[r, c + i]
        sort_lanes(buf, pairs)
        for c in range(n_cols):
            out[r, c] = buf[width // 2, c]


def running_median_rows(image: np.ndarray, width: int) -> np.ndarray:
    """Running median of ``width`` (odd) columns along every row, edges mirrored (numpy's
    "reflect" padding); equal to the order statistic of ``np.partition``.  Rows holding NaN
    fall back to that partition (NaN sorts last there)."""
    if width % 2 == 0:
        raise ValueError(f"running_median_rows needs an odd width, got {width}")
    half = width // 2
    padded = np.pad(np.asarray(image, dtype=float), ((0, 0), (half, half)), mode="reflect")
    out = np.empty(np.shape(image))
    _running_median_rows(padded, median_network(width), width, out)
    nan_rows = np.flatnonzero(np.isnan(padded).any(axis=1))
    if nan_rows.size:
        windows = np.lib.stride_tricks.sliding_window_view(padded[nan_rows], width, axis=1)
        out[nan_rows] = np.partition(windows, half, axis=-1)[..., half]
    return out
