"""The fiber + smooth-background model of the column-chunk cross-sections of an amp image
(:mod:`remedy_dask.amp.profile.chunks`).

The joint fiber model (``fit_amplitudes_and_background``, ``fit_profile_and_background``), used
by the trace to remove neighbours' light, fits every chunk cross-section as fibers with one
shared empirical profile (``PROFILE_NODES``, wings included) plus per-fiber width terms, on a
tensor-B-spline background, by exact linear least squares.

Speed: every fiber's design lives on its own window of +-PROFILE_RADIUS rows, so the fiber
normal matrix of all chunks is banded (fibers k and k + d share rows for d <= 3) and factorised
once; the background (B-splines, cubic along the columns) is eliminated by a Schur complement
with a banded normal matrix; the data-independent background products are built once per set
of profiles (``BackgroundBasis``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit
from scipy import sparse
from scipy.interpolate import BSpline
from scipy.linalg import cho_factor, cho_solve, lapack

from remedy_dask.errors import CalibrationError

PROFILE_RADIUS = 14.0  # px, extent of the empirical profile (wings included)
# |r| nodes of the empirical profile (linear interpolation): fine in the core, coarse in the wings
PROFILE_NODES = np.r_[np.arange(0.0, 4.0, 0.05), np.arange(4.0, 8.0, 0.25),
                      np.arange(8.0, PROFILE_RADIUS + 0.01, 0.5)]
KNOT_SPACING_ROWS = 64.0
KNOT_SPACING_COLS = 96.0


FINE_STEP = 0.05  # px: every PROFILE_NODES spacing is a multiple of it (also the stored grid)
_FINE_GRID = np.arange(int(round(PROFILE_RADIUS / FINE_STEP)) + 1) * FINE_STEP
# index of the PROFILE_NODES interval holding every fine cell
_FINE_NODE = np.clip(np.searchsorted(PROFILE_NODES, _FINE_GRID + 0.5 * FINE_STEP, side="right")
                     - 1, 0, PROFILE_NODES.size - 2)


def profile_eval(table: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Symmetric profile tabulated at |r| = ``PROFILE_NODES`` (linear interpolation, 0 beyond).
    Evaluated through a uniform 0.05 px table (same values: the nodes lie on that grid)."""
    fine = np.interp(_FINE_GRID, PROFILE_NODES[:table.size], table, right=0.0)
    fine = np.r_[fine, 0.0]
    r = np.asarray(r)
    if r.dtype == np.float64:  # compiled, the same arithmetic element by element
        out = np.empty(r.shape)
        _profile_eval(np.ascontiguousarray(r).reshape(-1), fine, 1.0 / FINE_STEP,
                      float(PROFILE_NODES[table.size - 1]), out.reshape(-1))
        return out
    x = np.abs(r) * (1.0 / FINE_STEP)
    i = np.minimum(x.astype(np.intp), _FINE_GRID.size - 1)
    frac = x - i
    out = fine[i] * (1.0 - frac) + fine[i + 1] * frac
    return np.where(np.abs(r) <= PROFILE_NODES[table.size - 1], out, 0.0)


@njit(cache=True, nogil=True)
def _profile_eval(r, fine, scale, limit, out):  # pragma: no cover - compiled
    """out = linear interpolation of ``fine`` (step 1 / ``scale``) at |r|, 0 beyond ``limit``."""
    last = fine.size - 2
    for j in range(r.size):
        a = abs(r[j])
        if not a <= limit:
            out[j] = 0.0
            continue
        x = a * scale
        i = min(int(x), last)
        frac = x - i
        out[j] = fine[i] * (1.0 - frac) + fine[i + 1] * frac


def profile_integral(table: np.ndarray) -> float:
    """Integral over r of the symmetric, piecewise-linear profile."""
    return float(2.0 * np.trapezoid(table, PROFILE_NODES[:table.size]))


def _hat_weights(r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower node index and fractional weight of the upper node for |r| on PROFILE_NODES."""
    x = np.abs(r)
    i = _FINE_NODE[np.minimum((x * (1.0 / FINE_STEP)).astype(np.intp), _FINE_NODE.size - 1)]
    i = i + (x >= PROFILE_NODES[i + 1]) * (i < PROFILE_NODES.size - 2)  # rounding at a node
    frac = (x - PROFILE_NODES[i]) / (PROFILE_NODES[i + 1] - PROFILE_NODES[i])
    return i, frac


def bspline_basis(x: np.ndarray, length: int, spacing: float) -> np.ndarray:
    """Dense cubic B-spline basis on [0, length - 1] with uniform knots ~``spacing`` apart."""
    n_int = max(int(round((length - 1) / spacing)), 1)
    inner = np.linspace(0.0, length - 1.0, n_int + 1)
    knots = np.r_[[inner[0]] * 3, inner, [inner[-1]] * 3]
    xc = np.clip(np.asarray(x, dtype=float), 0.0, length - 1.0)
    return BSpline.design_matrix(xc, knots, 3).toarray()


def width_derivative(table: np.ndarray) -> np.ndarray:
    """Change of the unit-integral profile P_s(r) = P(r/s)/s with the width s at s = 1:
    Q = -(P + r P'), tapered to zero between 4 and 6 px (only the core changes width)."""
    r = PROFILE_NODES[:table.size]
    taper = np.clip((6.0 - r) / 2.0, 0.0, 1.0) ** 2
    return -(table + r * np.gradient(table, r)) * taper


@dataclass
class FiberWindows:
    """The +-PROFILE_RADIUS rows around every fiber of every chunk (n_chunks, n_fib, n_window):
    ``rows`` clipped to the chip, ``valid`` inside the chip with a finite profile value, ``r``
    the row minus the fiber position, ``base`` (n_chunks, n_fib) the rounded positions."""

    base: np.ndarray
    rows: np.ndarray
    valid: np.ndarray
    r: np.ndarray

    @classmethod
    def around(cls, pos: np.ndarray, good: np.ndarray) -> "FiberWindows":
        n_rows = good.shape[1]
        half = int(PROFILE_RADIUS)
        base = np.round(pos).astype(np.intp)
        rows = base[..., None] + np.arange(-half, half + 1)
        rows_c = np.clip(rows, 0, n_rows - 1)
        valid = (rows == rows_c) & good[np.arange(good.shape[0])[:, None, None], rows_c]
        return cls(base, rows_c, valid, rows - pos[..., None])

    def flat_rows(self, n_rows: int) -> np.ndarray:
        """Index of every window pixel in the flattened (n_chunks, n_rows) cross-sections."""
        return self.rows + (np.arange(self.rows.shape[0]) * n_rows)[:, None, None]


@dataclass
class BackgroundBasis:
    """Tensor B-spline background of the chunk cross-sections and the data-independent parts
    of its normal equations (shared by all fits of one set of chunk profiles)."""

    bx: np.ndarray  # (n_chunks, nx) along the columns at the chunk centres
    by: np.ndarray  # (n_rows, ny) along the rows
    by_tiled: np.ndarray  # (n_chunks * n_rows, ny)
    gy: np.ndarray  # (n_chunks, ny, ny): by^T diag(good_j) by
    good: np.ndarray  # (n_chunks, n_rows) finite profile values

    @classmethod
    def build(cls, profiles: np.ndarray, centres: np.ndarray, n_cols: int) -> "BackgroundBasis":
        n_chunks, n_rows = profiles.shape
        good = np.isfinite(profiles)
        bx = bspline_basis(centres, n_cols, KNOT_SPACING_COLS)
        by = bspline_basis(np.arange(n_rows), n_rows, KNOT_SPACING_ROWS)
        gy = by.T[None, :, :] @ (good[:, :, None] * by[None, :, :])
        return cls(bx, by, np.tile(by, (n_chunks, 1)), gy, good)

    @property
    def bandwidth(self) -> int:
        """Lower bandwidth of the background normal matrices (cubic B-splines along x)."""
        return 4 * self.by.shape[1] - 1

    def normal(self, gy: np.ndarray) -> np.ndarray:
        """(nx ny, nx ny) normal matrix of the tensor background from per-chunk ``gy``."""
        nx, ny = self.bx.shape[1], self.by.shape[1]
        return np.einsum("ja,jd,jbc->abdc", self.bx, self.bx, gy,
                         optimize=True).reshape(nx * ny, nx * ny)


@dataclass
class FiberFit:
    """Fibers + background of the chunk cross-sections for a given profile."""

    amp: np.ndarray  # (n_chunks, n_fib) total fiber flux (e- per column)
    width: np.ndarray  # (n_chunks, n_fib) amplitude of the width term (~ amp * widening)
    coeff: np.ndarray  # (nx, ny) background B-spline coefficients
    chunk_background: np.ndarray  # (n_chunks, n_rows)


@njit(cache=True, nogil=True)
def _shifted_windows(v, base, d, out):  # pragma: no cover - compiled
    """out[j, k, s] = the design v[j, k + d, :, s] of fiber k + d on the window rows of fiber k
    (zero where its window does not reach): (n_chunks, n_fib - d, n_sh, n_win)."""
    n_chunks, n_fib, n_win, n_sh = v.shape
    for j in range(n_chunks):
        for k in range(n_fib - d):
            delta = base[j, k + d] - base[j, k]  # row offset of fiber k + d from fiber k
            for s in range(n_sh):
                for w in range(n_win):
                    x = w - delta
                    out[j, k, s, w] = v[j, k + d, x, s] if 0 <= x < n_win else 0.0


def _banded_gram(v: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Normal matrix of fiber window designs ``v`` (n_chunks, n_fib, n_window, n_shapes), with
    window rows ``base`` - half .. ``base`` + half, in LAPACK lower band storage for the unknowns
    ordered (chunk, fiber, shape): the overlap of every fiber with the next fibers' windows."""
    n_chunks, n_fib, n_win, n_sh = v.shape
    vt = np.swapaxes(v, -1, -2)  # (..., n_sh, n_win)
    in_order = bool(np.all(np.diff(base, axis=1) >= 0))
    n_band = 1  # fibers k and k + d share window rows for d < n_band
    for d in range(1, n_fib):
        if np.abs(base[:, d:] - base[:, :n_fib - d]).min() < n_win:
            n_band = d + 1
        elif in_order:  # sorted: no later fiber can overlap either
            break
    blocks = []
    for d in range(n_band):
        other = np.empty((n_chunks, n_fib - d, n_sh, n_win))  # fiber k + d on the rows of k
        _shifted_windows(v, base.astype(np.int64), d, other)
        blocks.append(vt[:, :n_fib - d] @ np.swapaxes(other, -1, -2))
    ab = np.zeros((len(blocks) * n_sh, n_chunks, n_fib, n_sh))
    for d, g in enumerate(blocks):  # A[(k + d, t), (k, s)] = g[k, s, t] at band row d n_sh + t - s
        for s_ in range(n_sh):
            for t_ in range(n_sh):
                if d * n_sh + t_ - s_ >= 0:
                    ab[d * n_sh + t_ - s_, :, :n_fib - d, s_] = g[..., s_, t_]
    return ab.reshape(ab.shape[0], -1)


def fit_amplitudes_and_background(profiles: np.ndarray, pos: np.ndarray, table: np.ndarray,
                                  centres: np.ndarray, n_cols: int,
                                  basis: BackgroundBasis | None = None) -> FiberFit:
    """Given the profile, solve the amplitude and width term of every fiber in every chunk and a
    tensor-B-spline background jointly: exact linear least squares, the banded fiber blocks of
    all chunks eliminated at once (one banded Cholesky) by a Schur complement.  ``basis``:
    :class:`BackgroundBasis` of ``profiles``, reused between calls when given."""
    basis = BackgroundBasis.build(profiles, centres, n_cols) if basis is None else basis
    n_chunks, n_rows = profiles.shape
    n_fib = pos.shape[1]
    good = basis.good
    data = np.where(good, profiles, 0.0)
    win = FiberWindows.around(pos, good)
    v = np.stack([profile_eval(table, win.r), profile_eval(width_derivative(table), win.r)], -1)
    v *= win.valid[..., None]
    ab = _banded_gram(v, win.base)
    ab[0] = ab[0] * (1.0 + 1e-9) + 1e-9 * np.repeat(
        ab[0].reshape(n_chunks, -1).max(axis=1), 2 * n_fib)
    nx, ny = basis.bx.shape[1], basis.by.shape[1]
    chol, info = lapack.dpbtrf(ab, lower=1)  # A = L L^T (banded)
    if info != 0:
        raise CalibrationError("fiber model: the fiber normal matrix is not positive definite")
    m = 2 * n_fib
    # with Y = L^-1 X^T B_y and z = L^-1 X^T d the Schur complement is G_y - Y^T Y
    # X^T [B_y | d] for the window designs X (the product of their sparse matrix, in its order)
    xt = np.empty((n_chunks * m, ny + 1))
    _window_products(v, win.rows, basis.by, data, xt)
    yz, _ = lapack.dtbtrs(chol, xt, uplo="L")
    yz = yz.reshape(n_chunks, m, ny + 1)
    y_, z_ = yz[..., :ny], yz[..., ny]
    normal = basis.normal(basis.gy - np.einsum("jkb,jkc->jbc", y_, y_, optimize=True))
    rhs_y = data @ basis.by - np.einsum("jkb,jk->jb", y_, z_)
    rhs_b = np.einsum("ja,jb->ab", basis.bx, rhs_y).ravel()
    normal[np.diag_indices_from(normal)] *= 1.0 + 1e-10
    coeff = _solve_banded_spd(normal, rhs_b, basis.bandwidth).reshape(nx, ny)
    rest = (z_ - np.einsum("jkb,jb->jk", y_, basis.bx @ coeff)).reshape(-1, 1)
    coef = lapack.dtbtrs(chol, rest, uplo="L", trans="T")[0].reshape(n_chunks, n_fib, 2)
    return FiberFit(amp=coef[..., 0], width=coef[..., 1], coeff=coeff,
                    chunk_background=basis.bx @ coeff @ basis.by.T)


@njit(cache=True, nogil=True)
def _window_products(v, rows, by, data, out):  # pragma: no cover - compiled
    """out[(j, k, s)] = sum over the window w of v[j, k, w, s] * [by[rows[j, k, w]] | data[j,
    rows[j, k, w]]], summed from 0 in window order (as the sparse product of the fiber designs
    with the tiled background basis and the data: the same values)."""
    n_chunks, n_fib, n_win, n_sh = v.shape
    ny = by.shape[1]
    for j in range(n_chunks):
        for k in range(n_fib):
            for s in range(n_sh):
                row = (j * n_fib + k) * n_sh + s
                for c in range(ny + 1):
                    out[row, c] = 0.0
                for w in range(n_win):
                    a = v[j, k, w, s]
                    r = rows[j, k, w]
                    for c in range(ny):
                        out[row, c] += a * by[r, c]
                    out[row, ny] += a * data[j, r]


def _solve_spd(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Solve a symmetric positive (semi-)definite system by Cholesky, LU if that fails."""
    try:
        return cho_solve(cho_factor(a, lower=True, check_finite=False), b, check_finite=False)
    except np.linalg.LinAlgError:
        return np.linalg.solve(a, b)


def _band_cholesky(a: np.ndarray, kd: int) -> np.ndarray | None:
    """Lower banded Cholesky factor (LAPACK band storage) of the symmetric ``a`` with lower
    bandwidth ``kd``; None if ``a`` is not positive definite."""
    n = a.shape[0]
    rows = np.arange(n)[None, :] + np.arange(min(kd, n - 1) + 1)[:, None]
    chol, info = lapack.dpbtrf(np.where(rows < n, a[np.minimum(rows, n - 1), np.arange(n)], 0.0),
                               lower=1)
    return chol if info == 0 else None


def _solve_banded_spd(a: np.ndarray, b: np.ndarray, kd: int) -> np.ndarray:
    """Solve ``a x = b`` for a symmetric positive definite ``a`` of lower bandwidth ``kd``."""
    chol = _band_cholesky(a, kd)
    if chol is None:
        return _solve_spd(a, b)
    return lapack.dpbtrs(chol, b.reshape(b.shape[0], -1), lower=1)[0].reshape(b.shape)


def window_image(win: FiberWindows, values: np.ndarray, n_rows: int) -> np.ndarray:
    """Sum over fibers of per-window-pixel ``values`` (n_chunks, n_fib, n_window) on the chunk
    cross-sections (n_chunks, n_rows); invalid window pixels are left out."""
    n_chunks = values.shape[0]
    idx = win.flat_rows(n_rows)[win.valid]
    return np.bincount(idx, values[win.valid], n_chunks * n_rows).reshape(n_chunks, n_rows)


def fit_profile_and_background(profiles: np.ndarray, pos: np.ndarray, fibers: FiberFit,
                               table: np.ndarray, use: np.ndarray, centres: np.ndarray,
                               n_cols: int, basis: BackgroundBasis | None = None) -> np.ndarray:
    """Least-squares fit of the shared profile (jointly with the background), with the fiber
    amplitudes and width terms (evaluated with the current ``table``) held fixed.  Returns the
    new profile table on PROFILE_NODES with unit integral."""
    basis = BackgroundBasis.build(profiles, centres, n_cols) if basis is None else basis
    n_chunks, n_rows = profiles.shape
    n_nodes = PROFILE_NODES.size - 1  # the node at R is fixed to zero
    good = basis.good
    win = FiberWindows.around(pos, good)
    width_img = window_image(win, fibers.width[..., None]
                             * profile_eval(width_derivative(table), win.r), n_rows)
    data = (np.where(good, profiles, 0.0) - width_img).ravel()
    keep = win.valid & (np.abs(win.r) < PROFILE_RADIUS) & use[..., None]
    node, frac = _hat_weights(win.r[keep])
    a = np.broadcast_to(fibers.amp[..., None], keep.shape)[keep]
    pix = np.tile(win.flat_rows(n_rows)[keep], 2)
    vals = np.concatenate([a * (1 - frac), a * frac])
    nodes = np.concatenate([node, node + 1])
    sel = nodes < n_nodes
    pix, vals, nodes = pix[sel], vals[sel], nodes[sel]
    design_p = sparse.csr_matrix((vals, (pix, nodes)), shape=(n_chunks * n_rows, n_nodes))
    pp = (design_p.T @ design_p).toarray()
    rhs_p = design_p.T @ data
    # cross terms with the background per chunk: the same non-zeros, node columns per chunk
    nx, ny = basis.bx.shape[1], basis.by.shape[1]
    chunk_of = np.repeat(np.arange(n_chunks * n_rows) // n_rows, np.diff(design_p.indptr))
    design_pj = sparse.csr_matrix(
        (design_p.data, design_p.indices + chunk_of * n_nodes, design_p.indptr),
        shape=(n_chunks * n_rows, n_chunks * n_nodes))
    tj = design_pj.T @ basis.by_tiled
    pc = np.einsum("ja,jgb->gab", basis.bx, tj.reshape(n_chunks, n_nodes, ny),
                   optimize=True).reshape(n_nodes, nx * ny)
    rhs_c = np.einsum("ja,jb->ab", basis.bx, data.reshape(n_chunks, n_rows) @ basis.by).ravel()
    d2 = np.diff(np.eye(n_nodes), 2, axis=0)
    pp += 1e-6 * np.trace(pp) / n_nodes * d2.T @ d2  # mild curvature penalty on the wings
    pp[np.diag_indices_from(pp)] *= 1.0 + 1e-10
    # background eliminated: (pp - pc cc^-1 pc^T) p = rhs_p - pc cc^-1 rhs_c, cc = L L^T banded
    cc = basis.normal(basis.gy)
    cc[np.diag_indices_from(cc)] *= 1.0 + 1e-10
    chol = _band_cholesky(cc, basis.bandwidth)
    if chol is None:
        normal = np.block([[pp, pc], [pc.T, cc]])
        sol = _solve_spd(normal, np.concatenate([rhs_p, rhs_c]))
    else:
        w, _ = lapack.dtbtrs(chol, np.column_stack([pc.T, rhs_c]), uplo="L")
        sol = _solve_spd(pp - w[:, :n_nodes].T @ w[:, :n_nodes],
                         rhs_p - w[:, :n_nodes].T @ w[:, n_nodes])
    new_table = np.r_[sol[:n_nodes], 0.0]
    integral = profile_integral(new_table)
    if not np.isfinite(integral) or integral <= 0:
        raise CalibrationError("empirical fiber profile fit failed (non-positive integral)")
    return new_table / integral


def initial_profile() -> np.ndarray:
    """Starting profile: Gaussian core (sigma 1.4 px) with 10% Gaussian wings (sigma 3 px)."""
    r = PROFILE_NODES
    return (0.9 * np.exp(-0.5 * (r / 1.4) ** 2) / (np.sqrt(2 * np.pi) * 1.4)
            + 0.1 * np.exp(-0.5 * (r / 3.0) ** 2) / (np.sqrt(2 * np.pi) * 3.0))
