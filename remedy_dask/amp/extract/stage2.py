"""Compiled stage-2 pieces of the optimal extraction (:mod:`remedy_dask.amp.extract.kernels`):
the column's bad pixels, the model from the stage-1 fluxes, the cosmic-ray track test, the
weights and the stored results.  Profile weight lost to bad rows is summed over a sorted list
of those rows (``rows``, ``n_list``), in ascending row order as a scan of the window would.

Note: numba's cache does not notice changes here (or in ``column.py``) in the caller compiled
in ``kernels.py``: after editing, delete ``amp/extract/__pycache__/*.nbi|nbc``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# Array indices in the hot loops are cast to unsigned: numba then drops its negative-index
# wrap-around checks.
_U = np.uint64


@njit(cache=True, nogil=True, error_model="numpy")
def list_rows(flag, rmin, rmax, rows):  # pragma: no cover - compiled
    """Rows r of rmin..rmax with ``flag[r]`` into ``rows`` (ascending); returns how many."""
    n = 0
    for r in range(_U(rmin), _U(rmax + 1)):
        if flag[r]:
            rows[n] = r
            n += 1
    return n


@njit(cache=True, nogil=True, error_model="numpy")
def window_loss(prof_s, k, lo, n, rows, n_list, start):  # pragma: no cover - compiled
    """Profile weight of fiber k on the listed rows inside its window [lo, lo + n), summed in
    ascending row order; ``start``: a list index at or before the window's first listed row
    (windows start at non-decreasing rows).  Returns (weight, index of that first row)."""
    while start < n_list and rows[start] < lo:
        start += 1
    gone = 0.0
    i = start
    while i < n_list and rows[i] < lo + n:
        gone += prof_s[k, rows[i] - lo]
        i += 1
    return gone, start


@njit(cache=True, nogil=True, error_model="numpy")
def stage2_bad(bad, rejected, c2, rmin, rmax, n_rej, dilate, n_cols, n_rows, badc, grow
               ):  # pragma: no cover - compiled
    """Stage-2 bad pixels of column c2: the mask, stage-1 outliers and, with ``dilate``, pixels
    next to an outlier (marked 2 in ``rejected``).  Returns (any pixel stage 1 did not have
    bad, number of bad pixels).  ``grow`` is scratch of one column."""
    near = False
    for cc in range(max(c2 - 1, 0), min(c2 + 2, n_cols)):
        near = near or n_rej[cc] > 0
    use_grow = dilate and near
    if not use_grow:  # no pixel is grown: bad = mask | outlier, nothing to mark
        n_bad = 0
        bad_c, rej_c = bad[c2], rejected[c2]
        for r in range(_U(rmin), _U(rmax + 1)):
            b = bad_c[r] | (rej_c[r] == 1)
            badc[r] = b
            n_bad += b
        return False, n_bad
    if use_grow:  # rows within one pixel of an outlier in columns c2 - 1 .. c2 + 1
        for r in range(_U(rmin), _U(rmax + 1)):
            grow[r] = False
        for cc in range(max(c2 - 1, 0), min(c2 + 2, n_cols)):
            rej_c = rejected[cc]
            for rr in range(max(rmin - 1, 0), min(rmax + 2, n_rows)):
                if rej_c[rr] == 1:
                    for r in range(max(rr - 1, rmin), min(rr + 2, rmax + 1)):
                        grow[r] = True
    changed = False
    n_bad = 0
    for r in range(_U(rmin), _U(rmax + 1)):
        b = bad[c2, r] or rejected[c2, r] == 1
        if use_grow and not b and grow[r]:
            b = True
            changed = True
        badc[r] = b
        if b:
            n_bad += 1
            if not bad[c2, r] and rejected[c2, r] == 0:
                rejected[c2, r] = 2  # grown around an outlier
    return changed, n_bad


@njit(cache=True, nogil=True, error_model="numpy")
def flux_model(flux1, c2, n_cols, smooth_variance, prof_s, r0_s, nr_s, rmin, rmax, sg, fvk,
               vflux):  # pragma: no cover - compiled
    """Model of column c2 from the stage-1 fluxes (smoothed along the wavelength, Savitzky-Golay
    ``sg``, away from the edges): per fiber ``fvk``, per row ``vflux``."""
    nf = flux1.shape[0]
    smooth = smooth_variance and c2 >= 2 and c2 <= n_cols - 3
    for r in range(_U(rmin), _U(rmax + 1)):
        vflux[r] = 0.0
    for kk in range(nf):
        k = _U(kk)
        fv = flux1[k, c2]
        if smooth:
            fv = 0.0
            for j in range(5):
                fv += sg[j] * flux1[k, c2 - 2 + j]
        fvk[k] = fv
        lo = _U(r0_s[k])
        for m in range(_U(nr_s[k])):
            vflux[lo + m] += fv * prof_s[k, m]


@njit(cache=True, nogil=True, error_model="numpy")
def _insert_row(rows, n_list, r):  # pragma: no cover - compiled
    """Insert row r into the ascending list ``rows`` of ``n_list`` entries; returns the count."""
    i = n_list
    while i > 0 and rows[i - 1] > r:
        rows[i] = rows[i - 1]
        i -= 1
    rows[i] = r
    return n_list + 1


@njit(cache=True, nogil=True, error_model="numpy")
def reject_tracks(data, trace, c2, prof_s, r0_s, nr_s, tot_s, lost1, flux1, fvk, vflux, v0c,
                  badc, rejected_c, rows, n_list, poisson, profile_error, reject_sigma,
                  chi2_half):  # pragma: no cover - compiled
    """A fiber-column that lost much of its profile to outliers may have fitted the rest of a
    cosmic-ray track as signal: test its core against the flux interpolated from the
    neighbouring columns (leave-one-out quadratic through c-2..c+2).  ``rows`` lists the bad
    rows and gets the new ones.  Returns (number of bad rows, whether any was added)."""
    changed = False
    start = 0
    for k in range(flux1.shape[0]):
        lo = r0_s[k]
        gone, start = window_loss(prof_s, k, lo, nr_s[k], rows, n_list, start)
        if max(lost1[k, c2], gone / max(tot_s[k], 1e-300)) <= 0.3:
            continue
        fp = (2.0 / 3.0) * (flux1[k, c2 - 1] + flux1[k, c2 + 1]) - (1.0 / 6.0) * (
            flux1[k, c2 - 2] + flux1[k, c2 + 2]
        )
        for m in range(nr_s[k]):
            r = lo + m
            if badc[r] or abs(r - trace[k, c2]) > chi2_half:
                continue
            pred = vflux[r] + (fp - fvk[k]) * prof_s[k, m]
            mv = max(pred, 0.0)
            v = v0c[r] + (mv if poisson else 0.0) + (profile_error * mv) ** 2
            if (data[r] - pred) > reject_sigma * np.sqrt(v):
                badc[r] = True
                rejected_c[r] = 1
                n_list = _insert_row(rows, n_list, r)
                changed = True
    return n_list, changed


@njit(cache=True, nogil=True, error_model="numpy")
def stage2_weights(badc, cov_s, v0c, vflux, poisson, rmin, rmax, w):  # pragma: no cover
    """Stage-2 weights: 1 / (v0 + model) with ``poisson``, else 1 / v0; 0 on bad rows."""
    for r in range(_U(rmin), _U(rmax + 1)):
        if badc[r] or cov_s[r] <= 0.0:
            w[r] = 0.0
        elif poisson:
            w[r] = 1.0 / (v0c[r] + max(vflux[r], 0.0))
        else:
            w[r] = 1.0 / v0c[r]


@njit(cache=True, nogil=True, error_model="numpy")
def store_column(c2, f, zb, data, model, vflux, v0c, badc, rows, n_list, prof_s, r0_s, nr_s,
                 tot_s, trace, poisson, profile_error, chi2_half, flux, var_out, chi2, lost
                 ):  # pragma: no cover - compiled
    """Final flux, variance, lost profile fraction and reduced chi^2 (over the core within
    ``chi2_half`` of the trace) of every fiber of column c2; NaN where the profile is lost.
    ``rows`` lists the column's bad rows."""
    start = 0
    for kk in range(f.shape[0]):
        k = _U(kk)
        flux[k, c2] = f[k]
        var_out[k, c2] = zb[k, 0]
        lo = r0_s[k]
        n = nr_s[k]
        gone, start = window_loss(prof_s, k, lo, n, rows, n_list, start)
        t = trace[k, c2]
        csum = 0.0
        nchi = 0
        core_lo = max(lo, int(np.ceil(t - chi2_half)))
        core_hi = min(lo + n - 1, int(np.floor(t + chi2_half)))
        for r in range(_U(core_lo), _U(max(core_hi + 1, core_lo))):
            if badc[r]:
                continue
            mv = max(model[r], 0.0)
            v = v0c[r] + (max(vflux[r], 0.0) if poisson else 0.0)
            res = data[r] - model[r]
            csum += res * res / (v + (profile_error * mv) ** 2)
            nchi += 1
        total = tot_s[k]
        lost[k, c2] = gone / total if total > 0.0 else 1.0
        chi2[k, c2] = csum / (nchi - 1) if nchi > 1 else np.nan
        if total <= 0.0 or gone >= total:
            flux[k, c2] = np.nan
            var_out[k, c2] = np.nan
