"""The compiled clipped mean against numpy's arithmetic, bit for bit."""

import numpy as np
import pytest

from remedy_dask.numeric.clipmean import clipped_mean


def numpy_reference(frames, centre, sigma, clip):
    good = np.abs(frames - centre) <= clip * sigma
    count = good.sum(0)
    return np.where(count > 0, (frames * good).sum(0) / np.maximum(count, 1), centre), count


@pytest.mark.parametrize("n", [3, 4, 7])
def test_clipped_mean_equals_numpy(n):
    rng = np.random.default_rng(n)
    frames = rng.normal(100.0, 5.0, (n, 40, 70))
    frames[0, :5] += 1000.0  # rejected
    frames[:, 6, :3] = 1e6  # every value rejected: the centre
    frames[1, 7, 7] = np.nan
    frames[:, 8, 8] = -0.0
    centre = np.median(frames, axis=0)
    centre[8, 8] = 0.0
    sigma = np.full(centre.shape, 5.0)
    sigma[6, :3] = 1.0
    centre[6, :3] = 0.0
    got_mean, got_count = clipped_mean(frames, centre, sigma, 4.0)
    with np.errstate(invalid="ignore"):
        want_mean, want_count = numpy_reference(frames, centre, sigma, 4.0)
    assert np.array_equal(got_count, want_count)
    assert np.array_equal(got_mean, want_mean, equal_nan=True)
    assert np.array_equal(np.signbit(got_mean), np.signbit(want_mean))
    # hand-worked: (1, 2, 30) about 2 with limit 4 * 1: 30 is out -> 1.5 from 2 values
    m, c = clipped_mean(np.array([[1.0], [2.0], [30.0]]), np.array([2.0]), np.array([1.0]), 4.0)
    assert (m[0], c[0]) == (1.5, 2)
    assert got_count[6, 0] == 0 and got_mean[6, 0] == 0.0


def test_clipped_mean_checks_shapes():
    with pytest.raises(ValueError, match="must be"):
        clipped_mean(np.zeros((3, 4, 5)), np.zeros((4, 4)), np.zeros((4, 5)), 4.0)
