"""Flux-conserving resampling of extracted spectra (e-/pixel) onto the common grid (e-/A).

Each native pixel i of a fiber covers [e_i, e_i+1] in wavelength, with edges halfway between the
pixel-centre wavelengths (extrapolated linearly at both ends).  Its electrons are spread
uniformly over that interval, so the electrons of an output bin [o_j, o_j+1] are a sum of whole
pixels plus fractions of the two end pixels (the cumulative electron count interpolated linearly
at the output edges).  Divided by the bin width this gives e-/A; the total is conserved exactly
where the fiber covers the bin.

Errors are propagated with the squared weights, sigma_j^2 = sum_i W_ji^2 sigma_i^2.  Adjacent
output bins share exactly one input pixel (the one containing their common edge), so they are
correlated: cov(j, j+1) = W_j,p W_j+1,p sigma_p^2.  :func:`adjacent_correlation` returns that
coefficient (typically 0.1-0.4 for 2 A bins on ~2 A pixels); the per-bin errors are the marginal
errors and ignore it, so chi^2 sums over many adjacent bins must account for it.
"""

from __future__ import annotations

import numpy as np

from remedy_dask.errors import CalibrationError
from remedy_dask.geometry import DEF_WAVE
from remedy_dask.amp.rectify_kernel import adjacent_correlation_fibers, rectify_fibers


def pixel_edges(wavelength: np.ndarray) -> np.ndarray:
    """Wavelength edges (n, m+1) of the pixels of each fiber from the centres (n, m)."""
    w = np.asarray(wavelength, dtype=np.float64)
    mid = 0.5 * (w[:, 1:] + w[:, :-1])
    first = w[:, :1] - (mid[:, :1] - w[:, :1])
    last = w[:, -1:] + (w[:, -1:] - mid[:, -1:])
    return np.concatenate([first, mid, last], axis=1)


def _output_edges(wave_out: np.ndarray) -> np.ndarray:
    w = np.asarray(wave_out, dtype=np.float64)
    if w.ndim != 1 or w.size < 2 or np.any(np.diff(w) <= 0):
        raise CalibrationError("rectify: the output wavelength grid must increase")
    mid = 0.5 * (w[1:] + w[:-1])
    return np.concatenate([[w[0] - (mid[0] - w[0])], mid, [w[-1] + (w[-1] - mid[-1])]])


def _placeholder_edges(out_edges: np.ndarray, m: int) -> np.ndarray:
    """Harmless increasing edges for fibers without a valid solution (their output is masked)."""
    return np.linspace(out_edges[0] - 10.0, out_edges[-1] + 10.0, m + 1)[None, :]


def _valid_fibers(edges: np.ndarray) -> np.ndarray:
    return np.all(np.isfinite(edges), axis=1) & np.all(np.diff(edges, axis=1) > 0, axis=1)


def rectify(
    spectrum: np.ndarray,
    error: np.ndarray,
    mask: np.ndarray,
    wavelength: np.ndarray,
    wave_out: np.ndarray = DEF_WAVE,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resample (n, m) e-/pixel spectra to (n, len(wave_out)) e-/A, conserving electrons.

    Returns ``flux`` (e-/A), ``error`` (e-/A, squared-weight propagation) and ``mask``.  An
    output bin is masked (flux and error NaN) if any input pixel contributing to it is masked or
    not finite, if the fiber does not cover the whole bin, or if the fiber's wavelength
    solution is not finite and increasing (the whole fiber is then masked).
    """
    spec = np.asarray(spectrum, dtype=np.float64)
    err = np.asarray(error, dtype=np.float64)
    bad = np.asarray(mask, dtype=bool) | ~np.isfinite(spec) | ~np.isfinite(err)
    if spec.ndim != 2 or err.shape != spec.shape or bad.shape != spec.shape:
        raise CalibrationError("rectify: spectrum, error and mask must be 2-D of one shape")
    if np.shape(wavelength) != spec.shape:
        raise CalibrationError(f"rectify: wavelength shape {np.shape(wavelength)} != {spec.shape}")
    n, m = spec.shape
    out_edges = _output_edges(wave_out)
    edges = pixel_edges(wavelength)
    good_fiber = _valid_fibers(edges)
    edges = np.where(good_fiber[:, None], edges, _placeholder_edges(out_edges, m))
    span = float(np.nanmax(edges) - np.nanmin(edges)) + float(np.ptp(out_edges)) + 1.0
    flux = np.empty((n, out_edges.size - 1))
    sigma = np.empty_like(flux)
    out_mask = np.empty(flux.shape, bool)
    rectify_fibers(spec, err, bad, np.ascontiguousarray(edges), good_fiber, out_edges, span,
                   flux, sigma, out_mask)
    return flux, sigma, out_mask


def adjacent_correlation(
    error: np.ndarray, wavelength: np.ndarray, wave_out: np.ndarray = DEF_WAVE
) -> np.ndarray:
    """Correlation coefficient (n, len(wave_out) - 1) between neighbouring rectified bins.

    Bins j and j+1 share only the input pixel p holding their common edge, with weights
    (1 - a) and a (a = fraction of p below the edge) of their electrons:
    cov = W_j,p W_j+1,p sigma_p^2, divided by the product of the two bins' errors.
    """
    err = np.asarray(error, dtype=np.float64)
    if err.ndim != 2 or np.shape(wavelength) != err.shape:
        raise CalibrationError(f"adjacent_correlation: error {err.shape} and wavelength "
                               f"{np.shape(wavelength)} must be 2-D of one shape")
    n, m = err.shape
    out_edges = _output_edges(wave_out)
    edges = pixel_edges(wavelength)
    good = _valid_fibers(edges)
    edges = np.where(good[:, None], edges, _placeholder_edges(out_edges, m))
    span = float(np.nanmax(edges) - np.nanmin(edges)) + float(np.ptp(out_edges)) + 1.0
    v = np.where(np.isfinite(err), err**2, 0.0)
    rho = np.empty((n, out_edges.size - 2))
    adjacent_correlation_fibers(v, np.ascontiguousarray(edges), good, out_edges, span, rho)
    return rho
