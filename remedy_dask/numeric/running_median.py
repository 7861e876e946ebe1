"""Median kernels: an exact running median along rows (compiled), a NaN-aware median along
the last axis, and the median of a large array by bracketing.

The running median keeps a sorted copy of the window, updated per step (the positions of the
value leaving and of the value entering by counting, then a shift of the values between them),
so a row of n values costs O(n window) instead of the O(n window log window) of sorting every
window.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _running_rank_rows(a, window, rank, out):  # pragma: no cover - compiled
    """out[r, k] = the ``rank``-th smallest (0-based) of a[r, k : k + window]."""
    n_row, n = a.shape
    buf = np.empty(window)
    for r in range(n_row):
        for i in range(window):
            buf[i] = a[r, i]
        buf.sort()
        out[r, 0] = buf[rank]
        for k in range(1, n - window + 1):
            old = a[r, k - 1]
            new = a[r, k + window - 1]
            p = 0  # the first position of ``old``
            q = 0  # the position of ``new`` in the window with ``old`` still in
            for i in range(window):  # branch-free counts (vectorised) beat a binary search
                p += buf[i] < old
                q += buf[i] < new
            if q <= p:  # drop buf[p], shift buf[q:p] up, insert at q
                for i in range(p, q, -1):
                    buf[i] = buf[i - 1]
                buf[q] = new
            else:  # drop buf[p], shift buf[p + 1:q] down, insert at q - 1
                for i in range(p, q - 1):
                    buf[i] = buf[i + 1]
                buf[q - 1] = new
            out[r, k] = buf[rank]


def running_median(a: np.ndarray, window: int) -> np.ndarray:
    """Running median of each row of ``a`` (n_row, n) over ``window`` values, no padding.

    Returns (n_row, n - window + 1) float64: column k is the (window // 2)-th smallest (0-based)
    of ``a[:, k : k + window]`` - the median for an odd window, the upper of the two middle values
    for an even one (as :func:`scipy.ndimage.median_filter`, whose output at column
    ``k + window // 2`` it equals).  ``a`` must be finite.
    """
    a = np.ascontiguousarray(a, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"running_median needs a 2-D array, got shape {a.shape}")
    if not 1 <= window <= a.shape[1]:
        raise ValueError(f"window must be in [1, {a.shape[1]}], got {window}")
    if not np.isfinite(a).all():
        raise ValueError("running_median needs finite values")
    out = np.empty((a.shape[0], a.shape[1] - window + 1))
    _running_rank_rows(a, int(window), int(window) // 2, out)
    return out


def nanmedian_lastaxis(a: np.ndarray) -> np.ndarray:
    """Median over the last axis ignoring NaN (NaN where all are NaN), as :func:`np.nanmedian`.

    One sort (NaN sort last) and a pick by each row's count of values: faster than
    ``np.nanmedian`` for many short rows.
    """
    a = np.asarray(a, dtype=np.float64)
    s = np.sort(a, axis=-1)
    n = np.count_nonzero(~np.isnan(a), axis=-1)
    lo = np.take_along_axis(s, np.maximum((n - 1) // 2, 0)[..., None], axis=-1)[..., 0]
    hi = np.take_along_axis(s, np.minimum(n // 2, a.shape[-1] - 1)[..., None], axis=-1)[..., 0]
    return np.where(n > 0, 0.5 * (lo + hi), np.nan)


def median_above(a: np.ndarray, lower: float = -np.inf):
    """``np.median(a[a > lower])`` (same value and dtype), faster for large arrays: the median
    lies between two quantiles of a strided subsample, so only the values between those are
    partitioned; if the bracket misses it (or ``a`` holds NaN or infinities) all are."""
    flat = a.ravel()
    sub = flat[::64]
    sub = np.sort(sub[sub > lower])
    if sub.size < 100 or not np.isfinite(flat.sum()):
        return np.median(flat[flat > lower])
    lo, hi = sub[int(0.48 * sub.size)], sub[int(0.52 * sub.size)]
    n_out = int(np.count_nonzero(flat <= lower))
    below = int(np.count_nonzero(flat < lo)) - n_out
    inside = flat[(flat >= lo) & (flat <= hi)]
    n = flat.size - n_out
    k1, k2 = (n - 1) // 2 - below, n // 2 - below
    if k1 < 0 or k2 >= inside.size:
        return np.median(flat[flat > lower])
    if k1 == k2:
        inside.partition(k1)
        return inside[k1]
    inside.partition([k1, k2])
    return np.mean(inside[k1 : k2 + 1])  # as np.median: the mean of the two middle values
