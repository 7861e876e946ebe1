"""Row/column medians equal numpy's nanmedian exactly, for every kind of input the selection
algorithm treats differently (small, large, duplicates, sorted, outliers, infinities, empty)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from remedy_dask.numeric.rowstats import (group_ratio_of_sums, group_ratio_stats, median_inplace,
                                  nanmedian_cols, nanmedian_rows)


def samples(rng):
    """Arrays that exercise quickselect (n <= 600), the sample-bracketed narrowing (large n)
    and its fall-backs (ties, sorted and adversarially spread inputs)."""
    yield rng.normal(size=1)
    yield rng.normal(size=2)
    yield rng.normal(size=601)
    yield rng.normal(size=31402)
    yield rng.normal(size=31403) * rng.lognormal(0, 3, 31403)  # heavy tails
    yield np.sort(rng.normal(size=5000))
    yield np.sort(rng.normal(size=5000))[::-1].copy()
    yield np.full(4000, 3.25)  # all ties
    yield rng.integers(0, 3, 10000).astype(float)  # few distinct values
    yield np.concatenate([rng.normal(size=3000), [np.inf, -np.inf, np.inf]])
    yield np.geomspace(1e-300, 1e300, 7001)
    yield np.concatenate([np.zeros(2000), np.ones(2001)])
    yield np.tile(np.arange(64.0), 200)  # periodic: a strided sample sees one phase


def test_median_inplace_equals_numpy():
    rng = np.random.default_rng(3)
    for x in samples(rng):
        expected = np.median(x)
        buf = x.copy()
        got = median_inplace(buf, x.size)
        assert got == expected or (np.isnan(got) and np.isnan(expected)), (x.size, got, expected)
        np.testing.assert_array_equal(np.sort(buf), np.sort(x))  # reordered, nothing lost
    assert np.isnan(median_inplace(np.empty(4), 0))


def test_median_of_a_prefix_only():
    x = np.array([5.0, 1.0, 3.0, -100.0, 100.0])
    assert median_inplace(x, 3) == 3.0


@pytest.mark.parametrize("n_cols", [7, 851, 1036])
def test_rows_and_columns_equal_nanmedian(n_cols):
    rng = np.random.default_rng(n_cols)
    values = rng.normal(10, 3, (700, n_cols))
    values[rng.random(values.shape) < 0.05] = np.nan
    values[rng.random(values.shape) < 0.001] = np.inf
    values[5, : n_cols // 2] = 7.0  # ties
    values[3] = np.nan  # a row without any valid value
    values[:, 2] = np.nan  # a column without any valid value
    mask = rng.random(values.shape) < 0.1
    masked = np.where(mask | ~np.isfinite(values), np.nan, values)
    cols = np.arange(1, n_cols, 2)
    rows = np.flatnonzero(rng.random(700) < 0.8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices
        want_rows = np.nanmedian(masked[:, cols], axis=1)
        want_cols = np.nanmedian(masked[rows], axis=0)
    np.testing.assert_array_equal(nanmedian_rows(values, mask, cols), want_rows)
    np.testing.assert_array_equal(nanmedian_cols(values, mask, rows), want_cols)
    assert np.isnan(want_rows[3]) and np.isnan(want_cols[2])


def test_bad_shapes_and_indices_raise():
    """The kernels do not check bounds: the wrappers must refuse what would read outside."""
    values = np.ones((4, 5))
    with pytest.raises(ValueError):
        nanmedian_rows(values, np.zeros((4, 4), bool), np.arange(3))
    with pytest.raises(IndexError):
        nanmedian_rows(values, np.zeros((4, 5), bool), np.array([0, 5]))
    with pytest.raises(IndexError):
        nanmedian_cols(values, np.zeros((4, 5), bool), np.array([-1]))
    with pytest.raises(ValueError):
        group_ratio_stats(values, values, np.arange(4), np.array([0, 5]), 10.0)
    with pytest.raises(IndexError):
        group_ratio_of_sums(values, values, np.array([4]), np.array([0, 1]))
