"""Compiled core of :func:`remedy_dask.observation.detect.matched_filter._psf_matrices`: the
sparse PSF weights of the grid points' fiber pairs for one shift, in one pass per shift.

The arithmetic of the vectorised version operation for operation (squared distances of the
shifted pairs, the cutoff, the square root, the linear lookup of the tabulated PSF by index and
the cast to float32), so the matrices are bit-identical.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def shifted_weights(i, j, dx0, dy0, row_of_pair, sx, sy, cutoff2, step, n_r, table, slope,
                    r_max, n_points):  # pragma: no cover - compiled
    """CSR (values float32, column indices, row pointers) of the pairs (``i`` point, ``j`` fiber,
    sorted by point) whose distance after the shift (``sx``, ``sy``) is within the cutoff:
    ``table[k] + slope[k] * t`` at ``r / step = k + t`` (row ``row_of_pair`` of the per-exposure
    tables), 0 beyond that table's ``r_max``."""
    n = i.size
    counts = np.zeros(n_points + 1, np.int64)
    for q in range(n):
        a = dx0[q] + sx
        b = dy0[q] + sy
        if a * a + b * b <= cutoff2:
            counts[i[q] + 1] += 1
    indptr = np.cumsum(counts)
    values = np.empty(indptr[-1], np.float32)
    columns = np.empty(indptr[-1], j.dtype)
    k_out = 0
    for q in range(n):
        a = dx0[q] + sx
        b = dy0[q] + sy
        r2 = a * a + b * b
        if r2 <= cutoff2:
            r = np.sqrt(r2)
            t = r / step
            k = min(np.intp(t), n_r - 2)
            t -= k
            e = row_of_pair[q]
            k += e * n_r
            val = table[k] + slope[k] * t
            values[k_out] = np.float32(0.0 if r > r_max[e] else val)
            columns[k_out] = j[q]
            k_out += 1
    return values, columns, indptr


@njit(cache=True, nogil=True)
def add_weighted_sums(indptr, columns, weights, a, b, lo, num, den):  # pragma: no cover
    """``num[:, lo:lo + w] += W @ a`` and ``den[:, lo:lo + w] += W**2 @ b`` for the CSR matrix
    ``W`` (float32, as ``scipy.sparse`` computes them: each row's products summed in float32 in
    the order of its entries, then added), without the products' temporaries."""
    width = a.shape[1]
    tn = np.empty(width, np.float32)
    td = np.empty(width, np.float32)
    for p in range(indptr.size - 1):
        tn[:] = 0.0
        td[:] = 0.0
        for q in range(indptr[p], indptr[p + 1]):
            j = columns[q]
            wq = weights[q]
            w2 = wq * wq
            for k in range(width):
                tn[k] += wq * a[j, k]
                td[k] += w2 * b[j, k]
        for k in range(width):
            num[p, lo + k] += tn[k]
            den[p, lo + k] += td[k]
