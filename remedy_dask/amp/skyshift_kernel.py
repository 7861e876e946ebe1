"""Compiled parts of the sky-line shift fit (:mod:`remedy_dask.amp.skyshift`): the edge
coordinates of the line profiles and the closed-form linear solution of every block.

The blocks are small (5 lines x 112 fibers x ~17 pixels): as numpy array expressions the ~40
operations of one solution cost more in call overhead than in arithmetic.  The kernels do the
same IEEE operations in the same order (sums over a block's pixels in numpy's pairwise order),
so the results are bit-identical to the array formulation; the Gaussian CDF and exponential
stay numpy calls (``scipy.special.ndtr``, ``np.exp``: their SIMD implementations round
differently from libm's).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def edge_coordinates(wavelength, start, iq, frac, lines, lsf_sigma, u,
                     dw):  # pragma: no cover - compiled
    """u[l, k, j] = (lam(e) - line_l) / sigma at the pixel edges e of every block, lam linearly
    interpolated between columns idx = clip(start + iq_l + j) and idx + 1 of fiber k with weight
    frac_l; dw = lam(idx) - lam(idx + 1) (d(edge wavelength)/ds)."""
    n_lines, n_fib, n_edge = u.shape
    n_cols = wavelength.shape[1]
    for li in range(n_lines):
        for k in range(n_fib):
            for j in range(n_edge):
                idx = min(max(start[li, k] + iq[li] + j, 0), n_cols - 2)
                w0, w1 = wavelength[k, idx], wavelength[k, idx + 1]
                u[li, k, j] = (w0 + frac[li] * (w1 - w0) - lines[li]) / lsf_sigma
                dw[li, k, j] = w0 - w1


@njit(cache=True, nogil=True, inline="always")
def _wsum(w, a, b, n):  # pragma: no cover - compiled
    """sum_j (w[j] a[j]) b[j], j < n (n <= 128), in numpy's pairwise order (b = 1: exact)."""
    if n < 8:
        res = 0.0
        for i in range(n):
            res += w[i] * a[i] * b[i]
        return res
    r0, r1, r2, r3 = w[0] * a[0] * b[0], w[1] * a[1] * b[1], w[2] * a[2] * b[2], w[3] * a[3] * b[3]
    r4, r5, r6, r7 = w[4] * a[4] * b[4], w[5] * a[5] * b[5], w[6] * a[6] * b[6], w[7] * a[7] * b[7]
    i = 8
    while i < n - n % 8:
        r0 += w[i] * a[i] * b[i]; r1 += w[i + 1] * a[i + 1] * b[i + 1]
        r2 += w[i + 2] * a[i + 2] * b[i + 2]; r3 += w[i + 3] * a[i + 3] * b[i + 3]
        r4 += w[i + 4] * a[i + 4] * b[i + 4]; r5 += w[i + 5] * a[i + 5] * b[i + 5]
        r6 += w[i + 6] * a[i + 6] * b[i + 6]; r7 += w[i + 7] * a[i + 7] * b[i + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res += w[i] * a[i] * b[i]
        i += 1
    return res


@njit(cache=True, nogil=True)
def constant_sums(w, y, r, out):  # pragma: no cover - compiled
    """The sums of every block that do not depend on the shift, out (6, n_l, n_f): s0 = sum w,
    s1 = sum w r, s2 = sum (w r) r, y0 = sum w y, y1 = sum (w r) y, yy = sum (w y) y."""
    n_lines, n_fib, n = w.shape
    one = np.ones(n)
    for li in range(n_lines):
        for k in range(n_fib):
            wk, yk = w[li, k], y[li, k]
            out[0, li, k], out[1, li, k] = _wsum(wk, one, one, n), _wsum(wk, r, one, n)
            out[2, li, k], out[3, li, k] = _wsum(wk, r, r, n), _wsum(wk, yk, one, n)
            out[4, li, k], out[5, li, k] = _wsum(wk, r, yk, n), _wsum(wk, yk, yk, n)


@njit(cache=True, nogil=True)
def _block_sums(w, y, r, g, dg, one, derivative, out):  # pragma: no cover - compiled
    """The shift-dependent weighted sums of one block (see :func:`solve_blocks`) into ``out``:
    the products formed as in the array formulation (wg = w g, then wg r, ...), summed
    pairwise."""
    n = w.size
    out[0], out[1], out[2] = _wsum(w, g, one, n), _wsum(w, g, r, n), _wsum(w, g, g, n)
    out[3] = _wsum(w, g, y, n)
    if derivative:
        out[4], out[5], out[6] = _wsum(w, dg, one, n), _wsum(w, dg, r, n), _wsum(w, dg, g, n)
        out[7], out[8] = _wsum(w, dg, dg, n), _wsum(w, dg, y, n)


@njit(cache=True, nogil=True, error_model="numpy")
def solve_blocks(phi, ex, dw, scale, w, y, r, const, use, amp_weight, has_weight, derivative,
                 g, fit):  # pragma: no cover - compiled
    """Linear solution of every block (l, k) with G = diff(phi), dG/ds = diff(ex * dw) * scale
    (phi = Phi(u), ex = exp(-u^2/2) at the edges).  Fills g (n_l, n_f, n_pix) and fit
    (10, n_l, n_f): theta (3), theta_var (3), chi2, score, jac, noise, as the array formulas of
    ``skyshift._solve``; with ``derivative`` False only theta and chi2 (unused blocks: chi2 0)."""
    n_lines, n_fib, n_pix = w.shape
    one = np.ones(n_pix)
    dg = np.zeros(n_pix)
    s = np.zeros(9)
    for li in range(n_lines):
        for k in range(n_fib):
            gk = g[li, k]
            for j in range(n_pix):
                gk[j] = phi[li, k, j + 1] - phi[li, k, j]
                if derivative:
                    dg[j] = (ex[li, k, j + 1] * dw[li, k, j + 1]
                             - ex[li, k, j] * dw[li, k, j]) * scale
            _block_sums(w[li, k], y[li, k], r, gk, dg, one, derivative, s)
            g0, g1, gg, gy = s[0], s[1], s[2], s[3]
            s0, s1, s2 = const[0, li, k], const[1, li, k], const[2, li, k]
            y0, y1, yy = const[3, li, k], const[4, li, k], const[5, li, k]
            c00, c01, c02 = s2 * gg - g1 * g1, g1 * g0 - s1 * gg, s1 * g1 - s2 * g0
            c11, c12, c22 = s0 * gg - g0 * g0, s1 * g0 - s0 * g1, s0 * s2 - s1 * s1
            det = s0 * c00 + s1 * c01 + g0 * c02
            ok = use[li, k] and det > 1e-12 * np.abs(s0 * s2 * gg)
            inv_det = 1.0 / (det if ok else 1.0)
            t0 = (c00 * y0 + c01 * y1 + c02 * gy) * inv_det
            t1 = (c01 * y0 + c11 * y1 + c12 * gy) * inv_det
            t2 = (c02 * y0 + c12 * y1 + c22 * gy) * inv_det
            chi2 = yy - t0 * y0 - t1 * y1 - t2 * gy
            fit[0, li, k], fit[1, li, k], fit[2, li, k] = t0, t1, t2
            fit[6, li, k] = (chi2 if chi2 >= 0.0 or np.isnan(chi2) else 0.0) if ok else 0.0
            if not derivative:
                continue
            d0, d1, dgg, dd, dy = s[4], s[5], s[6], s[7], s[8]
            m0 = (c00 * d0 + c01 * d1 + c02 * dgg) * inv_det
            m1 = (c01 * d0 + c11 * d1 + c12 * dgg) * inv_det
            m2 = (c02 * d0 + c12 * d1 + c22 * dgg) * inv_det
            info = dd - (d0 * m0 + d1 * m1 + dgg * m2)
            info = info if info >= 0.0 or np.isnan(info) else 0.0
            res_d = dy - t0 * d0 - t1 * d1 - t2 * dgg
            a = amp_weight[li, k] if has_weight else t2
            fit[3, li, k], fit[4, li, k] = c00 * inv_det, c11 * inv_det
            fit[5, li, k] = c22 * inv_det
            fit[7, li, k] = a * res_d if ok else 0.0
            fit[8, li, k] = a * t2 * info if ok else 0.0
            fit[9, li, k] = a * a * info if ok else 0.0
