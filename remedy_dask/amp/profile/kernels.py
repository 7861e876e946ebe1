"""Compiled kernels of the profile fit (:mod:`remedy_dask.amp.profile.model`): sufficient statistics.

The chunk model of pixel (r, c) is ``m = sum_k a_k x_k(r, c) . q_k`` where ``x_k`` holds the two
hat-function weights (times the flat shape ``s_c``) of fiber k's offset ``r - t_k(c)`` on the
knot grid and ``q_k = sum_g beta_kg p_g`` is the fiber's knot vector interpolated between slit
groups.  Every Gauss-Newton normal matrix and right-hand side of this bilinear model is a
bilinear form in a few data-independent-of-(a, p) sums over the pixels:

* ``g_self[k]``: ``sum w x_k x_k^T`` (tridiagonal: diagonal and first super-diagonal),
* ``g_pair[k, j-1]``: ``sum w x_k x_{k+j}^T`` for the neighbours j = 1..band, stored banded
  with a per-row column offset (``lo_pair``: fiber k's knot i meets fiber k+j's knots
  ``lo_pair[k, j-1, i] + 0..W-1`` only, because their trace distance barely changes in a chunk),
* ``v[k]``: ``sum w y x_k``.

One pass over the chunk's pixels builds them; each Newton step then costs O(fibers x knots)
instead of a pass over all pixels.  The steps are the same as those of a per-pixel Gauss-Newton.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _knot_index(d, knots, inv_spacing, left, inv_h):  # pragma: no cover - compiled
    """Left knot and fraction of offset ``d``: searchsorted(knots, d, 'right') - 1 in
    [0, nk - 2], through a lookup table ``left`` on a grid of step 1 / inv_h from knots[0]."""
    nk = knots.size
    j = min(max(int((d - knots[0]) * inv_h), 0), left.size - 1)
    i = left[j]
    while i < nk - 2 and d >= knots[i + 1]:
        i += 1
    while i > 0 and d < knots[i]:
        i -= 1
    return i, (d - knots[i]) * inv_spacing[i]


@njit(cache=True, nogil=True)
def chunk_geometry(trace_cols, knots, left, h, half_width, n_rows):  # pragma: no cover
    """Window of every fiber at every chunk column: first row ``base[k, c]``, knot index
    ``kidx[k, c, m]`` of row base + m (-1 off the chip or where |offset| >= half_width) and
    its fraction ``kfrac[k, c, m]``."""
    nf, nc = trace_cols.shape
    n_win = int(np.ceil(2 * half_width)) + 1
    base = np.zeros((nf, nc), np.int64)
    kidx = np.full((nf, nc, n_win), -1, np.int32)
    kfrac = np.zeros((nf, nc, n_win))
    inv_spacing = 1.0 / (knots[1:] - knots[:-1])
    inv_h = 1.0 / h
    for k in range(nf):
        for c in range(nc):
            t = trace_cols[k, c]
            b = int(np.floor(t - half_width)) + 1
            base[k, c] = b
            for m in range(n_win):
                r = b + m
                d = r - t
                if r < 0 or r >= n_rows or abs(d) >= half_width:
                    continue
                i, f = _knot_index(d, knots, inv_spacing, left, inv_h)
                kidx[k, c, m] = i
                kfrac[k, c, m] = f
    return base, kidx, kfrac


@njit(cache=True, nogil=True)
def pair_knot_ranges(base, kidx, nk, band):  # pragma: no cover - compiled
    """(lo, span, width): for each fiber k, neighbour j and knot i of k, the first knot of fiber
    k+j met on a common pixel (``lo[k, j-1, i]``), the number of such knots (``span``, 0 if
    none) and the largest span (``width``)."""
    nf, nc, n_win = kidx.shape
    lo = np.full((nf, band, nk), nk, np.int64)
    hi = np.full((nf, band, nk), -1, np.int64)
    for k in range(nf):
        for j in range(1, band + 1):
            k2 = k + j
            if k2 >= nf:
                break
            for c in range(nc):
                shift = base[k, c] - base[k2, c]
                for m in range(n_win):
                    i = kidx[k, c, m]
                    m2 = m + shift
                    if i < 0 or m2 < 0 or m2 >= n_win or kidx[k2, c, m2] < 0:
                        continue
                    i2 = np.int64(kidx[k2, c, m2])
                    for ii in range(i, i + 2):
                        lo[k, j - 1, ii] = min(lo[k, j - 1, ii], i2)
                        hi[k, j - 1, ii] = max(hi[k, j - 1, ii], i2 + 1)
    span = np.zeros((nf, band, nk), np.int64)
    for k in range(nf):
        for j in range(band):
            for i in range(nk):
                if hi[k, j, i] < 0:
                    lo[k, j, i] = 0
                else:
                    span[k, j, i] = hi[k, j, i] - lo[k, j, i] + 1
    return lo, span, max(1, span.max())


@njit(cache=True, nogil=True)
def accumulate_stats(
    y, w, scale, base, kidx, kfrac, lo_pair, g_self, g_pair, v
):  # pragma: no cover - compiled
    """Add the chunk's pixels to the statistics ``g_self`` (nf, nk, 2), ``g_pair``
    (nf, band, nk, W) and ``v`` (nf, nk); ``y``, ``w`` are (n_rows, nc).  Pixels with w = 0 are
    skipped, so a call with the negated weights of some pixels removes them."""
    nf, nc, n_win = kidx.shape
    band = g_pair.shape[1]
    for k in range(nf):
        for c in range(nc):
            s = scale[c]
            b = base[k, c]
            for m in range(n_win):
                i = kidx[k, c, m]
                if i < 0:
                    continue
                r = b + m
                wr = w[r, c]
                if wr == 0.0:
                    continue
                f = kfrac[k, c, m]
                xa = s * (1.0 - f)
                xb = s * f
                g_self[k, i, 0] += wr * xa * xa
                g_self[k, i, 1] += wr * xa * xb
                g_self[k, i + 1, 0] += wr * xb * xb
                v[k, i] += wr * y[r, c] * xa
                v[k, i + 1] += wr * y[r, c] * xb
                for j in range(1, band + 1):
                    k2 = k + j
                    if k2 >= nf:
                        break
                    m2 = r - base[k2, c]
                    if m2 < 0 or m2 >= n_win or kidx[k2, c, m2] < 0:
                        continue
                    i2 = kidx[k2, c, m2]
                    f2 = kfrac[k2, c, m2]
                    ya = s * (1.0 - f2)
                    yb = s * f2
                    o = i2 - lo_pair[k, j - 1, i]
                    g_pair[k, j - 1, i, o] += wr * xa * ya
                    g_pair[k, j - 1, i, o + 1] += wr * xa * yb
                    o = i2 - lo_pair[k, j - 1, i + 1]
                    g_pair[k, j - 1, i + 1, o] += wr * xb * ya
                    g_pair[k, j - 1, i + 1, o + 1] += wr * xb * yb


@njit(cache=True, nogil=True)
def chunk_residual(y, scale, base, kidx, kfrac, a, q):  # pragma: no cover - compiled
    """Data minus model (n_rows, nc) of the chunk; 0 where no fiber window covers a pixel.
    ``q`` (nf, nk) are the fibers' knot values, ``a`` (nf,) their amplitudes."""
    nf, nc, n_win = kidx.shape
    model = np.zeros(y.shape)
    covered = np.zeros(y.shape, np.bool_)
    for k in range(nf):
        for c in range(nc):
            sa = scale[c] * a[k]
            for m in range(n_win):
                i = kidx[k, c, m]
                if i < 0:
                    continue
                r = base[k, c] + m
                f = kfrac[k, c, m]
                model[r, c] += sa * ((1.0 - f) * q[k, i] + f * q[k, i + 1])
                covered[r, c] = True
    out = np.zeros(y.shape)
    for r in range(y.shape[0]):
        for c in range(nc):
            if covered[r, c]:
                out[r, c] = y[r, c] - model[r, c]
    return out


@njit(cache=True, nogil=True)
def fiber_knots(p, gi, gw, two_groups):  # pragma: no cover - compiled
    """Knot vector of every fiber, interpolated between its two slit groups: (nf, nk)."""
    nf = gi.size
    nk = p.shape[1]
    q = np.empty((nf, nk))
    for k in range(nf):
        g0 = gi[k]
        for i in range(nk):
            q[k, i] = (1.0 - gw[k]) * p[g0, i] + gw[k] * p[g0 + 1, i] if two_groups else p[g0, i]
    return q


@njit(cache=True, nogil=True)
def normal_equations(g_self, g_pair, lo_pair, span, v, a, p, gi, gw, half, lhs):  # pragma: no cover
    """Gauss-Newton normal matrix (into ``lhs``) and right-hand side (returned) in (a_k,
    group-major knots) from the statistics; identical to summing the per-pixel outer products
    of the Jacobian.  ``half`` is scratch of the shape of ``lhs`` (reused: large fresh arrays
    cost more in page faults than the whole assembly)."""
    nf, band, nk, width = g_pair.shape
    ng = p.shape[0]
    two_groups = ng > 1
    npar = nf + ng * nk
    half[:] = 0.0  # the normal matrix is half + half^T
    rhs = np.zeros(npar)
    q = fiber_knots(p, gi, gw, two_groups)
    gq_self, gq_fwd, gq_bwd = _gq_products(g_self, g_pair, lo_pair, span, q)
    n_beta = 2 if two_groups else 1
    grp, beta = _group_weights(gi, gw, nf, two_groups)
    resid = np.zeros(nk)
    cross = np.zeros(nk)
    for k in range(nf):
        # X_k^T W (y - m) over fiber k's knots
        for i in range(nk):
            resid[i] = v[k, i] - a[k] * gq_self[k, i]
        for j in range(1, band + 1):
            if k + j < nf:
                for i in range(nk):
                    resid[i] -= a[k + j] * gq_fwd[k, j - 1, i]
            if k - j >= 0:
                for i in range(nk):
                    resid[i] -= a[k - j] * gq_bwd[k - j, j - 1, i]
        s = 0.0
        d = 0.0
        for i in range(nk):
            s += q[k, i] * resid[i]
            d += q[k, i] * gq_self[k, i]
        rhs[k] = s
        half[k, k] = 0.5 * d
        for u in range(n_beta):
            col0 = nf + grp[k, u] * nk
            coef = a[k] * beta[k, u]
            for i in range(nk):
                rhs[col0 + i] += coef * resid[i]
        for j in range(1, band + 1):
            if k + j < nf:
                s = 0.0
                for i in range(nk):
                    s += q[k, i] * gq_fwd[k, j - 1, i]
                half[k, k + j] = s
        # amplitude-knot block: sum_k' a_k' beta_k'g G_k'k q_k over fibers k' = k, k -+ j
        for kk in range(max(0, k - band), min(nf, k + band + 1)):
            if kk == k:
                for i in range(nk):
                    cross[i] = gq_self[k, i]
            elif kk < k:
                for i in range(nk):
                    cross[i] = gq_fwd[kk, k - kk - 1, i]
            else:
                for i in range(nk):
                    cross[i] = gq_bwd[k, kk - k - 1, i]
            for u in range(n_beta):
                coef = a[kk] * beta[kk, u]
                col0 = nf + grp[kk, u] * nk
                for i in range(nk):
                    half[k, col0 + i] += coef * cross[i]
    _knot_knot_block(half, g_self, g_pair, lo_pair, span, a, grp, beta, n_beta, nf)
    _plus_transpose(half, lhs)
    return rhs


@njit(cache=True, nogil=True)
def _gq_products(g_self, g_pair, lo_pair, span, q):  # pragma: no cover - compiled
    """The statistics times the fiber knots: G_kk q_k, G_{k,k+j} q_{k+j} (over fiber k's
    knots) and G_{k,k+j}^T q_k (over fiber k+j's knots)."""
    nf, band, nk, width = g_pair.shape
    gq_self = np.zeros((nf, nk))
    gq_fwd = np.zeros((nf, band, nk))
    gq_bwd = np.zeros((nf, band, nk))
    for k in range(nf):
        for i in range(nk):
            s = g_self[k, i, 0] * q[k, i]
            if i + 1 < nk:
                s += g_self[k, i, 1] * q[k, i + 1]
            if i > 0:
                s += g_self[k, i - 1, 1] * q[k, i - 1]
            gq_self[k, i] = s
        for j in range(1, band + 1):
            k2 = k + j
            if k2 >= nf:
                break
            for i in range(nk):
                lo = lo_pair[k, j - 1, i]
                qi = q[k, i]
                s = 0.0
                for o in range(span[k, j - 1, i]):
                    gval = g_pair[k, j - 1, i, o]
                    s += gval * q[k2, lo + o]
                    gq_bwd[k, j - 1, lo + o] += gval * qi
                gq_fwd[k, j - 1, i] = s
    return gq_self, gq_fwd, gq_bwd


@njit(cache=True, nogil=True)
def _group_weights(gi, gw, nf, two_groups):  # pragma: no cover - compiled
    """Groups and weights of each fiber (a single one with one group)."""
    beta = np.zeros((nf, 2))
    grp = np.zeros((nf, 2), np.int64)
    for k in range(nf):
        grp[k, 0] = gi[k]
        grp[k, 1] = gi[k] + 1 if two_groups else gi[k]
        beta[k, 0] = 1.0 - gw[k] if two_groups else 1.0
        beta[k, 1] = gw[k] if two_groups else 0.0
    return grp, beta


@njit(cache=True, nogil=True)
def _knot_knot_block(half, g_self, g_pair, lo_pair, span, a, grp, beta, n_beta, nf
                     ):  # pragma: no cover - compiled
    """Add the knot-knot block sum_{k,k'} a_k a_k' beta_kg beta_k'g' G_kk' to ``half``."""
    band, nk = g_pair.shape[1], g_pair.shape[2]
    for k in range(nf):
        for u in range(n_beta):
            r0 = nf + grp[k, u] * nk
            for u2 in range(n_beta):
                c0 = nf + grp[k, u2] * nk
                coef = a[k] * a[k] * beta[k, u] * beta[k, u2]
                for i in range(nk):
                    half[r0 + i, c0 + i] += 0.5 * coef * g_self[k, i, 0]
                    if i + 1 < nk:
                        half[r0 + i, c0 + i + 1] += coef * g_self[k, i, 1]
        for j in range(1, band + 1):
            k2 = k + j
            if k2 >= nf:
                break
            for u in range(n_beta):
                r0 = nf + grp[k, u] * nk
                for u2 in range(n_beta):
                    c0 = nf + grp[k2, u2] * nk
                    coef = a[k] * a[k2] * beta[k, u] * beta[k2, u2]
                    for i in range(nk):
                        lo = lo_pair[k, j - 1, i]
                        for o in range(span[k, j - 1, i]):
                            half[r0 + i, c0 + lo + o] += coef * g_pair[k, j - 1, i, o]


@njit(cache=True, nogil=True)
def _plus_transpose(m, out):  # pragma: no cover - compiled
    """out = m + m^T, in cache-friendly tiles."""
    n = m.shape[0]
    tile = 32
    for i0 in range(0, n, tile):
        for j0 in range(0, n, tile):
            for i in range(i0, min(i0 + tile, n)):
                for j in range(j0, min(j0 + tile, n)):
                    out[i, j] = m[i, j] + m[j, i]


@njit(cache=True, nogil=True)
def regularise(lhs, rhs, p, pen, integ, integ2, fixed, n_fib, smoothness):  # pragma: no cover
    """In place: add the smoothness penalty ``smoothness * dscale * pen`` and the stiff integral
    penalty (each table integrates to 1) to the knot block, pin the ``fixed`` parameters and
    those without data, and add a 1e-9 relative ridge (dscale: mean data diagonal of the free
    knots)."""
    npar = lhs.shape[0]
    nkn = npar - n_fib
    total = 0.0
    count = 0
    for i in range(n_fib, npar):
        if not fixed[i]:
            total += lhs[i, i]
            count += 1
    dscale = total / count if count > 0 else 0.0
    if dscale == 0.0:
        dscale = 1.0
    lam = smoothness * dscale
    stiff = 1e3 * dscale
    ng = integ.shape[0]
    deficit = np.empty(ng)
    for g in range(ng):
        s = 1.0
        for b in range(nkn):
            s -= integ[g, b] * p[b]
        deficit[g] = s
    for a in range(nkn):
        s = 0.0
        for b in range(nkn):
            lhs[n_fib + a, n_fib + b] += lam * pen[a, b] + stiff * integ2[a, b]
            s += pen[a, b] * p[b]
        t = 0.0
        for g in range(ng):
            t += integ[g, a] * deficit[g]
        rhs[n_fib + a] += -lam * s + stiff * t
    for i in range(npar):
        if fixed[i]:
            rhs[i] = 0.0
            for j in range(npar):
                lhs[i, j] = 0.0
                lhs[j, i] = 0.0
    for i in range(npar):
        if fixed[i] or lhs[i, i] <= 0.0:
            lhs[i, i] = 1.0
        lhs[i, i] += 1e-9 * (lhs[i, i] if lhs[i, i] > 0.0 else dscale)
