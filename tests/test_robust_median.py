"""mad_sigma's compiled median path against numpy's formula, bit for bit."""

import numpy as np
import pytest

from remedy_dask.numeric.robust import MAD_TO_SIGMA, mad_sigma


def reference(v, center=None, axis=None):
    if center is None:
        center = np.median(v, axis=axis, keepdims=axis is not None)
    return MAD_TO_SIGMA * np.median(np.abs(v - center), axis=axis)


@pytest.mark.parametrize("n", [1, 2, 7, 1000, 150_001])
def test_mad_sigma_equals_numpy(n):
    rng = np.random.default_rng(n)
    v = rng.standard_t(3, n)
    v[: n // 4] = np.round(v[: n // 4])
    kept = v.copy()
    assert mad_sigma(v) == reference(v)
    assert mad_sigma(v, 0.25) == reference(v, 0.25)
    assert mad_sigma(v[::3]) == reference(v[::3])  # not contiguous
    assert mad_sigma(v.astype(np.float32)) == reference(v.astype(np.float32))
    assert np.array_equal(v, kept)  # the input is not reordered
    sub = mad_sigma(v, max_samples=100)
    assert sub == reference(v[:: max(n // 100, 1)])


def test_mad_sigma_with_nan_and_axis_as_numpy():
    v = np.arange(12.0).reshape(3, 4)
    assert np.array_equal(mad_sigma(v, axis=0), reference(v, axis=0))
    v[1, 1] = np.nan
    assert np.isnan(mad_sigma(v)) and np.isnan(reference(v))
