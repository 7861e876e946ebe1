"""io.h5chunks.read_dataset returns, byte for byte, what h5py returns, for every layout."""

import h5py
import numpy as np

from remedy_dask.io.h5chunks import read_dataset


def test_read_dataset_equals_h5py_for_every_layout(tmp_path):
    rng = np.random.default_rng(3)
    arrays = {
        "f4": rng.normal(size=(112, 1036)).astype(np.float32),
        "f8": rng.normal(size=(37, 50)),
        "u1": rng.integers(0, 255, (112, 1036)).astype(np.uint8),
        "i2be": rng.integers(-900, 900, (41, 29)).astype(">i2"),
        "nan": np.where(rng.random((20, 30)) < 0.1, np.nan, 1.5).astype(np.float32),
    }
    layouts = {  # name: dataset options
        "shuffle_gzip": dict(compression="gzip", compression_opts=4, shuffle=True, chunks=True),
        "gzip_edges": dict(compression="gzip", compression_opts=1, chunks=(16, 24)),
        "shuffle_gzip_edges": dict(compression="gzip", shuffle=True, chunks=(7, 23)),
        "contiguous": {},
        "lzf": dict(compression="lzf", chunks=(8, 8)),
        "fletcher": dict(compression="gzip", fletcher32=True, chunks=(8, 8)),
    }
    path = tmp_path / "t.h5"
    with h5py.File(path, "w") as h5:
        for lname, opts in layouts.items():
            for aname, a in arrays.items():
                h5.create_dataset(f"{lname}/{aname}", data=a, **opts)
        h5.create_dataset("unwritten", shape=(40, 40), dtype="f4", chunks=(10, 10),
                          compression="gzip", fillvalue=7.0)[:10, :10] = 1.0
        h5.create_dataset("empty", shape=(0, 5), maxshape=(None, 5), dtype="f4", chunks=(1, 5),
                          compression="gzip")
    with h5py.File(path, "r") as h5:
        names = []
        h5.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        assert len(names) == 6 * 5 + 2
        for name in names:
            got, want = read_dataset(h5[name]), h5[name][...]
            assert got.dtype == want.dtype and got.shape == want.shape, name
            assert got.tobytes() == want.tobytes(), name
        assert (read_dataset(h5["unwritten"])[20:, 20:] == 7.0).all()
