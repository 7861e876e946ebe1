"""Continuum of fiber spectra for the line search: a running median with bad pixels filled."""

from __future__ import annotations

import numpy as np

from remedy_dask.numeric.running_median import nanmedian_lastaxis, running_median


def remove_continuum(
    flux: np.ndarray, good: np.ndarray, window: int = 21, chunk: int = 28
) -> np.ndarray:
    """Continuum estimate (n_fiber, n_wave): a running median over ``window`` pixels.

    A running median follows steps (the Balmer break) and absorption lines broader than about
    window / 2 while passing narrow emission lines (FWHM ~3 px).  Bad pixels are first filled with
    chunk medians (``chunk`` pixels, linearly interpolated).  Rows without good data are NaN.
    """
    n_fib, n_wave = flux.shape
    n_chunk = max(n_wave // chunk, 1)
    edges = np.linspace(0, n_wave, n_chunk + 1).astype(int)
    centres = 0.5 * (edges[:-1] + edges[1:] - 1)
    # the chunk medians are needed only to fill bad pixels (or as the answer if window <= 1)
    if window <= 1:
        rr, cc = np.indices(flux.shape).reshape(2, -1)
        return _interp_chunks(centres, _chunk_medians(flux, good, edges), rr, cc
                              ).reshape(flux.shape)
    need = ~good.all(axis=1)
    rr, cc = np.nonzero(~good[need])
    valid = good[need] & np.isfinite(flux[need])  # what the chunk medians count
    med = _chunk_medians(flux[need], good[need], edges,
                         _chunks_used(valid, edges, centres, rr, cc))
    filled = np.where(good, flux, 0.0)
    filled[np.flatnonzero(need)[rr], cc] = _interp_chunks(centres, med, rr, cc)
    rows = np.ones(n_fib, bool)
    rows[need] = np.isfinite(med).any(axis=1)  # else no fill: the row is NaN
    cont = np.full((n_fib, n_wave), np.nan)
    if rows.any():
        h = window // 2
        if n_wave >= window:
            cont[rows, h : h + n_wave - window + 1] = running_median(filled[rows], window)
        # at the ends a padded window would repeat the edge pixel: use the end windows instead
        cont[rows, :h] = np.median(filled[rows, :window], axis=1)[:, None]
        cont[rows, -h:] = np.median(filled[rows, -window:], axis=1)[:, None]
    return cont


def _chunk_medians(flux: np.ndarray, good: np.ndarray, edges: np.ndarray,
                   used: np.ndarray | None = None) -> np.ndarray:
    """(n_fiber, n_chunk) medians of the good pixels of each chunk ``edges[c]:edges[c + 1]``;
    NaN where fewer than 30% of a chunk's pixels are good.  With ``used`` (bool, same shape)
    only those medians are computed, the others are 0 where finite (their finiteness alone
    matters)."""
    width = np.diff(edges)
    cols = edges[:-1, None] + np.arange(width.max())[None, :]
    cols = np.where(cols < edges[1:, None], cols, flux.shape[1])  # padding -> a NaN column
    enough = _good_counts(good & np.isfinite(flux), edges) >= 0.3 * width[None, :]
    masked = np.concatenate([np.where(good, flux, np.nan), np.full((len(flux), 1), np.nan)],
                            axis=1)
    if used is None:
        return np.where(enough, nanmedian_lastaxis(masked[:, cols]), np.nan)
    out = np.where(enough, 0.0, np.nan)
    rows, chunks = np.nonzero(used & enough)
    out[rows, chunks] = nanmedian_lastaxis(masked[rows[:, None], cols[chunks]])
    return out


def _good_counts(good: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """(n_fiber, n_chunk) number of good pixels in each chunk (``edges`` from 0 to the end)."""
    return np.add.reduceat(good.astype(np.int32), edges[:-1], axis=1)


def _chunks_used(valid: np.ndarray, edges: np.ndarray, centres: np.ndarray, rows: np.ndarray,
                 cols: np.ndarray) -> np.ndarray:
    """(n_fiber, n_chunk) True for the chunk medians :func:`_interp_chunks` reads to fill the
    pixels (``rows``, ``cols``): the nearest chunks with enough ``valid`` pixels on either
    side."""
    width = np.diff(edges)
    ok = _good_counts(valid, edges) >= 0.3 * width[None, :]
    used = np.zeros(ok.shape, bool)
    left, right = _neighbour_chunks(centres, ok, rows, cols)
    used[rows[left >= 0], left[left >= 0]] = True
    used[rows[right < ok.shape[1]], right[right < ok.shape[1]]] = True
    return used


def _neighbour_chunks(centres: np.ndarray, ok: np.ndarray, rows: np.ndarray, cols: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """For each (row, col): the last chunk with ``ok`` whose centre is at or left of the column
    (-1: none) and the first one right of it (n_chunk: none)."""
    n_chunk = len(centres)
    ids = np.arange(n_chunk)
    prev = np.maximum.accumulate(np.where(ok, ids, -1), axis=1)  # last finite chunk <= c
    nxt = np.minimum.accumulate(np.where(ok, ids, n_chunk)[:, ::-1], axis=1)[:, ::-1]  # first >= c
    k = np.searchsorted(centres, cols, side="right") - 1  # the centre at or left of the column
    left = np.where(k >= 0, prev[rows, np.maximum(k, 0)], -1)
    right = np.where(k + 1 < n_chunk, nxt[rows, np.minimum(k + 1, n_chunk - 1)], n_chunk)
    return left, right


def _interp_chunks(centres: np.ndarray, med: np.ndarray, rows: np.ndarray,
                   cols: np.ndarray) -> np.ndarray:
    """``np.interp(cols, centres[ok], med[row, ok])`` (ok = finite) at each (row, col) pair;
    NaN for rows without finite medians."""
    n_chunk = len(centres)
    left, right = _neighbour_chunks(centres, np.isfinite(med), rows, cols)
    has_l, has_r = left >= 0, right < n_chunk
    fl = med[rows, np.maximum(left, 0)]
    fr = med[rows, np.minimum(right, n_chunk - 1)]
    xl, xr = centres[np.maximum(left, 0)], centres[np.minimum(right, n_chunk - 1)]
    with np.errstate(invalid="ignore", divide="ignore"):
        inner = (fr - fl) / (xr - xl) * (cols - xl) + fl
    return np.where(has_l, np.where(has_r, inner, fl), np.where(has_r, fr, np.nan))
