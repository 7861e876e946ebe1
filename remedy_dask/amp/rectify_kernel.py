"""Compiled core of :func:`remedy_dask.amp.rectify.rectify`: one pass per fiber.

The arithmetic of the vectorised version, operation for operation (cumulative sums from the
first pixel, the input pixel of every output edge found among the fiber's edges lifted by the
same offset, the same products and sums in the same order), so the results are bit-identical;
no full-size temporaries (the numpy version built ~20 of them).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _locate_bins(edges, k, out_edges, lift, base, p, frac):  # pragma: no cover - compiled
    """For fiber ``k``: ``p[j]``, the pixel holding output edge j, and ``frac[j]``, the edge's
    fraction across that pixel (clipped to 0..1), by one merge of the increasing queries with
    the pixel edges lifted by ``lift`` (the vectorised version's single search over all fibers,
    whose rounding this reproduces); ``base`` is scratch of m + 1."""
    m = edges.shape[1] - 1
    e0 = edges[k, 0]
    for i in range(m + 1):
        base[i] = (edges[k, i] - e0) + lift
    i = 0
    for j in range(out_edges.size):
        q = (out_edges[j] - e0) + lift
        while i < m + 1 and base[i] <= q:
            i += 1
        pj = min(max(i - 1, 0), m - 1)
        lo = edges[k, pj]
        hi = edges[k, pj + 1]
        p[j] = pj
        frac[j] = min(max((out_edges[j] - lo) / (hi - lo), 0.0), 1.0)


@njit(cache=True, nogil=True)
def rectify_fibers(spec, err, bad, edges, good_fiber, out_edges, span, flux, sigma, out_mask
                   ):  # pragma: no cover - compiled
    """Fill ``flux``, ``sigma`` (e-/A, NaN where masked) and ``out_mask`` (n, n_out) from the
    spectra ``spec``, errors ``err``, bad pixels ``bad`` (n, m) and pixel ``edges`` (n, m + 1,
    finite and increasing; placeholders for fibers not ``good_fiber``).  ``span`` is the lift
    between fibers of the vectorised version's single search (results depend on it only
    through rounding, which is reproduced)."""
    n, m = spec.shape
    n_out = out_edges.size - 1
    cf = np.empty(m + 1)
    cv = np.empty(m + 1)
    cb = np.empty(m + 1, np.int64)
    f = np.empty(m)
    v = np.empty(m)
    base = np.empty(m + 1)
    p = np.empty(n_out + 1, np.int64)
    frac = np.empty(n_out + 1)
    for k in range(n):
        cf[0] = 0.0
        cv[0] = 0.0
        cb[0] = 0
        for i in range(m):
            b = bad[k, i]
            f[i] = 0.0 if b else spec[k, i]
            v[i] = 0.0 if b else err[k, i] * err[k, i]
            cf[i + 1] = cf[i] + f[i]
            cv[i + 1] = cv[i] + v[i]
            cb[i + 1] = cb[i] + (1 if b else 0)
        _locate_bins(edges, k, out_edges, k * 4.0 * span, base, p, frac)
        first, last = edges[k, 0], edges[k, m]
        for j in range(n_out):
            pa, pb = p[j], p[j + 1]
            fa, fb = frac[j], frac[j + 1]
            below_a = cf[pa] + fa * f[pa]
            below_b = cf[pb] + fb * f[pb]
            flux_j = below_b - below_a
            if pa == pb:
                d = fb - fa
                var = d * d * v[pa]
                touched = bad[k, pa] and fb > fa
            else:
                inner = min(pa + 1, pb)
                ga = 1 - fa
                var = ga * ga * v[pa] + fb * fb * v[pb] + (cv[pb] - cv[inner])
                touched = ((bad[k, pa] and fa < 1) or (bad[k, pb] and fb > 0)
                           or (cb[pb] - cb[inner]) > 0)
            covered = out_edges[j] >= first and out_edges[j + 1] <= last
            masked = touched or not covered or not good_fiber[k]
            width = out_edges[j + 1] - out_edges[j]
            out_mask[k, j] = masked
            flux[k, j] = np.nan if masked else flux_j / width
            sigma[k, j] = np.nan if masked else np.sqrt(var) / width


@njit(cache=True, nogil=True, error_model="numpy")  # 0 / 0 -> NaN, as numpy
def adjacent_correlation_fibers(v, edges, good_fiber, out_edges, span, rho
                                ):  # pragma: no cover - compiled
    """Fill ``rho`` (n, n_out - 1) with the correlation of neighbouring output bins from the
    pixel variances ``v`` (n, m, finite) and pixel ``edges`` (as :func:`rectify_fibers`): the
    arithmetic of the vectorised :func:`remedy_dask.amp.rectify.adjacent_correlation`
    operation for operation (the bins' errors as ``rectify`` propagates ``sqrt(v)``, the
    shared pixel's weights, the same order of products), so the results are bit-identical."""
    n, m = v.shape
    n_out = out_edges.size - 1
    cv = np.empty(m + 1)
    vv = np.empty(m)
    base = np.empty(m + 1)
    p = np.empty(n_out + 1, np.int64)
    frac = np.empty(n_out + 1)
    sig = np.empty(n_out)
    for k in range(n):
        cv[0] = 0.0
        for i in range(m):
            s = np.sqrt(v[k, i])
            vv[i] = s * s
            cv[i + 1] = cv[i] + vv[i]
        _locate_bins(edges, k, out_edges, k * 4.0 * span, base, p, frac)
        first, last = edges[k, 0], edges[k, m]
        for j in range(n_out):
            pa, pb = p[j], p[j + 1]
            fa, fb = frac[j], frac[j + 1]
            if pa == pb:
                d = fb - fa
                var = d * d * vv[pa]
            else:
                inner = min(pa + 1, pb)
                ga = 1 - fa
                var = ga * ga * vv[pa] + fb * fb * vv[pb] + (cv[pb] - cv[inner])
            covered = out_edges[j] >= first and out_edges[j + 1] <= last
            width = out_edges[j + 1] - out_edges[j]
            sig[j] = np.sqrt(var) / width if covered and good_fiber[k] else np.nan
        for j in range(n_out - 1):
            a = frac[j + 1]
            pc = p[j + 1]
            w_j = a - frac[j] if p[j] == pc else a
            w_k = frac[j + 2] - a if p[j + 2] == pc else 1 - a
            wa = out_edges[j + 1] - out_edges[j]
            wb = out_edges[j + 2] - out_edges[j + 1]
            cov = w_j * w_k * v[k, pc] / (wa * wb)
            rho[k, j] = cov / (sig[j] * sig[j + 1])
