"""Spectral masking rules with their counts."""

from __future__ import annotations

import numpy as np
import pytest

from remedy_dask.errors import CalibrationError
from remedy_dask.amp.masking import spectral_mask


def clean_chi2(rng, n=112, m=1032, dof=6):
    return rng.chisquare(dof, (n, m)) / dof


def test_clean_data_rarely_masked():
    rng = np.random.default_rng(0)
    chi2 = np.vstack([clean_chi2(rng) for _ in range(4)])
    mask, counts = spectral_mask(chi2, np.zeros(chi2.shape, bool), np.ones(chi2.shape[0]),
                                 group=np.repeat(np.arange(4), 112))
    assert counts["fraction"] < 0.001  # target: < 1% of clean spectral pixels
    assert counts["masked_fibers"] == [] and counts["masked_amps"] == []


def test_chi2_rules_and_dilation():
    chi2 = np.ones((112, 1032))
    chi2[10, 500] = 50.0  # a strong defect: +-1 column
    chi2[20, 300:302] = 3.5  # a moderate defect over two columns: +-1 column around both
    chi2[30, 700] = 3.5  # a lone moderate value: kept
    chi2[40, 0] = 9.0  # at the edge
    mask, counts = spectral_mask(chi2, np.zeros(chi2.shape, bool))
    assert np.flatnonzero(mask[10]).tolist() == [499, 500, 501]
    assert np.flatnonzero(mask[20]).tolist() == [299, 300, 301, 302]
    assert not mask[30].any()
    assert np.flatnonzero(mask[40]).tolist() == [0, 1]
    assert counts["chi2"] == 9 == counts["total"]


def test_throughput_rules():
    ftf = np.ones((112, 1032))
    ftf[5] = 0.2  # dead fiber
    ftf[6, :100] = 0.25  # low blue throughput of an otherwise fine fiber
    ftf[7, :] = np.nan  # unmeasured: treated as dead
    mask, counts = spectral_mask(np.ones((112, 1032)), np.zeros((112, 1032), bool), ftf)
    assert mask[5].all() and mask[7].all()
    assert mask[6, :100].all() and not mask[6, 100:].any()
    assert counts["dead_fibers"] == [5, 7]
    assert counts["low_throughput"] == 1032 * 2 + 100
    with pytest.raises(CalibrationError):
        spectral_mask(np.ones((112, 1032)), np.zeros((112, 1032), bool), np.ones((112, 10)))


def test_fiber_column_and_amp_rules():
    n = 224
    group = np.repeat([0, 1], 112)
    ext = np.zeros((n, 1032), bool)
    ext[3, :250] = True  # 24% of one fiber: whole fiber
    ext[10:40, 600] = True  # 30 of 112 fibers of amp 0 in one column: whole column in amp 0
    ext[112:142, :151] = True  # amp 1: fibers each < 20% masked, but 301 columns with 27%
    ext[142:172, 150:301] = True  # of their fibers masked -> columns -> 29% of the amp -> amp
    mask, counts = spectral_mask(np.ones((n, 1032)), ext, group=group)
    assert mask[3].all()
    assert mask[:112, 600].all() and mask[:112, 601].sum() == 1  # fiber 3 only
    assert mask[112:].all() and counts["masked_amps"] == [1]
    assert counts["fiber"] == 1032 - 250
    assert counts["column"] == (112 - 30 - 1) + (301 * 112 - ext[112:].sum())
    assert counts["amp"] == 112 * 1032 - 301 * 112
    assert sum(counts[k] for k in ("chi2", "extraction", "fiber", "column", "amp")) == counts["total"]


def test_dead_fibers_follow_the_nan_median():
    """Dead = median of the measured (non-NaN) throughput below the threshold, or nothing finite
    measured; the median as np.nanmedian gives it (infinities are values)."""
    import warnings

    from remedy_dask.amp.masking import _dead_fibers

    rng = np.random.default_rng(4)
    for m in (1, 2, 3, 8, 1031, 1032):
        ftf = rng.choice([0.3, 0.45, 0.5, 0.55, 0.9], (60, m))
        ftf[rng.random((60, m)) < 0.3] = np.nan
        ftf[0], ftf[1], ftf[2, 0] = np.nan, np.inf, -np.inf
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            med = np.nanmedian(ftf, axis=1)
        want = ~(med >= 0.5) | ~np.isfinite(ftf).any(axis=1)
        assert np.array_equal(_dead_fibers(ftf, 0.5), want), m
        assert want[0] and want[1]


@pytest.mark.parametrize("dilate", [0, 1, 3])
def test_chi2_seeds_grow_as_a_binary_dilation_along_the_rows(dilate):
    from scipy.ndimage import binary_dilation

    from remedy_dask.amp.masking import _chi2_seeds

    chi2 = np.random.default_rng(5).exponential(1.5, (60, 300))
    chi2[:, 0], chi2[:, -1] = 9.0, 9.0  # seeds at the edges
    c = np.where(np.isfinite(chi2), chi2, 0.0)
    both = (c[:, 1:] > 3.0) & (c[:, :-1] > 3.0)
    seed = c > 5.0
    seed[:, 1:] |= both
    seed[:, :-1] |= both
    want = (binary_dilation(seed, structure=np.ones((1, 2 * dilate + 1), bool)) if dilate
            else seed)
    got = _chi2_seeds(chi2, 5.0, 3.0, dilate)
    assert np.array_equal(got, want) and 0 < want.mean() < 0.5
