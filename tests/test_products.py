"""Product writers: streamed observation HDF5 (h5py and xarray readable) and FITS files that
astropy's WCS and HEASARC's fitsverify accept."""

from __future__ import annotations

import shutil
import subprocess

import h5py
import numpy as np
import pytest
import xarray as xr
from astropy.io import fits
from astropy.wcs import WCS

from remedy_dask import geometry
from remedy_dask.observation.cube import ImageGrid, celestial_wcs, cube_header, cube_wcs
from remedy_dask.io.fitsproducts import write_cube_fits, write_ifu_fits
from remedy_dask.io.products import ObservationWriter


def _fitsverify(path) -> None:
    exe = shutil.which("fitsverify")
    if exe is None:
        pytest.skip("fitsverify not installed (Debian package fitsverify; .ci/run installs it)")
    out = subprocess.run([exe, str(path)], capture_output=True, text=True)
    text = out.stdout + out.stderr
    assert "and 0 error(s)" in text and out.returncode == 0, text


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
    assert ds["spectrum"].shape == (20, 1036)


def test_fits_products_pass_wcs_and_fitsverify(tmp_path):
    grid = ImageGrid.centered(25.0, 0.5)
    wcs = cube_wcs(150.0, 2.0, 30.0, grid, ifu_fx=100.0, ifu_fy=-50.0)
    cube = np.random.default_rng(1).normal(size=(geometry.N_WAVE, grid.ny, grid.nx))
    path = write_cube_fits(tmp_path / "x_cube.fits", cube, np.abs(cube), cube_header(wcs),
                           {"IFUSLOT": 47})
    with fits.open(path) as hdul:
        w = WCS(hdul[0].header)
        assert w.naxis == 3 and w.has_celestial and w.wcs.spec >= 0
        assert hdul["ERROR"].data.shape == cube.shape
    _fitsverify(path)
    gwcs = celestial_wcs(150.0, 2.0, 30.0, grid, 100.0, -50.0).to_header()
    n = 448
    path2 = write_ifu_fits(tmp_path / "x_047.fits", np.ones((n, 1036)), np.ones((n, 1036)),
                           np.ones((n, 1036)), {"ra": np.zeros(n), "dec": np.zeros(n),
                                                "fiber_id": np.arange(1, n + 1),
                                                "amp": np.array(["LL"] * n)},
                           np.ones((grid.ny, grid.nx)), gwcs, {"IFUSLOT": 47})
    with fits.open(path2) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "SPECTRUM", "ERROR", "SKY", "FIBERS", "GIMAGE"]
        assert WCS(hdul["GIMAGE"].header).has_celestial
    _fitsverify(path2)
