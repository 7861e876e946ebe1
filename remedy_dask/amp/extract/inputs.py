"""Compiled input preparation of the optimal extraction (:mod:`remedy_dask.amp.extract.optimal`).

One pass over a frame, tile by tile: the transposed image and bad-pixel mask for the amp
kernel (:mod:`remedy_dask.amp.extract.kernels`), the counts behind the averaged-frame check and
the noise floor (a low quantile of ``variance - image`` per tile, by quickselect).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from remedy_dask.numeric.quickselect import select_kth


@njit(cache=True, nogil=True, error_model="numpy")
def prepare_inputs(image, variance, mask, transpose_variance, block, quantile):  # pragma: no cover
    """One pass over the frame, tile by tile (``block`` x ``block``):

    * the transposed image (0 on bad pixels), bad pixels (mask, non-finite, variance <= 0)
      and, if ``transpose_variance``, the transposed variance;
    * the good pixels above 100 e- and those among them whose variance is below half the
      image (the sign of an averaged frame);
    * the noise floor, if ``quantile`` > 0: the ``quantile`` of ``variance - image`` over the
      good pixels of each tile (the last tiles padded by repeating the edge rows / columns),
      (n_row_blocks, n_col_blocks).  Tiles with too few good pixels get the median of the
      others; all values are at least max(1e-3, 0.1 x that median).
    """
    n_rows, n_cols = image.shape
    image_t = np.empty((n_cols, n_rows))
    bad_t = np.empty((n_cols, n_rows), np.bool_)
    var_t = np.empty((n_cols if transpose_variance else 0, n_rows if transpose_variance else 0))
    nb_r = (n_rows + block - 1) // block
    nb_c = (n_cols + block - 1) // block
    floor_wanted = quantile > 0.0
    kth = int(quantile * block * block)
    low = np.empty((nb_r, nb_c))
    usable = np.zeros((nb_r, nb_c), np.bool_)
    buf = np.empty(block * block)
    n_bright = 0
    n_low = 0
    for br in range(nb_r):
        for bc in range(nb_c):
            n = 0
            n_good = 0
            c_start = bc * block
            c_end = min(c_start + block, n_cols)
            for i in range(block):
                r = min(br * block + i, n_rows - 1)  # rows past the edge repeat the last one
                real_row = br * block + i < n_rows
                for j in range(block):
                    c = c_start + j if c_start + j < c_end else c_end - 1
                    x = image[r, c]
                    v = variance[r, c]
                    d = v - x
                    bad = mask[r, c] or not v > 0.0 or not np.isfinite(d)
                    if real_row and c_start + j < c_end:
                        image_t[c, r] = 0.0 if bad else x
                        bad_t[c, r] = bad
                        if transpose_variance:
                            var_t[c, r] = v
                        if not bad and x > 100.0:
                            n_bright += 1
                            if v < 0.5 * x:
                                n_low += 1
                    elif not floor_wanted:
                        continue
                    if floor_wanted:
                        buf[n] = np.inf if bad else d
                        n_good += 0 if bad else 1
                        n += 1
            if floor_wanted:
                value = select_kth(buf, 0, n, kth)
                low[br, bc] = value
                usable[br, bc] = n_good > 2 * kth and np.isfinite(value)
    if floor_wanted:
        vals = np.empty(nb_r * nb_c)
        n_use = 0
        for br in range(nb_r):
            for bc in range(nb_c):
                if usable[br, bc]:
                    vals[n_use] = low[br, bc]
                    n_use += 1
        fill = np.median(vals[:n_use]) if n_use > 0 else np.median(variance.astype(np.float64))
        floor = max(1e-3, 0.1 * fill)
        for br in range(nb_r):
            for bc in range(nb_c):
                low[br, bc] = max(low[br, bc] if usable[br, bc] else fill, floor)
    return image_t, bad_t, var_t, n_bright, n_low, low
