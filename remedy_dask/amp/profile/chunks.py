"""Column-chunk cross-sections of an oriented amp image: robust row profiles of column chunks
(:func:`chunk_profiles`) and the trace at each chunk's centre (:func:`chunk_positions`), what
the trace's fiber model (:mod:`remedy_dask.amp.profile.fibermodel`) and the scattered light
(:mod:`remedy_dask.amp.scatter`) fit.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from remedy_dask.numeric.sortnet import sort_lanes, sorting_network


@njit(cache=True, nogil=True)
def _pairwise_sum(a):  # pragma: no cover - compiled
    """numpy's pairwise sum of a short 1-D array (n <= 128): the order np.sum uses."""
    n = a.size
    if n < 8:
        res = 0.0
        for i in range(n):
            res += a[i]
        return res
    r0, r1, r2, r3, r4, r5, r6, r7 = a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]
    i = 8
    while i < n - n % 8:
        r0 += a[i]; r1 += a[i + 1]; r2 += a[i + 2]; r3 += a[i + 3]  # noqa: E702
        r4 += a[i + 4]; r5 += a[i + 5]; r6 += a[i + 6]; r7 += a[i + 7]  # noqa: E702
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res += a[i]
        i += 1
    return res


@njit(cache=True, nogil=True, error_model="numpy")
def _chunk_profiles_kernel(image, variance, mask, n_chunks, pairs, out):  # pragma: no cover
    """Compiled body of :func:`chunk_profiles`: per chunk, medians by a sorting network over all
    rows at once (bad pixels +inf, sorted last), then the clipped mean."""
    n_rows = image.shape[0]
    width = image.shape[1] // n_chunks
    has_var, has_mask = variance.shape[0] > 0, mask.shape[0] > 0
    buf = np.empty((width, n_rows))
    vbuf = np.empty((width, n_rows))
    n_valid = np.empty(n_rows, np.int64)
    med = np.empty(n_rows)
    var = np.empty(n_rows)
    vals = np.empty(width)
    for k in range(n_chunks):
        c0 = k * width
        for r in range(n_rows):
            n = 0
            for c in range(width):
                v = np.float64(image[r, c0 + c])
                bad = not np.isfinite(v) or (has_mask and mask[r, c0 + c])
                buf[c, r] = np.inf if bad else v
                if has_var:
                    vbuf[c, r] = np.inf if bad else np.float64(variance[r, c0 + c])
                n += not bad
            n_valid[r] = n
        sort_lanes(buf, pairs)
        if has_var:
            sort_lanes(vbuf, pairs)
        for r in range(n_rows):
            n = n_valid[r]
            if n == 0:
                med[r] = var[r] = np.nan
                continue
            med[r] = 0.5 * (buf[(n - 1) // 2, r] + buf[n // 2, r])
            var[r] = (0.5 * (vbuf[(n - 1) // 2, r] + vbuf[n // 2, r]) if has_var
                      else np.abs(med[r]) + 10.0)
        for r in range(n_rows):
            w = 1.0 if np.isnan(var[r]) else var[r]  # np.nan_to_num(var, nan=1.0)
            tol = 6.0 * np.sqrt(max(w, 1.0)) + 0.15 * np.abs(med[r])
            lo, hi = med[r] - tol, med[r] + tol
            n = 0
            for c in range(width):
                v = np.float64(image[r, c0 + c])
                bad = not np.isfinite(v) or (has_mask and mask[r, c0 + c])
                good = not bad and v >= lo and v <= hi
                vals[c] = v if good else 0.0
                n += good
            out[k, r] = _pairwise_sum(vals) / n


def chunk_profiles(image: np.ndarray, variance: np.ndarray | None, mask: np.ndarray | None,
                   n_chunks: int) -> tuple[np.ndarray, np.ndarray]:
    """Robust mean of each row over column chunks: ``(profiles (n_chunks, n_rows), centres)``.

    Pixels masked or more than 6 sigma (+15%) from the chunk-row median are left out; rows with
    no usable pixel are NaN.  The last ``n_cols % n_chunks`` columns are not used.
    """
    n_rows, n_cols = image.shape
    width = n_cols // n_chunks
    out = np.empty((n_chunks, n_rows))
    _chunk_profiles_kernel(
        np.asarray(image), np.zeros((0, 0)) if variance is None else np.asarray(variance),
        np.zeros((0, 0), bool) if mask is None else np.asarray(mask, dtype=bool), n_chunks,
        sorting_network(width), out,
    )
    return out, np.arange(n_chunks) * width + 0.5 * (width - 1)


def chunk_positions(trace: np.ndarray, n_chunks: int) -> np.ndarray:
    """Mean trace row of every fiber over each column chunk (as ``chunk_profiles``):
    (n_chunks, n_fibers)."""
    width = trace.shape[1] // n_chunks
    return trace[:, :width * n_chunks].reshape(trace.shape[0], n_chunks, width).mean(-1).T
