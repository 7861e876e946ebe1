"""Basic CCD reduction of one raw amp frame: overscan, trim, orientation, gain, variance.

Pure kernels on numpy arrays (no I/O).  Master frames (bias, dark, flat) live in another module.

Overscan: the last ``int(32 * ncols / 1064)`` columns of a raw frame; the first
``geometry.OVERSCAN_SKIP`` of them carry bleed from the data section and are skipped.

Why one scalar overscan level per frame (``per_row=False``, the default):

* The VIRUS overscan has no row structure that a master bias would not also capture, while a
  per-row estimate from 30 pixels carries a noise of about ``1.25 * RN / sqrt(30)`` (~0.7 e- for
  RN = 3 e-) that is *constant along each row*, i.e. along the wavelength axis of the fibers on
  that row.  Such a per-frame, per-row offset cannot be removed by a master bias and adds
  correlated, non-Poisson structure to the extracted spectra.  The scalar level averages ~31,000
  pixels (noise ~0.02 e-).
* Remedy uses per-row levels for calibration frames and a scalar for science frames, so masters
  and science frames are offset-corrected differently.  This project uses the same method for
  every frame kind, so any stable row pattern in the bias is subtracted by the master bias.

``per_row=True`` is kept for comparisons with Remedy's calibration path.
"""

from __future__ import annotations

import numpy as np
from astropy.stats import biweight_location
from numba import njit

from remedy_dask import geometry

BIWEIGHT_C = 6.0


def overscan_width(ncols: int) -> int:
    """Number of overscan columns of a raw frame with ``ncols`` columns (32 when unbinned)."""
    return int(geometry.N_OVERSCAN * ncols / geometry.N_COLS_RAW)


def _overscan_strip(data: np.ndarray) -> np.ndarray:
    if data.ndim != 2:
        raise ValueError(f"raw frame must be 2-D, got shape {data.shape}")
    ncols = data.shape[1]
    width = overscan_width(ncols)
    if width <= geometry.OVERSCAN_SKIP:
        raise ValueError(f"raw frame with {ncols} columns has no usable overscan")
    return np.asarray(data[:, ncols - width + geometry.OVERSCAN_SKIP:], dtype=np.float64)


def overscan_level(data: np.ndarray) -> float:
    """Biweight location (c = 6) of the whole overscan strip, bleed columns skipped (ADU)."""
    return float(biweight_location(_overscan_strip(data), c=BIWEIGHT_C))


def overscan_rows(data: np.ndarray) -> np.ndarray:
    """Per-row biweight location (c = 6) of the overscan strip, bleed columns skipped (ADU)."""
    levels = biweight_location(_overscan_strip(data), c=BIWEIGHT_C, axis=1)
    return np.asarray(levels, dtype=np.float64)


def orient(image: np.ndarray, amp: str, ampname: str | None) -> np.ndarray:
    """Flip a trimmed amp image so that wavelength increases with column and fibers with row.

    Both axes are flipped for ``LU`` and ``RL``; then the columns are flipped again when the
    header ``AMPNAME`` is ``LR`` or ``UL``.  Returns a view of ``image``.
    """
    flip_rows, flip_cols = _flips(amp, ampname)
    return image[::-1 if flip_rows else 1, ::-1 if flip_cols else 1]


def _flips(amp: str, ampname: str | None) -> tuple[bool, bool]:
    """(rows flipped, columns flipped) of :func:`orient`."""
    if amp not in geometry.AMPS:
        raise ValueError(f"unknown amplifier {amp!r}; expected one of {geometry.AMPS}")
    both = amp in geometry.FLIP_BOTH_AMPS
    again = ampname is not None and ampname.strip() in geometry.FLIP_COLUMNS_AMPNAMES
    return both, both != again


@njit(cache=True, nogil=True)
def _reduce_pixels(data, offset, gain, rn2, flip_rows, flip_cols, image, variance):  # pragma: no cover
    """image = (float32(data) - offset[raw row]) * gain on the oriented grid, variance =
    max(image, 0) + rn2, all in float32 (numpy's float32 arithmetic, one pass)."""
    n_rows, n_cols = image.shape
    zero = np.float32(0.0)
    for i in range(n_rows):
        si = n_rows - 1 - i if flip_rows else i
        off = offset[si]
        for j in range(n_cols):
            sj = n_cols - 1 - j if flip_cols else j
            x = (np.float32(data[si, sj]) - off) * gain
            image[i, j] = x
            variance[i, j] = (x if x > zero else zero) + rn2


def basic_reduce(
    data: np.ndarray,
    amp: str,
    ampname: str | None,
    gain: float,
    rdnoise: float,
    per_row: bool = False,
) -> tuple[np.ndarray, np.ndarray, float | np.ndarray]:
    """Overscan-subtract, trim, orient and gain-correct one raw amp frame.

    Returns ``(image_e, variance_e2, overscan_adu)``: the oriented (nrows, ncols - overscan)
    image in electrons and its variance ``rdnoise**2 + max(image, 0)`` (both float32), and the
    overscan level in ADU (a float, or a per-raw-row array when ``per_row``).
    ``gain`` (e-/ADU) must be > 0 and ``rdnoise`` (e-) >= 0; the header layer applies defaults.
    """
    if not gain > 0:
        raise ValueError(f"gain must be > 0, got {gain}")
    if not rdnoise >= 0:
        raise ValueError(f"rdnoise must be >= 0, got {rdnoise}")
    if data.ndim != 2:
        raise ValueError(f"raw frame must be 2-D, got shape {data.shape}")
    ncols = data.shape[1]
    level: float | np.ndarray
    if per_row:
        level = overscan_rows(data)
        offset = level.astype(np.float32)[:, None]
    else:
        level = overscan_level(data)
        offset = np.float32(level)
    n_data = ncols - overscan_width(ncols)
    flip_rows, flip_cols = _flips(amp, ampname)
    if data.dtype.kind in "ui" and data.dtype.itemsize <= 2:  # exact in float32: one pass
        image = np.empty((data.shape[0], n_data), np.float32)
        variance = np.empty_like(image)
        offsets = np.broadcast_to(np.asarray(offset, np.float32).reshape(-1), (data.shape[0],))
        _reduce_pixels(data, np.ascontiguousarray(offsets), np.float32(gain),
                       np.float32(rdnoise) ** 2, flip_rows, flip_cols, image, variance)
        return image, variance, level
    trimmed = np.subtract(data[:, :n_data], offset, dtype=np.float32)
    image = np.multiply(orient(trimmed, amp, ampname), np.float32(gain), dtype=np.float32)
    variance = np.maximum(image, np.float32(0.0))
    variance += np.float32(rdnoise) ** 2
    return image, variance, level


def column_offsets(columns: np.ndarray, rest: np.ndarray, keep_sigma: float = 5.0
                   ) -> np.ndarray:
    """Column medians shrunk by their measured pattern-to-noise ratio (Wiener filter).

    Noise of a column median: 1.2533 x sigma_pixel / sqrt(n good rows), with sigma_pixel the
    robust scatter of ``rest`` (pixels minus their column median, NaN = masked).  Deviations
    from the median column are multiplied by pattern variance / (pattern variance + noise^2),
    the pattern variance being the robust spread of the columns minus the noise: ~1 for a real
    pattern (bias), ~0 for noise alone (dark).  Columns beyond ``keep_sigma`` of that spread
    (hot or warm columns) are kept as measured."""
    from remedy_dask.numeric.robust import mad_sigma

    finite = rest[np.isfinite(rest)]
    if finite.size < 100:
        return columns
    sigma_pix = float(mad_sigma(finite, max_samples=200_000))
    n_rows = np.maximum(np.isfinite(rest).sum(axis=0), 1)
    noise = 1.2533 * sigma_pix / np.sqrt(n_rows)
    centre = float(np.median(columns))
    dev = columns - centre
    spread = float(mad_sigma(columns, max_samples=150_000))  # pattern + noise, robust to hot columns
    signal_var = max(spread**2 - float(np.median(noise**2)), 0.0)
    gain = signal_var / (signal_var + noise**2)
    outlier = np.abs(dev) > keep_sigma * np.sqrt(signal_var + noise**2)
    return np.where(outlier, columns, centre + gain * dev)


def smooth_master(master: np.ndarray, mask: np.ndarray | None = None, block: int = 32
                  ) -> tuple[np.ndarray, float]:
    """Noise-free model of a master bias or dark: column pattern + smooth 2-D structure.

    A median of a few frames carries ~1.3 rn / sqrt(n) of noise in every pixel; subtracting it
    as is adds that noise to every science pixel (for 5 biases and 3 darks about 10% of the
    variance of a dark-sky pixel).  The model keeps what can be measured: each column's median
    offset (column patterns) and the block-median structure on ``block``-pixel scales
    (gradients, glow), bilinearly interpolated.  Masked pixels (hot pixels, traps) are ignored;
    they are masked in the science frames anyway.  Returns (model, rms of master - model over
    good pixels) so the lost pixel-scale structure can be checked against the noise.

    The column offsets are Wiener-shrunk (``column_offsets``): a column median of a few frames
    carries noise too, and in a dark (no column pattern, scaled by the exposure time) that
    noise alone would be subtracted from every fiber of the column alike, where it shifts the
    sky lines of the whole amp coherently (0.02-0.03 px with one dark frame, simulator).
    """
    from remedy_dask.numeric.bilinear import upsample_bilinear
    from remedy_dask.numeric.rowstats import nanmedian_cols, nanmedian_rows

    good = np.ones(master.shape, bool) if mask is None else ~np.asarray(mask, bool)
    values = np.where(good, master, np.nan)
    ny, nx = master.shape
    columns = nanmedian_cols(values, ~good, np.arange(ny))
    columns = np.where(np.isfinite(columns), columns, np.nanmedian(columns))
    columns = column_offsets(columns, values - columns[None, :])
    rest = values - columns[None, :]
    by, bx = ny // block, nx // block
    blocks = (rest[: by * block, : bx * block].reshape(by, block, bx, block)
              .transpose(0, 2, 1, 3).reshape(by * bx, block * block))
    coarse = nanmedian_rows(blocks, np.zeros(blocks.shape, bool),
                            np.arange(block * block)).reshape(by, bx)
    coarse = np.where(np.isfinite(coarse), coarse, np.nanmedian(coarse))
    smooth = upsample_bilinear(coarse, (ny, nx))  # scipy's zoom (order 1, grid mode) to rounding
    model = (columns[None, :] + smooth).astype(np.float32)
    resid = (master - model)[good]
    return model, float(np.std(resid))


def subtract_bias_dark(image: np.ndarray, bias: np.ndarray, dark_rate: np.ndarray,
                       exptime: float) -> np.ndarray:
    """``image - bias - dark_rate * exptime`` (electrons; dark rate in e-/s), with numpy's
    types and rounding (a float32 frame with float32 masters stays float32)."""
    if not (image.ndim == 2 and image.shape == bias.shape == dark_rate.shape
            and all(a.dtype in (np.float32, np.float64) for a in (image, bias, dark_rate))):
        return image - bias - dark_rate * exptime
    t = np.asarray(exptime, np.result_type(dark_rate, exptime))  # (a Python float is weak)
    out = np.empty(image.shape, np.result_type(image, bias, dark_rate, t))
    _subtract_bias_dark(image, bias, dark_rate, t[()], out)
    return out


@njit(cache=True, nogil=True)
def _subtract_bias_dark(image, bias, dark_rate, t, out):  # pragma: no cover - compiled
    """out = (image - bias) - dark_rate * t element by element, one pass."""
    for i in range(image.shape[0]):
        for j in range(image.shape[1]):
            out[i, j] = (image[i, j] - bias[i, j]) - dark_rate[i, j] * t
