"""Remedy's per-amp CCD + extraction algorithm in plain numpy, written from
``shared/remedy-reference.md`` (sections 1.3, 3.3, 3.5, 3.6), not from Remedy's code.

The reference that ``remedy_side_by_side.py`` times when no Remedy checkout is given.  The
functions take the same arguments as the Remedy functions they stand for, so the benchmark
drives either with the same code:

* ``base_reduction``: scalar biweight overscan (astropy, c = 6) of the last 30 of 32 overscan
  columns, trim, orientation, gain (0.85 if <= 0), error ``sqrt(RN^2 + max(img, 0))``;
* ``clean_data``: per row, linear interpolation over the masked pixels (one ``np.interp`` per
  row, as Remedy calls it);
* ``get_powerlaw``: the scattered light from the slit-group gaps (25 column chunks, nanmedian
  per region, Gaussian Nadaraya-Watson on a 25 x 25 grid, linear ``griddata`` to every pixel);
* ``get_spectra`` / ``get_spectra_error`` / ``get_spectra_chi2``: the 6-row aperture
  k-3 .. k+2 with weights (0.5 - d, 1, 1, 1, 1, 0.5 + d), vectorised over fibers.

Vectorising the extraction over fibers makes it cheaper than Remedy's per-fiber loop: with the
fallback, the reference chain costs less than Remedy's own functions (docs/benchmarks.md).
"""

from __future__ import annotations

import tarfile

import numpy as np
from astropy.io import fits
from astropy.stats import biweight_location
from scipy.interpolate import griddata

NPIX = 5
OFFSETS = np.arange(-3, 3)  # rows k-3 .. k+2 around k = round(trace)


def base_reduction(filename: str, get_header: bool = False, tfile: str | None = None,
                   rdnoise: float | None = None):
    """Overscan, trim, orient, gain and error frame of one raw amp file (or tar member)."""
    if tfile is not None:
        with tarfile.open(tfile) as tar:
            hdul = fits.open(tar.extractfile(filename))
            data, header = np.array(hdul[0].data, dtype=float), hdul[0].header
    else:
        with fits.open(filename) as hdul:
            data, header = np.array(hdul[0].data, dtype=float), hdul[0].header
    width = int(32 * data.shape[1] / 1064)
    image = data[:, :-width] - biweight_location(data[:, -(width - 2):])
    amp = header["CCDPOS"].replace(" ", "") + header["CCDHALF"].replace(" ", "")
    if amp in ("LU", "RL"):
        image = image[::-1, ::-1]
    if header.get("AMPNAME") in ("LR", "UL"):
        image = image[:, ::-1]
    gain = header["GAIN"] if header["GAIN"] > 0 else 0.85
    rn = header["RDNOISE"] if rdnoise is None else rdnoise
    rn = rn if rn > 0 else 3.0
    image = image * gain
    error = np.sqrt(rn ** 2 + np.maximum(image, 0.0))
    return (image, error, header) if get_header else (image, error)


def clean_data(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Replace masked pixels by linear interpolation along their row, row by row."""
    x = np.arange(image.shape[1])
    for row in range(image.shape[0]):
        good = mask[row] < 1
        image[row] = np.interp(x, x[good], image[row][good])
    return image


def _region_rows(trace: np.ndarray, cols: np.ndarray, nrows: int) -> list[tuple]:
    """(first row, end row) per column of the background regions: below the first fiber,
    inside every gap wider than 10 px at column 400, above the last fiber."""
    top = np.ceil(trace[:, cols])
    gaps = np.flatnonzero(np.diff(trace[:, 400]) > 10.0)
    regions = [(np.full(cols.size, 4.0), top[0] - 7)]
    regions += [(top[g] + 7, top[g + 1] - 7) for g in gaps]
    regions.append((top[-1] + 7, np.full(cols.size, nrows - 4.0)))
    return regions


def get_powerlaw(image: np.ndarray, trace: np.ndarray) -> np.ndarray | float:
    """Smooth scattered-light image interpolated from the inter-fiber gaps."""
    if np.all(trace == 0.0):
        return 0.0 * image
    nrows, ncols = image.shape
    rows = np.arange(nrows)[:, None]
    xs, ys, zs = [], [], []
    for cols in np.array_split(np.arange(ncols), 25):
        for lo, hi in _region_rows(trace, cols, nrows):
            r0, r1 = int(max(lo.min(), 0)), int(max(hi.max(), 0))
            inside = (rows[r0:r1] >= lo[None, :]) & (rows[r0:r1] < hi[None, :])
            if inside.any():
                xs.append(int(np.mean(cols)))
                ys.append(r0 + np.nonzero(inside)[0].mean())
                zs.append(np.nanmedian(image[r0:r1, cols[0]:cols[-1] + 1][inside]))
    xs, ys, zs = np.asarray(xs, float), np.asarray(ys), np.asarray(zs)
    grid = np.linspace(0, ncols - 1, 25)
    gx, gy = (g.ravel() for g in np.meshgrid(grid, grid))
    d2 = (xs[:, None] - gx[None, :]) ** 2 + (ys[:, None] - gy[None, :]) ** 2
    w = np.exp(-0.5 * d2 / 150.0 ** 2)
    zg = (zs[:, None] * w).sum(axis=0) / w.sum(axis=0)
    ok = np.isfinite(zg)
    if ok.sum() <= 5:
        return 0.0 * image
    yind, xind = np.indices(image.shape)
    return griddata(np.c_[gx[ok], gy[ok]], zg[ok], (xind, yind), method="linear")


def _aperture(trace: np.ndarray, nrows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows (6, nfib, ncol), weights (6, nfib, ncol) and the fibers inside the frame."""
    k = np.round(trace).astype(int)
    inside = (k.min(axis=1) >= 3) & (k.max(axis=1) < nrows - 3)
    k[~inside] = 3  # any valid row: those fibers are zeroed after the sum
    d = trace - np.round(trace)
    w = np.ones((OFFSETS.size,) + trace.shape)
    w[0], w[-1] = 0.5 - d, 0.5 + d
    return k[None] + OFFSETS[:, None, None], w, inside


def _gather(image: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return image[rows, np.arange(image.shape[1])[None, None, :]]


def get_spectra(image: np.ndarray, trace: np.ndarray, npix: int = NPIX) -> np.ndarray:
    """Weighted 6-row aperture sum / 5 per fiber and column (zeros outside the frame)."""
    rows, w, inside = _aperture(trace, image.shape[0])
    return (_gather(image, rows) * w).sum(axis=0) / npix * inside[:, None]


def get_spectra_error(error: np.ndarray, trace: np.ndarray, npix: int = NPIX) -> np.ndarray:
    """sqrt(sum of w * sigma^2) / 5 (the weight not squared, as Remedy does)."""
    rows, w, inside = _aperture(trace, error.shape[0])
    return np.sqrt((_gather(error, rows) ** 2 * w).sum(axis=0)) / npix * inside[:, None]


def get_spectra_chi2(flat: np.ndarray, sci: np.ndarray, error: np.ndarray, trace: np.ndarray,
                     npix: int = NPIX) -> np.ndarray:
    """Profile chi^2 of the science frame against the flat over the 6 aperture rows."""
    rows, w, inside = _aperture(trace, sci.shape[0])
    s, f, e = (_gather(a, rows) * w for a in (sci, flat, error))
    ssum = s.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        norm = ssum / f.sum(axis=0)
        chi2 = ((s - f * norm) ** 2 / (e + 0.01 * ssum) ** 2).sum(axis=0) / (npix + 1)
    return np.where(inside[:, None], chi2, 0.0)
