"""Photometric calibration from the field stars: per-exposure normalisation (transparency x
mirror illumination when there are no guider frames) and a zero point with outlier rejection.

Per-exposure normalisation: every calibration star is extracted from each exposure alone; its
all-exposure flux is the inverse-variance mean of the normalised exposure fluxes, and the
normalisation of an exposure is the median over stars of (exposure flux / all-exposure flux),
iterated and scaled to a geometric mean of 1 (the absolute level is the zero point's job).

Zero point: ``delta = median(g_catalog - g_virus)`` of the stars that pass the selection rules of
:mod:`remedy_dask.observation.starselect` and lie in the magnitude range, iteratively clipped at
``clip`` x max(1.4826 MAD, floor) (variable stars and catalogue mismatches); its error is
``1.2533 sigma / sqrt(n)`` (the standard error of a median).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from remedy_dask.errors import CalibrationError
from remedy_dask.observation.fluxcal import photometric_offset
from remedy_dask.observation.psf import RadialPSF
from remedy_dask.observation.sources import extract_source

MAD_TO_SIGMA = 1.4826
MEDIAN_ERROR = 1.2533  # standard error of a median / that of a mean (Gaussian)


def per_exposure_fluxes(flux: np.ndarray, error: np.ndarray, bad: np.ndarray, fiber_x: np.ndarray,
                        fiber_y: np.ndarray, exposure: np.ndarray, x: np.ndarray, y: np.ndarray,
                        psfs: list[RadialPSF], dar: np.ndarray | None, band: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray]:
    """(n_star, n_exp) band-mean total flux of each star in each exposure alone and its error.

    Optimal extraction with that exposure's PSF; ``band`` (n_wave,) bool selects the wavelengths
    averaged.  NaN where the star has no data in an exposure.
    """
    exposure = np.asarray(exposure)
    x, y = np.atleast_1d(x), np.atleast_1d(y)
    out = np.full((x.size, len(psfs)), np.nan)
    err = np.full_like(out, np.nan)
    for e, psf in enumerate(psfs):
        rows = np.flatnonzero(exposure == e)
        if rows.size == 0:
            continue
        for s in range(x.size):
            res = extract_source(flux[rows], error[rows], bad[rows], fiber_x[rows], fiber_y[rows],
                                 float(x[s]), float(y[s]), psf, dar)
            spec, sig = res.spectrum[band], res.error[band]
            ok = np.isfinite(spec) & np.isfinite(sig)
            if ok.sum() < 0.5 * band.sum():
                continue
            out[s, e] = spec[ok].mean()
            err[s, e] = np.sqrt(np.sum(sig[ok] ** 2)) / ok.sum()
    return out, err


@dataclass
class ExposureNorm:
    """Relative throughput of each exposure (geometric mean 1) from the field stars."""

    norm: np.ndarray  # (n_exp,)
    error: np.ndarray  # (n_exp,) 1-sigma, relative
    ratio: np.ndarray  # (n_star, n_exp) star flux / its all-exposure flux (normalised)
    n_stars: int


def exposure_normalisation(flux: np.ndarray, error: np.ndarray, min_stars: int = 3,
                           n_iter: int = 5) -> ExposureNorm:
    """Per-exposure normalisation from (n_star, n_exp) star fluxes (see the module docstring).

    Stars need a positive flux in every exposure.  Raises :class:`CalibrationError` with fewer
    than ``min_stars`` such stars.
    """
    flux, error = np.asarray(flux, float), np.asarray(error, float)
    ok = np.all(np.isfinite(flux) & (flux > 0) & np.isfinite(error) & (error > 0), axis=1)
    if ok.sum() < min_stars:
        raise CalibrationError(f"exposure_normalisation: {ok.sum()} stars with flux in every "
                               f"exposure, need {min_stars}")
    f, s = flux[ok], error[ok]
    norm = np.ones(flux.shape[1])
    for _ in range(n_iter):
        ivar = (norm / s) ** 2
        total = np.sum(f / norm * ivar, axis=1) / np.sum(ivar, axis=1)
        ratio = f / total[:, None]
        norm = np.median(ratio, axis=0)
        norm = norm / np.exp(np.mean(np.log(norm)))
    total = np.sum(f / norm * (norm / s) ** 2, axis=1) / np.sum((norm / s) ** 2, axis=1)
    ratio = f / total[:, None]
    resid = ratio / norm - 1.0
    sigma = MAD_TO_SIGMA * np.median(np.abs(resid - np.median(resid, axis=0)), axis=0)
    sigma = np.maximum(sigma, np.median(s / f, axis=0))  # never below the photon noise
    full = np.full(flux.shape, np.nan)
    full[ok] = ratio
    return ExposureNorm(norm, MEDIAN_ERROR * sigma / np.sqrt(ok.sum()), full, int(ok.sum()))


def flux_scale_error(factor: float, zero_point_error_mag: float, norm: np.ndarray,
                     norm_error: np.ndarray) -> np.ndarray:
    """1-sigma error of the per-exposure flux scale ``factor / norm``: the zero point's (mag) and
    the normalisation's (relative) errors in quadrature."""
    norm = np.asarray(norm, dtype=float)
    zp_rel = 0.4 * np.log(10.0) * float(zero_point_error_mag)
    return factor / norm * np.hypot(zp_rel, np.asarray(norm_error, dtype=float))


@dataclass
class ZeroPoint:
    """Zero point of the flux calibration and the fate of every star."""

    delta_mag: float  # median(g_catalog - g_virus) of the used stars
    factor: float  # 10 ** (-0.4 delta_mag): multiply fluxes by it
    error: float  # mag, 1-sigma of delta_mag
    scatter: float  # mag, robust std of the used differences
    used: np.ndarray  # (n,) bool
    reason: np.ndarray  # (n,) str, "" if used


def zero_point(g_virus: np.ndarray, g_catalog: np.ndarray, g_error: np.ndarray,
               reasons: np.ndarray, mag_range: tuple[float, float] = (15.0, 19.0),
               max_error: float = 0.1, clip: float = 3.0, floor: float = 0.02,
               min_stars: int = 3) -> ZeroPoint:
    """Robust zero point of the stars whose ``reasons`` (from the selection rules) are empty.

    Further reasons: ``no VIRUS g``, ``g outside lo-hi``, ``g error > max_error``, and
    ``clipped`` for the sigma-clipped outliers.  Raises :class:`CalibrationError` with fewer
    than ``min_stars`` candidates.
    """
    gv, gc, ge = (np.asarray(v, float) for v in (g_virus, g_catalog, g_error))
    reason = np.asarray(reasons, dtype=object).copy()
    for k in range(gv.size):
        if reason[k]:
            continue
        if not (np.isfinite(gv[k]) and np.isfinite(gc[k])):
            reason[k] = "no VIRUS g"
        elif not mag_range[0] <= gc[k] <= mag_range[1]:
            reason[k] = f"g outside {mag_range[0]:g}-{mag_range[1]:g}"
        elif not ge[k] <= max_error:
            reason[k] = f"g error > {max_error:g}"
    cand = np.flatnonzero(reason == "")
    if cand.size < min_stars:
        raise CalibrationError(f"zero_point: {cand.size} usable stars, need {min_stars}")
    off = photometric_offset(gv[cand], gc[cand], None, mag_range=(-np.inf, np.inf), clip=clip,
                             scatter_floor=floor, min_stars=min_stars)
    diff = gc - gv
    for k in cand[~off.used]:
        reason[k] = f"clipped ({diff[k] - off.delta_mag:+.2f} mag, > {clip:g} sigma)"
    used = reason == ""
    return ZeroPoint(off.delta_mag, off.factor, off.error, off.scatter, used,
                     reason.astype(str))
