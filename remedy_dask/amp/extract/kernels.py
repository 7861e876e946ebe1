"""Compiled kernels of the optimal extraction (:mod:`remedy_dask.amp.extract.optimal`).

Images enter the amp kernel *transposed* ([column, row]) so that a column is contiguous.  The
non-signal variance ``v0`` is given on blocks of ``block`` x ``block`` pixels ([column block,
row block]; block 1 for a per-pixel variance).  All kernels are ``nogil`` (threads of a Dask
worker can overlap them).
"""

from __future__ import annotations

import numpy as np
from numba import njit

# Array indices in the hot loops are cast to unsigned: numba then drops its negative-index
# wrap-around checks, which otherwise cost ~25% of the per-column fit.
_U = np.uint64


@njit(cache=True, nogil=True)
def _band_cholesky(nb, lb, band):  # pragma: no cover - compiled
    """Cholesky factor of a banded SPD matrix: nb[i, j] = N[i, i+j], lb[i, j] = L[i+j, i]
    for j >= 1 and lb[i, 0] = 1 / L[i, i] (the reciprocal saves divisions downstream)."""
    nf = nb.shape[0]
    for i in range(nf):
        s = nb[i, 0]
        for p in range(max(0, i - band), i):
            s -= lb[p, i - p] ** 2
        inv = 1.0 / np.sqrt(max(s, 1e-300))
        lb[i, 0] = inv
        for j in range(1, band + 1):
            row = i + j
            if row >= nf:
                lb[i, j] = 0.0
                continue
            s = nb[i, j]
            for p in range(max(0, row - band), i):
                s -= lb[p, row - p] * lb[p, i - p]
            lb[i, j] = s * inv


@njit(cache=True, nogil=True)
def _band_solve(lb, rhs, y, f, band):  # pragma: no cover - compiled
    nf = lb.shape[0]
    for i in range(nf):
        s = rhs[i]
        for p in range(max(0, i - band), i):
            s -= lb[p, i - p] * y[p]
        y[i] = s * lb[i, 0]
    for i in range(nf - 1, -1, -1):
        s = y[i]
        for q in range(i + 1, min(nf, i + band + 1)):
            s -= lb[i, q - i] * f[q]
        f[i] = s * lb[i, 0]


@njit(cache=True, nogil=True)
def _band_inverse_diagonal(lb, zb, band):  # pragma: no cover - compiled
    """Selected inversion: zb[i, j] = (N^-1)[i, i+j] inside the band, from the Cholesky factor
    (Takahashi recurrence on L^T Z = L^-1, last row first)."""
    nf = lb.shape[0]
    for i in range(nf - 1, -1, -1):
        inv = lb[i, 0]
        for j in range(band, 0, -1):
            col = i + j
            if col >= nf:
                zb[i, j] = 0.0
                continue
            s = 0.0
            for m in range(i + 1, min(nf, i + band + 1)):
                zmc = zb[m, col - m] if m <= col else zb[col, m - col]
                s += lb[i, m - i] * zmc
            zb[i, j] = -s * inv
        s = 0.0
        for m in range(i + 1, min(nf, i + band + 1)):
            s += lb[i, m - i] * zb[i, m - i]
        zb[i, 0] = (inv - s) * inv


@njit(cache=True, nogil=True)
def _column_profile(
    c, trace, tables, chunk_centers, fiber_group, fiber_gweight, grid0, step, half_width,
    n_rows, tcol, prof, r0, nr, tot, cov,
):  # pragma: no cover - compiled
    """Profile of every fiber on its window of rows at column ``c``, its sum ``tot`` per fiber
    and the coverage ``cov`` per row (sum over fibers); returns (rmin, rmax), rmax < 0 if no
    fiber falls on the chip."""
    nf = trace.shape[0]
    ngroup, ngrid = tables.shape[1], tables.shape[2]
    nwin = prof.shape[1]
    nchunk = chunk_centers.size
    per_pixel = int(round(1.0 / step))
    ic = 0
    while ic < nchunk - 2 and chunk_centers[ic + 1] <= c:
        ic += 1
    wc = (c - chunk_centers[ic]) / (chunk_centers[ic + 1] - chunk_centers[ic])
    wc = min(max(wc, 0.0), 1.0)
    for g in range(ngroup):
        for i in range(ngrid):
            tcol[g, i] = (1.0 - wc) * tables[ic, g, i] + wc * tables[ic + 1, g, i]
    cov[:] = 0.0
    rmin = n_rows
    rmax = -1
    for kk in range(nf):
        k = _U(kk)
        t = trace[k, c]
        lo = max(int(np.ceil(t - half_width)), 0)
        hi = min(int(np.floor(t + half_width)), n_rows - 1)
        n = min(max(hi - lo + 1, 0), nwin)
        r0[k] = lo
        nr[k] = n
        g0 = _U(fiber_group[k])
        wg = fiber_gweight[k]
        x0 = (lo - t - grid0) / step  # grid position of the first window row
        i0 = int(np.floor(x0))
        fx = x0 - i0
        total = 0.0
        for m in range(_U(n)):
            i = i0 + int(m) * per_pixel  # rows are per_pixel grid steps apart: same fraction fx
            if i < 0 or i + 1 > ngrid - 1:
                prof[k, m] = 0.0
                continue
            ui = _U(i)
            a0 = tcol[g0, ui] * (1.0 - fx) + tcol[g0, ui + 1] * fx
            a1 = tcol[g0 + 1, ui] * (1.0 - fx) + tcol[g0 + 1, ui + 1] * fx
            pv = (1.0 - wg) * a0 + wg * a1
            prof[k, m] = pv
            total += pv
            cov[_U(lo) + m] += pv
        tot[k] = total
        if n > 0:
            rmin = min(rmin, lo)
            rmax = max(rmax, lo + n - 1)
    return rmin, rmax


@njit(cache=True, nogil=True)
def _fit_column(
    data, w, prof, r0, nr, rmin, rmax, band, nb, lb, rhs, y, f, model, wp
):  # pragma: no cover - compiled
    """Weighted least-squares fluxes ``f`` of all fibers of one column (Cholesky factor left
    in ``lb``), and the ``model`` on rows rmin..rmax; ``wp`` is scratch of prof's shape."""
    nf = prof.shape[0]
    for kk in range(nf):
        k = _U(kk)
        lo = _U(r0[k])
        acc_r = 0.0
        acc_d = 0.0
        for m in range(_U(nr[k])):
            p = w[lo + m] * prof[k, m]
            wp[k, m] = p
            acc_r += p * data[lo + m]
            acc_d += p * prof[k, m]
        rhs[k] = acc_r
        nb[k, 0] = acc_d
    for kk in range(nf):
        k = _U(kk)
        lo = _U(r0[k])
        hi = lo + _U(nr[k])
        for j in range(1, band + 1):
            k2 = k + _U(j)
            acc = 0.0
            if k2 < nf:
                off = _U(r0[k2])
                for r in range(max(lo, off), min(hi, off + _U(nr[k2]))):
                    acc += wp[k, r - lo] * prof[k2, r - off]
            nb[k, j] = acc
    for i in range(nf):
        if nb[i, 0] <= 0.0:  # fiber without any usable pixel: pin it to 0
            nb[i, 0] = 1.0
            rhs[i] = 0.0
    _band_cholesky(nb, lb, band)
    _band_solve(lb, rhs, y, f, band)
    for r in range(_U(rmin), _U(rmax + 1)):
        model[r] = 0.0
    for kk in range(nf):
        k = _U(kk)
        lo = _U(r0[k])
        fk = f[k]
        for m in range(_U(nr[k])):
            model[lo + m] += fk * prof[k, m]


@njit(cache=True, nogil=True)
def _any_outlier(data, model, w, v0c, rmin, rmax, poisson, profile_error, sig2):  # pragma: no cover
    """Whether any used row of rmin..rmax may have a squared pull above ``sig2`` (a cheap
    division-free filter, slightly loose so that it never misses one)."""
    limit = sig2 * (1.0 - 1e-9)
    for r in range(_U(rmin), _U(rmax + 1)):
        if w[r] == 0.0:
            continue
        mv = max(model[r], 0.0)
        v = v0c[r] + (mv if poisson else 0.0) + (profile_error * mv) ** 2
        res = data[r] - model[r]
        if res * res > limit * v:
            return True
    return False


@njit(cache=True, nogil=True)
def _fill_column(v0, block, c, out):  # pragma: no cover - compiled
    """out[r] = v0 of pixel (r, c), from the blocked [column block, row block] array."""
    n = out.size
    vc = v0[min(c // block, v0.shape[0] - 1)]
    for rb in range(vc.size):
        value = vc[rb]
        for r in range(rb * block, min((rb + 1) * block, n)):
            out[r] = value
    for r in range(vc.size * block, n):
        out[r] = vc[vc.size - 1]


@njit(cache=True, nogil=True)
def _reject_outside(data, v0, bad, rmin, rmax, reject_sigma, rejected, buf):  # pragma: no cover
    """Flag positive outliers in the rows below ``rmin`` and above ``rmax`` of one column."""
    n = data.size
    for lo, hi in ((0, min(rmin, n)), (max(rmax + 1, 0), n)):
        if hi - lo < 3:
            continue
        count = 0
        for r in range(lo, hi):
            if not bad[r]:
                buf[count] = data[r]
                count += 1
        if count < 3:
            continue
        med = np.median(buf[:count])
        for r in range(lo, hi):
            if not bad[r] and (data[r] - med) > reject_sigma * np.sqrt(v0[r] + max(med, 0.0)):
                rejected[r] = 1


@njit(cache=True, nogil=True)
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
    prof = np.zeros((ring, nf, nwin))
    r0 = np.zeros((ring, nf), np.int64)
    nr = np.zeros((ring, nf), np.int64)
    tot = np.zeros((ring, nf))
    cov = np.zeros((ring, n_rows))
    rlim = np.zeros((ring, 2), np.int64)
    # stage-1 solution of each ring column, reused by stage 2 when its weights are unchanged
    f1 = np.zeros((ring, nf))
    lb1 = np.zeros((ring, nf, band + 1))
    model1 = np.zeros((ring, n_rows))
    tcol = np.zeros((tables.shape[1], tables.shape[2]))
    wp = np.zeros((nf, nwin))
    w = np.zeros(n_rows)
    v0c = np.zeros(n_rows)
    model = np.zeros(n_rows)
    vflux = np.zeros(n_rows)
    z2 = np.zeros(n_rows)
    buf = np.zeros(n_rows)
    badc = np.zeros(n_rows, np.bool_)
    nb = np.zeros((nf, band + 1))
    lb = np.zeros((nf, band + 1))
    zb = np.zeros((nf, band + 1))
    rhs = np.zeros(nf)
    y = np.zeros(nf)
    f = np.zeros(nf)
    sg = np.array([-3.0, 12.0, 17.0, 12.0, -3.0]) / 35.0
    n_rej = np.zeros(n_cols, np.int64)
    flux1 = np.zeros((nf, n_cols))
    lost1 = np.zeros((nf, n_cols))
    fvk = np.zeros(nf)
    run_stage1 = do_reject or poisson
    sig2 = reject_sigma * reject_sigma
    rel2 = reject_rel * reject_rel
    for cstep in range(n_cols + 2):
        c = cstep
        if c < n_cols:  # ---- stage 1
            s = c % ring
            rmin, rmax = _column_profile(
                c, trace, tables, chunk_centers, fiber_group, fiber_gweight, grid0, step,
                half_width, n_rows, tcol, prof[s], r0[s], nr[s], tot[s], cov[s],
            )
            rlim[s, 0] = rmin
            rlim[s, 1] = rmax
            if run_stage1 or do_reject:
                _fill_column(v0, block, c, v0c)
            if run_stage1 and rmax >= 0:
                data = image[c]
                n_masked = 0  # rows of zero weight
                for r in range(_U(rmin), _U(rmax + 1)):
                    ok = (not bad[c, r]) and cov[s, r] > 0.0
                    w[r] = 1.0 / v0c[r] if ok else 0.0
                    if not ok:
                        n_masked += 1
                for it in range(max_iter + 1):
                    _fit_column(data, w, prof[s], r0[s], nr[s], rmin, rmax, band, nb, lb, rhs, y,
                                f, model, wp)
                    if not do_reject or it == max_iter:
                        break
                    if not _any_outlier(data, model, w, v0c, rmin, rmax, poisson,
                                        profile_error, sig2):
                        break
                    for r in range(_U(rmin), _U(rmax + 1)):  # squared pulls
                        if w[r] == 0.0:
                            z2[r] = 0.0
                            continue
                        mv = max(model[r], 0.0)
                        v = v0c[r] + (mv if poisson else 0.0) + (profile_error * mv) ** 2
                        res = data[r] - model[r]
                        z2[r] = res * res / v
                    new = False
                    for r in range(rmin, rmax + 1):
                        if z2[r] > sig2:
                            zmax = 0.0
                            for q in range(max(rmin, r - 2), min(rmax, r + 2) + 1):
                                zmax = max(zmax, z2[q])
                            if z2[r] >= rel2 * zmax:
                                rejected[c, r] = 1
                                n_rej[c] += 1
                                new = True
                    if not new:
                        break
                    for r in range(rmin, rmax + 1):
                        if rejected[c, r]:
                            w[r] = 0.0
                for kk in range(nf):
                    k = _U(kk)
                    flux1[k, c] = f[k]
                    gone = 0.0
                    if n_masked > 0 or n_rej[c] > 0:  # else no profile weight can be lost
                        lo = _U(r0[s, k])
                        for m in range(_U(nr[s, k])):
                            if w[lo + m] == 0.0:
                                gone += prof[s, k, m]
                    lost1[k, c] = gone / tot[s, k] if tot[s, k] > 0.0 else 1.0
                f1[s] = f
                lb1[s] = lb
                for r in range(_U(rmin), _U(rmax + 1)):
                    model1[s, r] = model[r]
            if do_reject:  # rows outside every fiber window: outliers against their median
                _reject_outside(image[c], v0c, bad[c], rmin, rmax, reject_sigma, rejected[c], buf)
        c2 = cstep - 2
        if c2 < 0:
            continue
        s = c2 % ring  # ---- stage 2
        rmin, rmax = rlim[s, 0], rlim[s, 1]
        if rmax < 0:
            continue
        data = image[c2]
        near = False
        for cc in range(max(c2 - 1, 0), min(c2 + 2, n_cols)):
            near = near or n_rej[cc] > 0
        changed = False  # any bad pixel that stage 1 did not have
        n_bad = 0
        for r in range(_U(rmin), _U(rmax + 1)):
            b = bad[c2, r] or rejected[c2, r] == 1
            if dilate and near and not b:
                for cc in range(max(c2 - 1, 0), min(c2 + 2, n_cols)):
                    for rr in range(max(int(r) - 1, 0), min(int(r) + 2, n_rows)):
                        if rejected[cc, rr] == 1:
                            b = True
                            break
                if b:
                    changed = True
            badc[r] = b
            if b:
                n_bad += 1
                if not bad[c2, r] and rejected[c2, r] == 0:
                    rejected[c2, r] = 2  # grown around an outlier
        if poisson or do_reject:
            _fill_column(v0, block, c2, v0c)
        smooth = smooth_variance and c2 >= 2 and c2 <= n_cols - 3
        if poisson or do_reject:
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
                lo = _U(r0[s, k])
                for m in range(_U(nr[s, k])):
                    vflux[lo + m] += fv * prof[s, k, m]
        if do_reject and c2 >= 2 and c2 <= n_cols - 3:
            # a fiber-column that lost much of its profile to outliers may have fitted the rest
            # of a cosmic-ray track as signal: test its core against the flux interpolated
            # from the neighbouring columns (leave-one-out quadratic through c-2..c+2)
            for k in range(nf):
                lo = r0[s, k]
                gone = 0.0
                if n_bad > 0:
                    for m in range(nr[s, k]):
                        if badc[lo + m]:
                            gone += prof[s, k, m]
                if max(lost1[k, c2], gone / max(tot[s, k], 1e-300)) <= 0.3:
                    continue
                fp = (2.0 / 3.0) * (flux1[k, c2 - 1] + flux1[k, c2 + 1]) - (1.0 / 6.0) * (
                    flux1[k, c2 - 2] + flux1[k, c2 + 2]
                )
                for m in range(nr[s, k]):
                    r = lo + m
                    if badc[r] or abs(r - trace[k, c2]) > chi2_half:
                        continue
                    pred = vflux[r] + (fp - fvk[k]) * prof[s, k, m]
                    mv = max(pred, 0.0)
                    v = v0c[r] + (mv if poisson else 0.0) + (profile_error * mv) ** 2
                    if (data[r] - pred) > reject_sigma * np.sqrt(v):
                        badc[r] = True
                        rejected[c2, r] = 1
                        n_bad += 1
                        changed = True
        if run_stage1 and not poisson and not changed:  # same weights as stage 1: same fit
            f[:] = f1[s]
            lb[:] = lb1[s]
            for r in range(_U(rmin), _U(rmax + 1)):
                model[r] = model1[s, r]
        else:
            if not (poisson or do_reject):
                _fill_column(v0, block, c2, v0c)
            for r in range(_U(rmin), _U(rmax + 1)):
                if badc[r] or cov[s, r] <= 0.0:
                    w[r] = 0.0
                elif poisson:
                    w[r] = 1.0 / (v0c[r] + max(vflux[r], 0.0))
                else:
                    w[r] = 1.0 / v0c[r]
            _fit_column(data, w, prof[s], r0[s], nr[s], rmin, rmax, band, nb, lb, rhs, y, f,
                        model, wp)
        _band_inverse_diagonal(lb, zb, band)
        for kk in range(nf):
            k = _U(kk)
            flux[k, c2] = f[k]
            var_out[k, c2] = zb[k, 0]
            lo = r0[s, k]
            n = nr[s, k]
            gone = 0.0
            if n_bad > 0:
                for m in range(_U(n)):
                    if badc[_U(lo) + m]:
                        gone += prof[s, k, m]
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
            total = tot[s, k]
            lost[k, c2] = gone / total if total > 0.0 else 1.0
            chi2[k, c2] = csum / (nchi - 1) if nchi > 1 else np.nan
            if total <= 0.0 or gone >= total:
                flux[k, c2] = np.nan
                var_out[k, c2] = np.nan


@njit(cache=True, nogil=True)
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
