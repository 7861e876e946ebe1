"""Whole-frame statistics against numpy's, value for value (float32 frames, ties, NaN)."""

import numpy as np
import pytest

from remedy_dask.numeric.framestats import (
    finite_values, median_exact, nanmedian_exact, percentile_exact,
)


@pytest.mark.parametrize("n", [1, 2, 3, 10, 1001, 250_000, 250_001])
def test_median_and_percentile_equal_numpy(n):
    rng = np.random.default_rng(n)
    values = rng.normal(1000.0, 30.0, n).astype(np.float32).astype(float)
    values[: n // 3] = np.round(values[: n // 3])  # ties
    kept = values.copy()
    assert median_exact(values) == np.median(values)
    for q in (0.0, 0.1, 50.0, 99.9, 99.99, 100.0):
        assert percentile_exact(values, q) == np.percentile(values, q), q
    assert np.array_equal(values, kept)  # inputs unchanged


def test_percentile_hand_worked():
    # [1, 2, 4, 8]: index 0.999 * 3 = 2.997 -> 4 + 0.997 * (8 - 4) = 7.988
    assert percentile_exact(np.array([8.0, 1, 4, 2]), 99.9) == pytest.approx(7.988, abs=1e-12)
    assert median_exact(np.array([8.0, 1, 4, 2])) == 3.0


def test_finite_values_of_a_float32_frame():
    frame = np.arange(12, dtype=np.float32).reshape(3, 4)
    frame[1, 1] = np.nan
    frame[2, 0] = np.inf
    fin = finite_values(frame, 9.0)
    want = frame[np.isfinite(frame)].astype(float)
    assert fin.values.dtype == np.float64 and np.array_equal(fin.values, want)
    assert (fin.size, fin.n_above, fin.low, fin.high) == (12, 3, 0.0, 11.0)  # 9, 10, 11
    assert np.mean(fin.values) == np.mean(frame.astype(float)[np.isfinite(frame)])


def test_nanmedian_exact_equals_numpy():
    rng = np.random.default_rng(5)
    frame = rng.normal(500.0, 20.0, (300, 301))
    frame[3, :7] = np.nan
    frame[4, 4] = np.inf
    assert nanmedian_exact(frame) == np.nanmedian(frame)
    assert nanmedian_exact(frame[:, :2]) == np.nanmedian(frame[:, :2])
    assert np.isnan(nanmedian_exact(np.full((2, 2), np.nan)))
