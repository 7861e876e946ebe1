"""Master frames (bias, dark, flat, arc, twilight), read noise, the pixel mask and frame checks.

Inputs are oriented amp images in electrons (overscan subtracted, trimmed).  Uncertainties of
masters come from a noise model fitted to the frames themselves (variance = a * level + b, the
Poisson + read-noise law), not from the per-pixel scatter of a handful of frames, which is
itself too noisy to weight with.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import chi2

from remedy_dask import geometry
from remedy_dask.errors import CalibrationError
from remedy_dask.numeric.bilinear import interpolate_between_centres
from remedy_dask.numeric.clipmean import clipped_mean
from remedy_dask.numeric.framestats import (
    finite_values, median_exact, nanmedian_exact, percentile_exact,
)
from remedy_dask.numeric.robust import mad_sigma
from remedy_dask.numeric.rowstats import nanmedian_rows
from remedy_dask.numeric.sortnet import median_of_frames, running_median_rows

# variance of the median of n Gaussian samples over the variance of their mean (n = 1..10)
_MEDIAN_EFFICIENCY = (1.0, 1.0, 1.346, 1.192, 1.434, 1.283, 1.478, 1.347, 1.497, 1.381)


def _median_variance_factor(n: int) -> float:
    return _MEDIAN_EFFICIENCY[n - 1] if n <= len(_MEDIAN_EFFICIENCY) else np.pi / 2


def noise_model(stack: np.ndarray, centre: np.ndarray, n_bins: int = 30) -> tuple[float, float]:
    """Fit per-pixel variance = a * level + b across the frames of ``stack`` (n >= 2), binned by
    the per-pixel ``centre`` level: robust (medians of sample variances in level bins, chi2-corrected).
    When the levels span too little to fit a slope, a = 1 (Poisson in electrons)."""
    n = stack.shape[0]
    flat_centre = centre.ravel()
    step = max(flat_centre.size // 100_000, 1)  # a regular subsample is plenty for two numbers
    sub = slice(0, None, step)
    level = flat_centre[sub]
    samples = stack.reshape(n, -1)[:, sub]
    v = samples.var(axis=0, ddof=1)  # about the mean (outliers are handled by the bin medians)
    finite = np.isfinite(level) & np.isfinite(v)
    level, v = level[finite], v[finite]
    # sorted, the bins become slices [bounds[i], bounds[i + 1]) (the order of ties changes no
    # median) and the percentiles select from sorted values
    order = np.argsort(level)
    level, v = level[order], v[order]
    edges = np.unique(np.percentile(level, np.r_[np.linspace(0.5, 99.5, n_bins), 99.99]))
    bounds = np.searchsorted(level, edges, side="left")
    med_factor = chi2.median(n - 1) / (n - 1)  # median of s^2 / sigma^2
    xs, ys, ws = [], [], []
    for start, stop in zip(bounds[:-1], bounds[1:]):
        if stop - start < 50:
            continue
        xs.append(np.median(level[start:stop]))
        ys.append(np.median(v[start:stop]) / med_factor)
        ws.append(np.sqrt(stop - start) / max(ys[-1], 1e-6))
    b0 = float(np.median(v) / med_factor)
    if len(xs) < 2 or np.ptp(xs) < 10.0 * np.sqrt(b0):
        # levels too alike to fit a slope (bias, dark): images are in electrons -> Poisson
        return 1.0, max(b0 - max(float(np.median(level)), 0.0), 1e-6)
    a, b = np.polyfit(xs, ys, 1, w=ws)
    return float(max(a, 0.0)), float(max(b, 1e-6))


def combine_frames(stack: np.ndarray, method: str = "median", normalize: bool = False,
                   read_noise: float = geometry.DEFAULT_RDNOISE, clip: float = 4.0
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Combine frames (n, ny, nx) into (master, error per pixel).

    ``normalize`` scales each frame to the common median level first (lamp/twilight changes).
    ``median``: per-pixel median.  ``mean_clipped``: mean of the values within ``clip`` sigma of
    the median, sigma from the fitted noise model; with two frames that disagree the lower one
    is kept (cosmic rays are positive).  The error comes from the noise model
    (variance = a * level + b fitted on the stack; for one frame a = 1, b = ``read_noise``^2).
    """
    frames = np.asarray(stack, dtype=float)
    if frames.ndim != 3 or frames.shape[0] == 0:
        raise CalibrationError(f"combine_frames needs a (n, ny, nx) stack, got {frames.shape}")
    n = frames.shape[0]
    if normalize:
        levels = np.array([nanmedian_exact(f) for f in frames])
        if np.any(~np.isfinite(levels)) or np.any(levels <= 0):
            raise CalibrationError("cannot normalise frames with non-positive median level")
        frames = frames * (np.median(levels) / levels)[:, None, None]
    if n == 1:
        master = frames[0].copy()
        return master, np.sqrt(np.clip(master, 0, None) + read_noise**2)
    med = median_of_frames(frames)
    a, b = noise_model(frames, med)
    sigma = np.sqrt(a * np.clip(med, 0, None) + b)
    if method == "median":
        return med, sigma * np.sqrt(_median_variance_factor(n) / n)
    if method != "mean_clipped":
        raise CalibrationError(f"unknown combine method {method!r}")
    if n == 2:
        disagree = np.abs(frames[0] - frames[1]) > clip * sigma * np.sqrt(2.0)
        master = np.where(disagree, frames.min(0), frames.mean(0))
        return master, np.where(disagree, sigma, sigma / np.sqrt(2.0))
    master, count = clipped_mean(frames, med, sigma, clip)
    return master, sigma / np.sqrt(np.maximum(count, 1))


def _clipped_std(values: np.ndarray, clip: float = 5.0) -> float:
    """Standard deviation after iterative ``clip``-sigma clipping, started from the MAD.  Unlike
    the MAD itself it is not biased by the ADU quantisation of the data."""
    v = values[np.isfinite(values)]
    centre = np.median(v)
    sig = mad_sigma(v, centre)
    for _ in range(3):
        sel = v[np.abs(v - centre) < clip * max(sig, 1e-12)]
        centre, sig = sel.mean(), sel.std()
    return float(sig)


def master_bias(zero_stack: np.ndarray) -> tuple[np.ndarray, float]:
    """Master bias (clipped mean, e-) and read noise (e-) from frame differences (robust); with
    a single frame, from differences of adjacent rows (the fixed column pattern cancels)."""
    frames = np.asarray(zero_stack, dtype=float)
    if frames.ndim == 2:
        frames = frames[None]
    if frames.shape[0] == 1:
        read_noise = _clipped_std(np.diff(frames[0], axis=0)[::3].ravel()) / np.sqrt(2.0)
        bias = frames[0].copy()
    else:
        diffs = (frames[1:] - frames[:-1]).reshape(frames.shape[0] - 1, -1)[:, ::7]  # subsample
        read_noise = float(np.median([_clipped_std(d) for d in diffs])) / np.sqrt(2.0)
        bias, _ = combine_frames(frames, "mean_clipped", read_noise=read_noise)
    if not np.isfinite(read_noise) or read_noise <= 0:
        raise CalibrationError(f"zero frames give read noise {read_noise!r}: frames empty or constant")
    return bias, float(read_noise)


def master_dark(dark_stack: np.ndarray, bias: np.ndarray, exptimes: np.ndarray,
                denoise: bool = False, keep_sigma: float = 5.0) -> np.ndarray:
    """Dark current (e-/s per pixel): bias-subtracted frames over their exposure times, combined
    with the clipped mean (the median for two frames would keep half of every cosmic ray).

    The per-pixel result finds hot pixels (``pixel_mask``).  For subtraction use a noise-free
    model: the per-pixel noise of a few combined darks (~2 e- per 360 s) would otherwise be
    subtracted from every science frame of the night, correlated between its exposures (on the
    simulator it biased the sky-line wavelength shifts by up to 0.04 px).  ``denoise=True``
    returns ``smooth_dark(rate, keep_sigma)``: the measured value only where it deviates from a
    smooth dark by more than ``keep_sigma`` (hot pixels, trap glow), the smooth dark elsewhere.
    """
    frames = np.asarray(dark_stack, dtype=float)
    times = np.asarray(exptimes, dtype=float).reshape(-1)
    if frames.ndim == 2:
        frames = frames[None]
    if times.size != frames.shape[0] or np.any(~(times > 0)):
        raise CalibrationError(f"dark exposure times must be > 0 for every frame, got {times}")
    # combine in electrons (scaled to the median exposure time) so the Poisson model applies
    t_ref = float(np.median(times))
    scaled = (frames - bias[None]) * (t_ref / times)[:, None, None]
    combined, _ = combine_frames(scaled, "mean_clipped" if frames.shape[0] > 1 else "median")
    rate = combined / t_ref
    return smooth_dark(rate, keep_sigma) if denoise else rate


def smooth_dark(rate: np.ndarray, keep_sigma: float = 5.0, block: int = 24) -> np.ndarray:
    """Smooth dark (medians of ``block`` x ``block`` pixels, bilinearly interpolated) plus the
    pixels deviating from it by more than ``keep_sigma`` robust sigma."""
    smooth = block_smooth(rate, block)
    dev = rate - smooth
    sig = float(mad_sigma(dev, max_samples=150_000))
    return np.where(np.abs(dev) > keep_sigma * sig, rate, smooth)


def block_smooth(image: np.ndarray, block: int = 24) -> np.ndarray:
    """Medians of ``block`` x ``block`` pixel blocks, bilinearly interpolated to every pixel."""
    n_rows, n_cols = image.shape
    nb_r, nb_c = n_rows // block, n_cols // block
    core = image[:nb_r * block, :nb_c * block].reshape(nb_r, block, nb_c, block)
    tiles = core.transpose(0, 2, 1, 3).reshape(nb_r * nb_c, -1)
    if np.isfinite(tiles).all():  # the compiled median equals numpy's on finite values
        med = nanmedian_rows(tiles, np.zeros(tiles.shape, bool), np.arange(tiles.shape[1]))
        med = med.reshape(nb_r, nb_c)
    else:
        med = np.median(tiles.reshape(nb_r, nb_c, -1), axis=2)
    centres_r = (np.arange(nb_r) + 0.5) * block - 0.5
    centres_c = (np.arange(nb_c) + 0.5) * block - 0.5
    return interpolate_between_centres(med, centres_r, centres_c, n_rows, n_cols)


def _column_runs(flag: np.ndarray, min_blocks: int) -> np.ndarray:
    """Per column, the blocks belonging to runs of >= ``min_blocks`` consecutive flagged blocks,
    each run extended by one block on both ends (flag: (n_blocks, n_cols))."""
    n_blocks = flag.shape[0]
    out = np.zeros_like(flag)
    for j in np.flatnonzero(flag.sum(0) >= min_blocks):
        f = np.r_[False, flag[:, j], False].astype(int)
        starts, ends = np.flatnonzero(np.diff(f) == 1), np.flatnonzero(np.diff(f) == -1)
        for s, e in zip(starts, ends):
            if e - s >= min_blocks:
                out[max(s - 1, 0):min(e + 1, n_blocks), j] = True
    return out


def pixel_mask(dark_rate: np.ndarray, master_flat: np.ndarray, trace: np.ndarray | None = None, *,
               dark_exptime: float = 360.0, hot_sigma: float = 8.0, flat_sigma: float = 8.0,
               column_sigma: float = 6.0, block: int = 32, flat_level: float = 0.1
               ) -> tuple[np.ndarray, dict[str, float]]:
    """Bad-pixel mask (True = bad) from the master dark rate and the master flat.

    * hot pixels: dark-rate excess over the smooth dark (24 x 24 block medians) above
      ``hot_sigma`` robust sigma (and more than 1 e- in ``dark_exptime``);
    * hot / charge-trap columns: runs of ``block``-row segments whose median dark excess is
      ``column_sigma`` sigma off (the segments plus one block of margin are masked);
    * bad / low columns and trap trails from the flat: the flat over its median along the row
      (9 columns), normalised by the noise, in row segments, only where the flat is above
      ``flat_level`` of its 99th percentile (fiber light); single pixels ``flat_sigma`` off and
      more than 20% low are masked too.
    A column with more than half of its segments bad is masked entirely.  ``trace`` (optional)
    adds the masked fraction within +-3 px of the fibers to the stats.
    """
    dark = np.asarray(dark_rate, dtype=float)
    flat = np.asarray(master_flat, dtype=float)
    n_rows, n_cols = flat.shape
    mask = np.zeros((n_rows, n_cols), dtype=bool)
    n_blocks = n_rows // block
    rows_used = n_blocks * block

    # --- dark: hot pixels and columns ---
    excess = dark - block_smooth(dark)  # the dark is smooth apart from its defects
    sig = float(mad_sigma(excess, max_samples=150_000))
    # a denoised dark (master_dark default) is exactly smooth except at deviant pixels: floor
    # the noise at 1 e- per dark exposure
    sig = max(sig, 1.0 / dark_exptime)
    hot = (excess > hot_sigma * sig) & (excess * dark_exptime > 1.0)
    seg = np.mean(np.clip(excess[:rows_used], -5 * sig, 5 * sig).reshape(n_blocks, block, n_cols),
                  axis=1)  # clipped mean: hot pixels do not make a column
    dark_cols = _column_runs(np.abs(seg - np.median(seg)) > column_sigma * sig / np.sqrt(block), 2)

    # --- flat: bad columns, trap trails, dead pixels ---
    flat_local = running_median_rows(flat, 9)
    local_values = flat_local.reshape(-1)
    local_values = local_values[~np.isnan(local_values)]
    top = percentile_exact(local_values, 99) if local_values.size else np.nan
    bright = flat_local > flat_level * top  # (top: np.nanpercentile(flat_local, 99))
    z = (flat - flat_local) / np.sqrt(np.clip(flat_local, 1.0, None))
    zs = float(mad_sigma(z[bright], max_samples=150_000)) + 1e-12
    z = np.where(bright, z / zs, np.nan)
    zb = z[:rows_used].reshape(n_blocks, block, n_cols)
    enough = np.isfinite(zb).sum(1) >= 4
    by_column = np.ascontiguousarray(zb.transpose(0, 2, 1)).reshape(n_blocks * n_cols, block)
    seg_median = nanmedian_rows(by_column, np.zeros(by_column.shape, bool), np.arange(block))
    seg_flat = np.where(enough, seg_median.reshape(n_blocks, n_cols), 0.0)
    # noise of a segment median ~ 1.25 / sqrt(n); flag segments |median| > column_sigma of that
    seg_noise = 1.25 / np.sqrt(np.maximum(np.isfinite(zb).sum(1), 1))
    flat_cols = _column_runs(enough & (np.abs(seg_flat) > column_sigma * seg_noise), 2)
    ratio = np.where(bright, flat / np.where(flat_local > 0, flat_local, 1.0), 1.0)
    dead_px = bright & (np.nan_to_num(z) < -flat_sigma) & (ratio < 0.8)

    col_blocks = dark_cols | flat_cols
    block_mask = np.repeat(col_blocks, block, axis=0)
    mask[:rows_used] |= block_mask
    whole = col_blocks.sum(0) > n_blocks // 2
    mask[:, whole] = True
    if rows_used < n_rows:  # rows beyond the last full block follow the last block
        mask[rows_used:] |= col_blocks[-1][None, :]
    mask |= hot | dead_px
    stats = {"hot_pixels": int(hot.sum()), "dead_pixels": int(dead_px.sum()),
             "bad_columns": int(whole.sum()), "bad_column_segments": int(col_blocks.sum()),
             "masked_fraction": float(mask.mean()), "dark_sigma": float(sig)}
    if trace is not None:
        rows = np.clip(np.round(trace).astype(int)[..., None] + np.arange(-3, 4), 0, n_rows - 1)
        stats["masked_fraction_fibers"] = float(mask[rows, np.arange(n_cols)[None, :, None]].mean())
    return mask, stats


def frame_quality(image: np.ndarray, kind: str, *, saturation: float = 55000.0,
                  max_saturated: float = 0.01) -> str | None:
    """A reason why a frame (oriented, e-, bias not subtracted beyond the overscan) is unusable
    for its ``kind``, or None.  Levels follow Remedy's gates, checked on robust statistics."""
    img = np.asarray(image)
    if img.ndim != 2 or img.size == 0:
        return f"not a 2-D image (shape {img.shape})"
    fin = finite_values(img if img.dtype.kind == "f" else img.astype(float), saturation)
    vals = fin.values
    if vals.size < 0.99 * fin.size:
        return f"{100 * (1 - vals.size / fin.size):.1f}% non-finite pixels"
    if fin.high == fin.low:
        return f"empty frame (every pixel {vals[0]:g})"
    sat = fin.n_above / vals.size
    if sat > max_saturated:
        return f"{100 * sat:.1f}% of pixels saturated (>= {saturation:g} e-)"
    # each kind's gate needs one or two statistics: only those are computed, by selection
    med = median_exact(vals) if kind in ("zro", "drk", "cmp") else np.nan
    mean = float(np.mean(vals)) if kind in ("flt", "twi", "sci") else np.nan
    p999 = percentile_exact(vals, 99.9) if kind == "cmp" else np.nan
    if kind == "zro" and abs(med) > 50.0:
        return f"median {med:.1f} e- is not a bias frame (|median| <= 50 e- after overscan)"
    if kind == "drk" and not -50.0 <= med <= 500.0:
        return f"median {med:.1f} e- is not a dark frame"
    if kind in ("flt", "twi") and not 50.0 <= mean <= 50000.0:
        return f"mean {mean:.1f} e- outside 50-50000 e- for a {kind} frame"
    if kind == "sci" and not 1.0 <= mean <= 50000.0:
        return f"mean {mean:.1f} e- outside 1-50000 e- for a science frame"
    if kind == "cmp" and p999 - med < 200.0:
        return f"no arc lines (99.9th percentile only {p999 - med:.0f} e- above the median)"
    if kind not in geometry.FRAME_KINDS:
        return f"unknown frame kind {kind!r}"
    return None
