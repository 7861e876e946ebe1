"""Scattered light, and the fiber + smooth-background model of column-chunk cross-sections.

Scattered light (``scattered_light``).  Remedy (§3.5) takes medians in the slit-group gaps and
below/above the fibers.  Two problems: (1) the profile wings (~10% of the light, sigma ~3 px)
still put light worth ~1/3 of the scattered light into a gap centre 8.7 px from two fibers;
(2) between the four sampled rows the background is only interpolated.  Here, per column chunk,
only rows at least 6 px from every fiber are used (gaps, below and above the fibers: the fiber
cores, whose width varies over the chip, never enter), and they are modelled as

    d(x, y) = sum_m c_m T_m(x, y) + a + b x + c y + sum_k A_k W(|y - t_k|)

where T_m is the chip's own fiber light (amplitude map) convolved with broad halo kernels
(1 + (r/r0)^2)^-1.5 of several r0, W is the far wing (6-14 px, free nodes) of the fiber profile
and A_k the fiber amplitudes measured on the cores.  All linear; the halo templates carry the
shape of the scattered light (dips at the gaps, fall-off at the chip edges) into the groups.

The joint fiber model (``fit_amplitudes_and_background``, ``fit_profile_and_background``), used
by the trace to remove neighbours' light, fits every chunk cross-section as fibers with one
shared empirical profile plus per-fiber width terms, on a tensor-B-spline background.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import scipy.fft as sfft
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


def _nan_median_last(values: np.ndarray, n_valid: np.ndarray | None = None) -> np.ndarray:
    """Median over the last axis ignoring NaN (NaN where all are NaN), by one sort.
    ``n_valid``: the number of finite values along the last axis, if known."""
    srt = np.sort(values, axis=-1)  # NaN sort last
    n = np.isfinite(values).sum(-1) if n_valid is None else n_valid
    if np.ndim(n) == 0:  # same count everywhere: plain indexing
        n = int(n)
        if n == 0:
            return np.full(values.shape[:-1], np.nan)
        return 0.5 * (srt[..., (n - 1) // 2] + srt[..., n // 2])
    lo = np.take_along_axis(srt, np.maximum((n - 1) // 2, 0)[..., None], -1)[..., 0]
    hi = np.take_along_axis(srt, np.maximum(n // 2, 0)[..., None], -1)[..., 0]
    return np.where(n > 0, 0.5 * (lo + hi), np.nan)


def chunk_profiles(image: np.ndarray, variance: np.ndarray | None, mask: np.ndarray | None,
                   n_chunks: int) -> tuple[np.ndarray, np.ndarray]:
    """Robust mean of each row over column chunks: ``(profiles (n_chunks, n_rows), centres)``.

    Pixels masked or more than 6 sigma (+15%) from the chunk-row median are left out; rows with
    no usable pixel are NaN.  The last ``n_cols % n_chunks`` columns are not used.
    """
    n_rows, n_cols = image.shape
    width = n_cols // n_chunks
    used = width * n_chunks
    shape = (n_rows, n_chunks, width)
    d = np.asarray(image, dtype=float)[:, :used]
    bad = ~np.isfinite(d)
    if mask is not None:
        bad |= mask[:, :used]
    if bad.any():
        d = np.where(bad, np.nan, d).reshape(shape)
        n_valid: np.ndarray | int = width - bad.reshape(shape).sum(-1)
    else:
        d = d.reshape(shape)
        n_valid = width
    med = _nan_median_last(d, n_valid)[..., None]
    if variance is not None:
        v = np.asarray(variance, dtype=float)[:, :used].reshape(shape)
        if not np.isscalar(n_valid):
            v = np.where(bad.reshape(shape), np.nan, v)
        var = _nan_median_last(v, n_valid)[..., None]
    else:
        var = np.abs(med) + 10.0
    with np.errstate(invalid="ignore"):
        tol = 6.0 * np.sqrt(np.maximum(np.nan_to_num(var, nan=1.0), 1.0)) + 0.15 * np.abs(med)
        good = (d >= med - tol) & (d <= med + tol)  # False at NaN (bad) pixels
    n = good.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        profiles = np.where(good, d, 0.0).sum(-1) / n  # NaN where no pixel is usable
    centres = np.arange(n_chunks) * width + 0.5 * (width - 1)
    return np.ascontiguousarray(profiles.T), centres


def chunk_positions(trace: np.ndarray, n_chunks: int) -> np.ndarray:
    """Mean trace row of every fiber over each column chunk (as ``chunk_profiles``):
    (n_chunks, n_fibers)."""
    width = trace.shape[1] // n_chunks
    return trace[:, :width * n_chunks].reshape(trace.shape[0], n_chunks, width).mean(-1).T


_FINE_STEP = 0.05  # px: every PROFILE_NODES spacing is a multiple of it
_FINE_GRID = np.arange(int(round(PROFILE_RADIUS / _FINE_STEP)) + 1) * _FINE_STEP
# index of the PROFILE_NODES interval holding every fine cell
_FINE_NODE = np.clip(np.searchsorted(PROFILE_NODES, _FINE_GRID + 0.5 * _FINE_STEP, side="right")
                     - 1, 0, PROFILE_NODES.size - 2)


def profile_eval(table: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Symmetric profile tabulated at |r| = ``PROFILE_NODES`` (linear interpolation, 0 beyond).
    Evaluated through a uniform 0.05 px table (same values: the nodes lie on that grid)."""
    fine = np.interp(_FINE_GRID, PROFILE_NODES[:table.size], table, right=0.0)
    fine = np.r_[fine, 0.0]
    x = np.abs(r) * (1.0 / _FINE_STEP)
    i = np.minimum(x.astype(np.intp), _FINE_GRID.size - 1)
    frac = x - i
    out = fine[i] * (1.0 - frac) + fine[i + 1] * frac
    return np.where(np.abs(r) <= PROFILE_NODES[table.size - 1], out, 0.0)


def profile_integral(table: np.ndarray) -> float:
    """Integral over r of the symmetric, piecewise-linear profile."""
    return float(2.0 * np.trapezoid(table, PROFILE_NODES[:table.size]))


def _hat_weights(r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower node index and fractional weight of the upper node for |r| on PROFILE_NODES."""
    x = np.abs(r)
    i = _FINE_NODE[np.minimum((x * (1.0 / _FINE_STEP)).astype(np.intp), _FINE_NODE.size - 1)]
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


def _banded_gram(v: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Normal matrix of fiber window designs ``v`` (n_chunks, n_fib, n_window, n_shapes), with
    window rows ``base`` - half .. ``base`` + half, in LAPACK lower band storage for the unknowns
    ordered (chunk, fiber, shape): the overlap of every fiber with the next fibers' windows."""
    n_chunks, n_fib, n_win, n_sh = v.shape
    vt = np.swapaxes(v, -1, -2)  # (..., n_sh, n_win)
    padded = np.zeros((n_chunks, n_fib, n_sh, 3 * n_win))  # zero rows around every window
    padded[..., n_win:2 * n_win] = vt
    # every window of n_win rows of a padded fiber: (n_chunks, n_fib, n_sh, 2 n_win + 1, n_win)
    shifted = np.lib.stride_tricks.sliding_window_view(padded, n_win, axis=-1)
    chunk = np.arange(n_chunks)[:, None]
    blocks = []
    for d in range(n_fib):
        delta = base[:, d:] - base[:, :n_fib - d]  # row offset of fiber k + d from fiber k
        if d > 0 and np.abs(delta).min() >= n_win:
            break
        offset = n_win - np.clip(delta, -n_win, n_win)  # rows of k in the windows of k + d
        other = shifted[chunk, np.arange(d, n_fib), :, offset]  # (n_chunks, n_fib - d, n_sh, n_win)
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
    design_t = sparse.csr_matrix(  # (n_chunks * n_fib * 2, n_chunks * n_rows)
        (np.moveaxis(v, -1, 2).ravel(), np.repeat(win.flat_rows(n_rows), 2, axis=1).ravel(),
         np.arange(v.size // v.shape[2] + 1) * v.shape[2]),
        shape=(v.size // v.shape[2], n_chunks * n_rows))
    nx, ny = basis.bx.shape[1], basis.by.shape[1]
    chol, info = lapack.dpbtrf(ab, lower=1)  # A = L L^T (banded)
    if info != 0:
        raise CalibrationError("fiber model: the fiber normal matrix is not positive definite")
    # with Y = L^-1 X^T B_y and z = L^-1 X^T d the Schur complement is G_y - Y^T Y
    m = 2 * n_fib
    yz, _ = lapack.dtbtrs(chol, np.column_stack([design_t @ basis.by_tiled,
                                                 design_t @ data.ravel()]), uplo="L")
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


# --------------------------------------------------------------------------------------------
# scattered light from gaps and edges with halo templates
# --------------------------------------------------------------------------------------------
HALO_R0 = (25.0, 70.0, 200.0)  # px, core radii of the halo kernels (1 + (r/r0)^2)^-1.5
HALO_ROW_BIN = 4  # px, row step of the light map the halo kernels are applied on
WING_NODES = np.arange(6.0, 15.0, 1.0)  # px, far-wing nodes (W = 0 at the last)
MIN_DISTANCE = 6.0  # px, rows closer than this to a fiber are not used


def core_amplitudes(profiles: np.ndarray, pos: np.ndarray, background: np.ndarray | float = 0.0,
                    half: int = 3) -> np.ndarray:
    """Fiber light in +-``half`` rows of each fiber of each chunk, background removed."""
    n_rows = profiles.shape[1]
    rows = np.clip(np.round(pos).astype(int)[..., None] + np.arange(-half, half + 1), 0, n_rows - 1)
    chunk = np.arange(profiles.shape[0])[:, None, None]
    bg = background[chunk, rows] if np.ndim(background) == 2 else background
    return np.nan_to_num(profiles[chunk, rows] - bg).sum(-1)


def _light_map(pos: np.ndarray, amp: np.ndarray, n_rows: int) -> np.ndarray:
    """Fiber amplitudes deposited at rows ``pos`` (linear split between the two nearest rows,
    which keeps the light's centroid): (n_chunks, n_rows)."""
    n_chunks = pos.shape[0]
    lo = np.clip(np.floor(pos).astype(int), 0, n_rows - 2)
    frac = np.clip(pos - lo, 0.0, 1.0)
    flat = (np.arange(n_chunks)[:, None] * n_rows + lo).ravel()
    out = np.bincount(flat, (amp * (1 - frac)).ravel(), n_chunks * n_rows)
    out[1:] += np.bincount(flat, (amp * frac).ravel(), n_chunks * n_rows)[:-1]
    return out.reshape(n_chunks, n_rows)


def _fft_shape(n_chunks: int, n_coarse: int) -> tuple[int, int]:
    """Zero-padded FFT grid of a light map: at least twice its size (linear convolution with
    the kernels' full extent), rounded up to fast FFT lengths."""
    return sfft.next_fast_len(2 * n_chunks, real=True), sfft.next_fast_len(2 * n_coarse, real=True)


@functools.lru_cache(maxsize=16)
def halo_kernel_spectra(shape: tuple[int, int], col_step: float, row_step: float,
                        r0s: tuple[float, ...] = HALO_R0) -> np.ndarray:
    """rfft2 of the (1 + (r/r0)^2)^-1.5 kernels on a periodic grid of ``shape`` (chunks x
    coarse rows, steps in px): (n_kernels, shape[0], shape[1] // 2 + 1), read-only (cached)."""
    dx = np.fft.fftfreq(shape[0], 1.0 / shape[0]) * col_step
    dy = np.fft.fftfreq(shape[1], 1.0 / shape[1]) * row_step
    r2 = dx[:, None] ** 2 + dy[None, :] ** 2
    out = np.stack([sfft.rfft2((1.0 + r2 / r0**2) ** -1.5) for r0 in r0s])
    out.flags.writeable = False
    return out


def halo_templates(light: np.ndarray, kernel_spectra: np.ndarray) -> np.ndarray:
    """The light map (n_chunks, n_coarse) convolved in 2-D with the halo kernels given by their
    spectra on the grid ``_fft_shape`` (see :func:`halo_kernel_spectra`).  Returns
    (n_kernels, n_chunks, n_coarse), each normalised to the total light."""
    n_chunks, n_coarse = light.shape
    shape = _fft_shape(n_chunks, n_coarse)
    conv = sfft.irfft2(sfft.rfft2(light, shape)[None] * kernel_spectra, shape,
                       axes=(1, 2))[:, :n_chunks, :n_coarse]
    return conv * (light.sum() / np.maximum(conv.sum(axis=(1, 2)), 1e-30))[:, None, None]


def _row_interpolation(n_rows: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Lower coarse node and weight of the upper one for every row (coarse node i at row i*step)."""
    q = np.arange(n_rows) / step
    lo = np.floor(q).astype(int)
    return lo, q - lo


def bounded_lstsq(design: np.ndarray, data: np.ndarray, nonneg: np.ndarray,
                  start: np.ndarray | None = None, max_iter: int = 200) -> np.ndarray:
    """Least squares ``design @ x ~ data`` with ``x[nonneg] >= 0`` (the others free).

    Lawson-Hanson active set on the triangular factor R of the column-scaled design (QR once:
    every step is a tiny solve with the conditioning of the design, not of its normal
    equations); ``start`` (bool, optional) guesses the variables off their bound, e.g. from a
    previous fit.  Raises CalibrationError on non-finite input."""
    scale = np.sqrt(np.mean(design**2, axis=0)) + 1e-30
    if not (np.all(np.isfinite(design)) and np.all(np.isfinite(data))):
        raise CalibrationError("scattered light: non-finite values in the background fit")
    q, r = np.linalg.qr(design / scale)
    c = q.T @ data
    n = c.size
    tol = 1e-10 * max(float(np.abs(r.T @ c).max()), 1e-30)

    def solve(passive: np.ndarray) -> np.ndarray:
        z = np.zeros(n)
        idx = np.flatnonzero(passive)
        z[idx] = np.linalg.lstsq(r[:, idx], c, rcond=1e-10)[0]
        return z

    passive = ~nonneg
    x = solve(passive)
    if start is not None:  # warm start, kept only if feasible
        z = solve(passive | start)
        if np.all(z[nonneg & start] > 0):
            passive, x = passive | start, z
    for _ in range(max_iter):
        grad = r.T @ (c - r @ x)
        cand = np.flatnonzero(nonneg & ~passive & (grad > tol))
        if cand.size == 0:
            break
        passive[cand[np.argmax(grad[cand])]] = True
        for _ in range(n + 1):
            z = solve(passive)
            neg = passive & nonneg & (z <= 0)
            if not neg.any():
                x = z
                break
            # step from x towards z up to the first bound, drop the variables that hit it
            alpha = np.min(x[neg] / np.maximum(x[neg] - z[neg], 1e-300))
            x = x + alpha * (z - x)
            passive &= ~(nonneg & (x <= 1e-12 * np.abs(x).max()))
            x[~passive] = 0.0
    return x / scale


def _free_rows(pos: np.ndarray, n_rows: int, min_distance: float
               ) -> tuple[np.ndarray, np.ndarray]:
    """Distances (n_chunks, n_rows, 4) to the 4 fibers around every (chunk, row) (inf where
    there is no fiber) and those fibers' indices; ``pos`` (n_chunks, n_fib)."""
    n_chunks, n_fib = pos.shape
    rows = np.arange(n_rows)
    order = np.argsort(pos, axis=1)
    spos = np.take_along_axis(pos, order, axis=1)
    above = np.stack([np.searchsorted(spos[j], rows) for j in range(n_chunks)])  # (nc, nr)
    near = above[..., None] + np.arange(-2, 2)  # (nc, nr, 4)
    exists = (near >= 0) & (near < n_fib)
    near = np.clip(near, 0, n_fib - 1)
    chunk = np.arange(n_chunks)[:, None, None]
    dist = np.where(exists, np.abs(rows[None, :, None] - spos[chunk, near]), np.inf)
    return dist, order[chunk, near]


def _wing_design(dist: np.ndarray, amp_near: np.ndarray) -> np.ndarray:
    """Far-wing columns (n, n_w): the near fibers' amplitudes on hat functions of the distance."""
    n_w = WING_NODES.size - 1
    x = np.clip(np.nan_to_num((dist - WING_NODES[0]) / (WING_NODES[1] - WING_NODES[0]),
                              posinf=n_w), 0.0, n_w)
    g = np.floor(x).astype(int)
    frac = x - g
    out = np.zeros(dist.shape[0] * (n_w + 1))
    base = (np.arange(dist.shape[0]) * (n_w + 1))[:, None]
    for node, wgt in ((g, 1 - frac), (g + 1, frac)):
        out += np.bincount((base + np.minimum(node, n_w)).ravel(), (amp_near * wgt).ravel(),
                           out.size)
    return out.reshape(-1, n_w + 1)[:, :n_w]  # the node at the last (W = 0) is dropped


def scattered_light(image: np.ndarray, trace: np.ndarray, mask: np.ndarray | None = None, *,
                    variance: np.ndarray | None = None, n_chunks: int = 43,
                    min_distance: float = MIN_DISTANCE, n_iter: int = 2,
                    row_bin: int = HALO_ROW_BIN) -> np.ndarray:
    """Smooth scattered-light image (e-) under the fibers of ``image`` traced by ``trace``.

    Fitted on the rows at least ``min_distance`` px from every fiber (see the module docstring);
    the halo convolutions run on a light map of ``row_bin``-row steps (the kernels are >= 25 px
    wide), interpolated back to every row.  Raises CalibrationError if the trace does not fit
    the image or too few rows are free.
    """
    img = np.asarray(image, dtype=float)
    n_rows, n_cols = img.shape
    if trace.ndim != 2 or trace.shape[1] != n_cols or not np.all(np.isfinite(trace)):
        raise CalibrationError("scattered light: trace missing, non-finite or of the wrong width")
    profiles, centres = chunk_profiles(img, variance, mask, n_chunks)
    pos = chunk_positions(trace, n_chunks)
    dist, near_fiber = _free_rows(pos, n_rows, min_distance)
    free = (dist.min(-1) >= min_distance) & np.isfinite(profiles)
    if free.sum() < 10 * n_chunks:
        raise CalibrationError(f"scattered light: only {free.sum()} rows free of fiber light")
    jj, yy = np.nonzero(free)
    data = profiles[jj, yy]
    dsel, fsel = dist[jj, yy], near_fiber[jj, yy]  # (n, 4)
    rows = np.arange(n_rows)
    xu_chunk = 2.0 * centres / (n_cols - 1) - 1.0
    yu_row = 2.0 * rows / (n_rows - 1) - 1.0
    # halo convolutions on a coarse row grid (node i at row i * row_bin)
    n_coarse = (n_rows - 1) // row_bin + 2
    step = (centres[-1] - centres[0]) / max(n_chunks - 1, 1)
    spectra = halo_kernel_spectra(_fft_shape(n_chunks, n_coarse), float(step), float(row_bin))
    lo, fr = _row_interpolation(n_rows, row_bin)
    n_t, n_w = spectra.shape[0], WING_NODES.size - 1
    nonneg = np.r_[np.ones(n_t, bool), np.zeros(3, bool), np.ones(n_w, bool)]
    background = np.zeros_like(profiles)
    keep = np.ones(jj.size, dtype=bool)
    coef = None
    for _ in range(n_iter):
        amp = core_amplitudes(profiles, pos, background)
        coarse = halo_templates(_light_map(pos / row_bin, amp, n_coarse), spectra)
        templates = coarse[..., lo] * (1.0 - fr) + coarse[..., lo + 1] * fr  # (n_t, nc, nr)
        design = np.column_stack([templates[:, jj, yy].T, np.ones(jj.size), xu_chunk[jj],
                                  yu_row[yy], _wing_design(dsel, amp[jj[:, None], fsel])])
        # halo amplitudes and wing nodes are physically >= 0: the bounds remove the nearly
        # degenerate combinations of halo templates that noise would otherwise pick
        for _ in range(3):  # robust: clip outlying rows (residual cosmic rays, bad pixels)
            coef = bounded_lstsq(design[keep], data[keep], nonneg,
                                 None if coef is None else coef != 0)
            res = data - design @ coef
            sig = 1.4826 * np.median(np.abs(res[keep])) + 1e-9
            keep = np.abs(res) < 5.0 * sig
        background = (np.tensordot(coef[:n_t], templates, axes=1) + coef[n_t]
                      + coef[n_t + 1] * xu_chunk[:, None] + coef[n_t + 2] * yu_row[None, :])
    # to every column: linear interpolation between chunk centres (held beyond the end ones)
    cols = np.arange(n_cols)
    idx = np.clip(np.searchsorted(centres, cols) - 1, 0, n_chunks - 2)
    t = np.clip((cols - centres[idx]) / (centres[idx + 1] - centres[idx]), 0.0, 1.0)
    weights = np.zeros((n_chunks, n_cols))
    weights[idx, cols] = 1.0 - t
    weights[idx + 1, cols] += t
    return background.T @ weights
