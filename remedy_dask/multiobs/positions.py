"""PSF-weighted optimal extraction at arbitrary sky positions, across exposures and observations.

Fibers and positions are projected onto the tangent plane at each position (xi east, eta north,
arcsec).  The DAR of an observation is stored on the sky per wavelength (``dar_ra``, ``dar_dec``:
the apparent offset of a source, east and north), so in that frame a source at the origin is seen
at ``(dar_ra, dar_dec)`` and :func:`remedy_dask.observation.sources.extract_source` applies it unchanged.
The product's spectra already carry each exposure's flux scale; the PSF of each exposure is the
fiber-integrated Moffat of its fitted FWHM (:func:`remedy_dask.observation.psf.fiber_integrated_moffat`).

The optimal (Horne) estimate is a ratio of sums over fibers, ``F = sum w d / s^2 / sum w^2 / s^2``,
so the inverse-variance mean of per-observation estimates equals a joint extraction over all
fibers of all observations: :func:`combine_observations` does that.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from remedy_dask.geometry import tan_project
from remedy_dask.observation.psf import RadialPSF, fiber_integrated_moffat, good_pixels
from remedy_dask.observation.sources import extract_source, source_weights

ARCSEC_PER_RAD = 180.0 / np.pi * 3600.0


def sky_offsets(ra: np.ndarray, dec: np.ndarray, ra0: float, dec0: float
                ) -> tuple[np.ndarray, np.ndarray]:
    """(xi, eta) arcsec (east, north) of (ra, dec) deg on the tangent plane at (ra0, dec0)."""
    xi, eta = tan_project(ra, dec, ra0, dec0)
    return np.asarray(xi) * ARCSEC_PER_RAD, np.asarray(eta) * ARCSEC_PER_RAD


def rows_near(fiber_ra: np.ndarray, fiber_dec: np.ndarray, ra: np.ndarray, dec: np.ndarray,
              reach: float) -> list[np.ndarray]:
    """For each position, the fiber rows within ``reach`` arcsec (unit-vector k-d tree)."""
    tree = cKDTree(_unit(fiber_ra, fiber_dec))
    chord = 2.0 * np.sin(np.deg2rad(reach / 3600.0) / 2.0)
    hits = tree.query_ball_point(_unit(np.atleast_1d(ra), np.atleast_1d(dec)), chord)
    return [np.asarray(sorted(h), int) for h in hits]


def _unit(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    a, d = np.deg2rad(np.asarray(ra, float)), np.deg2rad(np.asarray(dec, float))
    return np.column_stack([np.cos(d) * np.cos(a), np.cos(d) * np.sin(a), np.sin(d)])


def near_edge(fiber_xi: np.ndarray, fiber_eta: np.ndarray, margin: float = 3.0,
              max_gap: float = 1.6, n_points: int = 16) -> bool:
    """True if the circle of radius ``margin`` arcsec about the origin is not fully covered by
    fibers: some point on it (or the origin) has no fiber centre within ``max_gap`` arcsec.

    Fibers of all exposures count (dithers fill the gaps between one exposure's fibers: the
    largest distance to a fiber centre inside an IFU is 1.27" for one exposure, less with three).
    """
    if len(fiber_xi) == 0:
        return True
    phi = np.arange(n_points) * 2.0 * np.pi / n_points
    px = np.r_[0.0, margin * np.cos(phi)]
    py = np.r_[0.0, margin * np.sin(phi)]
    dist, _ = cKDTree(np.column_stack([fiber_xi, fiber_eta])).query(np.column_stack([px, py]))
    return bool(np.any(dist > max_gap))


@dataclass
class PositionExtraction:
    """Spectra at ``n_pos`` positions from one observation (NaN where not covered)."""

    spectrum: np.ndarray  # (n_pos, n_wave) total flux of a point source
    error: np.ndarray  # (n_pos, n_wave)
    coverage: np.ndarray  # (n_pos, n_wave) summed PSF fraction of the good fibers
    n_exposures: np.ndarray  # (n_pos,) exposures whose good fibers hold >= min_exposure_coverage
    edge: np.ndarray  # (n_pos,) bool: within ``edge_margin`` of the edge of the fibers' footprint


def exposure_psfs(fwhm: np.ndarray, beta: np.ndarray | None = None) -> list[RadialPSF]:
    """One fiber-integrated Moffat table per exposure (beta 3.5 unless given)."""
    if beta is None:
        return [fiber_integrated_moffat(float(f)) for f in fwhm]
    return [fiber_integrated_moffat(float(f), float(b)) for f, b in zip(fwhm, beta)]


def extract_positions(flux: np.ndarray, error: np.ndarray, mask: np.ndarray,
                      fiber_ra: np.ndarray, fiber_dec: np.ndarray, exposure_index: np.ndarray,
                      rows: list[np.ndarray], fwhm: np.ndarray, dar_ra: np.ndarray,
                      dar_dec: np.ndarray, ra: np.ndarray, dec: np.ndarray, radius: float = 5.0,
                      min_coverage: float = 0.1, min_exposure_coverage: float = 0.05,
                      edge_margin: float = 3.0, beta: np.ndarray | None = None
                      ) -> PositionExtraction:
    """Optimal extraction at each (ra, dec) from one observation.

    ``flux, error, mask`` (n_fiber, n_wave) and ``fiber_ra, fiber_dec, exposure_index`` (n_fiber,)
    are the fibers read for these positions; ``rows[k]`` indexes the fibers near position k
    (:func:`rows_near`).  ``fwhm`` (and ``beta``) the Moffat PSF of each exposure, ``dar_ra, dar_dec``
    (n_wave,) the DAR on the sky.  Wavelengths whose good fibers hold less than ``min_coverage``
    of the source's flux are NaN (see :func:`remedy_dask.observation.sources.extract_source`).
    """
    n_pos, n_wave = len(rows), np.asarray(flux).shape[1]
    psfs = exposure_psfs(fwhm, beta)
    dar = np.vstack([dar_ra, dar_dec])
    spec = np.full((n_pos, n_wave), np.nan)
    err = np.full_like(spec, np.nan)
    cov = np.zeros_like(spec)
    n_exp = np.zeros(n_pos, int)
    edge = np.zeros(n_pos, bool)
    for k, sel in enumerate(rows):
        if sel.size == 0:
            continue
        x, y = sky_offsets(fiber_ra[sel], fiber_dec[sel], float(ra[k]), float(dec[k]))
        exp = exposure_index[sel]
        res = extract_source(flux[sel], error[sel], mask[sel], x, y, 0.0, 0.0, psfs, dar, exp,
                             radius, min_coverage)
        spec[k], err[k], cov[k] = res.spectrum, res.error, res.coverage
        good = good_pixels(flux[sel], error[sel], mask[sel])
        w = np.where(good, source_weights(x, y, 0.0, 0.0, psfs, dar, n_wave, exp), 0.0)
        per_exp = [np.median(w[exp == e].sum(axis=0)) for e in np.unique(exp)]
        n_exp[k] = int(np.sum(np.asarray(per_exp) >= min_exposure_coverage))
        edge[k] = n_exp[k] > 0 and near_edge(x, y, edge_margin)
    return PositionExtraction(spec, err, cov, n_exp, edge)


@dataclass
class CombinedSpectra:
    spectrum: np.ndarray  # (n_pos, n_wave)
    error: np.ndarray
    n_exposures: np.ndarray  # (n_pos,)
    contributing: np.ndarray  # (n_obs, n_pos) bool
    edge: np.ndarray  # (n_pos,) bool: near an edge in any contributing observation


def combine_observations(parts: list[PositionExtraction]) -> CombinedSpectra:
    """Inverse-variance combination, wavelength by wavelength, of per-observation extractions."""
    num = sum(np.where(np.isfinite(p.spectrum), p.spectrum / p.error**2, 0.0) for p in parts)
    den = sum(np.where(np.isfinite(p.spectrum), 1.0 / p.error**2, 0.0) for p in parts)
    ok = den > 0
    safe = np.where(ok, den, 1.0)
    contributing = np.array([(p.n_exposures > 0) & np.isfinite(p.spectrum).any(axis=1)
                             for p in parts])
    n_exp = np.sum([np.where(c, p.n_exposures, 0) for c, p in zip(contributing, parts)], axis=0)
    edge = np.any([c & p.edge for c, p in zip(contributing, parts)], axis=0)
    return CombinedSpectra(np.where(ok, num / safe, np.nan), np.where(ok, 1.0 / np.sqrt(safe), np.nan),
                           n_exp.astype(int), contributing, edge)
