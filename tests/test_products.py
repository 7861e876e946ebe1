"""The observation HDF5 writer: streamed in blocks, readable by h5py and xarray (the files the
command line writes are checked in test_e2e_products.py, FITS included)."""

from __future__ import annotations

import h5py
import numpy as np
import xarray as xr

from remedy_dask.io.products import ObservationWriter


def test_observation_file_streamed_in_blocks(tmp_path):
    n = 20
    w = ObservationWriter(tmp_path / "20190822_0000007.h5", n, {"calibration_file": "cal.h5",
                                                                 "config": {"a": 1}})
    for start in (0, 10):
        w.write_fibers(start, {"spectrum": np.full((10, 1036), start, np.float32),
                               "amp": np.array(["LL"] * 10), "ra": np.arange(10.0) + start})
    w.write_wave_columns("fibers", {"dar_ra": np.zeros(1036), "dar_dec": np.ones(1036)})
    w.write_table("detections", "detection", {"ra": np.zeros(0), "flux": np.zeros(0)})
    w.write_table("sources", "source", {"ra": np.ones(2), "spectrum": np.ones((2, 1036))})
    path = w.close({"astrometry": {"ra": 150.5, "dec": 2.0, "rotation": 12.0, "n_stars": 7,
                                   "rms": 0.1}})
    assert not list(tmp_path.glob(".*tmp"))
    with h5py.File(path) as h5:
        assert h5["wavelength"].shape == (1036,) and h5["wavelength"][0] == 3470.0
        assert h5["fibers/spectrum"][15, 0] == 10 and h5["fibers/spectrum"].attrs["units"]
        assert h5["fibers/amp"][0] in (b"LL", "LL")
        assert float(h5["astrometry"].attrs["ra"]) == 150.5
        assert h5["detections/ra"].shape == (0,) and h5["sources/spectrum"].shape == (2, 1036)
        assert h5.attrs["calibration_file"] == "cal.h5"
    ds = xr.open_dataset(path, engine="h5netcdf", group="fibers")
    assert ds["spectrum"].shape == (20, 1036) and ds["spectrum"].dims == ("fiber", "wavelength")
    assert ds["wavelength"].values[1] == 3472.0 and ds["wavelength"].attrs["units"] == "Angstrom"
    assert ds["ra"].attrs["units"] == "deg" and ds["spectrum"].attrs["long_name"]
    assert ds["dar_ra"].dims == ("wavelength",)
    ds = xr.open_dataset(path, engine="h5netcdf", group="sources")
    assert ds["spectrum"].dims == ("source", "wavelength") and "wavelength" in ds.coords
