"""Joint optimal extraction of neighbouring point sources (deblending).

Sources closer than ``group_radius`` to each other (transitively) form a group; the fluxes of a
group are fitted together, wavelength by wavelength, to the fibers near any member:

    d_ij = sum_k F_kj w_ijk + noise,   w_ijk = PSF fraction of source k in fiber i at lambda j,

by weighted linear least squares (normal equations ``M F = b`` with ``M_kl = sum_i w_ik w_il /
s_i^2``, ``b_k = sum_i w_ik d_i / s_i^2``; errors from ``diag(M^-1)``).  A single source reduces
to the Horne extraction of :func:`remedy_dask.observation.sources.extract_source`.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from remedy_dask.observation.psf import PSFLike, good_pixels
from remedy_dask.observation.sources import nearby_fibers, extract_source, source_weights


def source_groups(x0: np.ndarray, y0: np.ndarray, group_radius: float) -> np.ndarray:
    """Group label of each source: connected components of the 'closer than' graph."""
    pts = np.column_stack([np.atleast_1d(x0), np.atleast_1d(y0)])
    if len(pts) == 0:
        return np.zeros(0, int)
    graph = cKDTree(pts).sparse_distance_matrix(cKDTree(pts), group_radius, output_type="coo_matrix")
    return connected_components(graph, directed=False)[1]


def extract_group(flux: np.ndarray, error: np.ndarray, mask: np.ndarray | None,
                  fiber_x: np.ndarray, fiber_y: np.ndarray, x0: np.ndarray, y0: np.ndarray,
                  psf: PSFLike, dar: np.ndarray | None = None, exposure: np.ndarray | None = None,
                  radius: float = 5.0, min_coverage: float = 0.1
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Joint extraction of the sources ``(x0, y0)``: (spectra, errors, coverage) (n_src, n_wave)."""
    flux = np.asarray(flux)
    n_wave, n_src = flux.shape[1], len(x0)
    sel = np.unique(np.concatenate([nearby_fibers(fiber_x, fiber_y, a, b, dar, n_wave, radius)
                                    for a, b in zip(x0, y0)]))
    spec = np.full((n_src, n_wave), np.nan)
    err = np.full_like(spec, np.nan)
    cov = np.zeros_like(spec)
    if sel.size == 0:
        return spec, err, cov
    d = flux[sel].astype(float)
    s = np.asarray(error)[sel].astype(float)
    good = good_pixels(d, s, None if mask is None else np.asarray(mask)[sel])
    exp_sel = None if exposure is None else np.asarray(exposure)[sel]
    fx, fy = np.asarray(fiber_x)[sel], np.asarray(fiber_y)[sel]
    w = np.stack([np.where(good, source_weights(fx, fy, a, b, psf, dar, n_wave, exp_sel), 0.0)
                  for a, b in zip(x0, y0)])  # (n_src, n_fib, n_wave)
    ivar = np.where(good, 1.0 / np.where(good, s, 1.0) ** 2, 0.0)
    m = np.einsum("kij,lij,ij->jkl", w, w, ivar)  # (n_wave, n_src, n_src)
    b = np.einsum("kij,ij->jk", w, np.where(good, d, 0.0) * ivar)
    cov[:] = w.sum(axis=1)
    diag = np.einsum("jkk->jk", m)
    ok = np.all(diag > 0, axis=1) & np.all(cov >= min_coverage, axis=0)
    if not ok.any():
        return spec, err, cov
    inv = np.linalg.pinv(m[ok], rcond=1e-8, hermitian=True)
    spec[:, ok] = np.einsum("jkl,jl->kj", inv, b[ok])
    err[:, ok] = np.sqrt(np.clip(np.einsum("jkk->kj", inv), 0.0, None))
    return spec, err, cov


def extract_sources_deblended(flux: np.ndarray, error: np.ndarray, mask: np.ndarray | None,
                              fiber_x: np.ndarray, fiber_y: np.ndarray, x0: np.ndarray,
                              y0: np.ndarray, psf: PSFLike, dar: np.ndarray | None = None,
                              exposure: np.ndarray | None = None, radius: float = 5.0,
                              min_coverage: float = 0.1, group_radius: float = 6.0
                              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Like :func:`remedy_dask.observation.sources.extract_sources`, with the sources closer
    than ``group_radius`` arcsec to another extracted jointly (:func:`extract_group`)."""
    x0, y0 = np.atleast_1d(x0).astype(float), np.atleast_1d(y0).astype(float)
    n_wave = np.asarray(flux).shape[1]
    spec = np.full((x0.size, n_wave), np.nan)
    err = np.full_like(spec, np.nan)
    cov = np.zeros_like(spec)
    labels = source_groups(x0, y0, group_radius)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if members.size == 1:
            k = members[0]
            res = extract_source(flux, error, mask, fiber_x, fiber_y, x0[k], y0[k], psf, dar,
                                 exposure, radius, min_coverage)
            spec[k], err[k], cov[k] = res.spectrum, res.error, res.coverage
            continue
        spec[members], err[members], cov[members] = extract_group(
            flux, error, mask, fiber_x, fiber_y, x0[members], y0[members], psf, dar, exposure,
            radius, min_coverage)
    return spec, err, cov
