"""The sorting-network medians against numpy's, value for value (ties, NaN, infinities)."""

import numpy as np
import pytest

from remedy_dask.numeric.sortnet import median_of_frames, running_median_rows


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, 9, 12, 17])
def test_median_of_frames_equals_numpy(n):
    rng = np.random.default_rng(n)
    stack = rng.normal(size=(n, 37, 3000))  # lanes beyond one block of the kernel
    stack[:, :, :500] = np.round(stack[:, :, :500])  # ties
    stack[0, 1, 2] = np.nan
    stack[-1, 2, 3] = np.inf
    stack[0, 3, 4] = -np.inf
    got = median_of_frames(stack)
    with np.errstate(invalid="ignore"):
        want = np.median(stack, axis=0)
    assert got.shape == want.shape
    assert np.array_equal(got, want, equal_nan=True)
    assert np.isnan(got[1, 2])


@pytest.mark.parametrize("width", [3, 9, 21])
def test_running_median_rows_equals_partition(width):
    rng = np.random.default_rng(width)
    image = np.round(rng.normal(size=(40, 300)) * 3)
    image[5, 17] = np.nan
    half = width // 2
    padded = np.pad(image, ((0, 0), (half, half)), mode="reflect")
    windows = np.lib.stride_tricks.sliding_window_view(padded, width, axis=1)
    want = np.partition(windows, half, axis=-1)[..., half]
    assert np.array_equal(running_median_rows(image, width), want, equal_nan=True)
    # hand-worked: [5, 1, 4, 2, 3] mirrored is [1, 5, 1, 4, 2, 3, 2]; medians of 3
    assert running_median_rows(np.array([[5.0, 1, 4, 2, 3]]), 3).tolist() == [[1, 4, 2, 3, 2]]


def test_running_median_rows_needs_an_odd_width():
    with pytest.raises(ValueError, match="odd width"):
        running_median_rows(np.zeros((2, 5)), 4)
