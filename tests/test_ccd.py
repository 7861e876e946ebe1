"""Basic CCD reduction: overscan level, trim, orientation (format page), gain and variance."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.stats import biweight_location

from remedy_dask import geometry

from remedy_dask.amp import ccd

BIAS = 1000.0


def raw_frame(seed: int = 0, noise: float = 3.0, shape=(1032, 1064)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.round(rng.normal(BIAS, noise, size=shape)).astype(np.uint16)


def test_overscan_level_skips_bleed_and_data_columns():
    data = raw_frame(1)
    level = ccd.overscan_level(data)
    expected = biweight_location(data[:, 1034:].astype(float), c=6.0)
    np.testing.assert_allclose(level, expected, rtol=0, atol=1e-9)
    assert abs(level - BIAS) < 0.1  # 30 x 1032 pixels of sigma 3
    changed = data.copy()
    changed[:, 1032:1034] += 7  # bleed columns: ignored exactly
    changed[:, :1032] += 500  # data section: ignored exactly
    assert ccd.overscan_level(changed) == level
    changed[:, 1034:] += 7
    assert ccd.overscan_level(changed) == pytest.approx(level + 7, abs=1e-9)


def test_overscan_width_binned():
    assert ccd.overscan_width(1064) == 32
    assert ccd.overscan_width(532) == 16
    data = raw_frame(2, shape=(516, 532))
    data[:, 516:518] = 60000  # bleed
    expected = biweight_location(data[:, 518:].astype(float), c=6.0)
    assert ccd.overscan_level(data) == pytest.approx(expected)
    image, variance, _ = ccd.basic_reduce(data, "LL", None, 1.0, 3.0)
    assert image.shape == (516, 516)


# raw pixel (10, 20) -> oriented position, per amp and AMPNAME (format page: flip both axes of
# LU and RL; then flip columns when AMPNAME is LR or UL)
ORIENTATION_CASES = [
    ("LL", None, (10, 20)),
    ("LL", "LR", (10, 1011)),
    ("LL", "LL", (10, 20)),
    ("LU", None, (1021, 1011)),
    ("LU", "UL", (1021, 20)),
    ("RL", None, (1021, 1011)),
    ("RL", "LR", (1021, 20)),
    ("RU", None, (10, 20)),
    ("RU", "UL", (10, 1011)),
    ("RU", "RU", (10, 20)),
]


@pytest.mark.parametrize("amp, ampname, expected", ORIENTATION_CASES)
def test_bright_pixel_lands_where_the_format_page_says(amp, ampname, expected):
    data = np.full((1032, 1064), 1000, dtype=np.uint16)
    data[10, 20] = 6000
    image, variance, level = ccd.basic_reduce(data, amp, ampname, gain=2.0, rdnoise=3.0)
    assert level == 1000.0
    assert image.shape == (1032, 1032)
    assert image.dtype == np.float32 and variance.dtype == np.float32
    assert np.unravel_index(np.argmax(image), image.shape) == expected
    assert image[expected] == 10000.0  # (6000 - 1000) ADU * 2 e-/ADU
    assert np.count_nonzero(image) == 1


FIRST_LAST_IDS = {"LL": (224, 113), "LU": (112, 1), "RL": (336, 225), "RU": (448, 337)}


@pytest.mark.parametrize("amp", geometry.AMPS)
def test_fiber_at_first_row_gets_the_documented_fiber_id(amp):
    """A fiber at oriented row 25 is k = 0: fiber ID 224 on LL, 112 on LU, 336 on RL, 448 on RU."""
    flips_rows = amp in ("LU", "RL")
    raw_row = 1031 - 25 if flips_rows else 25
    data = np.full((1032, 1064), 1000, dtype=np.uint16)
    data[raw_row, :1032] = 3000  # a fiber spectrum along a whole raw row
    image, _, _ = ccd.basic_reduce(data, amp, None, gain=1.0, rdnoise=3.0)
    rows = np.flatnonzero(image.sum(axis=1))
    assert rows.tolist() == [25]
    ids = geometry.fiber_ids(amp)
    assert (ids[0], ids[-1]) == FIRST_LAST_IDS[amp]


def test_gain_and_variance():
    data = raw_frame(3, noise=5.0)
    data[100:200, 300:400] += 2000  # a bright patch
    gain, rdnoise = 0.85, 2.7
    image, variance, level = ccd.basic_reduce(data, "LL", None, gain, rdnoise)
    expected = (data[:, :1032].astype(np.float64) - level) * gain
    np.testing.assert_allclose(image, expected, rtol=0, atol=1e-3)
    np.testing.assert_array_equal(variance, np.float32(rdnoise) ** 2 + np.maximum(image, 0))
    assert np.any(image < 0) and variance.min() == pytest.approx(rdnoise**2)
    patch = np.median(variance[100:200, 300:400])
    assert patch == pytest.approx(2000 * gain + rdnoise**2, rel=1e-3)


def test_per_row_option_removes_row_offsets_in_the_right_orientation():
    data = np.full((1032, 1064), 1000, dtype=np.uint16)
    row_offset = (np.arange(1032) % 7 * 10).astype(np.uint16)
    data += row_offset[:, None]  # same offset in data and overscan of each row
    for amp in geometry.AMPS:
        image, _, levels = ccd.basic_reduce(data, amp, None, 1.0, 3.0, per_row=True)
        assert levels.shape == (1032,)
        np.testing.assert_array_equal(levels, 1000 + row_offset)
        assert np.all(image == 0)
        scalar, _, level = ccd.basic_reduce(data, amp, None, 1.0, 3.0)
        assert np.isscalar(level) and np.ptp(scalar) == 60  # the scalar level keeps row structure


def test_orient_views_and_bad_arguments():
    image = np.arange(12.0).reshape(3, 4)
    np.testing.assert_array_equal(ccd.orient(image, "LU", None), image[::-1, ::-1])
    np.testing.assert_array_equal(ccd.orient(image, "RL", "LR"), image[::-1, :])
    np.testing.assert_array_equal(ccd.orient(image, "RU", "UL"), image[:, ::-1])
    assert np.shares_memory(ccd.orient(image, "LU", None), image)
    with pytest.raises(ValueError, match="amplifier"):
        ccd.orient(image, "XX", None)
    data = raw_frame(4)
    with pytest.raises(ValueError, match="gain"):
        ccd.basic_reduce(data, "LL", None, 0.0, 3.0)
    with pytest.raises(ValueError, match="rdnoise"):
        ccd.basic_reduce(data, "LL", None, 1.0, float("nan"))
    with pytest.raises(ValueError, match="overscan"):
        ccd.overscan_level(np.zeros((10, 40)))


def test_column_offsets_keep_a_real_pattern_and_drop_noise():
    """Wiener-shrunk column medians: a bias pattern survives, a dark's column noise does not,
    a hot column is kept."""
    from remedy_dask.amp.ccd import smooth_master

    rng = np.random.default_rng(4)
    pattern = rng.normal(0.0, 1.0, 1032)
    noise = rng.normal(0.0, 2.0, (1032, 1032))  # column-median noise ~0.078
    bias, _ = smooth_master(pattern[None, :] + noise)
    err = bias.mean(axis=0) - pattern
    assert np.std(err) < 0.1 and np.corrcoef(bias.mean(axis=0), pattern)[0, 1] > 0.99
    dark_truth = np.zeros(1032)
    dark_truth[500] = 3.0  # a warm column
    dark, _ = smooth_master(dark_truth[None, :] + noise)
    cols = dark.mean(axis=0) - dark.mean()
    assert abs(cols[500] - 3.0) < 0.3
    others = np.delete(cols, 500)
    raw = np.delete(np.median(noise, axis=0), 500)
    assert np.std(others) < 0.3 * np.std(raw)  # the column noise is mostly removed
