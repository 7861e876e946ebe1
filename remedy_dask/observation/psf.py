"""Point-spread function of VIRUS fibers on the sky: a fiber-integrated Moffat profile.

The PSF of a point source is a circular Moffat profile (unit integral over the plane).  A fiber of
diameter ``FIBER_DIAMETER`` centred at distance ``r`` from the source collects the fraction
``f(r) = integral of the Moffat over the fiber disc`` of the source's total flux.  Because the PSF
is circular, ``f`` depends on ``r`` only and is tabulated once on a radial grid
(:class:`RadialPSF`); evaluating it at any fiber offset is a ``np.interp``.  Since ``integral f(r) d^2r = pi R^2`` (the
fiber area), the fiber fractions of a dense fiber grid with one fiber per area ``a`` sum to
``pi R^2 / a``; for a fiber pattern that tiles the sky with the fiber area (``a = pi R^2``) they sum
to exactly 1.  With fiber fractions as weights an optimal (Horne) extraction returns the *total*
source flux.

Sign convention of differential atmospheric refraction (DAR) everywhere in this package: ``dar`` is
the apparent offset of a source at each wavelength, so a source at ``(x0, y0)`` is seen at
``(x0 + dar_x(lambda), y0 + dar_y(lambda))`` (Remedy: "effective fiber position = nominal - ADR").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Sequence

import numpy as np

from remedy_dask.errors import CalibrationError
from remedy_dask.geometry import FIBER_DIAMETER

DEFAULT_BETA = 3.5


def moffat_alpha(fwhm: float, beta: float = DEFAULT_BETA) -> float:
    """Moffat core width alpha (arcsec) of a profile with this FWHM."""
    return fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))


def moffat_enclosed(r: np.ndarray, fwhm: float, beta: float = DEFAULT_BETA) -> np.ndarray:
    """Fraction of a Moffat's flux within radius ``r`` of its centre."""
    alpha = moffat_alpha(fwhm, beta)
    return 1.0 - (1.0 + (np.asarray(r) / alpha) ** 2) ** (1.0 - beta)


@dataclass(frozen=True, eq=False)
class RadialPSF:
    """Fiber-integrated PSF tabulated on a radial grid.

    ``fraction[j]`` is the fraction of a point source's total flux that enters a fiber whose centre
    lies ``r[j]`` arcsec from the source.  Beyond ``r[-1]`` the fraction is 0.
    """

    fwhm: float
    beta: float
    fiber_diameter: float
    r: np.ndarray = field(repr=False)
    fraction: np.ndarray = field(repr=False)

    @property
    def r_max(self) -> float:
        return float(self.r[-1])

    def at_radius(self, r: np.ndarray) -> np.ndarray:
        """Fiber fraction at distance ``r`` (arcsec) between fiber centre and source."""
        return np.interp(r, self.r, self.fraction, right=0.0)

    def __call__(self, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
        """Fiber fraction of fibers offset by ``(dx, dy)`` arcsec from the source."""
        return self.at_radius(np.hypot(dx, dy))


@lru_cache(maxsize=8)
def _fiber_quadrature(fiber_diameter: float, n_radial: int, n_azimuth: int
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quadrature points (x, y) (n_radial, n_azimuth) of a fiber disc around its centre and the
    radial weights (n_radial,) of :func:`fiber_integrated_moffat` (read-only: shared)."""
    radius = fiber_diameter / 2.0
    u, wu = np.polynomial.legendre.leggauss(n_radial)
    rho2 = (u + 1.0) * radius**2 / 2.0  # nodes in rho^2 on [0, R^2]
    w_rho = wu * radius**2 / 4.0  # d(rho^2)/2 = rho drho; Jacobian R^2/2 of the map, times 1/2
    rho = np.sqrt(rho2)
    phi = (np.arange(n_azimuth) + 0.5) * (2.0 * np.pi / n_azimuth)
    px = rho[:, None] * np.cos(phi)[None, :]
    py = rho[:, None] * np.sin(phi)[None, :]
    for a in (px, py, w_rho):
        a.flags.writeable = False
    return px, py, w_rho


def fiber_integrated_moffat(
    fwhm: float,
    beta: float = DEFAULT_BETA,
    r_grid: np.ndarray | None = None,
    fiber_diameter: float = FIBER_DIAMETER,
    n_radial: int = 16,
    n_azimuth: int = 48,
) -> RadialPSF:
    """Tabulate the fraction of a Moffat source's flux collected by a fiber at distance r.

    ``f(r) = int_0^R rho drho int_0^2pi P(|r e_x + rho (cos phi, sin phi)|) dphi`` with
    Gauss-Legendre nodes in ``rho^2`` and the (spectrally accurate, periodic) trapezoid rule in
    ``phi``.
    Default grid: 0 to max(10", 5 FWHM) in 0.02" steps.
    """
    if not (np.isfinite(fwhm) and fwhm > 0):
        raise CalibrationError(f"PSF FWHM must be positive and finite, got {fwhm}")
    if beta <= 1.0:
        raise CalibrationError(f"Moffat beta must exceed 1, got {beta}")
    if r_grid is None:
        r_grid = np.arange(0.0, max(10.0, 5.0 * fwhm) + 1e-9, 0.02)
    r_grid = np.asarray(r_grid, dtype=float)
    d2, w_rho = fiber_quadrature_distances(r_grid, fiber_diameter, n_radial, n_azimuth)
    return RadialPSF(float(fwhm), float(beta), float(fiber_diameter), r_grid,
                     fiber_fraction(d2, w_rho, fwhm, beta))


def fiber_quadrature_distances(r_grid: np.ndarray, fiber_diameter: float = FIBER_DIAMETER,
                               n_radial: int = 16, n_azimuth: int = 48
                               ) -> tuple[np.ndarray, np.ndarray]:
    """Squared distance (n_r, n_radial, n_azimuth) from the source of each quadrature point of
    a fiber at each distance of ``r_grid``, and the radial weights: what
    :func:`fiber_fraction` needs (independent of the PSF, so a fit computes it once)."""
    px, py, w_rho = _fiber_quadrature(float(fiber_diameter), n_radial, n_azimuth)
    return (np.asarray(r_grid, float)[:, None, None] + px[None]) ** 2 + py[None] ** 2, w_rho


def fiber_fraction(d2: np.ndarray, w_rho: np.ndarray, fwhm: float, beta: float) -> np.ndarray:
    """Fraction of a Moffat source's flux in a fiber at each distance of
    :func:`fiber_quadrature_distances`."""
    alpha = moffat_alpha(fwhm, beta)
    dens = (beta - 1.0) / (np.pi * alpha**2) * (1.0 + d2 / alpha**2) ** (-beta)
    return np.einsum("rij,i->r", dens, w_rho) * (2.0 * np.pi / d2.shape[2])


PSFLike = RadialPSF | Sequence[RadialPSF]


def moffat_tables(fwhm: Sequence[float], beta: Sequence[float]) -> list[RadialPSF]:
    """:func:`fiber_integrated_moffat` (default grid) of each (FWHM, beta) pair; the tables of
    the pairs asked last are kept (read-only), as every IFU of an observation asks for the same."""
    return list(_moffat_tables(tuple(map(float, fwhm)), tuple(map(float, beta))))


@lru_cache(maxsize=8)
def _moffat_tables(fwhm: tuple[float, ...], beta: tuple[float, ...]) -> tuple[RadialPSF, ...]:
    tables = tuple(fiber_integrated_moffat(f, b) for f, b in zip(fwhm, beta))
    for t in tables:
        t.r.flags.writeable = False
        t.fraction.flags.writeable = False
    return tables


def evaluate_psf(
    psf: PSFLike, dx: np.ndarray, dy: np.ndarray, exposure: np.ndarray | None = None
) -> np.ndarray:
    """Fiber fractions at offsets ``(dx, dy)`` (shape (n_fiber, ...)).

    ``psf`` is one :class:`RadialPSF` or one per exposure; then ``exposure`` (n_fiber,) holds
    0-based indices into that sequence.
    """
    if isinstance(psf, RadialPSF):
        return psf(dx, dy)
    if exposure is None:
        raise ValueError("a per-exposure PSF needs the fibers' exposure indices")
    r = np.hypot(dx, dy)
    out = np.zeros(np.broadcast(dx, dy).shape)
    exposure = np.asarray(exposure)
    for e, p in enumerate(psf):
        sel = exposure == e
        if np.any(sel):
            out[sel] = p.at_radius(r[sel])
    return out


def dar_xy(dar: np.ndarray | None, n_wave: int) -> np.ndarray:
    """Normalise a DAR argument to a (2, n_wave) array of (dx, dy) arcsec.

    ``None`` means no DAR; a 1-D array is an offset along x only (the HET convention).
    """
    if dar is None:
        return np.zeros((2, n_wave))
    dar = np.asarray(dar, dtype=float)
    if dar.ndim == 1:
        if dar.shape[0] != n_wave:
            raise ValueError(f"dar has {dar.shape[0]} wavelengths, expected {n_wave}")
        return np.vstack([dar, np.zeros_like(dar)])
    if dar.shape != (2, n_wave):
        raise ValueError(f"dar must be ({n_wave},) or (2, {n_wave}), got {dar.shape}")
    return dar


def good_pixels(flux: np.ndarray, error: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """True where a spectral pixel is usable: unmasked, finite, positive error."""
    good = np.isfinite(flux) & np.isfinite(error) & (error > 0)
    if mask is not None:
        good &= ~np.asarray(mask, dtype=bool)
    return good


def collapse_chunks(
    flux: np.ndarray, error: np.ndarray, good: np.ndarray, edges: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Mean flux and its error per fiber in wavelength chunks (NaN if < half the pixels good)."""
    n_chunk = len(edges) - 1
    f = np.full((flux.shape[0], n_chunk), np.nan)
    e = np.full_like(f, np.nan)
    fz = np.where(good, flux, 0.0)
    vz = np.where(good, error**2, 0.0)
    for c in range(n_chunk):
        sl = slice(edges[c], edges[c + 1])
        n = good[:, sl].sum(axis=1)
        ok = n >= 0.5 * (edges[c + 1] - edges[c])
        f[ok, c] = fz[ok, sl].sum(axis=1) / n[ok]
        e[ok, c] = np.sqrt(vz[ok, sl].sum(axis=1)) / n[ok]
    return f, e
