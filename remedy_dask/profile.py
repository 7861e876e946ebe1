"""Empirical cross-dispersion fiber profile measured on the master flat.

The model is the *pixel-integrated* profile ``P(d)``: the fraction of a fiber's electrons at one
column that fall in the pixel whose centre is ``d`` rows from the trace.  Because it is already
integrated over the pixel, ``sum_n P(n - t) = 1`` for any trace position ``t``: the amplitude
fitted with it is the *total* flux of the fiber at that column, wings included.

``P`` is tabulated on a uniform fine offset grid for a few column chunks and a few fiber groups
(slit positions); in between it is interpolated linearly in column and in fiber index.  The flat
oversamples ``P`` because the 112 fibers sit at different sub-pixel phases and the traces curve.

Fitting alternates two linear problems: (1) fiber amplitudes per column given the profile (the
simultaneous extraction of :mod:`remedy_dask.extract`), (2) the profile tables given the
amplitudes (a regularised linear least-squares over all pixels of a column chunk, neighbours'
overlapping wings included).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from numba import njit
from scipy.sparse.linalg import splu

from remedy_dask.errors import CalibrationError

EVAL_STEP = 0.05  # px, spacing of the stored uniform offset grid


@dataclass
class ProfileModel:
    """Tabulated pixel-integrated profile.

    ``offsets`` (n_grid,) uniform grid of (pixel centre - trace) in px from -half_width to
    +half_width; ``tables`` (n_chunks, n_groups, n_grid) profile values, each table integrating
    to 1 over the offset; ``chunk_centers`` (n_chunks,) column of each chunk; ``group_centers``
    (n_groups,) fiber index (0..111, float) of each fiber group.  Outside the grid P = 0.
    """

    offsets: np.ndarray
    tables: np.ndarray
    chunk_centers: np.ndarray
    group_centers: np.ndarray

    @property
    def half_width(self) -> float:
        return float(self.offsets[-1])

    @property
    def step(self) -> float:
        return float(self.offsets[1] - self.offsets[0])

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays for storage (e.g. one HDF5 group)."""
        return {
            "profile_offsets": np.asarray(self.offsets, dtype=np.float64),
            "profile_tables": np.asarray(self.tables, dtype=np.float64),
            "profile_chunk_centers": np.asarray(self.chunk_centers, dtype=np.float64),
            "profile_group_centers": np.asarray(self.group_centers, dtype=np.float64),
        }

    @classmethod
    def from_arrays(cls, d: dict[str, np.ndarray]) -> ProfileModel:
        """Inverse of :meth:`to_arrays`."""
        model = cls(
            offsets=np.asarray(d["profile_offsets"], dtype=np.float64),
            tables=np.asarray(d["profile_tables"], dtype=np.float64),
            chunk_centers=np.asarray(d["profile_chunk_centers"], dtype=np.float64),
            group_centers=np.asarray(d["profile_group_centers"], dtype=np.float64),
        )
        model.validate()
        return model

    def validate(self) -> None:
        """Raise CalibrationError if the arrays are inconsistent or not finite."""
        off, tab = self.offsets, self.tables
        if off.ndim != 1 or off.size < 3 or not np.allclose(np.diff(off), off[1] - off[0]):
            raise CalibrationError("profile offsets must be a uniform 1-D grid")
        if tab.shape != (self.chunk_centers.size, self.group_centers.size, off.size):
            raise CalibrationError(f"profile tables have shape {tab.shape}, inconsistent with grids")
        if not np.all(np.isfinite(tab)):
            raise CalibrationError("profile tables contain non-finite values")

    def evaluate(self, offset: np.ndarray, column: np.ndarray, fiber: np.ndarray) -> np.ndarray:
        """P at (pixel centre - trace) ``offset`` for fiber index ``fiber`` at ``column``.

        The three arguments broadcast against each other.  Vectorised numpy; for tests and QA
        (extraction evaluates the same interpolation inside its compiled kernel).
        """
        m = padded(self)
        offset, column, fiber = np.broadcast_arrays(
            np.asarray(offset, float), np.asarray(column, float), np.asarray(fiber, float)
        )
        ic, wc = _bracket(m.chunk_centers, column)
        ig, wg = _bracket(m.group_centers, fiber)
        x = (offset - m.offsets[0]) / m.step
        inside = (x >= 0) & (x <= m.offsets.size - 1)
        i0 = np.clip(np.floor(x).astype(int), 0, m.offsets.size - 2)
        fx = np.clip(x - i0, 0.0, 1.0)
        out = np.zeros(offset.shape)
        for dc, wcc in ((0, 1 - wc), (1, wc)):
            for dg, wgg in ((0, 1 - wg), (1, wg)):
                lo = m.tables[ic + dc, ig + dg, i0]
                hi = m.tables[ic + dc, ig + dg, i0 + 1]
                out += wcc * wgg * (lo * (1 - fx) + hi * fx)
        return np.where(inside, out, 0.0)


def _bracket(centers: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower index and weight of linear interpolation between ``centers`` (clamped at ends).

    With a single centre the index is 0 and the weight 0; the caller must then not use index+1,
    so a degenerate grid is padded by duplicating the centre (see :func:`padded`).
    """
    n = centers.size
    if n == 1:
        return np.zeros(np.shape(x), dtype=int), np.zeros(np.shape(x))
    i = np.clip(np.searchsorted(centers, x, side="right") - 1, 0, n - 2)
    w = np.clip((x - centers[i]) / (centers[i + 1] - centers[i]), 0.0, 1.0)
    return i, w


def padded(model: ProfileModel) -> ProfileModel:
    """The same model with singleton chunk/group axes duplicated (so index+1 always exists)."""
    tab, cc, gc = model.tables, model.chunk_centers, model.group_centers
    if cc.size == 1:
        tab = np.concatenate([tab, tab], axis=0)
        cc = np.array([cc[0], cc[0] + 1.0])
    if gc.size == 1:
        tab = np.concatenate([tab, tab], axis=1)
        gc = np.array([gc[0], gc[0] + 1.0])
    return ProfileModel(model.offsets, tab, cc, gc)


def gaussian_profile(
    sigma: float = 1.4,
    half_width: float = 12.0,
    n_cols: int = 1032,
    n_fibers: int = 112,
) -> ProfileModel:
    """A pixel-integrated Gaussian profile (one chunk, one group): the starting model."""
    from scipy.special import erf

    offsets = _uniform_grid(half_width)
    s = np.sqrt(2.0) * sigma
    table = 0.5 * (erf((offsets + 0.5) / s) - erf((offsets - 0.5) / s))
    table[[0, -1]] = 0.0
    table /= np.trapezoid(table, offsets)
    return ProfileModel(
        offsets=offsets,
        tables=table[None, None, :],
        chunk_centers=np.array([(n_cols - 1) / 2.0]),
        group_centers=np.array([(n_fibers - 1) / 2.0]),
    )


def _uniform_grid(half_width: float) -> np.ndarray:
    n = int(round(half_width / EVAL_STEP))
    return np.linspace(-n * EVAL_STEP, n * EVAL_STEP, 2 * n + 1)


def _knot_grid(half_width: float) -> np.ndarray:
    """Fit knots: dense in the core, coarser in the wings (all on the EVAL_STEP grid)."""
    core = np.arange(0.0, min(4.0, half_width) + 1e-9, 0.1)
    mid = np.arange(core[-1] + 0.25, min(8.0, half_width) + 1e-9, 0.25)
    start = mid[-1] if mid.size else core[-1]
    wing = np.arange(start + 0.5, half_width + 1e-9, 0.5)
    pos = np.concatenate([core, mid, wing])
    if pos[-1] < half_width - 1e-9:
        pos = np.append(pos, half_width)
    return np.concatenate([-pos[:0:-1], pos])


def _linear_basis(knots: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the left knot and fractional position for linear (hat-function) interpolation."""
    i = np.clip(np.searchsorted(knots, d, side="right") - 1, 0, knots.size - 2)
    f = (d - knots[i]) / (knots[i + 1] - knots[i])
    return i, f


def _chunk_geometry(trace, columns, knots, group_centers, n_rows):
    """Window rows, knot bases and group weights of every (fiber, column, window row)."""
    n_fib = trace.shape[0]
    hw = knots[-1]
    n_win = int(np.ceil(2 * hw)) + 1
    t = trace[:, columns]
    rows = np.floor(t - hw).astype(np.int64)[..., None] + 1 + np.arange(n_win)  # (nf, nc, nw)
    d = rows - t[..., None]
    ok = (rows >= 0) & (rows < n_rows) & (np.abs(d) < hw)
    ki, kf = _linear_basis(knots, d)
    if group_centers.size == 1:
        gi, gw = np.zeros(n_fib, np.int64), np.zeros(n_fib)
    else:
        gi, gw = _bracket(group_centers, np.arange(n_fib, dtype=float))
    return rows, ok, ki.astype(np.int64), kf, gi.astype(np.int64), gw


@njit(cache=True)
def _normal_equations(y, w, rows, ok, ki, kf, gi, gw, scale, a, p, ng, nk):  # pragma: no cover
    """Gauss-Newton normal equations of the chunk model in (a_k, table knots).

    ``y``, ``w`` (n_rows, nc) data and weights; ``rows``/``ok``/``ki``/``kf`` (nf, nc, nw) the
    window geometry; ``gi``/``gw`` (nf,) group interpolation; ``scale`` (nc,) flat shape;
    ``a`` (nf,), ``p`` (ng*nk,).  Parameter order: amplitudes, then group-major knots.
    """
    nf, nc, nw = rows.shape
    n_rows = y.shape[0]
    npar = nf + ng * nk
    lhs = np.zeros((npar, npar))
    rhs = np.zeros(npar)
    maxe = 64
    cnt = np.zeros(n_rows, np.int64)
    par = np.zeros((n_rows, maxe), np.int64)
    der = np.zeros((n_rows, maxe))
    model = np.zeros(n_rows)
    chi2 = 0.0
    two_groups = ng > 1
    for c in range(nc):
        cnt[:] = 0
        model[:] = 0.0
        for k in range(nf):
            g0 = gi[k]
            wg = gw[k]
            for m in range(nw):
                if not ok[k, c, m]:
                    continue
                r = rows[k, c, m]
                i = ki[k, c, m]
                f = kf[k, c, m]
                b0 = (1.0 - wg) if two_groups else 1.0
                pv = b0 * ((1.0 - f) * p[g0 * nk + i] + f * p[g0 * nk + i + 1])
                if two_groups:
                    g1 = g0 + 1
                    pv += wg * ((1.0 - f) * p[g1 * nk + i] + f * p[g1 * nk + i + 1])
                sa = scale[c] * a[k]
                model[r] += sa * pv
                n = cnt[r]
                if n + 5 > maxe:
                    continue
                par[r, n] = k
                der[r, n] = scale[c] * pv
                par[r, n + 1] = nf + g0 * nk + i
                der[r, n + 1] = sa * b0 * (1.0 - f)
                par[r, n + 2] = nf + g0 * nk + i + 1
                der[r, n + 2] = sa * b0 * f
                n += 3
                if two_groups:
                    par[r, n] = nf + (g0 + 1) * nk + i
                    der[r, n] = sa * wg * (1.0 - f)
                    par[r, n + 1] = nf + (g0 + 1) * nk + i + 1
                    der[r, n + 1] = sa * wg * f
                    n += 2
                cnt[r] = n
        for r in range(n_rows):
            n = cnt[r]
            wr = w[r, c]
            if n == 0 or wr == 0.0:
                continue
            res = y[r, c] - model[r]
            chi2 += wr * res * res
            for u in range(n):
                du = wr * der[r, u]
                pu = par[r, u]
                rhs[pu] += du * res
                for v in range(n):
                    lhs[pu, par[r, v]] += du * der[r, v]
    return lhs, rhs, chi2


def _fit_chunk(
    image: np.ndarray,
    weight: np.ndarray,
    trace: np.ndarray,
    scale: np.ndarray,
    fiber_amp: np.ndarray,
    knot_vals: np.ndarray,
    columns: np.ndarray,
    knots: np.ndarray,
    group_centers: np.ndarray,
    smoothness: float,
    clip: float,
    n_newton: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Joint fit of fiber amplitudes and profile tables on one column chunk.

    Model of pixel (r, c): ``s_c * sum_k a_k * sum_g beta_kg * P_g(r - t_k(c))`` with the flat's
    spectral shape ``s_c`` fixed (from a first extraction), unknowns the fiber amplitudes
    ``a_k`` and the knot values of each group's table (end knots 0).  The problem is bilinear:
    Gauss-Newton on both at once converges in a few steps, where alternating the two linear
    sub-problems crawls along the near-degenerate directions (wing light vs. neighbour
    amplitudes).  A small second-difference penalty smooths the tables; the scale degeneracy
    (a * x, P / x) is fixed by a stiff penalty on each table's integral (= 1).
    Returns (amplitudes (nf,), knot values (ng, nk)).
    """
    n_rows = image.shape[0]
    n_fib = trace.shape[0]
    ng, nk = knot_vals.shape
    rows, ok, ki, kf, gi, gw = _chunk_geometry(trace, columns, knots, group_centers, n_rows)
    y = np.ascontiguousarray(image[:, columns])
    w = np.ascontiguousarray(weight[:, columns])
    npar = n_fib + ng * nk
    fixed = np.zeros(npar, bool)
    fixed[n_fib + np.arange(ng) * nk] = True
    fixed[n_fib + np.arange(ng) * nk + nk - 1] = True
    d2 = sp.diags([1.0, -2.0, 1.0], [0, 1, 2], shape=(nk - 2, nk))
    pen = sp.block_diag([d2.T @ d2] * ng).tocsr()
    tw = np.zeros(nk)
    tw[:-1] += 0.5 * np.diff(knots)
    tw[1:] += 0.5 * np.diff(knots)
    integ = np.kron(np.eye(ng), tw[None, :])  # (ng, ng*nk): integral of each table
    a = fiber_amp.astype(np.float64).copy()
    p = knot_vals.ravel().astype(np.float64).copy()
    for it in range(n_newton):
        if it == 1 and clip > 0:  # drop outliers once the model is close
            resid = _chunk_residual(y, w, rows, ok, ki, kf, gi, gw, scale, a, p, ng, nk)
            w = np.where(np.abs(resid) * np.sqrt(w) > clip, 0.0, w)
        lhs, rhs, _ = _normal_equations(y, w, rows, ok, ki, kf, gi, gw, scale, a, p, ng, nk)
        diag = np.diag(lhs)
        dscale = float(np.mean(diag[n_fib:][~fixed[n_fib:]])) or 1.0
        lam = smoothness * dscale
        lhs[n_fib:, n_fib:] += lam * pen.toarray() + 1e3 * dscale * integ.T @ integ
        rhs[n_fib:] += -lam * (pen @ p) + 1e3 * dscale * integ.T @ (1.0 - integ @ p)
        lhs[fixed, :] = 0.0
        lhs[:, fixed] = 0.0
        rhs[fixed] = 0.0
        dead = (np.diag(lhs) <= 0) | fixed
        lhs[dead, dead] = 1.0
        lhs[np.diag_indices(npar)] += 1e-9 * np.where(diag > 0, diag, dscale)
        step = splu(sp.csc_matrix(lhs)).solve(rhs)
        a += step[:n_fib]
        p += step[n_fib:]
        norm = p.reshape(ng, nk) @ tw  # renormalise: each table integrates to 1
        if np.any(~(norm > 0)):
            raise CalibrationError("profile: a table lost all its flux during the fit")
        p = (p.reshape(ng, nk) / norm[:, None]).ravel()
        a *= float(np.mean(norm))
        if np.max(np.abs(step[n_fib:])) < 1e-6 * np.max(np.abs(p)):
            break
    return a, p.reshape(ng, nk)


@njit(cache=True)
def _chunk_residual(y, w, rows, ok, ki, kf, gi, gw, scale, a, p, ng, nk):  # pragma: no cover
    """Data minus model of the chunk (n_rows, nc); 0 where no fiber window covers a pixel."""
    nf, nc, nw = rows.shape
    model = np.zeros(y.shape)
    covered = np.zeros(y.shape, np.bool_)
    for c in range(nc):
        for k in range(nf):
            g0 = gi[k]
            wg = gw[k]
            for m in range(nw):
                if not ok[k, c, m]:
                    continue
                i = ki[k, c, m]
                f = kf[k, c, m]
                pv = (1.0 - wg if ng > 1 else 1.0) * ((1 - f) * p[g0 * nk + i] + f * p[g0 * nk + i + 1])
                if ng > 1:
                    pv += wg * ((1 - f) * p[(g0 + 1) * nk + i] + f * p[(g0 + 1) * nk + i + 1])
                model[rows[k, c, m], c] += scale[c] * a[k] * pv
                covered[rows[k, c, m], c] = True
    return np.where(covered, y - model, 0.0)


def measure_profile(
    master_flat: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray,
    trace: np.ndarray,
    *,
    half_width: float = 12.0,
    n_chunks: int = 12,
    n_groups: int = 3,
    n_iter: int = 2,
    n_newton: int = 5,
    smoothness: float = 1e-2,
    clip: float = 6.0,
    initial_sigma: float = 1.4,
) -> ProfileModel:
    """Measure the pixel-integrated fiber profile on a master flat (scattered light removed).

    ``variance`` is the master flat's variance (e-^2), ``mask`` its bad pixels, ``trace``
    (112, 1032) the fiber centres.  ``n_chunks`` column chunks x ``n_groups`` slit groups of
    tables on offsets +-``half_width`` px.  Each outer iteration extracts the flat with the
    current model (giving the flat's spectral shape per column) and then fits amplitudes and
    profile jointly per chunk (:func:`_fit_chunk`); ``smoothness`` weighs a second-difference
    penalty relative to the mean data weight; pixels beyond ``clip`` sigma are dropped.
    Raises CalibrationError when the flat cannot constrain the profile.
    """
    from remedy_dask.extract import extract_optimal  # late import: extract uses ProfileModel

    image = np.asarray(master_flat, dtype=np.float64)
    var = np.asarray(variance, dtype=np.float64)
    trace = np.asarray(trace, dtype=np.float64)
    if image.ndim != 2 or image.shape != var.shape or image.shape != np.shape(mask):
        raise CalibrationError("flat, variance and mask must be 2-D arrays of one shape")
    if trace.ndim != 2 or trace.shape[1] != image.shape[1] or not np.all(np.isfinite(trace)):
        raise CalibrationError("trace must be finite with one column per image column")
    bad = np.asarray(mask, dtype=bool) | ~np.isfinite(image) | ~(var > 0)
    weight = np.where(bad, 0.0, 1.0 / np.where(bad, 1.0, var))
    image = np.where(bad, 0.0, image)
    n_fib, n_cols = trace.shape
    knots = _knot_grid(half_width)
    offsets = _uniform_grid(half_width)
    edges = np.linspace(0, n_cols, n_chunks + 1).round().astype(int)
    chunk_centers = 0.5 * (edges[:-1] + edges[1:] - 1)
    gedges = np.linspace(0, n_fib, n_groups + 1)
    group_centers = 0.5 * (gedges[:-1] + gedges[1:] - 1)
    model = gaussian_profile(initial_sigma, half_width, n_cols, n_fib)
    knot_tables = np.repeat(np.interp(knots, offsets, model.tables[0, 0])[None, None], n_chunks, 0)
    knot_tables = np.repeat(knot_tables, n_groups, 1)
    for _ in range(n_iter):
        ext = extract_optimal(image, var, bad, trace, model, poisson=False, reject=False)
        amplitude = np.where(ext.mask, np.nan, ext.spectrum)
        if np.mean(np.isfinite(amplitude)) < 0.5:
            raise CalibrationError("profile: fewer than half of the flat fiber amplitudes are usable")
        tables = np.empty((n_chunks, n_groups, offsets.size))
        for ic in range(n_chunks):
            cols = np.arange(edges[ic], edges[ic + 1])
            usable = (np.isfinite(amplitude[:, cols]).mean(axis=0) > 0.8) & (
                np.nansum(amplitude[:, cols], axis=0) > 0
            )
            if usable.sum() < 0.5 * cols.size:
                raise CalibrationError(f"profile: flat unusable in columns {cols[0]}-{cols[-1]}")
            cols = cols[usable]  # e.g. a masked bad column drops out of its chunk
            amp = amplitude[:, cols]
            total = np.nansum(amp, axis=0)
            scale = total / total.mean()
            fiber_amp = np.nan_to_num(np.nanmedian(amp / scale, axis=1))
            _, knot_tables[ic] = _fit_chunk(
                image, weight, trace, scale, fiber_amp, knot_tables[ic], cols, knots,
                group_centers, smoothness, clip, n_newton,
            )
            for ig in range(n_groups):
                tab = np.interp(offsets, knots, knot_tables[ic, ig])
                norm = np.trapezoid(tab, offsets)
                if not np.isfinite(norm) or norm <= 0:
                    raise CalibrationError(f"profile: chunk {ic} group {ig} has no flux")
                tables[ic, ig] = tab / norm
        model = ProfileModel(offsets, tables, chunk_centers, group_centers)
    model.validate()
    return model
