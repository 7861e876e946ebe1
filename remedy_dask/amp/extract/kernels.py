"""Compiled kernels of the optimal extraction (:mod:`remedy_dask.amp.extract.optimal`).

Images enter the amp kernel *transposed* ([column, row]) so that a column is contiguous.  The
non-signal variance ``v0`` is given on blocks of ``block`` x ``block`` pixels ([column block,
row block]; block 1 for a per-pixel variance).  All kernels are ``nogil`` (threads of a Dask
worker can overlap them).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from remedy_dask.amp.extract.column import (
    any_outlier, band_inverse_diagonal, fill_column, fit_column, reject_outside,
)
from remedy_dask.amp.extract.colprofile import column_profile, phase_tables
from remedy_dask.amp.extract.stage2 import (
    flux_model, list_rows, reject_tracks, stage2_bad, stage2_weights, store_column, window_loss,
)

# Array indices in the hot loops are cast to unsigned: numba then drops its negative-index
# wrap-around checks, which otherwise cost ~25% of the per-column fit.
_U = np.uint64


@njit(cache=True, nogil=True, error_model="numpy")
def _stage1_weights(bad_c, cov_s, inv_v0, block, c, w, rmin, rmax):  # pragma: no cover
    """Stage-1 weights 1 / v0 of column c (``inv_v0``: 1 / v0, blocked as ``v0``; 0 on bad or
    uncovered rows); returns the number of rows of zero weight."""
    ivc = inv_v0[min(c // block, inv_v0.shape[0] - 1)]
    n_blocks = ivc.size
    n_masked = 0
    for rb in range(min(rmin // block, n_blocks - 1), n_blocks):
        first = max(rb * block, rmin)
        last = rmax + 1 if rb == n_blocks - 1 else min((rb + 1) * block, rmax + 1)
        if first >= last:
            break
        value = ivc[rb]
        for r in range(_U(first), _U(last)):
            ok = (not bad_c[r]) and cov_s[r] > 0.0
            w[r] = value if ok else 0.0
            n_masked += 0 if ok else 1
    return n_masked


@njit(cache=True, nogil=True, error_model="numpy")
def _reject_pass(data, model, w, v0c, rmin, rmax, poisson, profile_error, sig2, rel2, z2,
                 rejected_c):  # pragma: no cover - compiled
    """One rejection pass of stage 1: rows whose squared pull exceeds ``sig2`` and ``rel2``
    times the largest within two rows are rejected (``rejected_c`` = 1, weight 0); returns how
    many were."""
    for r in range(_U(rmin), _U(rmax + 1)):  # squared pulls
        if w[r] == 0.0:
            z2[r] = 0.0
            continue
        mv = max(model[r], 0.0)
        v = v0c[r] + (mv if poisson else 0.0) + (profile_error * mv) ** 2
        res = data[r] - model[r]
        z2[r] = res * res / v
    new = 0
    for r in range(rmin, rmax + 1):
        if z2[r] > sig2:
            zmax = 0.0
            for q in range(max(rmin, r - 2), min(rmax, r + 2) + 1):
                zmax = max(zmax, z2[q])
            if z2[r] >= rel2 * zmax:
                rejected_c[r] = 1
                new += 1
    if new > 0:
        for r in range(rmin, rmax + 1):
            if rejected_c[r]:
                w[r] = 0.0
    return new


@njit(cache=True, nogil=True, error_model="numpy")
def _ring_buffers(ring, nf, nwin, n_rows, band):  # pragma: no cover - compiled
    """Per-column state kept for the ``ring`` columns between stage 1 and stage 2: profiles,
    their row ranges and totals, coverage, row limits, the stage-1 solution (reused by
    stage 2 when its weights are unchanged) and v0."""
    prof = np.zeros((ring, nf, nwin))
    r0 = np.zeros((ring, nf), np.int64)
    nr = np.zeros((ring, nf), np.int64)
    tot = np.zeros((ring, nf))
    cov = np.zeros((ring, n_rows))
    rlim = np.zeros((ring, 2), np.int64)
    f1 = np.zeros((ring, nf))
    lb1 = np.zeros((ring, nf, band + 1))
    model1 = np.zeros((ring, n_rows))
    v0_ring = np.zeros((ring, n_rows))
    return prof, r0, nr, tot, cov, rlim, f1, lb1, model1, v0_ring


@njit(cache=True, nogil=True, error_model="numpy")
def _profile_buffers(tables, step, nwin, nf):  # pragma: no cover - compiled
    """The profile tables by phase (:func:`phase_tables`), a column's share of them, window
    positions per fiber, and the weighted profiles of the fit."""
    ptab = phase_tables(tables, int(round(1.0 / step)), nwin)
    return (ptab, np.zeros(ptab.shape[1:]), np.zeros(nf, np.int64), np.zeros(nf),
            np.zeros((nf, nwin)))


@njit(cache=True, nogil=True, error_model="numpy")
def _copy_solution(f_from, lb_from, model_from, f_to, lb_to, model_to, rmin, rmax
                   ):  # pragma: no cover - compiled
    """Fluxes, Cholesky factor and model on rows rmin..rmax from one solution to another."""
    f_to[:] = f_from
    lb_to[:] = lb_from
    for r in range(_U(rmin), _U(rmax + 1)):
        model_to[r] = model_from[r]


@njit(cache=True, nogil=True, error_model="numpy")
def _row_buffers(n_rows):  # pragma: no cover - compiled
    """Per-row work arrays of one column: weights, model, model flux, squared pulls, a
    scratch buffer, bad rows, rows next to an outlier, a list of rows."""
    return (np.zeros(n_rows), np.zeros(n_rows), np.zeros(n_rows),
            np.zeros(n_rows), np.zeros(n_rows), np.zeros(n_rows, np.bool_),
            np.zeros(n_rows, np.bool_), np.zeros(n_rows, np.int64))


@njit(cache=True, nogil=True, error_model="numpy")
def _fiber_buffers(nf, band):  # pragma: no cover - compiled
    """Per-fiber work arrays: banded normal matrix, its Cholesky factor and inverse diagonal,
    right-hand side, intermediate and final solution, model flux."""
    return (np.zeros((nf, band + 1)), np.zeros((nf, band + 1)), np.zeros((nf, band + 1)),
            np.zeros(nf), np.zeros(nf), np.zeros(nf), np.zeros(nf))


@njit(cache=True, nogil=True, error_model="numpy")
def _stage1_fit(data, w, v0c, prof_s, r0_s, nr_s, rmin, rmax, band, nb, lb, rhs, y, f, model,
                wp, z2, rejected_c, do_reject, max_iter, poisson, profile_error, sig2, rel2
                ):  # pragma: no cover - compiled
    """Stage-1 fit of one column, refitted after each rejection pass (at most ``max_iter``);
    returns the number of pixels rejected."""
    n_new = 0
    for it in range(max_iter + 1):
        fit_column(data, w, prof_s, r0_s, nr_s, rmin, rmax, band, nb, lb, rhs, y, f, model, wp)
        if not do_reject or it == max_iter:
            break
        if not any_outlier(data, model, w, v0c, rmin, rmax, poisson, profile_error, sig2):
            break
        new = _reject_pass(data, model, w, v0c, rmin, rmax, poisson, profile_error, sig2, rel2,
                           z2, rejected_c)
        n_new += new
        if new == 0:
            break
    return n_new


@njit(cache=True, nogil=True, error_model="numpy")
def _stage1_lost(w, prof_s, r0_s, nr_s, tot_s, any_zero, rmin, rmax, rows, c, f, flux1, lost1
                 ):  # pragma: no cover - compiled
    """Stage-1 fluxes of column c and the fraction of each fiber's profile on rows of zero
    weight (1 without profile)."""
    n_list = 0
    if any_zero:  # else no profile weight can be lost
        for r in range(_U(rmin), _U(rmax + 1)):
            if w[r] == 0.0:
                rows[n_list] = r
                n_list += 1
    start = 0
    for kk in range(f.shape[0]):
        k = _U(kk)
        flux1[k, c] = f[k]
        gone, start = window_loss(prof_s, k, r0_s[k], nr_s[k], rows, n_list, start)
        lost1[k, c] = gone / tot_s[k] if tot_s[k] > 0.0 else 1.0


@njit(cache=True, nogil=True, error_model="numpy")
def extract_amp(
    image, v0, block, poisson, bad, trace, tables, chunk_centers, fiber_group, fiber_gweight,
    grid0, step, half_width, do_reject, reject_sigma, reject_rel, max_iter, dilate,
    profile_error, chi2_half, band, smooth_variance, flux, var_out, chi2, lost, rejected,
):  # pragma: no cover - compiled
    """Two-stage extraction of a whole amp; ``image``, ``bad``, ``rejected`` are transposed
    ([column, row]), ``v0`` blocked (see the module docstring).

    Stage 1 (column c): fit with weights 1 / v0, reject outliers and refit.  Stage 2 (column
    c - 2, pipelined so that the neighbours' stage-1 results exist): bad pixels = mask +
    rejected pixels dilated by one pixel; weights 1 / (v0 + model) with the model built from
    stage-1 fluxes smoothed along the wavelength (Savitzky-Golay, 5 columns, quadratic) when
    ``poisson``, else 1 / v0 again; final fluxes, errors, chi^2.  Work that cannot change the
    result is skipped: stage 1 entirely without rejection and Poisson weights (stage 2 is the
    same fit), and the stage-2 fit whenever its weights equal those of stage 1.
    """
    n_cols, n_rows = image.shape
    nf = trace.shape[0]
    nwin = int(np.ceil(2.0 * half_width)) + 2
    ring = 3
    prof, r0, nr, tot, cov, rlim, f1, lb1, model1, v0_ring = _ring_buffers(ring, nf, nwin,
                                                                            n_rows, band)
    ptab, tph, i0s, fxs, wp = _profile_buffers(tables, step, nwin, nf)
    w, model, vflux, z2, buf, badc, grow, rows = _row_buffers(n_rows)
    nb, lb, zb, rhs, y, f, fvk = _fiber_buffers(nf, band)
    sg = np.array([-3.0, 12.0, 17.0, 12.0, -3.0]) / 35.0
    n_rej = np.zeros(n_cols, np.int64)
    flux1 = np.zeros((nf, n_cols))
    lost1 = np.zeros((nf, n_cols))
    run_stage1 = do_reject or poisson
    inv_v0 = 1.0 / v0
    sig2 = reject_sigma * reject_sigma
    rel2 = reject_rel * reject_rel
    for cstep in range(n_cols + 2):
        c = cstep
        if c < n_cols:  # ---- stage 1
            s = c % ring
            prof_s, r0_s, nr_s, tot_s, cov_s = prof[s], r0[s], nr[s], tot[s], cov[s]
            data, bad_c, rej_c, v0c = image[c], bad[c], rejected[c], v0_ring[s]
            rmin, rmax = column_profile(
                c, trace, ptab, chunk_centers, fiber_group, fiber_gweight, grid0, step,
                half_width, n_rows, tables.shape[2], tph, i0s, fxs, prof_s, r0_s, nr_s, tot_s,
                cov_s,
            )
            rlim[s, 0] = rmin
            rlim[s, 1] = rmax
            if run_stage1:
                fill_column(v0, block, c, v0c)
            if run_stage1 and rmax >= 0:
                n_masked = _stage1_weights(bad_c, cov_s, inv_v0, block, c, w, rmin, rmax)
                n_rej[c] += _stage1_fit(data, w, v0c, prof_s, r0_s, nr_s, rmin, rmax, band, nb,
                                        lb, rhs, y, f, model, wp, z2, rej_c, do_reject,
                                        max_iter, poisson, profile_error, sig2, rel2)
                _stage1_lost(w, prof_s, r0_s, nr_s, tot_s, n_masked > 0 or n_rej[c] > 0,
                             rmin, rmax, rows, c, f, flux1, lost1)
                if not poisson:  # kept for a stage 2 with the same weights
                    _copy_solution(f, lb, model, f1[s], lb1[s], model1[s], rmin, rmax)
            if do_reject:  # rows outside every fiber window: outliers against their median
                reject_outside(data, v0c, bad_c, rmin, rmax, reject_sigma, rej_c, buf)
        c2 = cstep - 2
        if c2 < 0:
            continue
        s = c2 % ring  # ---- stage 2
        rmin, rmax = rlim[s, 0], rlim[s, 1]
        if rmax < 0:
            continue
        data = image[c2]
        prof_s, r0_s, nr_s, tot_s, cov_s = prof[s], r0[s], nr[s], tot[s], cov[s]
        v0c = v0_ring[s]
        if not run_stage1:  # else filled by stage 1
            fill_column(v0, block, c2, v0c)
        changed, n_bad = stage2_bad(bad, rejected, c2, rmin, rmax, n_rej, dilate, n_cols,
                                    n_rows, badc, grow)
        n_list = list_rows(badc, rmin, rmax, rows) if n_bad > 0 else 0
        if poisson or do_reject:
            flux_model(flux1, c2, n_cols, smooth_variance, prof_s, r0_s, nr_s, rmin, rmax, sg,
                       fvk, vflux)
        if do_reject and c2 >= 2 and c2 <= n_cols - 3:
            n_list, grown = reject_tracks(data, trace, c2, prof_s, r0_s, nr_s, tot_s, lost1,
                                          flux1, fvk, vflux, v0c, badc, rejected[c2], rows,
                                          n_list, poisson, profile_error, reject_sigma, chi2_half)
            changed = changed or grown
        if run_stage1 and not poisson and not changed:  # same weights as stage 1: same fit
            _copy_solution(f1[s], lb1[s], model1[s], f, lb, model, rmin, rmax)
        else:
            stage2_weights(badc, cov_s, v0c, vflux, poisson, rmin, rmax, w)
            fit_column(data, w, prof_s, r0_s, nr_s, rmin, rmax, band, nb, lb, rhs, y, f, model,
                       wp)
        band_inverse_diagonal(lb, zb, band)
        store_column(c2, f, zb, data, model, vflux, v0c, badc, rows, n_list, prof_s, r0_s,
                     nr_s, tot_s, trace, poisson, profile_error, chi2_half, flux, var_out, chi2,
                     lost)


@njit(cache=True, nogil=True, error_model="numpy")
def aperture_sums(image, variance, bad, trace, half_width):  # pragma: no cover - compiled
    """Aperture [t - h, t + h] of every fiber-column (pixels weighted by their overlap with it,
    see :func:`remedy_dask.amp.extract.optimal.aperture_weights`): electrons ``sum w I`` and error
    ``sqrt(sum w^2 var)`` over the good pixels, whether a pixel of non-zero weight is bad, and
    the weight fraction on bad pixels."""
    n_rows, n_cols = image.shape
    nf = trace.shape[0]
    m = int(np.ceil(half_width + 0.5)) * 2 + 1
    spectrum = np.zeros((nf, n_cols))
    error = np.zeros((nf, n_cols))
    any_bad = np.zeros((nf, n_cols), np.bool_)
    lost = np.zeros((nf, n_cols))
    for k in range(nf):
        for c in range(n_cols):
            t = trace[k, c]
            first = int(np.rint(t)) - m // 2
            s = 0.0
            v = 0.0
            w_bad = 0.0
            w_all = 0.0
            flagged = False
            for j in range(m):
                r = first + j
                wt = min(max(min(r + 0.5, t + half_width) - max(r - 0.5, t - half_width), 0.0), 1.0)
                if r < 0 or r >= n_rows:
                    wt = 0.0
                rc = min(max(r, 0), n_rows - 1)
                if bad[rc, c] and wt > 0.0:
                    flagged = True
                    w_bad += wt
                else:
                    s += wt * image[rc, c]
                    v += wt * wt * variance[rc, c]
                w_all += wt
            spectrum[k, c] = s
            error[k, c] = np.sqrt(v)
            any_bad[k, c] = flagged
            lost[k, c] = w_bad / max(w_all, 1e-12)
    return spectrum, error, any_bad, lost
