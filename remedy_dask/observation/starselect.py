"""Which catalogue stars may calibrate the PSF, the flux scale and the astrometry.

Stated rules, each giving a short reason string ("" = usable):

* ``saturated``: catalogue g brighter than ``bright_limit`` (the core saturates or is non-linear);
* ``blend``: catalogue neighbours within ``blend_radius`` add more than ``blend_limit`` of the
  star's own flux to its optimal extraction, predicted from their catalogue fluxes and a
  broad-winged fiber-integrated Moffat (so a g = 11.5 star blends a g = 16.6 star 10" away, and
  a pair 3" apart blends both);
* ``edge``: the star's fibers (all exposures) collect less than ``min_coverage`` of the PSF
  weight that the same fibers collect for a source at the IFU centre (light falls off the IFU).

The rules are pure functions of catalogue values, positions and a PSF table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from remedy_dask.observation.psf import (
    PSFLike,
    RadialPSF,
    evaluate_psf,
    fiber_integrated_moffat,
)

BLEND_BETA = 2.5  # the broadest wings of the nights the rules must survive


@dataclass(frozen=True)
class StarRules:
    """Thresholds of the star-selection rules (see the module docstring)."""

    bright_limit: float = 15.0  # g (mag): brighter catalogue stars are saturated
    blend_radius: float = 15.0  # arcsec: neighbours considered
    blend_limit: float = 0.01  # neighbour light / own light in the optimal extraction
    min_coverage: float = 0.9  # PSF weight on the fibers relative to the IFU centre
    blend_fwhm: float = 1.8  # arcsec: FWHM of the beta 2.5 Moffat predicting neighbour light

    def blend_psf(self) -> RadialPSF:
        """The broad-winged PSF of the blend rule."""
        return fiber_integrated_moffat(self.blend_fwhm, BLEND_BETA)


def extraction_overlap(psf: RadialPSF, r: np.ndarray, step: float = 0.1) -> np.ndarray:
    """``A(r) / A(0)`` with ``A(r) = int f(p) f(p - r) d^2p`` the overlap of the fiber-fraction
    maps of two sources ``r`` arcsec apart: the share of a neighbour's flux that an optimal
    (PSF-weighted) extraction of a source picks up, per unit flux ratio, on a dense fiber field."""
    half = psf.r_max
    g = np.arange(-half, half + step / 2, step)
    gx, gy = np.meshgrid(g, g)
    f = psf.at_radius(np.hypot(gx, gy))
    auto = autocorrelation(f)
    centre = auto.shape[0] // 2
    profile = auto[centre, centre:]  # along +x; the map is circular
    radii = np.arange(profile.size) * step
    return np.interp(np.asarray(r, float), radii, profile / profile[0], right=0.0)


def autocorrelation(f: np.ndarray) -> np.ndarray:
    """``scipy.signal.fftconvolve(f, f[::-1, ::-1], mode="full")`` by the same scipy.fft calls
    (scipy.signal itself costs ~1 s of import in every worker)."""
    from scipy import fft

    full = [2 * n - 1 for n in f.shape]
    shape = [fft.next_fast_len(n, True) for n in full]
    spectrum = fft.rfftn(f, shape) * fft.rfftn(f[::-1, ::-1], shape)
    return fft.irfftn(spectrum, shape)[tuple(slice(0, n) for n in full)].copy()


def blend_contamination(ra: np.ndarray, dec: np.ndarray, g: np.ndarray, index: np.ndarray,
                        psf: RadialPSF, radius: float) -> np.ndarray:
    """Predicted neighbour light in the optimal extraction of each star ``index`` (fraction of its
    own flux): ``sum_j 10^(-0.4 (g_j - g_i)) A(r_ij) / A(0)`` (:func:`extraction_overlap`) over
    catalogue stars j != i within ``radius`` arcsec.  Entries with non-finite g are ignored.
    """
    ra, dec, g = (np.asarray(v, dtype=float) for v in (ra, dec, g))
    index = np.asarray(index, dtype=int)
    cosd = np.cos(np.deg2rad(np.nanmedian(dec))) if dec.size else 1.0
    xy = np.column_stack([ra * cosd * 3600.0, dec * 3600.0])
    finite = np.isfinite(g) & np.all(np.isfinite(xy), axis=1)
    tree = cKDTree(xy[finite])
    others = np.flatnonzero(finite)
    out = np.zeros(index.size)
    for k, i in enumerate(index):
        near = others[tree.query_ball_point(xy[i], radius)]
        near = near[near != i]
        if near.size == 0 or not np.isfinite(g[i]):
            continue
        r = np.hypot(*(xy[near] - xy[i]).T)
        out[k] = np.sum(10 ** (-0.4 * (g[near] - g[i])) * extraction_overlap(psf, r))
    return out


def relative_coverage(fiber_x: np.ndarray, fiber_y: np.ndarray, exposure: np.ndarray,
                      fiber_good: np.ndarray, x: np.ndarray, y: np.ndarray, psf: PSFLike,
                      centre: tuple[float, float] | None = None) -> np.ndarray:
    """PSF weight collected by the good fibers for a source at each ``(x, y)``, relative to a
    source at ``centre`` (default: the median fiber position)."""
    fiber_x, fiber_y = np.asarray(fiber_x, float), np.asarray(fiber_y, float)
    good = np.asarray(fiber_good, bool)
    if centre is None:
        centre = (float(np.median(fiber_x)), float(np.median(fiber_y)))

    def collected(x0: float, y0: float) -> float:
        w = evaluate_psf(psf, fiber_x - x0, fiber_y - y0, exposure)
        return float(np.sum(w[good]))

    ref = collected(*centre)
    if not ref > 0:
        return np.zeros(np.size(x))
    return np.array([collected(a, b) / ref for a, b in zip(np.atleast_1d(x), np.atleast_1d(y))])


def reject_reasons(g: np.ndarray, contamination: np.ndarray, coverage: np.ndarray | None,
                   rules: StarRules) -> np.ndarray:
    """Reason string per star ("" = usable): ``saturated``, then ``blend``, then ``edge``."""
    g = np.asarray(g, dtype=float)
    reasons = np.full(g.size, "", dtype=object)
    cov = np.ones(g.size) if coverage is None else np.asarray(coverage, dtype=float)
    for k in range(g.size):
        if not np.isfinite(g[k]):
            reasons[k] = "no catalogue g"
        elif g[k] < rules.bright_limit:
            reasons[k] = f"saturated (g < {rules.bright_limit:g})"
        elif contamination[k] > rules.blend_limit:
            reasons[k] = f"blend ({100 * contamination[k]:.0f}% neighbour light)"
        elif not cov[k] >= rules.min_coverage:
            reasons[k] = f"edge (PSF coverage {cov[k]:.2f})"
    return reasons.astype(str)
