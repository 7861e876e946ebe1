"""One DAR-corrected cube over the fibers of several observations on a common TAN grid.

The mosaic frame is the focal-plane frame of :func:`remedy_dask.geometry.focal_to_sky` with
rotation 0 about the mosaic centre: ``x = -xi`` (west), ``y = eta`` (north), arcsec, so
:func:`remedy_dask.observation.cube.cube_wcs` with rotation 0 is its exact WCS (RA---TAN/DEC--TAN/AWAV).
Each observation is resampled with :func:`remedy_dask.observation.cube.make_cube` (its own DAR) and the
observations are combined with the cube's own kernel weights: for observation k with weight
``W_k`` (sum of kernel weights of good fibers), cube ``C_k`` and error ``E_k``,

    C = sum W_k C_k / sum W_k,     E = sqrt(sum W_k^2 E_k^2) / sum W_k,

which is exactly :func:`make_cube` applied to all fibers at once (each pixel is the same linear
combination of fiber values).  The result is a flux density per pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from remedy_dask.observation.cube import ImageGrid, make_cube
from remedy_dask.geometry import focal_to_sky, sky_to_focal

MIN_WEIGHT = 0.2  # as make_cube: pixels with less summed kernel weight are NaN
_TINY = 1e-12


@dataclass
class MosaicFibers:
    """Fibers of one observation (or one IFU of it) in the mosaic frame, for a wavelength range."""

    flux: np.ndarray  # (n_fiber, n_wave_chunk)
    error: np.ndarray
    mask: np.ndarray  # bool, True = bad
    x: np.ndarray  # (n_fiber,) arcsec, mosaic frame
    y: np.ndarray
    dar_x: np.ndarray  # (n_wave_chunk,) arcsec, mosaic frame
    dar_y: np.ndarray


def mosaic_frame(ra: np.ndarray, dec: np.ndarray, ra0: float, dec0: float
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) arcsec of sky positions in the mosaic frame about (ra0, dec0)."""
    return sky_to_focal(ra, dec, ra0, dec0, 0.0)


def dar_in_frame(dar_ra: np.ndarray, dar_dec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DAR (east, north arcsec) in the mosaic frame (x = -east, y = north)."""
    return -np.asarray(dar_ra, float), np.asarray(dar_dec, float)


def mosaic_centre(ra: np.ndarray, dec: np.ndarray) -> tuple[float, float]:
    """Centre of the bounding box of the positions on a tangent plane at their mean direction."""
    a, d = np.deg2rad(ra), np.deg2rad(dec)
    v = np.array([np.sum(np.cos(d) * np.cos(a)), np.sum(np.cos(d) * np.sin(a)), np.sum(np.sin(d))])
    ra1 = float(np.rad2deg(np.arctan2(v[1], v[0])) % 360.0)
    dec1 = float(np.rad2deg(np.arcsin(v[2] / np.linalg.norm(v))))
    x, y = mosaic_frame(ra, dec, ra1, dec1)
    ra2, dec2 = focal_to_sky((x.min() + x.max()) / 2, (y.min() + y.max()) / 2, ra1, dec1, 0.0)
    return float(ra2), float(dec2)


def mosaic_grid(x: np.ndarray, y: np.ndarray, pixscale: float, margin: float = 2.0) -> ImageGrid:
    """Grid of ``pixscale`` pixels covering the fibers plus ``margin`` arcsec, with a pixel
    centre on the frame origin (the WCS reference point)."""
    lo_x = np.floor((np.min(x) - margin) / pixscale)
    lo_y = np.floor((np.min(y) - margin) / pixscale)
    hi_x = np.ceil((np.max(x) + margin) / pixscale)
    hi_y = np.ceil((np.max(y) + margin) / pixscale)
    return ImageGrid(lo_x * pixscale, lo_y * pixscale, int(hi_x - lo_x) + 1, int(hi_y - lo_y) + 1,
                     pixscale)


def tile_window(grid: ImageGrid, x: np.ndarray, y: np.ndarray, reach: float
                ) -> tuple[slice, slice, ImageGrid]:
    """(rows, cols, sub-grid) of the pixels of ``grid`` within ``reach`` of the points (x, y)."""
    s = grid.pixscale
    ix0 = max(0, int(np.floor((np.min(x) - reach - grid.x0) / s)))
    iy0 = max(0, int(np.floor((np.min(y) - reach - grid.y0) / s)))
    ix1 = min(grid.nx, int(np.ceil((np.max(x) + reach - grid.x0) / s)) + 1)
    iy1 = min(grid.ny, int(np.ceil((np.max(y) + reach - grid.y0) / s)) + 1)
    sub = ImageGrid(grid.x0 + ix0 * s, grid.y0 + iy0 * s, max(ix1 - ix0, 0), max(iy1 - iy0, 0), s)
    return slice(iy0, iy1), slice(ix0, ix1), sub


def mosaic_chunk(tiles: list[MosaicFibers], grid: ImageGrid, kernel_sigma: float = 0.7,
                 min_weight: float = MIN_WEIGHT) -> np.ndarray:
    """(3, n_wave_chunk, ny, nx) float32: flux, error and summed kernel weight of one wavelength
    chunk (NaN flux and error where the weight is below ``min_weight``).

    Each tile (e.g. one IFU of one observation, with its own DAR) is resampled only on the pixels
    its kernel reaches, so the work scales with the fibers, not with the mosaic's area.
    """
    n_wave = tiles[0].flux.shape[1]
    shape = (n_wave, grid.ny, grid.nx)
    wsum = np.zeros(shape)
    num = np.zeros(shape)
    var = np.zeros(shape)
    for t in tiles:
        if len(t.x) == 0:
            continue
        px = np.r_[t.x - t.dar_x.min(), t.x - t.dar_x.max()]
        py = np.r_[t.y - t.dar_y.min(), t.y - t.dar_y.max()]
        rows, cols, sub = tile_window(grid, px, py, 3.0 * kernel_sigma + grid.pixscale)
        if sub.nx == 0 or sub.ny == 0:
            continue
        res = make_cube(t.flux, t.error, t.mask, t.x, t.y, np.arange(n_wave, dtype=float),
                        np.vstack([t.dar_x, t.dar_y]), sub, kernel_sigma=kernel_sigma,
                        min_weight=_TINY, dtype=np.float64)
        has = res.weight > _TINY
        wsum[:, rows, cols] += np.where(has, res.weight, 0.0)
        num[:, rows, cols] += np.where(has, res.weight * res.cube, 0.0)
        var[:, rows, cols] += np.where(has, (res.weight * res.error) ** 2, 0.0)
    ok = wsum >= min_weight
    safe = np.where(ok, wsum, 1.0)
    out = np.empty((3, *shape), np.float32)
    out[0] = np.where(ok, num / safe, np.nan)
    out[1] = np.where(ok, np.sqrt(var) / safe, np.nan)
    out[2] = wsum
    return out
