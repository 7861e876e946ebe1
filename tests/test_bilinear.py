"""Bilinear upsampling against scipy.ndimage.zoom (order 1, nearest, grid mode)."""

import numpy as np
import pytest
from scipy.ndimage import zoom

from remedy_dask.numeric.bilinear import interpolate_between_centres, upsample_bilinear


@pytest.mark.parametrize("grid_shape, shape", [((32, 32), (1032, 1032)), ((33, 31), (1032, 1032)),
                                               ((7, 9), (100, 50)), ((1, 4), (3, 10))])
def test_upsample_equals_scipy_zoom_to_rounding(grid_shape, shape):
    grid = np.random.default_rng(1).normal(100.0, 10.0, grid_shape)
    want = zoom(grid, (shape[0] / grid_shape[0], shape[1] / grid_shape[1]), order=1,
                mode="nearest", grid_mode=True)
    got = upsample_bilinear(grid, shape)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-14, atol=0)
    # as the float32 models it feeds: identical
    assert np.mean(got.astype(np.float32) == want.astype(np.float32)) > 0.9999


def test_upsample_hand_worked():
    # 2 blocks of 2 px: centres at 0.5 and 2.5; pixel 1 is 1/4 of the way, pixel 0 held
    got = upsample_bilinear(np.array([[0.0, 4.0]]), (1, 4))
    assert got.tolist() == [[0.0, 1.0, 3.0, 4.0]]


def test_interpolate_between_centres_equals_the_weight_matrices():
    """The separable form W_r @ grid @ W_c.T of a linear interpolation between block centres
    (held beyond the outer ones), to rounding."""
    def weights(centres, n):
        x = np.arange(n)
        i = np.clip(np.searchsorted(centres, x) - 1, 0, centres.size - 2)
        t = np.clip((x - centres[i]) / (centres[i + 1] - centres[i]), 0.0, 1.0)
        m = np.zeros((n, centres.size))
        m[x, i], m[x, i + 1] = 1.0 - t, t
        return m

    grid = np.random.default_rng(2).normal(0.01, 0.003, (43, 40))
    cr, cc = (np.arange(43) + 0.5) * 24 - 0.5, (np.arange(40) + 0.5) * 25 - 0.5
    want = weights(cr, 1032) @ grid @ weights(cc, 1010).T
    got = interpolate_between_centres(grid, cr, cc, 1032, 1010)
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-18)
    assert got[0, 0] == grid[0, 0] and got[-1, -1] == grid[-1, -1]  # held at the corners
