"""basic_reduce's one-pass kernel against numpy's float32 arithmetic, bit for bit, for every
amp orientation, scalar and per-row overscan."""

import numpy as np
import pytest

from remedy_dask import geometry
from remedy_dask.amp.ccd import basic_reduce, orient, overscan_width


def numpy_reference(data, amp, ampname, gain, rdnoise, offset):
    ncols = data.shape[1]
    trimmed = np.subtract(data[:, : ncols - overscan_width(ncols)], offset, dtype=np.float32)
    image = np.multiply(orient(trimmed, amp, ampname), np.float32(gain), dtype=np.float32)
    variance = np.maximum(image, np.float32(0.0))
    variance += np.float32(rdnoise) ** 2
    return image, variance


@pytest.mark.parametrize("amp", geometry.AMPS)
@pytest.mark.parametrize("ampname", [None, "LR", "UL", "LL"])
@pytest.mark.parametrize("per_row", [False, True])
def test_basic_reduce_equals_numpy(amp, ampname, per_row):
    rng = np.random.default_rng(len(amp) + per_row)
    data = rng.integers(950, 1400, (40, 1064)).astype(np.uint16)
    data[3, 5] = 0  # below the overscan: negative electrons, variance rn^2
    image, variance, level = basic_reduce(data, amp, ampname, 0.878, 2.91, per_row=per_row)
    offset = level.astype(np.float32)[:, None] if per_row else np.float32(level)
    want_image, want_variance = numpy_reference(data, amp, ampname, 0.878, 2.91, offset)
    assert image.dtype == variance.dtype == np.float32
    assert np.array_equal(image, want_image) and np.array_equal(variance, want_variance)
    assert image.min() < 0 and variance.min() == np.float32(2.91) ** 2
