"""Fit of the extraction profile model (:class:`ProfileModel`) on a master flat.

Fitting: an extraction of the flat with the current model gives the flat's spectral shape per
column; then amplitudes and tables of each column chunk are fitted jointly (Gauss-Newton on the
bilinear model, all pixels of the chunk, neighbours' overlapping wings included).  The normal
equations come from sufficient statistics accumulated in one pass over the chunk's pixels
(:mod:`remedy_dask.amp.profile.kernels`), so a Newton step costs no pass over the pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import LinAlgError, cho_factor, cho_solve, solve

from remedy_dask.amp.extract.optimal import extract_optimal
from remedy_dask.amp.profile import kernels as pk
from remedy_dask.amp.profile.model import ProfileModel, bracket, gaussian_profile, uniform_grid
from remedy_dask.errors import CalibrationError


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


@dataclass(frozen=True)
class _KnotBasis:
    """Fit knots of the tables and what the kernels derive from them (built once per fit)."""

    knots: np.ndarray
    left: np.ndarray  # left-knot index on a grid of step h from knots[0]
    h: float
    pen: np.ndarray  # (ng*nk)^2 second-difference penalty
    tw: np.ndarray  # (nk,) trapezoid weights: integral of a table
    integ: np.ndarray  # (ng, ng*nk) integral of each table
    integ2: np.ndarray  # integ^T integ


def _knot_basis(half_width: float, ng: int) -> _KnotBasis:
    knots = _knot_grid(half_width)
    nk = knots.size
    h = 0.5 * float(np.min(np.diff(knots)))
    grid = knots[0] + h * np.arange(int(np.ceil((knots[-1] - knots[0]) / h)) + 1)
    left = np.clip(np.searchsorted(knots, grid, side="right") - 1, 0, nk - 2).astype(np.int64)
    d2 = np.diff(np.eye(nk), n=2, axis=0)
    tw = np.zeros(nk)
    tw[:-1] += 0.5 * np.diff(knots)
    tw[1:] += 0.5 * np.diff(knots)
    integ = np.kron(np.eye(ng), tw[None, :])
    return _KnotBasis(knots, left, h, np.kron(np.eye(ng), d2.T @ d2), tw, integ, integ.T @ integ)


@dataclass(frozen=True)
class _ChunkSetup:
    """Pixel geometry of one column chunk: which knots every fiber's window rows fall on."""

    columns: np.ndarray
    geometry: tuple[np.ndarray, np.ndarray, np.ndarray]  # base, kidx, kfrac of the kernels
    lo_pair: np.ndarray
    span: np.ndarray
    width: int


def _chunk_setup(
    trace: np.ndarray, columns: np.ndarray, basis: _KnotBasis, n_rows: int
) -> _ChunkSetup:
    trace_cols = np.ascontiguousarray(trace[:, columns])
    hw = float(basis.knots[-1])
    n_fib = trace.shape[0]
    band = 1  # largest fiber-index distance at which two windows overlap
    while band < n_fib - 1 and np.any(trace_cols[band + 1 :] - trace_cols[: -band - 1] < 2 * hw):
        band += 1
    geometry = pk.chunk_geometry(trace_cols, basis.knots, basis.left, basis.h, hw, n_rows)
    lo_pair, span, width = pk.pair_knot_ranges(geometry[0], geometry[1], basis.knots.size, band)
    return _ChunkSetup(columns, geometry, lo_pair, span, int(width))


def _newton_step(stats: tuple[np.ndarray, ...], setup: _ChunkSetup, basis: _KnotBasis,
                 a: np.ndarray, p: np.ndarray, shape: tuple[int, int], group_index: np.ndarray,
                 group_weight: np.ndarray, fixed: np.ndarray, smoothness: float,
                 workspace: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """One Gauss-Newton step of :func:`_fit_chunk` from the normal equations and penalties."""
    g_self, g_pair, v = stats
    scratch, lhs = workspace
    n_fib = a.size

    def assemble() -> np.ndarray:  # normal equations and penalties, lhs in place; returns rhs
        rhs = pk.normal_equations(
            g_self, g_pair, setup.lo_pair, setup.span, v, a, p.reshape(shape), group_index,
            group_weight, scratch, lhs,
        )
        pk.regularise(lhs, rhs, p, basis.pen, basis.integ, basis.integ2, fixed, n_fib, smoothness)
        return rhs

    rhs = assemble()
    try:  # in place (lhs.T: the Fortran-ordered view of the symmetric matrix, no copy)
        return cho_solve(cho_factor(lhs.T, overwrite_a=True, check_finite=False), rhs,
                         check_finite=False)
    except LinAlgError:  # not positive definite (not seen in practice): LU, matrix rebuilt
        rhs = assemble()
        return solve(lhs, rhs, check_finite=False)


def _fit_chunk(
    image: np.ndarray,
    weight: np.ndarray,
    setup: _ChunkSetup,
    basis: _KnotBasis,
    scale: np.ndarray,
    fiber_amp: np.ndarray,
    knot_vals: np.ndarray,
    group_index: np.ndarray,
    group_weight: np.ndarray,
    smoothness: float,
    clip: float,
    n_newton: int,
    tol: float,
    workspace: tuple[np.ndarray, np.ndarray],
    drop: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Joint fit of fiber amplitudes and profile tables on one column chunk.

    Model of pixel (r, c): ``s_c * sum_k a_k * sum_g beta_kg * P_g(r - t_k(c))`` with the flat's
    spectral shape ``s_c`` fixed (from a first extraction), unknowns the fiber amplitudes
    ``a_k`` and the knot values of each group's table (end knots 0); fiber k interpolates
    between groups ``group_index[k]`` and the next with weight ``group_weight[k]``.  The problem
    is bilinear: Gauss-Newton on both at once converges in a few steps, where alternating the
    two linear sub-problems crawls along the near-degenerate directions (wing light vs.
    neighbour amplitudes).  A small second-difference penalty smooths the tables; the scale
    degeneracy (a * x, P / x) is fixed by a stiff penalty on each table's integral (= 1).
    The normal equations come from per-chunk sufficient statistics
    (:mod:`remedy_dask.amp.profile.kernels`): one pass over the pixels, and one over the pixels that
    the ``clip`` drops after the first step, unless ``drop`` (n_rows, n_columns) gives the
    pixels to leave out from the start (those a previous fit of the chunk clipped).  Stops once
    the largest knot step is below ``tol`` times the largest knot value (at least two steps
    when clipping).  ``workspace``: two (npar, npar) scratch arrays, npar = n_fib + ng * nk
    (reused between chunks).
    Returns (amplitudes (nf,), knot values (ng, nk), dropped pixels or None).
    """
    n_fib = fiber_amp.size
    ng, nk = knot_vals.shape
    cols = setup.columns
    y = np.ascontiguousarray(image[:, cols])
    w = np.ascontiguousarray(weight[:, cols])
    clip_later = clip > 0 and drop is None
    if drop is not None:
        w[drop] = 0.0
    band = setup.lo_pair.shape[1]
    g_self = np.zeros((n_fib, nk, 2))
    g_pair = np.zeros((n_fib, band, nk, setup.width))
    v = np.zeros((n_fib, nk))
    pk.accumulate_stats(y, w, scale, *setup.geometry, setup.lo_pair, g_self, g_pair, v)
    npar = n_fib + ng * nk
    fixed = np.zeros(npar, bool)
    fixed[n_fib + np.arange(ng) * nk] = True
    fixed[n_fib + np.arange(ng) * nk + nk - 1] = True
    a = fiber_amp.astype(np.float64).copy()
    p = knot_vals.ravel().astype(np.float64).copy()
    stats = (g_self, g_pair, v)

    for it in range(n_newton):
        if it == 1 and clip_later:  # drop outliers once the model is close
            q = pk.fiber_knots(p.reshape(ng, nk), group_index, group_weight, ng > 1)
            resid = pk.chunk_residual(y, scale, *setup.geometry, a, q)
            drop = np.abs(resid) * np.sqrt(w) > clip
            if drop.any():  # remove the dropped pixels from the statistics
                pk.accumulate_stats(y, np.where(drop, -w, 0.0), scale, *setup.geometry,
                                    setup.lo_pair, g_self, g_pair, v)
        step = _newton_step(stats, setup, basis, a, p, (ng, nk), group_index, group_weight,
                            fixed, smoothness, workspace)
        a += step[:n_fib]
        p += step[n_fib:]
        norm = p.reshape(ng, nk) @ basis.tw  # renormalise: each table integrates to 1
        if np.any(~(norm > 0)):
            raise CalibrationError("profile: a table lost all its flux during the fit")
        p = (p.reshape(ng, nk) / norm[:, None]).ravel()
        a *= float(np.mean(norm))
        converged = np.max(np.abs(step[n_fib:])) < tol * np.max(np.abs(p))
        if converged and it >= (1 if clip_later else 0):
            break
    return a, p.reshape(ng, nk), drop


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
    tol: float = 1e-3,
) -> ProfileModel:
    """Measure the pixel-integrated fiber profile on a master flat (scattered light removed).

    ``variance`` is the master flat's variance (e-^2), ``mask`` its bad pixels, ``trace``
    (112, 1032) the fiber centres.  ``n_chunks`` column chunks x ``n_groups`` slit groups of
    tables on offsets +-``half_width`` px.  Each outer iteration extracts the flat with the
    current model (giving the flat's spectral shape per column) and then fits amplitudes and
    profile jointly per chunk (:func:`_fit_chunk`); ``smoothness`` weighs a second-difference
    penalty relative to the mean data weight; pixels beyond ``clip`` sigma (after the first
    step of the first iteration) are dropped, in later iterations from the start.
    Each chunk fit takes at most ``n_newton`` Gauss-Newton steps and stops once a step moves
    the knots by less than ``tol`` of the table peak (the steps shrink ~100x each: what is left
    is ~1e-5 of the peak, far below the profile's noise).
    Raises CalibrationError when the flat cannot constrain the profile.
    """
    image, var, bad, weight, trace = _flat_inputs(master_flat, variance, mask, trace)
    n_fib, n_cols = trace.shape
    basis = _knot_basis(half_width, n_groups)
    knots = basis.knots
    offsets = uniform_grid(half_width)
    edges = np.linspace(0, n_cols, n_chunks + 1).round().astype(int)
    chunk_centers = 0.5 * (edges[:-1] + edges[1:] - 1)
    group_centers, gi, gw = _slit_groups(n_fib, n_groups)
    setups: list[_ChunkSetup | None] = [None] * n_chunks
    drops: list[np.ndarray | None] = [None] * n_chunks  # pixels clipped by the first iteration
    npar = n_fib + n_groups * knots.size
    workspace = (np.empty((npar, npar)), np.empty((npar, npar)))
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
            cols = _usable_columns(amplitude, edges[ic], edges[ic + 1])
            setup = setups[ic]
            if setup is None or not np.array_equal(setup.columns, cols):
                setup = setups[ic] = _chunk_setup(trace, cols, basis, image.shape[0])
                drops[ic] = None
            amp = amplitude[:, cols]
            total = np.nansum(amp, axis=0)
            scale = total / total.mean()
            fiber_amp = np.nan_to_num(np.nanmedian(amp / scale, axis=1))
            _, knot_tables[ic], drops[ic] = _fit_chunk(
                image, weight, setup, basis, scale, fiber_amp, knot_tables[ic], gi, gw,
                smoothness, clip, n_newton, tol, workspace, drops[ic],
            )
            for ig in range(n_groups):
                tables[ic, ig] = _unit_table(offsets, knots, knot_tables[ic, ig], ic, ig)
        model = ProfileModel(offsets, tables, chunk_centers, group_centers)
    model.validate()
    return model


def _flat_inputs(master_flat: np.ndarray, variance: np.ndarray, mask: np.ndarray,
                 trace: np.ndarray) -> tuple[np.ndarray, ...]:
    """Checked float64 flat (0 on bad pixels), variance, bad pixels, weights 1/variance (0 on
    bad pixels) and trace."""
    image = np.asarray(master_flat, dtype=np.float64)
    var = np.asarray(variance, dtype=np.float64)
    trace = np.asarray(trace, dtype=np.float64)
    if image.ndim != 2 or image.shape != var.shape or image.shape != np.shape(mask):
        raise CalibrationError("flat, variance and mask must be 2-D arrays of one shape")
    if trace.ndim != 2 or trace.shape[1] != image.shape[1] or not np.all(np.isfinite(trace)):
        raise CalibrationError("trace must be finite with one column per image column")
    bad = np.asarray(mask, dtype=bool) | ~np.isfinite(image) | ~(var > 0)
    weight = np.where(bad, 0.0, 1.0 / np.where(bad, 1.0, var))
    return np.where(bad, 0.0, image), var, bad, weight, trace


def _slit_groups(n_fib: int, n_groups: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centres (fiber index) of the slit groups, and each fiber's bracketing group and weight."""
    gedges = np.linspace(0, n_fib, n_groups + 1)
    group_centers = 0.5 * (gedges[:-1] + gedges[1:] - 1)
    if n_groups == 1:
        gi, gw = np.zeros(n_fib, np.int64), np.zeros(n_fib)
    else:
        gi, gw = bracket(group_centers, np.arange(n_fib, dtype=float))
    return group_centers, gi.astype(np.int64), gw.astype(np.float64)


def _usable_columns(amplitude: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Columns of a chunk with most fiber amplitudes usable (a masked bad column drops out)."""
    cols = np.arange(start, stop)
    usable = (np.isfinite(amplitude[:, cols]).mean(axis=0) > 0.8) & (
        np.nansum(amplitude[:, cols], axis=0) > 0
    )
    if usable.sum() < 0.5 * cols.size:
        raise CalibrationError(f"profile: flat unusable in columns {cols[0]}-{cols[-1]}")
    return cols[usable]


def _unit_table(offsets: np.ndarray, knots: np.ndarray, knot_values: np.ndarray, ic: int,
                ig: int) -> np.ndarray:
    """A chunk-group profile on ``offsets``, normalised to unit integral."""
    tab = np.interp(offsets, knots, knot_values)
    norm = np.trapezoid(tab, offsets)
    if not np.isfinite(norm) or norm <= 0:
        raise CalibrationError(f"profile: chunk {ic} group {ig} has no flux")
    return tab / norm
