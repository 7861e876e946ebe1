"""Compiled fiber profiles of one column for the optimal extraction
(:mod:`remedy_dask.amp.extract.kernels`), from the tables of
:class:`remedy_dask.amp.profile.model.ProfileModel`.

The rows of a fiber's window lie ``per_pixel`` grid steps apart, so a window reads the tables
at one sub-pixel phase with stride ``per_pixel``.  :func:`phase_tables` rearranges the tables
once per amp by phase, so that a window's table values are contiguous; a column then
interpolates those rearranged tables between its two chunks, and every fiber interpolates in
offset and fiber group over contiguous runs.  The arithmetic is that of interpolating the
tables directly (same operations, same order), so the profile values are identical.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# Array indices in the hot loops are cast to unsigned: numba then drops its negative-index
# wrap-around checks.
_U = np.uint64


@njit(cache=True, nogil=True, error_model="numpy")
def phase_tables(tables, per_pixel, nwin):  # pragma: no cover - compiled
    """``out[ic, g, e, ph, m] = tables[ic, g, ph + m * per_pixel + e]`` (e = 0, 1: both ends
    of an interpolation interval), 0 where that interval leaves the grid."""
    nchunk, ngroup, ngrid = tables.shape
    out = np.zeros((nchunk, ngroup, 2, per_pixel, nwin))
    for ic in range(nchunk):
        for g in range(ngroup):
            for ph in range(per_pixel):
                for m in range(nwin):
                    i = ph + m * per_pixel
                    if i + 1 <= ngrid - 1:
                        out[ic, g, 0, ph, m] = tables[ic, g, i]
                        out[ic, g, 1, ph, m] = tables[ic, g, i + 1]
    return out


@njit(cache=True, nogil=True, error_model="numpy")
def _column_tables(c, ptab, chunk_centers, tph):  # pragma: no cover - compiled
    """The phase tables of column c: linear in column between its two chunk centres."""
    nchunk = chunk_centers.size
    ic = 0
    while ic < nchunk - 2 and chunk_centers[ic + 1] <= c:
        ic += 1
    wc = (c - chunk_centers[ic]) / (chunk_centers[ic + 1] - chunk_centers[ic])
    wc = min(max(wc, 0.0), 1.0)
    a = ptab[ic].ravel()
    b = ptab[ic + 1].ravel()
    out = tph.ravel()
    for i in range(_U(out.size)):
        out[i] = (1.0 - wc) * a[i] + wc * b[i]


@njit(cache=True, nogil=True, error_model="numpy")
def _clipped_window(tph, g0, wg, i0, fx, n, per_pixel, ngrid, prof, k):  # pragma: no cover
    """Profile of fiber k on its n window rows, the first at grid position i0 + fx, for
    windows not starting at a phase (clipped by the chip's edge)."""
    for m in range(n):
        i = i0 + m * per_pixel
        if i < 0 or i + 1 > ngrid - 1:
            prof[k, m] = 0.0
            continue
        ph, mm = i % per_pixel, i // per_pixel
        a0 = tph[g0, 0, ph, mm] * (1.0 - fx) + tph[g0, 1, ph, mm] * fx
        a1 = tph[g0 + 1, 0, ph, mm] * (1.0 - fx) + tph[g0 + 1, 1, ph, mm] * fx
        prof[k, m] = (1.0 - wg) * a0 + wg * a1


@njit(cache=True, nogil=True, error_model="numpy")
def _windows(c, trace, grid0, step, half_width, n_rows, nwin, r0, nr, i0s, fxs
             ):  # pragma: no cover - compiled
    """First row ``r0``, length ``nr`` and first grid position (``i0s`` + ``fxs``) of every
    fiber's window at column c; returns (rmin, rmax), rmax < 0 if no fiber is on the chip.
    A loop of its own: the fibers' chains of dependent operations (division, rounding)
    overlap."""
    rmin = n_rows
    rmax = -1
    for kk in range(trace.shape[0]):
        k = _U(kk)
        t = trace[k, c]
        lo = max(int(np.ceil(t - half_width)), 0)
        hi = min(int(np.floor(t + half_width)), n_rows - 1)
        n = min(max(hi - lo + 1, 0), nwin)
        r0[k] = lo
        nr[k] = n
        x0 = (lo - t - grid0) / step  # grid position of the first window row
        i0 = int(np.floor(x0))
        i0s[k] = i0
        fxs[k] = x0 - i0
        if n > 0:
            rmin = min(rmin, lo)
            rmax = max(rmax, lo + n - 1)
    return rmin, rmax


@njit(cache=True, nogil=True, error_model="numpy")
def column_profile(
    c, trace, ptab, chunk_centers, fiber_group, fiber_gweight, grid0, step, half_width,
    n_rows, ngrid, tph, i0s, fxs, prof, r0, nr, tot, cov,
):  # pragma: no cover - compiled
    """Profile of every fiber on its window of rows at column ``c`` (``ptab`` from
    :func:`phase_tables`, ``tph`` scratch of ``ptab[0]``'s shape, ``i0s`` and ``fxs`` scratch
    per fiber), its sum ``tot`` per fiber and the coverage ``cov`` per row (sum over fibers,
    rows rmin..rmax); returns (rmin, rmax), rmax < 0 if no fiber falls on the chip."""
    nf = trace.shape[0]
    per_pixel = int(round(1.0 / step))
    _column_tables(c, ptab, chunk_centers, tph)
    rmin, rmax = _windows(c, trace, grid0, step, half_width, n_rows, prof.shape[1], r0, nr,
                          i0s, fxs)
    for r in range(_U(rmin), _U(rmax + 1)):
        cov[r] = 0.0
    for kk in range(nf):
        k = _U(kk)
        lo, n, i0, fx = r0[k], nr[k], i0s[k], fxs[k]
        g0 = fiber_group[k]
        wg = fiber_gweight[k]
        if 0 <= i0 < per_pixel:  # the window starts at a phase: contiguous runs
            gx = 1.0 - fx
            hg = 1.0 - wg
            ga, gb, ph = _U(g0), _U(g0 + 1), _U(i0)
            for m in range(_U(n)):
                a0 = tph[ga, 0, ph, m] * gx + tph[ga, 1, ph, m] * fx
                a1 = tph[gb, 0, ph, m] * gx + tph[gb, 1, ph, m] * fx
                prof[k, m] = hg * a0 + wg * a1
        else:
            _clipped_window(tph, g0, wg, i0, fx, n, per_pixel, ngrid, prof, k)
        total = 0.0
        for m in range(_U(n)):
            pv = prof[k, m]
            total += pv
            cov[_U(lo) + m] += pv
        tot[k] = total
    return rmin, rmax
