"""Compiled loops of the scattered-light model (:mod:`remedy_dask.amp.scatter`): distances of
the rows to the fibers, the fibers' core light, the model on the chunk grid and at every column.

Each does the arithmetic of the array expression it replaces in the same order (results
bit-identical), in one pass without the temporaries of the (n_kernels, n_chunks, n_rows) arrays.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_BIG = np.finfo(np.float64).max  # np.nan_to_num of +inf


@njit(cache=True, nogil=True)
def fiber_distances(spos, n_rows, above, dmin):  # pragma: no cover - compiled
    """For the positions ``spos`` sorted per chunk (n_chunks, n_fib): above[j, r] = number of
    fibers with floor(pos) + 1 <= r (fibers below row r), dmin[j, r] = distance of row r to the
    nearest fiber (inf without fibers)."""
    n_chunks, n_fib = spos.shape
    for j in range(n_chunks):
        f = 0
        for r in range(n_rows):
            while f < n_fib and min(max(np.floor(spos[j, f]) + 1.0, 0.0), n_rows) <= r:
                f += 1
            above[j, r] = f
            below = np.abs(r - spos[j, f - 1]) if f > 0 else np.inf
            upper = np.abs(r - spos[j, f]) if f < n_fib else np.inf
            dmin[j, r] = min(below, upper)


@njit(cache=True, nogil=True)
def core_light(profiles, background, rows0, half, out):  # pragma: no cover - compiled
    """out[j, f] = sum of (profiles - background)[j, clip(rows0[j, f] + i)], i = -half..half,
    NaN counted 0 (summed in that order)."""
    n_chunks, n_rows = profiles.shape
    for j in range(n_chunks):
        for f in range(rows0.shape[1]):
            s = 0.0
            for i in range(-half, half + 1):
                r = min(max(rows0[j, f] + i, 0), n_rows - 1)
                v = profiles[j, r] - background[j, r]
                v = 0.0 if np.isnan(v) else (min(max(v, -_BIG), _BIG))
                s = v if i == -half else s + v
            out[j, f] = s


@njit(cache=True, nogil=True)
def chunk_model(coarse, coef, lo, fr, xu, yu, out):  # pragma: no cover - compiled
    """out[j, r] = sum_k coef[k] T_k[j, r] + coef[n_t] + coef[n_t + 1] xu[j] + coef[n_t + 2]
    yu[r], the templates T_k interpolated linearly between coarse rows lo[r] and lo[r] + 1
    (weight fr[r] of the upper)."""
    n_t, n_chunks = coarse.shape[0], coarse.shape[1]
    n_rows = lo.size
    for j in range(n_chunks):
        for r in range(n_rows):
            s = 0.0
            for k in range(n_t):
                t = coarse[k, j, lo[r]] * (1.0 - fr[r]) + coarse[k, j, lo[r] + 1] * fr[r]
                s = coef[k] * t if k == 0 else s + coef[k] * t
            out[j, r] = s + coef[n_t] + coef[n_t + 1] * xu[j] + coef[n_t + 2] * yu[r]


@njit(cache=True, nogil=True)
def interpolate_columns(chunk_rows, idx, t, image, subtract):  # pragma: no cover - compiled
    """m[r, c] = chunk_rows[r, idx[c]] (1 - t[c]) + chunk_rows[r, idx[c] + 1] t[c]: the
    (n_rows, n_chunks) chunk model linearly interpolated to every column; returns m, or
    image - m (float64) when ``subtract`` (one pass over the image)."""
    n_rows, n_cols = chunk_rows.shape[0], idx.size
    out = np.empty((n_rows, n_cols))
    for r in range(n_rows):
        row = chunk_rows[r]
        if subtract:
            img = image[r]
            for c in range(n_cols):
                out[r, c] = np.float64(img[c]) - (row[idx[c]] * (1.0 - t[c])
                                                  + row[idx[c] + 1] * t[c])
        else:
            for c in range(n_cols):
                out[r, c] = row[idx[c]] * (1.0 - t[c]) + row[idx[c] + 1] * t[c]
    return out


@njit(cache=True, nogil=True)
def light_map(pos, amp, n_rows, out):  # pragma: no cover - compiled
    """out (n_chunks, n_rows) = amplitudes ``amp`` deposited at rows ``pos`` split linearly
    between the two nearest rows (sums in the order of np.bincount over the fibers)."""
    n_chunks, n_fib = pos.shape
    lower = np.zeros((n_chunks, n_rows))
    upper = np.zeros((n_chunks, n_rows))
    for j in range(n_chunks):
        for f in range(n_fib):
            lo = min(max(int(np.floor(pos[j, f])), 0), n_rows - 2)
            frac = min(max(pos[j, f] - lo, 0.0), 1.0)
            lower[j, lo] += amp[j, f] * (1 - frac)
            upper[j, lo + 1] += amp[j, f] * frac
    for j in range(n_chunks):
        for r in range(n_rows):
            out[j, r] = lower[j, r] + upper[j, r] if r > 0 else lower[j, r]


@njit(cache=True, nogil=True)
def wing_columns(dist, amp_near, node0, node_step, n_w, out):  # pragma: no cover - compiled
    """out (n, n_w) = the near fibers' amplitudes on hat functions of their distances (nodes
    node0 + k node_step; beyond the last node nothing), summed as two np.bincount passes (the
    lower nodes' weights, then the upper ones')."""
    n, n_near = dist.shape
    lower = np.zeros(n_w + 1)
    upper = np.zeros(n_w + 1)
    for i in range(n):
        lower[:] = 0.0
        upper[:] = 0.0
        for j in range(n_near):
            x = (dist[i, j] - node0) / node_step
            x = 0.0 if np.isnan(x) else (np.float64(n_w) if x == np.inf else x)
            x = min(max(x, 0.0), np.float64(n_w))
            g = int(np.floor(x))
            frac = x - g
            lower[min(g, n_w)] += amp_near[i, j] * (1 - frac)
            upper[min(g + 1, n_w)] += amp_near[i, j] * frac
        for k in range(n_w):
            out[i, k] = (0.0 + lower[k]) + upper[k]
