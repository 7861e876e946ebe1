"""Compiled per-column pieces of the optimal extraction (:mod:`remedy_dask.amp.extract.kernels`):
banded normal equations of the fibers crossing a column, their Cholesky solution, the column's
variance and its outliers.  Columns are contiguous (images transposed).
"""

from __future__ import annotations

import numpy as np
from numba import njit

# Array indices in the hot loops are cast to unsigned: numba then drops its negative-index
# wrap-around checks, which otherwise cost ~25% of the per-column fit.
_U = np.uint64


# fused multiply-adds allowed ("contract") in the factorisation: its sums keep their order
@njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
def band_cholesky_solve(nb, rhs, lb, y, f, band):  # pragma: no cover - compiled
    """Solve N f = rhs for a banded SPD matrix N (nb[i, j] = N[i, i+j]) by its Cholesky factor
    lb[i, j] = L[i+j, i] for j >= 1, lb[i, 0] = 1 / L[i, i] (the reciprocal saves divisions
    downstream); the forward substitution L y = rhs runs row by row with the factorisation,
    then L^T f = y.  Band 3 (the fibers' usual overlap) keeps the previous rows in registers:
    same operations in the same order."""
    nf = nb.shape[0]
    if band != 3 or nf < 7:
        _factor_rows(nb, rhs, lb, y, band, 0, nf)
    else:
        _factor_rows(nb, rhs, lb, y, band, 0, 3)
        _factor_band3(nb, rhs, lb, y, 3, nf - 3)
        _factor_rows(nb, rhs, lb, y, band, nf - 3, nf)
    last = nf - 1 if band != 3 or nf < 7 else 2  # band 3: rows nf - 4 .. 0 below
    for i in range(nf - 1, nf - 2 - last, -1):
        s = y[i]
        for q in range(i + 1, min(nf, i + band + 1)):
            s -= lb[i, q - i] * f[q]
        f[i] = s * lb[i, 0]
    if band == 3 and nf >= 7:
        f1, f2, f3 = f[nf - 3], f[nf - 2], f[nf - 1]
        for ii in range(nf - 4, -1, -1):
            i = _U(ii)
            fi = (((y[i] - lb[i, 1] * f1) - lb[i, 2] * f2) - lb[i, 3] * f3) * lb[i, 0]
            f[i] = fi
            f1, f2, f3 = fi, f1, f2


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
def _factor_rows(nb, rhs, lb, y, band, first, end):  # pragma: no cover - compiled
    """Rows first..end-1 of the factor and of the forward substitution (any band)."""
    nf = nb.shape[0]
    for i in range(first, end):
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
        s = rhs[i]
        for p in range(max(0, i - band), i):
            s -= lb[p, i - p] * y[p]
        y[i] = s * inv


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
def _factor_band3(nb, rhs, lb, y, first, end):  # pragma: no cover - compiled
    """:func:`_factor_rows` for band 3 on rows first..end-1 (3 <= first, end <= nf - 3), the
    three previous rows' factor entries and solution values in registers."""
    u = _U(first)
    c3 = lb[u - 3, 3]  # row i - 3
    b2, b3 = lb[u - 2, 2], lb[u - 2, 3]  # row i - 2
    a1, a2, a3 = lb[u - 1, 1], lb[u - 1, 2], lb[u - 1, 3]  # row i - 1
    y3, y2, y1 = y[u - 3], y[u - 2], y[u - 1]
    for ii in range(first, end):
        i = _U(ii)
        s = nb[i, 0]
        s -= c3 ** 2
        s -= b2 ** 2
        s -= a1 ** 2
        inv = 1.0 / np.sqrt(max(s, 1e-300))
        n1 = ((nb[i, 1] - b3 * b2) - a2 * a1) * inv
        n2 = (nb[i, 2] - a3 * a1) * inv
        n3 = nb[i, 3] * inv
        yi = (((rhs[i] - c3 * y3) - b2 * y2) - a1 * y1) * inv
        lb[i, 0], lb[i, 1], lb[i, 2], lb[i, 3] = inv, n1, n2, n3
        y[i] = yi
        c3 = b3
        b2, b3 = a2, a3
        a1, a2, a3 = n1, n2, n3
        y3, y2, y1 = y2, y1, yi


@njit(cache=True, nogil=True, error_model="numpy")
def band_inverse_diagonal(lb, zb, band):  # pragma: no cover - compiled
    """Selected inversion: zb[i, j] = (N^-1)[i, i+j] inside the band, from the Cholesky factor
    (Takahashi recurrence on L^T Z = L^-1, last row first)."""
    nf = lb.shape[0]
    last = nf - 1 if band != 3 or nf < 7 else 2  # band 3: rows nf - 4 .. 0 in registers
    for i in range(nf - 1, nf - 2 - last, -1):
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
    if band == 3 and nf >= 7:
        _inverse_band3(lb, zb, nf - 4)


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
def _inverse_band3(lb, zb, first):  # pragma: no cover - compiled
    """:func:`band_inverse_diagonal` for band 3, rows ``first`` .. 0 (the rows after them
    done): the same sums in the same order, the three rows below kept in registers."""
    u = _U(first)
    a0, a1, a2 = zb[u + 1, 0], zb[u + 1, 1], zb[u + 1, 2]  # row i + 1
    b0, b1 = zb[u + 2, 0], zb[u + 2, 1]  # row i + 2
    c0 = zb[u + 3, 0]  # row i + 3
    for ii in range(first, -1, -1):
        i = _U(ii)
        inv, l1, l2, l3 = lb[i, 0], lb[i, 1], lb[i, 2], lb[i, 3]
        z3 = -(0.0 + l1 * a2 + l2 * b1 + l3 * c0) * inv
        z2 = -(0.0 + l1 * a1 + l2 * b0 + l3 * b1) * inv
        z1 = -(0.0 + l1 * a0 + l2 * a1 + l3 * a2) * inv
        z0 = (inv - (0.0 + l1 * z1 + l2 * z2 + l3 * z3)) * inv
        zb[i, 0], zb[i, 1], zb[i, 2], zb[i, 3] = z0, z1, z2, z3
        c0 = b0
        b0, b1 = a0, a1
        a0, a1, a2 = z0, z1, z2


# reassociation (vectorised sums) and fused multiply-adds in the fit's sums change the fluxes
# at the 1e-13 level (float rounding), for ~10% of the extraction's time
@njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc", "contract"})
def fit_column(
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
    band_cholesky_solve(nb, rhs, lb, y, f, band)
    for r in range(_U(rmin), _U(rmax + 1)):
        model[r] = 0.0
    for first in range(4):  # every 4th fiber: no window overlaps the one added just before
        for kk in range(first, nf, 4):
            k = _U(kk)
            lo = _U(r0[k])
            fk = f[k]
            for m in range(_U(nr[k])):
                model[lo + m] += fk * prof[k, m]


@njit(cache=True, nogil=True, error_model="numpy")
def any_outlier(data, model, w, v0c, rmin, rmax, poisson, profile_error, sig2):  # pragma: no cover
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


@njit(cache=True, nogil=True, error_model="numpy")
def fill_column(v0, block, c, out):  # pragma: no cover - compiled
    """out[r] = v0 of pixel (r, c), from the blocked [column block, row block] array."""
    n = out.size
    vc = v0[min(c // block, v0.shape[0] - 1)]
    for rb in range(vc.size):
        value = vc[rb]
        for r in range(rb * block, min((rb + 1) * block, n)):
            out[r] = value
    for r in range(vc.size * block, n):
        out[r] = vc[vc.size - 1]


@njit(cache=True, nogil=True, error_model="numpy")
def reject_outside(data, v0, bad, rmin, rmax, reject_sigma, rejected, buf):  # pragma: no cover
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
