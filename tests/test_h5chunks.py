"""ISA-L chunk reads give what h5py reads, whatever the layout."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from remedy_dask.io.h5chunks import read_array

LAYOUTS = [  # shape, chunks, dtype, shuffle, compression
    ((1032, 1032), (254, 1032), "<f4", False, "gzip"),  # the calibration's bias: edge chunk
    ((112, 1036), (112, 1036), "<f4", True, "gzip"),
    ((112, 1032), (50, 300), ">f8", True, "gzip"),  # big-endian, edge chunks on both axes
    ((1032, 1032), (1016, 1032), "u1", True, "gzip"),
    ((7,), (3,), "<i8", False, "gzip"),
    ((40, 30), (10, 10), "<f4", False, None),  # not deflated: h5py reads it
    ((40, 30), None, "<f4", False, None),  # contiguous
]


@pytest.mark.parametrize("shape, chunks, dtype, shuffle, compression", LAYOUTS)
def test_same_as_h5py(tmp_path, shape, chunks, dtype, shuffle, compression):
    rng = np.random.default_rng(3)
    values = (rng.normal(100, 5, shape) * (rng.random(shape) < 0.7)).astype(dtype)
    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as h5:
        h5.create_dataset("a", data=values, chunks=chunks, shuffle=shuffle,
                          compression=compression)
    with h5py.File(path, "r") as h5:
        got = read_array(h5["a"])
        assert got.dtype == h5["a"].dtype and got.shape == shape
        np.testing.assert_array_equal(got, values)


def test_unwritten_chunks_read_as_fill_value(tmp_path):
    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as h5:
        ds = h5.create_dataset("a", shape=(20, 20), chunks=(10, 10), dtype="f4",
                               compression="gzip", fillvalue=-1.0)
        ds[:10, :10] = 5.0
    with h5py.File(path, "r") as h5:
        got = read_array(h5["a"])
    assert got[0, 0] == 5.0 and got[15, 15] == -1.0 and got[0, 15] == -1.0
