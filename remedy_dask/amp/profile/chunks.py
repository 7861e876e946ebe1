"""Column-chunk cross-sections of an oriented amp image: robust row profiles of column chunks
(:func:`chunk_profiles`) and the trace at each chunk's centre (:func:`chunk_positions`), what
the trace's fiber model (:mod:`remedy_dask.amp.profile.fibermodel`) and the scattered light
(:mod:`remedy_dask.amp.scatter`) fit.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from remedy_dask.numeric.sortnet import selection_network, sort_lanes, sorting_network


@njit(cache=True, nogil=True)
def _pairwise_lanes(vals, acc, out):  # pragma: no cover - compiled
    """out[j] = sum over i of vals[i, j] (n <= 128 values, NaN counted 0) for every lane j, in
    numpy's pairwise order (what ``np.sum`` of a short 1-D array does: 8 partial sums)."""
    n, n_lanes = vals.shape
    if n < 8:
        out[:] = 0.0
        for i in range(n):
            for j in range(n_lanes):
                v = vals[i, j]
                out[j] += 0.0 if np.isnan(v) else np.float64(v)
        return
    for i in range(8):
        for j in range(n_lanes):
            v = vals[i, j]
            acc[i, j] = 0.0 if np.isnan(v) else np.float64(v)
    for i in range(8, n - n % 8):
        for j in range(n_lanes):
            v = vals[i, j]
            acc[i % 8, j] += 0.0 if np.isnan(v) else np.float64(v)
    for j in range(n_lanes):
        out[j] = ((acc[0, j] + acc[1, j]) + (acc[2, j] + acc[3, j])) + (
            (acc[4, j] + acc[5, j]) + (acc[6, j] + acc[7, j]))
    for i in range(n - n % 8, n):
        for j in range(n_lanes):
            v = vals[i, j]
            out[j] += 0.0 if np.isnan(v) else np.float64(v)


@njit(cache=True, nogil=True, error_model="numpy")
def _chunk_profiles_kernel(image, variance, mask, n_chunks, pairs, mid_pairs,
                           out):  # pragma: no cover - compiled
    """Compiled body of :func:`chunk_profiles`: per chunk, the pixels transposed (rows as SIMD
    lanes, in the image's precision: sorting and sums see the same values), medians by a
    sorting network over all rows at once (bad pixels +inf, sorted last; ``mid_pairs`` only
    places the middle values, enough when every row has at most one bad pixel), then the
    clipped mean (pixels out of the clip or bad are NaN, counted 0)."""
    n_rows = image.shape[0]
    width = image.shape[1] // n_chunks
    has_var, has_mask = variance.shape[0] > 0, mask.shape[0] > 0
    buf = np.empty((width, n_rows), image.dtype)
    vals = np.empty((width, n_rows), image.dtype)
    vbuf = np.empty((width, n_rows), variance.dtype)
    acc = np.empty((8, n_rows))
    n_valid = np.empty(n_rows, np.int64)
    med = np.empty(n_rows)
    var = np.empty(n_rows)
    lo = np.empty(n_rows)
    hi = np.empty(n_rows)
    for k in range(n_chunks):
        c0 = k * width
        few_bad = True
        for r in range(n_rows):
            n = 0
            for c in range(width):
                v = image[r, c0 + c]
                bad = not np.isfinite(v) or (has_mask and mask[r, c0 + c])
                vals[c, r] = np.nan if bad else v
                if has_var:
                    vbuf[c, r] = np.inf if bad else variance[r, c0 + c]
                n += not bad
            n_valid[r] = n
            few_bad &= n >= width - 1
        for c in range(width):  # (contiguous: cheaper than a second transposed write)
            for r in range(n_rows):
                v = vals[c, r]
                buf[c, r] = np.inf if np.isnan(v) else v
        network = mid_pairs if few_bad else pairs
        sort_lanes(buf, network)
        if has_var:
            sort_lanes(vbuf, network)
        for r in range(n_rows):
            n = n_valid[r]
            if n == 0:
                med[r] = var[r] = np.nan
                continue
            med[r] = 0.5 * (np.float64(buf[(n - 1) // 2, r]) + np.float64(buf[n // 2, r]))
            var[r] = (0.5 * (np.float64(vbuf[(n - 1) // 2, r]) + np.float64(vbuf[n // 2, r]))
                      if has_var else np.abs(med[r]) + 10.0)
        for r in range(n_rows):
            w = 1.0 if np.isnan(var[r]) else var[r]  # np.nan_to_num(var, nan=1.0)
            tol = 6.0 * np.sqrt(max(w, 1.0)) + 0.15 * np.abs(med[r])
            lo[r], hi[r] = med[r] - tol, med[r] + tol
            n_valid[r] = 0
        for c in range(width):
            for r in range(n_rows):
                v = vals[c, r]
                good = v >= lo[r] and v <= hi[r]  # (False for NaN: bad pixels)
                vals[c, r] = v if good else np.nan
                n_valid[r] += good
        _pairwise_lanes(vals, acc, med)
        for r in range(n_rows):
            out[k, r] = med[r] / n_valid[r]


def _floating(values: np.ndarray) -> np.ndarray:
    """``values`` as float32 or float64 (other types as float64: exact for the pixel values)."""
    values = np.asarray(values)
    return values if values.dtype in (np.float32, np.float64) else values.astype(np.float64)


def _middle_positions(width: int) -> tuple[int, ...]:
    """Where the medians of ``width`` or ``width - 1`` values (one bad one sorted last) are."""
    return tuple(sorted({max((width - 2) // 2, 0), (width - 1) // 2, width // 2}))


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
        _floating(image), np.zeros((0, 0)) if variance is None else _floating(variance),
        np.zeros((0, 0), bool) if mask is None else np.asarray(mask, dtype=bool), n_chunks,
        sorting_network(width), selection_network(width, _middle_positions(width)), out,
    )
    return out, np.arange(n_chunks) * width + 0.5 * (width - 1)


def chunk_positions(trace: np.ndarray, n_chunks: int) -> np.ndarray:
    """Mean trace row of every fiber over each column chunk (as ``chunk_profiles``):
    (n_chunks, n_fibers)."""
    width = trace.shape[1] // n_chunks
    return trace[:, :width * n_chunks].reshape(trace.shape[0], n_chunks, width).mean(-1).T
