"""The checkpoint writer (io/store.py) writes plain files: they must be the zarr v3 group that
zarr itself writes for the same arrays (metadata documents equal, data read back identical by
zarr and xarray), for every dtype the chain stores and for groups of several chunks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from zarr.codecs import BloscCodec

from remedy_dask.io.jsonable import jsonable
from remedy_dask.io import store


def _dataset(n_fibers: int) -> xr.Dataset:
    rng = np.random.default_rng(5)
    flux = rng.normal(100.0, 10.0, (n_fibers, 40)).astype(np.float32)
    flux[3, 5:9] = np.nan
    return xr.Dataset(
        {
            "flux": (("fiber", "wave"), flux, {"units": "electron / (s Angstrom)"}),
            "mask": (("fiber", "wave"), (rng.random((n_fibers, 40)) > 0.9).astype(np.uint8)),
            "is_sky": ("fiber", rng.random(n_fibers) > 0.5),
            "rejected_pixels": ("rejected", np.array([4, 1032 * 7 + 3], np.int32)),
            "none_rejected": ("empty", np.zeros(0, np.int32)),
            "exptime": ("fiber", rng.normal(360.0, 1.0, n_fibers)),
        },
        coords={"wave": np.linspace(3470.0, 5540.0, 40), "fiber": np.arange(n_fibers)},
        attrs={"exp": 1, "wave_shift": float("nan"), "notes": "", "mask_counts": "{}"},
    )


@pytest.mark.parametrize("n_fibers", [112, 560])  # one chunk; two chunks, the last padded
def test_checkpoint_is_the_group_zarr_writes(tmp_path: Path, n_fibers: int) -> None:
    ds = _dataset(n_fibers)
    ours = store.write_dataset(tmp_path / "ours", 1, "047LL", ds, "key")
    ref = zarr.open_group(str(tmp_path / "zarr"), mode="w", zarr_format=3,
                          attributes=jsonable({**ds.attrs, "input_key": "key"}))
    for name, var in ds.variables.items():
        values = np.asarray(var.values)
        ref.create_array(str(name), data=values, chunks=store._chunks(values.shape),
                         compressors=[BloscCodec(**store.BLOSC)], dimension_names=list(var.dims),
                         attributes=dict(var.attrs),
                         fill_value=np.nan if values.dtype.kind == "f" else 0)
    for name in ["", *map(str, ds.variables)]:
        mine = json.loads((ours / name / "zarr.json").read_text())
        theirs = json.loads((tmp_path / "zarr" / name / "zarr.json").read_text())
        assert json.dumps(mine, sort_keys=True) == json.dumps(theirs, sort_keys=True), name
    if n_fibers == 560:
        assert (ours / "flux" / "c" / "1" / "0").is_file()
    back = xr.open_zarr(ours, consolidated=False).load()
    arrays, attrs = store.read_arrays(tmp_path / "ours", 1, "047LL", tuple(map(str, ds.variables)))
    for name, var in ds.variables.items():
        for values in (back[name].values, arrays[str(name)]):
            assert values.dtype == var.dtype and values.shape == var.shape, name
            assert np.array_equal(values, var.values, equal_nan=values.dtype.kind == "f"), name
    assert np.isnan(back.attrs["wave_shift"]) and attrs["input_key"] == "key"
    assert back["flux"].attrs["units"] == "electron / (s Angstrom)"
    assert store.is_complete(tmp_path / "ours", 1, "047LL", "key")


@pytest.mark.parametrize("compressor", ["blosc", "zstd"])  # our layout; another: through zarr
def test_rows_read_back_as_zarr_reads_them(tmp_path: Path, compressor: str) -> None:
    """``read_rows`` / ``read_arrays`` decode the chunk files themselves: for any row block of
    groups written by zarr with chunks along both axes, a missing chunk (the fill value) and
    a codec they do not decode, they return what zarr returns."""
    from zarr.codecs import ZstdCodec

    rng = np.random.default_rng(8)
    n = 1000
    slot = np.repeat([37, 38, 47], [300, 448, 252]).astype(np.int32)
    flux = rng.normal(size=(n, 70)).astype(np.float32)
    flux[::7, 3] = np.nan
    group = zarr.open_group(str(store.group_path(tmp_path, 2, "sky")), mode="w", zarr_format=3,
                            attributes={"exp": 2, "note": "x"})
    codec = BloscCodec(**store.BLOSC) if compressor == "blosc" else ZstdCodec(level=3)
    for name, values, chunks in (("ifuslot", slot, (256,)), ("flux", flux, (448, 32)),
                                 ("mask", flux > 1, (448, 70)), ("sky", flux * 2, (100, 70))):
        group.create_array(name, data=values, chunks=chunks, compressors=[codec],
                           fill_value=np.nan if values.dtype.kind == "f" else 0)
    group["sky"][100:200] = np.nan  # a chunk of fill values: not stored
    names = ("flux", "mask", "sky", "ifuslot")
    for value in (37, 38, 47):
        rows = store.read_rows(tmp_path, 2, "sky", "ifuslot", value, names)
        sel = slice(*np.flatnonzero(slot == value)[[0, -1]] + [0, 1])
        for name in names:
            expected = group[name][sel]
            assert rows[name].dtype == expected.dtype, name
            np.testing.assert_array_equal(rows[name], expected)
    assert store.read_rows(tmp_path, 2, "sky", "ifuslot", 99, names) is None
    arrays, attrs = store.read_arrays(tmp_path, 2, "sky", names)
    assert attrs == {"exp": 2, "note": "x"}
    for name in names:
        np.testing.assert_array_equal(arrays[name], group[name][...])
