"""Medians: a running median along rows, a NaN-aware median along the last axis, and the
median of a large array by bracketing.

The running median of an odd window is bottleneck's ``move_median`` (a double heap; no
compiled kernel beats it, docs/benchmarks.md); an even window takes the upper of the two middle
values, as :func:`scipy.ndimage.median_filter` does.
"""

from __future__ import annotations

import bottleneck as bn
import numpy as np

from remedy_dask.numeric.selection import bracket


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
    if window % 2:
        return bn.move_median(a, window, axis=1)[:, window - 1 :]
    view = np.lib.stride_tricks.sliding_window_view(a, window, axis=1)
    return np.partition(view, window // 2, axis=-1)[..., window // 2]


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
    n_out, below, inside = bracket(flat, lower, lo, hi)
    below -= n_out
    n = flat.size - n_out
    k1, k2 = (n - 1) // 2 - below, n // 2 - below
    if k1 < 0 or k2 >= inside.size:
        return np.median(flat[flat > lower])
    if k1 == k2:
        inside.partition(k1)
        return inside[k1]
    inside.partition([k1, k2])
    return np.mean(inside[k1 : k2 + 1])  # as np.median: the mean of the two middle values
