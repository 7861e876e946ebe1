"""Scattered light under the fibers of an oriented amp image.

Remedy (§3.5) takes medians in the slit-group gaps and below/above the fibers.  Two problems:
(1) the profile wings (~10% of the light, sigma ~3 px) still put light worth ~1/3 of the
scattered light into a gap centre 8.7 px from two fibers; (2) between the four sampled rows the
background is only interpolated.  Here, per column chunk, only rows at least 6 px from every
fiber are used (gaps, below and above the fibers: the fiber cores, whose width varies over the
chip, never enter), and they are modelled as

    d(x, y) = sum_m c_m T_m(x, y) + a + b x + c y + sum_k A_k W(|y - t_k|)

where T_m is the chip's own fiber light (amplitude map) convolved with broad halo kernels
(1 + (r/r0)^2)^-1.5 of several r0, W is the far wing (6-14 px, free nodes) of the fiber profile
and A_k the fiber amplitudes measured on the cores.  All linear; the halo templates carry the
shape of the scattered light (dips at the gaps, fall-off at the chip edges) into the groups.
The halo amplitudes and wing nodes are >= 0 (a small active-set least squares).

Speed (~20 ms per amp on one core, of which ~2/3 is ``chunk_profiles``): the halo convolutions
run by FFT on a light map of 4-row steps (the kernels are >= 25 px wide) with cached kernel
spectra, the bounded fit works on the QR factor of a ~14-column design, the free rows are found
by counting fibers below every row, and the chunk model goes to every column by a compiled
linear interpolation.  The chunk cross-sections are :mod:`remedy_dask.amp.profile.chunks`.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import scipy.fft as sfft
from scipy.linalg import lapack

from remedy_dask.amp.profile.chunks import chunk_positions, chunk_profiles
from remedy_dask.amp.scatter_kernels import (
    chunk_model,
    core_light,
    fiber_distances,
    interpolate_columns,
    light_map,
    wing_columns,
)
from remedy_dask.errors import CalibrationError
from remedy_dask.numeric.robust import mad_sigma

# --------------------------------------------------------------------------------------------
# scattered light from gaps and edges with halo templates
# --------------------------------------------------------------------------------------------
HALO_R0 = (25.0, 70.0, 200.0)  # px, core radii of the halo kernels (1 + (r/r0)^2)^-1.5
HALO_ROW_BIN = 4  # px, row step of the light map the halo kernels are applied on
WING_NODES = np.arange(6.0, 15.0, 1.0)  # px, far-wing nodes (W = 0 at the last)
MIN_DISTANCE = 6.0  # px, rows closer than this to a fiber are not used


def core_amplitudes(profiles: np.ndarray, pos: np.ndarray, background: np.ndarray,
                    half: int = 3) -> np.ndarray:
    """Fiber light in +-``half`` rows of each fiber of each chunk, background removed (NaN
    rows count 0)."""
    out = np.empty(pos.shape)
    core_light(profiles, background, np.round(pos).astype(np.intp), half, out)
    return out


def _light_map(pos: np.ndarray, amp: np.ndarray, n_rows: int) -> np.ndarray:
    """Fiber amplitudes deposited at rows ``pos`` (linear split between the two nearest rows,
    which keeps the light's centroid): (n_chunks, n_rows)."""
    out = np.empty((pos.shape[0], n_rows))
    light_map(np.ascontiguousarray(pos, dtype=float), np.ascontiguousarray(amp, dtype=float),
              n_rows, out)
    return out


def _fft_shape(n_chunks: int, n_coarse: int) -> tuple[int, int]:
    """Zero-padded FFT grid of a light map: at least twice its size (linear convolution with
    the kernels' full extent), rounded up to fast FFT lengths."""
    return sfft.next_fast_len(2 * n_chunks, real=True), sfft.next_fast_len(2 * n_coarse, real=True)


@functools.lru_cache(maxsize=16)
def halo_kernel_spectra(shape: tuple[int, int], col_step: float, row_step: float,
                        r0s: tuple[float, ...] = HALO_R0) -> np.ndarray:
    """rfft2 of the (1 + (r/r0)^2)^-1.5 kernels on a periodic grid of ``shape`` (chunks x
    coarse rows, steps in px): (n_kernels, shape[0], shape[1] // 2 + 1), read-only (cached)."""
    dx = np.fft.fftfreq(shape[0], 1.0 / shape[0]) * col_step
    dy = np.fft.fftfreq(shape[1], 1.0 / shape[1]) * row_step
    r2 = dx[:, None] ** 2 + dy[None, :] ** 2
    out = np.stack([sfft.rfft2((1.0 + r2 / r0**2) ** -1.5) for r0 in r0s])
    out.flags.writeable = False
    return out


def halo_templates(light: np.ndarray, kernel_spectra: np.ndarray) -> np.ndarray:
    """The light map (n_chunks, n_coarse) convolved in 2-D with the halo kernels given by their
    spectra on the grid ``_fft_shape`` (see :func:`halo_kernel_spectra`).  Returns
    (n_kernels, n_chunks, n_coarse), each normalised to the total light."""
    n_chunks, n_coarse = light.shape
    shape = _fft_shape(n_chunks, n_coarse)
    # 2-D FFTs axis by axis: the zero padding is not transformed, unused outputs not computed
    spectrum = sfft.fft(sfft.rfft(light, shape[1], axis=1), shape[0], axis=0)
    part = sfft.ifft(spectrum[None] * kernel_spectra, axis=1)[:, :n_chunks]
    conv = sfft.irfft(part, shape[1], axis=2)[:, :, :n_coarse]
    return conv * (light.sum() / np.maximum(conv.sum(axis=(1, 2)), 1e-30))[:, None, None]


def _row_interpolation(n_rows: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Lower coarse node and weight of the upper one for every row (coarse node i at row i*step)."""
    q = np.arange(n_rows) / step
    lo = np.floor(q).astype(int)
    return lo, q - lo


def _r_factor(a: np.ndarray, block: int = 512) -> np.ndarray:
    """R of the QR decomposition of a tall, narrow ``a`` (up to signs), block by block
    (TSQR): small factorisations, which also keeps threaded BLAS out of the way (LAPACK geqrf
    directly: numpy's qr wrapper costs more than the factorisation at these sizes)."""
    if a.shape[0] <= block:
        return np.triu(lapack.dgeqrf(a)[0][:a.shape[1]])
    return _r_factor(np.vstack([_r_factor(a[i:i + block], block)
                                for i in range(0, a.shape[0], block)]), block)


def bounded_lstsq(design: np.ndarray, data: np.ndarray, nonneg: np.ndarray,
                  start: np.ndarray | None = None, max_iter: int = 200) -> np.ndarray:
    """Least squares ``design @ x ~ data`` with ``x[nonneg] >= 0`` (the others free).

    Lawson-Hanson active set on the triangular factor R of the column-scaled design (one QR of
    [design, data]: every step is a tiny solve with the conditioning of the design, not of its
    normal equations); ``start`` (bool, optional) guesses the variables off their bound, e.g. from a
    previous fit.  Raises CalibrationError on non-finite input."""
    scale = np.sqrt(np.mean(design**2, axis=0)) + 1e-30
    if not (np.all(np.isfinite(design)) and np.all(np.isfinite(data))):
        raise CalibrationError("scattered light: non-finite values in the background fit")
    n = design.shape[1]
    r_aug = _r_factor(np.column_stack([design / scale, data]))  # [A b] = Q [[R, c], [0, rho]]
    r, c = r_aug[:, :n], r_aug[:, n]
    tol = 1e-10 * max(float(np.abs(r.T @ c).max()), 1e-30)

    def solve(passive: np.ndarray) -> np.ndarray:
        z = np.zeros(n)
        idx = np.flatnonzero(passive)
        z[idx] = np.linalg.lstsq(r[:, idx], c, rcond=1e-10)[0]
        return z

    passive = ~nonneg
    x = solve(passive)
    if start is not None:  # warm start, kept only if feasible
        z = solve(passive | start)
        if np.all(z[nonneg & start] > 0):
            passive, x = passive | start, z
    for _ in range(max_iter):
        grad = r.T @ (c - r @ x)
        cand = np.flatnonzero(nonneg & ~passive & (grad > tol))
        if cand.size == 0:
            break
        passive[cand[np.argmax(grad[cand])]] = True
        for _ in range(n + 1):
            z = solve(passive)
            neg = passive & nonneg & (z <= 0)
            if not neg.any():
                x = z
                break
            # step from x towards z up to the first bound, drop the variables that hit it
            alpha = np.min(x[neg] / np.maximum(x[neg] - z[neg], 1e-300))
            x = x + alpha * (z - x)
            passive &= ~(nonneg & (x <= 1e-12 * np.abs(x).max()))
            x[~passive] = 0.0
    return x / scale


def _free_rows(pos: np.ndarray, n_rows: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Distance (n_chunks, n_rows) of every (chunk, row) to the nearest fiber (inf without
    fibers), with what :func:`_near_fibers` needs: the positions sorted per chunk, their order and
    ``above`` (n_chunks, n_rows), the number of fibers below every row (``np.searchsorted``
    of the sorted positions: pos < row <=> floor(pos) + 1 <= row for integer rows)."""
    order = np.argsort(pos, axis=1)
    spos = np.ascontiguousarray(np.take_along_axis(pos, order, axis=1))
    above = np.empty((pos.shape[0], n_rows), np.intp)
    dmin = np.empty((pos.shape[0], n_rows))
    fiber_distances(spos, n_rows, above, dmin)
    return dmin, spos, order, above


def _near_fibers(spos: np.ndarray, order: np.ndarray, above: np.ndarray, jj: np.ndarray,
                 yy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distances (n, 4) from rows (jj, yy) (chunk, row) to the 4 fibers around them (inf where
    there is none) and those fibers' indices (see :func:`_free_rows`)."""
    n_fib = spos.shape[1]
    near = above[jj, yy][:, None] + np.arange(-2, 2)  # (n, 4)
    exists = (near >= 0) & (near < n_fib)
    near = np.clip(near, 0, n_fib - 1)
    chunk = jj[:, None]
    dist = np.where(exists, np.abs(yy[:, None] - spos[chunk, near]), np.inf)
    return dist, order[chunk, near]


def _wing_design(dist: np.ndarray, amp_near: np.ndarray) -> np.ndarray:
    """Far-wing columns (n, n_w): the near fibers' amplitudes on hat functions of the distance
    (the node at the last, W = 0, is dropped)."""
    n_w = WING_NODES.size - 1
    out = np.empty((dist.shape[0], n_w))
    wing_columns(np.ascontiguousarray(dist), np.ascontiguousarray(amp_near, dtype=float),
                 float(WING_NODES[0]), float(WING_NODES[1] - WING_NODES[0]), n_w, out)
    return out


def scattered_light(image: np.ndarray, trace: np.ndarray, mask: np.ndarray | None = None, *,
                    variance: np.ndarray | None = None, n_chunks: int = 43,
                    min_distance: float = MIN_DISTANCE, n_iter: int = 2,
                    row_bin: int = HALO_ROW_BIN) -> np.ndarray:
    """Smooth scattered-light image (e-) under the fibers of ``image`` traced by ``trace``.

    Fitted on the rows at least ``min_distance`` px from every fiber (see the module docstring);
    the halo convolutions run on a light map of ``row_bin``-row steps (the kernels are >= 25 px
    wide), interpolated back to every row.  Raises CalibrationError if the trace does not fit
    the image or too few rows are free.
    """
    background, centres = chunk_background(image, trace, mask, variance=variance,
                                           n_chunks=n_chunks, min_distance=min_distance,
                                           n_iter=n_iter, row_bin=row_bin)
    return _to_columns(background, centres, image, subtract=False)


def subtract_scattered_light(image: np.ndarray, trace: np.ndarray,
                             mask: np.ndarray | None = None, **kwargs: Any) -> np.ndarray:
    """``image - scattered_light(image, trace, mask, **kwargs)`` (float64) in one pass."""
    background, centres = chunk_background(image, trace, mask, **kwargs)
    return _to_columns(background, centres, image, subtract=True)


def _to_columns(background: np.ndarray, centres: np.ndarray, image: np.ndarray,
                subtract: bool) -> np.ndarray:
    """The chunk model (n_chunks, n_rows) at every column: linear interpolation between chunk
    centres (held beyond the end ones), subtracted from ``image`` if ``subtract``."""
    n_chunks, n_cols = centres.size, image.shape[1]
    cols = np.arange(n_cols)
    idx = np.clip(np.searchsorted(centres, cols) - 1, 0, n_chunks - 2)
    t = np.clip((cols - centres[idx]) / (centres[idx + 1] - centres[idx]), 0.0, 1.0)
    return interpolate_columns(np.ascontiguousarray(background.T), idx, t,
                               np.ascontiguousarray(image) if subtract else np.zeros((0, 0)),
                               subtract)


def chunk_background(image: np.ndarray, trace: np.ndarray, mask: np.ndarray | None = None, *,
                     variance: np.ndarray | None = None, n_chunks: int = 43,
                     min_distance: float = MIN_DISTANCE, n_iter: int = 2,
                     row_bin: int = HALO_ROW_BIN) -> tuple[np.ndarray, np.ndarray]:
    """The scattered-light model at the column chunks' centres: (n_chunks, n_rows) and the
    centres (see :func:`scattered_light`)."""
    img = np.asarray(image)
    if img.dtype not in (np.float32, np.float64):
        img = img.astype(float)
    n_rows, n_cols = img.shape
    if trace.ndim != 2 or trace.shape[1] != n_cols or not np.all(np.isfinite(trace)):
        raise CalibrationError("scattered light: trace missing, non-finite or of the wrong width")
    profiles, centres = chunk_profiles(img, variance, mask, n_chunks)
    pos = chunk_positions(trace, n_chunks)
    dmin, spos, order, above = _free_rows(pos, n_rows)
    free = (dmin >= min_distance) & np.isfinite(profiles)
    if free.sum() < 10 * n_chunks:
        raise CalibrationError(f"scattered light: only {free.sum()} rows free of fiber light")
    jj, yy = np.nonzero(free)
    data = profiles[jj, yy]
    dsel, fsel = _near_fibers(spos, order, above, jj, yy)  # (n, 4)
    rows = np.arange(n_rows)
    xu_chunk = 2.0 * centres / (n_cols - 1) - 1.0
    yu_row = 2.0 * rows / (n_rows - 1) - 1.0
    # halo convolutions on a coarse row grid (node i at row i * row_bin)
    n_coarse = (n_rows - 1) // row_bin + 2
    step = (centres[-1] - centres[0]) / max(n_chunks - 1, 1)
    spectra = halo_kernel_spectra(_fft_shape(n_chunks, n_coarse), float(step), float(row_bin))
    lo, fr = _row_interpolation(n_rows, row_bin)
    n_t, n_w = spectra.shape[0], WING_NODES.size - 1
    nonneg = np.r_[np.ones(n_t, bool), np.zeros(3, bool), np.ones(n_w, bool)]
    background = np.zeros_like(profiles)
    keep = np.ones(jj.size, dtype=bool)
    coef = None
    for _ in range(n_iter):
        amp = core_amplitudes(profiles, pos, background)
        coarse = halo_templates(_light_map(pos / row_bin, amp, n_coarse), spectra)
        # the templates at the fitted rows, interpolated between coarse rows
        tsel = coarse[:, jj, lo[yy]] * (1.0 - fr[yy]) + coarse[:, jj, lo[yy] + 1] * fr[yy]
        design = np.column_stack([tsel.T, np.ones(jj.size), xu_chunk[jj], yu_row[yy],
                                  _wing_design(dsel, amp[jj[:, None], fsel])])
        # halo amplitudes and wing nodes are physically >= 0: the bounds remove the nearly
        # degenerate combinations of halo templates that noise would otherwise pick
        for _ in range(3):  # robust: clip outlying rows (residual cosmic rays, bad pixels)
            coef = bounded_lstsq(design[keep], data[keep], nonneg,
                                 None if coef is None else coef != 0)
            res = data - np.einsum("ij,j->i", design, coef)  # (no threaded BLAS)
            sig = mad_sigma(res[keep], 0.0) + 1e-9
            keep = np.abs(res) < 5.0 * sig
        chunk_model(coarse, coef, lo, fr, xu_chunk, yu_row, background)
    return background, centres
