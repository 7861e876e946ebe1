"""The median kernels against scipy.ndimage.median_filter, np.median and np.nanmedian."""

import warnings

import numpy as np
import pytest
from scipy import ndimage

from remedy_dask.numeric.running_median import median_above, nanmedian_lastaxis, running_median


@pytest.mark.parametrize("window", [1, 2, 5, 20, 21])
def test_equals_scipy_median_filter(window):
    rng = np.random.default_rng(window)
    a = rng.normal(size=(40, 300))
    a[:, 100:140] += 30.0  # a step
    a[5, 50:80] = 1.0  # ties
    a[7] = np.round(a[7])  # many ties
    got = running_median(a, window)
    ref = ndimage.median_filter(a, size=(1, window), mode="nearest")
    h = window // 2
    assert got.shape == (40, 300 - window + 1)
    np.testing.assert_array_equal(got, ref[:, h : h + got.shape[1]])


def test_odd_window_is_the_median_of_each_window():
    rng = np.random.default_rng(3)
    a = rng.standard_t(2, size=(6, 90))
    got = running_median(a, 11)
    ref = np.median(np.lib.stride_tricks.sliding_window_view(a, 11, axis=1), axis=-1)
    np.testing.assert_array_equal(got, ref)


def test_rejects_bad_input():
    with pytest.raises(ValueError):
        running_median(np.array([[1.0, np.nan, 2.0]]), 3)
    with pytest.raises(ValueError):
        running_median(np.ones((2, 3)), 4)
    with pytest.raises(ValueError):
        running_median(np.ones(5), 3)


def test_nanmedian_lastaxis_equals_numpy():
    rng = np.random.default_rng(11)
    a = rng.normal(size=(200, 3, 29))
    a[rng.uniform(size=a.shape) < 0.3] = np.nan
    a[4] = np.nan  # rows without values
    a[5, :, :2] = np.inf  # infinities are values
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = np.nanmedian(a, axis=-1)
    got = nanmedian_lastaxis(a)
    assert np.isnan(got[4]).all()
    np.testing.assert_array_equal(got, ref)


def test_median_above_equals_numpy():
    rng = np.random.default_rng(16)
    for k in range(60):
        n = int(rng.integers(1, 100000))
        a = rng.standard_t(3, n) * 10 ** rng.uniform(-3, 3)
        a = a.astype([np.float32, np.float64][k % 2])
        if k % 3 == 0:
            a = np.round(a)  # ties
        if k % 4 == 0:
            a[rng.uniform(size=n) < 0.3] = 0.0
        if k % 5 == 0:
            a = np.sort(a)  # a strided subsample is not random
        if k % 7 == 0:
            a[0] = np.inf
        for lower in (-np.inf, 0.0):
            want = np.median(a[a > lower]) if np.any(a > lower) else None
            if want is not None:
                got = median_above(a, lower)
                assert got == want and np.asarray(got).dtype == np.asarray(want).dtype


def test_selections_equal_boolean_indexing():
    from remedy_dask.numeric.selection import bracket, every_nth_where

    rng = np.random.default_rng(17)
    for k in range(20):
        shape = (int(rng.integers(1, 30)), int(rng.integers(1, 40)), int(rng.integers(1, 50)))
        a = rng.normal(size=shape).astype([np.float32, np.float64][k % 2])
        where = rng.random(shape) < [0.0, 0.3, 0.9, 1.0][k % 4]
        for step in (1, 3, 7):
            got = every_nth_where(a, where, step)
            assert got.dtype == a.dtype
            np.testing.assert_array_equal(got, a[where][::step])
        flat = a.ravel()
        lo, hi = np.quantile(flat, [0.4, 0.6]).astype(a.dtype)
        n_out, n_below, inside = bracket(flat, 0.0, lo, hi)
        assert n_out == np.count_nonzero(flat <= 0.0) and n_below == np.count_nonzero(flat < lo)
        np.testing.assert_array_equal(inside, flat[(flat >= lo) & (flat <= hi)])
