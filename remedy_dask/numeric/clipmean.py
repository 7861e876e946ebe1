"""Per-pixel clipped mean of a few frames in one compiled pass: the arithmetic of numpy's
``good = |frames - centre| <= clip * sigma; (frames * good).sum(0) / max(count, 1)``
step for step (frames summed in order from 0.0, a rejected value adds ``value * 0.0``), so the result is
bit-identical to it, without the five (n, ny, nx) temporaries."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _clipped_mean(frames, centre, sigma, clip, fallback, mean, count):  # pragma: no cover
    n, n_pix = frames.shape
    for j in range(n_pix):
        limit = clip * sigma[j]
        c = centre[j]
        total = 0.0
        k = 0
        for i in range(n):
            v = frames[i, j]
            keep = abs(v - c) <= limit
            term = v * (1.0 if keep else 0.0)
            total += term  # numpy's sum starts from 0.0 too (-0.0 values sum to 0.0)
            k += keep
        count[j] = k
        mean[j] = total / max(k, 1) if k > 0 else fallback[j]


def clipped_mean(frames: np.ndarray, centre: np.ndarray, sigma: np.ndarray, clip: float
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(mean of the values of ``frames`` (n, ...) within ``clip`` * ``sigma`` of ``centre``,
    or ``centre`` where none is; the number of values kept), both of ``centre``'s shape."""
    values = np.ascontiguousarray(frames, dtype=np.float64)
    n = values.shape[0]
    shape = values.shape[1:]
    if np.shape(centre) != shape or np.shape(sigma) != shape:
        raise ValueError(f"centre {np.shape(centre)} and sigma {np.shape(sigma)} must be {shape}")
    flat_c = np.ascontiguousarray(centre, dtype=np.float64).reshape(-1)
    flat_s = np.ascontiguousarray(sigma, dtype=np.float64).reshape(-1)
    mean = np.empty(flat_c.size)
    count = np.empty(flat_c.size, np.int64)
    _clipped_mean(values.reshape(n, -1), flat_c, flat_s, float(clip), flat_c, mean, count)
    return mean.reshape(shape), count.reshape(shape)
