"""The 3-D matched filter of emission-line detection (step 2 of :mod:`remedy_dask.observation.detect.lines`).

For a line of flux F at sky position p and wavelength l0 the data are
``d_ij = F w_i(p, l_j) G(l_j - l0)`` (``w`` the fiber-integrated PSF with DAR, ``G`` a unit-flux
Gaussian line profile per Angstrom).  On a grid of positions and at every pixel wavelength,
``num = sum w G d / s^2`` and ``den = sum w^2 G^2 / s^2``; S/N = num / sqrt(den).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage, sparse
from scipy.spatial import cKDTree

from remedy_dask.observation.cube import ImageGrid, dar_chunks
from remedy_dask.observation.psf import PSFLike, RadialPSF, evaluate_psf
from remedy_dask.observation.detect.psf_weights import add_weighted_sums, shifted_weights


def line_kernel(sigma_a: float, step: float) -> np.ndarray:
    """Unit-flux Gaussian line profile (per Angstrom) sampled at pixel offsets."""
    half = int(np.ceil(4.0 * sigma_a / step))
    off = np.arange(-half, half + 1) * step
    return np.exp(-0.5 * (off / sigma_a) ** 2) / (sigma_a * np.sqrt(2.0 * np.pi))


def _lookup_tables(psf: PSFLike, exposure: np.ndarray | None):
    """(step, n_r, table, slope, r_max, per_exposure) of the index lookup of
    :func:`_radial_lookup`, or None if the PSFs do not allow it."""
    psfs = [psf] if isinstance(psf, RadialPSF) else list(psf)
    step = psfs[0].r[1] - psfs[0].r[0] if len(psfs[0].r) > 1 else 0.0
    n_r = max(len(p.r) for p in psfs)
    grid = np.arange(n_r) * step
    per_exposure = not isinstance(psf, RadialPSF)
    uniform = step > 0 and all(np.allclose(p.r, grid[: len(p.r)], rtol=0, atol=1e-9 * step)
                               for p in psfs)
    indexed = not per_exposure or (exposure is not None
                                   and np.isin(exposure, np.arange(len(psfs))).all())
    if not (uniform and indexed):
        return None
    table = np.array([np.pad(p.fraction, (0, n_r - len(p.r)), mode="edge") for p in psfs])
    slope = np.diff(table, axis=1, append=0.0).ravel()  # per step, from each node
    r_max = np.array([p.r_max for p in psfs])
    return float(step), n_r, table.ravel(), slope, r_max, per_exposure


def _radial_lookup(psf: PSFLike, exposure: np.ndarray | None):
    """``f(r, exposure_of_r)`` = :func:`evaluate_psf` at distances ``r``.

    PSFs tabulated on one uniform radial grid from 0 (the default of
    :func:`remedy_dask.observation.psf.fiber_integrated_moffat`; lengths may differ) are interpolated
    linearly by index, 10x faster than ``np.interp``'s search; others go to ``evaluate_psf``.
    """
    tables = _lookup_tables(psf, exposure)
    if tables is None:
        return lambda r, exp: evaluate_psf(psf, r, np.zeros(1), exp)
    step, n_r, table, slope, r_max, per_exposure = tables

    def lookup(r: np.ndarray, exp: np.ndarray | None) -> np.ndarray:
        t = r / step
        k = np.minimum(t.astype(np.intp), n_r - 2)
        t -= k
        if per_exposure:
            k += np.asarray(exp, np.intp) * n_r
        val = table.take(k) + slope.take(k) * t
        beyond = r > (r_max[exp] if per_exposure else r_max[0])
        return np.where(beyond, 0.0, val)

    return lookup


def _psf_matrices(px, py, fiber_x, fiber_y, psf: PSFLike, exposure, cutoff: float,
                  shifts: np.ndarray):
    """For each shift (n_shift, 2): the sparse (n_points, n_fibers) float32 PSF weights of a
    source at each point plus the shift seen by each fiber within ``cutoff`` (CSR).

    The point-fiber pairs are found once (within ``cutoff`` plus the largest shift from the
    middle of the shifts); each matrix only recomputes their distances (compiled,
    :mod:`remedy_dask.observation.detect.psf_weights`, when the PSFs allow the index lookup).
    """
    centre = 0.5 * (shifts.min(axis=0) + shifts.max(axis=0))
    reach = float(np.max(np.hypot(*(shifts - centre).T)))
    tp = cKDTree(np.column_stack([px + centre[0], py + centre[1]]))
    tf = cKDTree(np.column_stack([fiber_x, fiber_y]))
    pairs = tp.sparse_distance_matrix(tf, cutoff + reach + 1e-6, output_type="ndarray")
    n_fib = len(fiber_x)
    key = np.sort(pairs["i"].astype(np.int64) * n_fib + pairs["j"])  # CSR order
    i, j = key // n_fib, key % n_fib
    exp_j = None if exposure is None else np.asarray(exposure)[j]
    dx0, dy0 = px[i] - fiber_x[j], py[i] - fiber_y[j]
    tables = _lookup_tables(psf, exposure)
    if tables is not None:
        step, n_r, table, slope, r_max, per_exposure = tables
        rows = (np.asarray(exp_j, np.intp) if per_exposure else np.zeros(i.size, np.intp))
        for d in shifts:
            vals, cols, indptr = shifted_weights(i, j, dx0, dy0, rows, float(d[0]), float(d[1]),
                                                 float(cutoff**2), step, n_r, table, slope,
                                                 r_max, len(px))
            yield sparse.csr_matrix((vals, cols, indptr), shape=(len(px), n_fib))
        return
    lookup = _radial_lookup(psf, exposure)
    for d in shifts:
        r2 = (dx0 + d[0]) ** 2 + (dy0 + d[1]) ** 2
        keep = r2 <= cutoff**2
        r = np.sqrt(r2[keep])
        vals = lookup(r, None if exp_j is None else exp_j[keep]).astype(np.float32)
        indptr = np.concatenate([[0], np.cumsum(np.bincount(i[keep], minlength=len(px)))])
        yield sparse.csr_matrix((vals, j[keep], indptr), shape=(len(px), n_fib))


def _spread(a: np.ndarray, sl: slice, lo: int, hi: int, kernel: np.ndarray) -> np.ndarray:
    """Columns ``lo:hi`` of ``a`` zeroed outside ``sl`` and correlated with ``kernel`` (float32)."""
    block = np.zeros((a.shape[0], hi - lo))
    block[:, sl.start - lo : sl.stop - lo] = a[:, sl]
    return ndimage.correlate1d(block, kernel, axis=1, mode="constant", cval=0.0).astype(np.float32)


def matched_filter_cube(
    resid: np.ndarray,
    ivar: np.ndarray,
    fiber_x: np.ndarray,
    fiber_y: np.ndarray,
    grid: ImageGrid,
    psf: PSFLike,
    dxy: np.ndarray,
    line_sigma: float,
    wave_step: float,
    exposure: np.ndarray | None = None,
    max_dar_step: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """(num, den) arrays of shape (ny, nx, n_wave), float32: see the module doc.

    The PSF weights are constant within each DAR chunk (``max_dar_step``), so the line profile
    is applied to the fiber spectra of each chunk (zero outside it) before the spatial sum: the
    same sums as filtering the grid cube along wavelength, on 8x fewer spectra.
    """
    px, py = grid.points()
    n_wave = resid.shape[1]
    num = np.zeros((px.size, n_wave), dtype=np.float32)
    den = np.zeros_like(num)
    g = line_kernel(line_sigma, wave_step)
    half = len(g) // 2
    data = resid * ivar
    chunks = dar_chunks(dxy, max_dar_step)
    # a source at point p is seen at p + dar: shift the grid by each chunk's mean DAR
    shifts = np.array([dxy[:, sl].mean(axis=1) for sl in chunks])
    cutoff = 3.5
    for sl, w in zip(chunks, _psf_matrices(px, py, fiber_x, fiber_y, psf, exposure, cutoff,
                                           shifts)):
        lo, hi = max(sl.start - half, 0), min(sl.stop + half, n_wave)
        add_weighted_sums(w.indptr, w.indices, w.data, _spread(data, sl, lo, hi, g),
                          _spread(ivar, sl, lo, hi, g**2), lo, num, den)
    shape = (grid.ny, grid.nx, n_wave)
    return num.reshape(shape), den.reshape(shape)
