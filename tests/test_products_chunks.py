"""Pre-encoded HDF5 chunks (parallel compression in the ifu-fibers tasks) read back exactly."""

import h5py
import numpy as np
import pytest

from remedy_dask.io.products import (
    FIBER_CHUNK, ObservationWriter, hdf5_chunks, load_fiber_block, save_fiber_block,
)


def test_encoded_chunks_read_back_bit_identical(tmp_path):
    rng = np.random.default_rng(3)
    n = 3 * FIBER_CHUNK
    spectrum = rng.normal(size=(n, 1036)).astype(np.float32)
    spectrum[5, 7] = np.nan
    mask = (rng.random((n, 1036)) < 0.01).astype(np.uint8)
    cols = {"ra": rng.normal(size=n), "amp": np.array(["LL", "LU", "RL"] * FIBER_CHUNK)}
    block = save_fiber_block(tmp_path / "b.npz", {"spectrum": spectrum, "mask": mask}, cols)
    writer = ObservationWriter(tmp_path / "obs.h5", 2 * n, {"note": "test"})
    writer.write_fiber_chunks(n, *load_fiber_block(block))  # second half first: any order
    writer.write_fiber_chunks(0, *load_fiber_block(block))
    path = writer.close({})
    with h5py.File(path) as h5:
        ds = h5["fibers/spectrum"]
        assert ds.compression == "gzip" and ds.shuffle and ds.chunks == (FIBER_CHUNK, 1036)
        np.testing.assert_array_equal(ds[n:], spectrum)  # NaN == NaN for assert_array_equal
        np.testing.assert_array_equal(h5["fibers/mask"][:n], mask)
        np.testing.assert_array_equal(h5["fibers/ra"][n:], cols["ra"])
        assert [a.decode() for a in h5["fibers/amp"][:3]] == ["LL", "LU", "RL"]


def test_chunks_must_be_whole(tmp_path):
    with pytest.raises(ValueError, match="whole chunks"):
        hdf5_chunks(np.zeros((FIBER_CHUNK + 1, 10), np.float32))
    writer = ObservationWriter(tmp_path / "o.h5", 2 * FIBER_CHUNK, {})
    with pytest.raises(ValueError, match="chunk boundary"):
        writer.write_fiber_chunks(3, {}, {}, {"ra": np.zeros(1)})
    writer.abort()


def test_encoded_chunk_is_a_plain_zlib_stream_of_shuffled_bytes():
    """What HDF5's shuffle + deflate filters decode: zlib (any deflate encoder), then byte planes."""
    import zlib

    values = np.arange(FIBER_CHUNK * 4, dtype=np.float32).reshape(FIBER_CHUNK, 4) * 0.5
    (chunk,) = hdf5_chunks(values)
    planes = np.frombuffer(zlib.decompress(chunk), np.uint8).reshape(4, -1)
    np.testing.assert_array_equal(planes.T.copy().view("<f4").reshape(values.shape), values)
