"""Data cubes (and images) from fiber spectra by kernel-weighted interpolation, with their WCS.

Every output pixel is a *linear* combination of fiber values, so errors are propagated exactly
through the same weights (not interpolated).  For wavelength j and pixel p,

    cube[j, p] = pixscale^2 * sum_i K_pi g_ij s_ij / sum_i K_pi g_ij,     s_ij = flux_ij / (pi R^2)

where ``K_pi = exp(-|p - (x_i - dar_j)|^2 / 2 sigma_k^2)`` (cut at 3 sigma_k), ``g`` marks good
pixels and ``s`` is the fiber's mean surface brightness (fiber flux over the fiber area).  The cube
is thus a **flux density per pixel** (input units per pixel, e.g. 1e-17 erg/s/cm^2/A/pixel): sums
over pixels are fluxes.  DAR is removed: a point source sits at the same pixel at every wavelength.
The cube's effective PSF is the seeing convolved with the fiber disc and the kernel, so an aperture
holds a fraction of the source's flux that :func:`aperture_correction` computes exactly by passing
the PSF model through the same linear operator.  Neighbouring pixels are correlated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.wcs import WCS
from scipy import sparse
from scipy.spatial import cKDTree

from remedy_dask.geometry import DEF_WAVE, FIBER_DIAMETER
from remedy_dask.observation.psf import PSFLike, dar_xy, good_pixels
from remedy_dask.observation.sources import source_weights

FIBER_AREA = np.pi * (FIBER_DIAMETER / 2.0) ** 2  # arcsec^2


@dataclass(frozen=True)
class ImageGrid:
    """A regular pixel grid on the sky: pixel (ix, iy) has its centre at (x0 + ix*s, y0 + iy*s)."""

    x0: float
    y0: float
    nx: int
    ny: int
    pixscale: float

    @classmethod
    def centered(cls, half_size: float = 25.0, pixscale: float = 0.5, cx: float = 0.0,
                 cy: float = 0.0) -> "ImageGrid":
        """Square grid centred on (cx, cy) with pixel centres out to about +-half_size."""
        n = 2 * int(round(half_size / pixscale)) + 1
        start = -(n - 1) / 2.0 * pixscale
        return cls(cx + start, cy + start, n, n, pixscale)

    @property
    def x(self) -> np.ndarray:
        return self.x0 + self.pixscale * np.arange(self.nx)

    @property
    def y(self) -> np.ndarray:
        return self.y0 + self.pixscale * np.arange(self.ny)

    def points(self) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of all pixel centres, flattened in C order of an (ny, nx) image."""
        xx, yy = np.meshgrid(self.x, self.y)
        return xx.ravel(), yy.ravel()

    def to_pixel(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """Fractional 0-based pixel coordinates of sky positions (arcsec)."""
        return (np.asarray(x) - self.x0) / self.pixscale, (np.asarray(y) - self.y0) / self.pixscale

    def to_arcsec(self, px, py) -> tuple[np.ndarray, np.ndarray]:
        return self.x0 + np.asarray(px) * self.pixscale, self.y0 + np.asarray(py) * self.pixscale


def radial_weight_matrix(
    px: np.ndarray, py: np.ndarray, fx: np.ndarray, fy: np.ndarray,
    kernel: Callable[[np.ndarray], np.ndarray], cutoff: float,
) -> sparse.csr_matrix:
    """Sparse (n_points, n_fibers) matrix of ``kernel(distance)`` for pairs closer than cutoff."""
    return next(shifted_weight_matrices(px, py, fx, fy, np.zeros((1, 2)), kernel, cutoff))


def shifted_weight_matrices(
    px: np.ndarray, py: np.ndarray, fx: np.ndarray, fy: np.ndarray, shifts: np.ndarray,
    kernel: Callable[[np.ndarray], np.ndarray], cutoff: float,
) -> Iterator[sparse.csr_matrix]:
    """For each shift ``d`` (n_shift, 2): the (n_points, n_fibers) CSR matrix of
    ``kernel(distance)`` between the points and the fibers moved to ``(fx - d[0], fy - d[1])``,
    for pairs within ``cutoff`` (sorted column indices).  The pairs are found once (a KD-tree
    within ``cutoff`` plus the shifts' reach from their middle); each matrix recomputes only
    their distances, as the KD-tree does (the root of the summed squared differences)."""
    centre = 0.5 * (shifts.min(axis=0) + shifts.max(axis=0))
    reach = float(np.max(np.hypot(*(shifts - centre).T)))
    tp = cKDTree(np.column_stack([px, py]))
    tf = cKDTree(np.column_stack([fx - centre[0], fy - centre[1]]))
    pairs = tp.sparse_distance_matrix(tf, cutoff + reach + 1e-6, output_type="ndarray")
    n_fib = len(fx)
    key = np.sort(pairs["i"].astype(np.int64) * n_fib + pairs["j"])  # CSR order
    i, j = key // n_fib, key % n_fib
    pxi, pyi = px[i], py[i]
    for d in shifts:
        dx = pxi - (fx - d[0])[j]
        dy = pyi - (fy - d[1])[j]
        r2 = dx * dx + dy * dy
        keep = r2 <= cutoff * cutoff
        indptr = np.concatenate([[0], np.cumsum(np.bincount(i[keep], minlength=len(px)))])
        yield sparse.csr_matrix((kernel(np.sqrt(r2[keep])), j[keep], indptr),
                                shape=(len(px), n_fib))


def dar_chunks(dxy: np.ndarray, max_step: float) -> list[slice]:
    """Split wavelengths into contiguous runs in which the DAR moves by at most ``max_step``."""
    n = dxy.shape[1]
    chunks, start = [], 0
    for j in range(1, n + 1):
        if j == n or np.hypot(*(dxy[:, j] - dxy[:, start])) > max_step:
            chunks.append(slice(start, j))
            start = j
    return chunks


@dataclass
class CubeResult:
    """A data cube on ``grid``: (n_wave, ny, nx) arrays, flux density per pixel."""

    cube: np.ndarray
    error: np.ndarray
    weight: np.ndarray  # sum of kernel weights of good fibers (0 = no data)
    grid: ImageGrid
    wave: np.ndarray


def make_cube(
    flux: np.ndarray,
    error: np.ndarray,
    mask: np.ndarray | None,
    fiber_x: np.ndarray,
    fiber_y: np.ndarray,
    wave: np.ndarray = DEF_WAVE,
    dar: np.ndarray | None = None,
    grid: ImageGrid | None = None,
    pixscale: float = 0.5,
    kernel_sigma: float = 0.7,
    min_weight: float = 0.2,
    max_dar_step: float = 0.02,
    dtype: type = np.float32,
) -> CubeResult:
    """Resample fiber spectra (n_fiber, n_wave) into a DAR-corrected cube (see module doc).

    ``grid`` defaults to a square of ``pixscale`` pixels covering the fibers.  Pixels whose summed
    kernel weight is below ``min_weight`` (no fiber within ~1.8 sigma_k) are NaN.  Within each
    run of wavelengths the DAR is held at its mean; runs are cut where it moves ``max_dar_step``.
    """
    flux = np.asarray(flux)
    error = np.asarray(error)
    n_fib, n_wave = flux.shape
    fiber_x = np.asarray(fiber_x, dtype=float)
    fiber_y = np.asarray(fiber_y, dtype=float)
    if grid is None:
        half = max(np.abs(fiber_x).max(), np.abs(fiber_y).max())
        grid = ImageGrid.centered(half, pixscale, 0.0, 0.0)
    good = good_pixels(flux, error, mask)
    g = good.astype(float)
    sb = np.where(good, flux, 0.0) / FIBER_AREA
    var_sb = np.where(good, error, 0.0) ** 2 / FIBER_AREA**2
    dxy = dar_xy(dar, n_wave)
    px, py = grid.points()
    cube = np.full((n_wave, grid.ny * grid.nx), np.nan, dtype=dtype)
    err = np.full_like(cube, np.nan)
    weight = np.zeros_like(cube)
    cutoff = 3.0 * kernel_sigma
    area = grid.pixscale**2
    chunks = dar_chunks(dxy, max_dar_step)
    shifts = np.array([dxy[:, sl].mean(axis=1) for sl in chunks])
    matrices = shifted_weight_matrices(px, py, fiber_x, fiber_y, shifts,
                                       lambda r: np.exp(-0.5 * (r / kernel_sigma) ** 2), cutoff)
    for sl, k in zip(chunks, matrices):
        den = np.asarray(k @ g[:, sl])
        num = np.asarray(k @ sb[:, sl])
        var = np.asarray(sparse.csr_matrix((k.data * k.data, k.indices, k.indptr),
                                           shape=k.shape) @ var_sb[:, sl])
        ok = den >= min_weight
        safe = np.where(ok, den, 1.0)
        cube[sl] = np.where(ok, area * num / safe, np.nan).T
        err[sl] = np.where(ok, area * np.sqrt(var) / safe, np.nan).T
        weight[sl] = den.T
    shape = (n_wave, grid.ny, grid.nx)
    return CubeResult(cube.reshape(shape), err.reshape(shape), weight.reshape(shape), grid,
                      np.asarray(wave, dtype=float))


def aperture_weights(grid: ImageGrid, x0: float, y0: float, radius: float,
                     subsample: int = 7) -> np.ndarray:
    """(ny, nx) fraction of each pixel inside a circle (sub-pixel sampling)."""
    off = ((np.arange(subsample) + 0.5) / subsample - 0.5) * grid.pixscale
    sx = grid.x[:, None] + off[None, :]  # (nx, sub)
    sy = grid.y[:, None] + off[None, :]
    inside_x = (sx - x0) ** 2  # (nx, sub)
    inside_y = (sy - y0) ** 2
    d2 = inside_y[:, None, :, None] + inside_x[None, :, None, :]  # (ny, nx, sub, sub)
    return (d2 <= radius**2).mean(axis=(2, 3))


def aperture_sum(cube: CubeResult, aperture: np.ndarray) -> np.ndarray:
    """Sum of each wavelength plane over the aperture (NaN pixels count as 0): (n_wave,)."""
    return np.nansum(cube.cube * aperture[None], axis=(1, 2))


def aperture_correction(
    mask: np.ndarray | None,
    fiber_x: np.ndarray,
    fiber_y: np.ndarray,
    x0: float,
    y0: float,
    psf: PSFLike,
    aperture: np.ndarray,
    grid: ImageGrid,
    wave: np.ndarray = DEF_WAVE,
    dar: np.ndarray | None = None,
    exposure: np.ndarray | None = None,
    **cube_kwargs,
) -> np.ndarray:
    """Fraction of a point source's total flux that :func:`make_cube` puts into ``aperture``.

    The unit-flux PSF model at ``(x0, y0)`` is sampled by the fibers (with DAR, and the same
    ``mask`` as the data cube) and passed through the cube operator.  Divide an aperture sum by it
    to get the total flux.
    """
    n_wave = len(wave)
    rows, cols = np.nonzero(aperture > 0)
    if rows.size == 0:
        return np.zeros(n_wave)
    # only the aperture's bounding box and the fibers that can reach it matter
    sub = ImageGrid(grid.x[cols.min()], grid.y[rows.min()], int(cols.max() - cols.min() + 1),
                    int(rows.max() - rows.min() + 1), grid.pixscale)
    sub_ap = aperture[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    dxy = dar_xy(dar, n_wave)
    reach = 3.0 * cube_kwargs.get("kernel_sigma", 0.7) + np.abs(dxy).max() + grid.pixscale
    fiber_x = np.asarray(fiber_x, dtype=float)
    fiber_y = np.asarray(fiber_y, dtype=float)
    near = np.flatnonzero(
        (fiber_x > sub.x[0] - reach) & (fiber_x < sub.x[-1] + reach)
        & (fiber_y > sub.y[0] - reach) & (fiber_y < sub.y[-1] + reach)
    )
    exp_near = None if exposure is None else np.asarray(exposure)[near]
    model = source_weights(fiber_x[near], fiber_y[near], x0, y0, psf, dar, n_wave, exp_near)
    mask_near = None if mask is None else np.asarray(mask)[near]
    res = make_cube(model, np.ones_like(model), mask_near, fiber_x[near], fiber_y[near], wave, dar,
                    sub, dtype=np.float64, **cube_kwargs)
    return aperture_sum(res, sub_ap)


def celestial_wcs(
    ra0: float, dec0: float, rotation: float, grid: ImageGrid, ifu_fx: float = 0.0,
    ifu_fy: float = 0.0,
) -> WCS:
    """2-D TAN WCS of ``grid`` (IFU-frame arcsec) of an IFU centred at focal plane (ifu_fx, ifu_fy).

    CRVAL is the focal-plane origin (ra0, dec0) and CRPIX the pixel where the origin falls, so the
    WCS reproduces :func:`remedy_dask.geometry.focal_to_sky` exactly (no re-projection).
    """
    w = WCS(naxis=2)
    _fill_celestial(w, ra0, dec0, rotation, grid, ifu_fx, ifu_fy)
    return w


def _fill_celestial(w: WCS, ra0, dec0, rotation, grid: ImageGrid, ifu_fx, ifu_fy) -> None:
    r = np.deg2rad(rotation)
    c, s = np.cos(r), np.sin(r)
    s_deg = grid.pixscale / 3600.0
    # FITS pixel p (1-based) along x is at focal fx = ifu_fx + x0 + (p - 1) * pixscale
    crpix1 = 1.0 - (ifu_fx + grid.x0) / grid.pixscale
    crpix2 = 1.0 - (ifu_fy + grid.y0) / grid.pixscale
    w.wcs.ctype[0], w.wcs.ctype[1] = "RA---TAN", "DEC--TAN"
    w.wcs.cunit[0], w.wcs.cunit[1] = "deg", "deg"
    w.wcs.crval[0], w.wcs.crval[1] = ra0, dec0
    w.wcs.crpix[0], w.wcs.crpix[1] = crpix1, crpix2
    w.wcs.cdelt[0], w.wcs.cdelt[1] = -s_deg, s_deg
    pc = np.eye(w.naxis)
    pc[:2, :2] = [[c, s], [-s, c]]
    w.wcs.pc = pc
    w.wcs.radesys = "ICRS"
    w.wcs.equinox = 2000.0


def cube_wcs(
    ra0: float, dec0: float, rotation: float, grid: ImageGrid, ifu_fx: float = 0.0,
    ifu_fy: float = 0.0, wave: np.ndarray = DEF_WAVE, air: bool = True,
) -> WCS:
    """3-D WCS (RA---TAN, DEC--TAN, spectral) for a cube from :func:`make_cube`.

    The spectral axis is ``AWAV`` (VIRUS wavelengths are air wavelengths: the arc lines are air
    values) or ``WAVE`` with ``air=False``; ``wave`` (Angstrom) must be uniformly spaced.  astropy
    keeps spectral units internally in metres; :func:`cube_header` writes them in Angstrom.
    """
    wave = np.asarray(wave, dtype=float)
    step = np.diff(wave)
    if not np.allclose(step, step[0]):
        raise ValueError("cube_wcs needs a uniform wavelength grid")
    w = WCS(naxis=3)
    _fill_celestial(w, ra0, dec0, rotation, grid, ifu_fx, ifu_fy)
    w.wcs.ctype[2] = "AWAV" if air else "WAVE"
    w.wcs.cunit[2] = "Angstrom"
    w.wcs.crval[2] = wave[0]
    w.wcs.crpix[2] = 1.0
    w.wcs.cdelt[2] = step[0]
    w.wcs.specsys = "TOPOCENT"
    w.wcs.set()
    return w


def cube_header(wcs: WCS, bunit: str = "1e-17 erg/(s cm2 Angstrom)") -> fits.Header:
    """FITS header of a cube WCS with the spectral axis in Angstrom, plus ``BUNIT`` (per pixel)."""
    hdr = wcs.to_header()
    to_angstrom = u.Unit(wcs.wcs.cunit[2]).to(u.AA)
    crval3 = float(f"{wcs.wcs.crval[2] * to_angstrom:.12g}")
    hdr["CRVAL3"] = (crval3, "[Angstrom] wavelength at reference pixel")
    hdr["CDELT3"] = (float(f"{wcs.wcs.cdelt[2] * to_angstrom:.12g}"), "[Angstrom] wavelength step")
    hdr["CUNIT3"] = ("Angstrom", "units of the spectral axis")
    hdr["BUNIT"] = (bunit, "flux density per pixel")
    return hdr
