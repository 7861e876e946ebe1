"""The files ``reduce`` writes meet the standards: HEASARC fitsverify (no errors, no warnings)
and astropy accept the FITS products, their headers say what was observed and how it was
reduced, and xarray opens every spectral group of the HDF5 with its wavelengths and units.

Each check runs on every simulated night that the session builds through the command line
(:data:`NIGHTS`, fixture names in conftest.py)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tarfile
from datetime import datetime, timedelta, timezone

import astropy.units as u
import h5py
import numpy as np
import pytest
import xarray as xr
from astropy.io import fits
from astropy.time import Time
from astropy.wcs import WCS

from remedy_dask import __version__, cli

pytestmark = pytest.mark.e2e

NIGHTS = ("e2e", "e2e_harsh")
PREFIX = "20190822_0000007"
FLUX = 1e-17 * u.erg / (u.s * u.cm**2 * u.AA)  # literal: the products' flux density unit


@pytest.fixture(params=NIGHTS)
def night(request):
    try:
        return request.getfixturevalue(request.param)
    except pytest.FixtureLookupError:
        pytest.skip(f"no fixture {request.param!r} in tests/conftest.py")


def _fitsverify(path) -> str:
    exe = shutil.which("fitsverify")
    if exe is None:
        pytest.skip("fitsverify not installed (Debian package fitsverify; .ci/run installs it)")
    out = subprocess.run([exe, str(path)], capture_output=True, text=True)
    return out.stdout + out.stderr


def _fits_products(night):
    paths = sorted(night["out"].glob(f"{PREFIX}_*.fits"))
    assert any(p.name.endswith("_cube.fits") for p in paths), paths
    assert any(re.fullmatch(rf"{PREFIX}_\d{{3}}\.fits", p.name) for p in paths), paths
    return paths


def _first_raw_header(night) -> fits.Header:
    """Primary header of exposure 1 of the observation, read from the raw tar."""
    tar_path = night["sim"] / "raw" / "20190822" / "virus" / "virus0000007.tar"
    with tarfile.open(tar_path) as tar:
        member = sorted(m.name for m in tar.getmembers() if "/exp01/" in m.name
                        and m.name.endswith("_sci.fits"))[0]
        with tar.extractfile(member) as fh:
            return fits.Header.fromfile(fh)


def test_fits_products_pass_fitsverify_without_errors_or_warnings(night):
    for path in _fits_products(night):
        text = _fitsverify(path)
        assert "0 warning(s) and 0 error(s)" in text, f"{path.name}:\n{text}"


def test_fits_headers_describe_the_observation_and_the_reduction(night):
    raw = _first_raw_header(night)
    start = Time(raw["DATE"], format="isot", scale="utc")
    deps = {}
    for path in _fits_products(night):
        h = fits.getheader(path, 0)
        assert h["TELESCOP"] == "HET" and h["INSTRUME"] == "VIRUS"
        assert h["OBJECT"] == raw["OBJECT"] and h["EXPTIME"] == pytest.approx(raw["EXPTIME"])
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?", h["DATE-OBS"])
        assert abs((Time(h["DATE-OBS"], scale="utc") - start).sec) < 1e-3
        assert h["MJD-OBS"] == pytest.approx(start.mjd, abs=1e-7)
        created = datetime.fromisoformat(h["DATE"]).replace(tzinfo=timezone.utc)
        assert abs(datetime.now(timezone.utc) - created) < timedelta(days=1)
        centre = (raw.get("TRAJCRA", raw["TRAJRA"]) * 15.0, raw.get("TRAJCDEC", raw["TRAJDEC"]))
        assert h["RA"] == pytest.approx(centre[0], abs=30 / 3600 / np.cos(np.deg2rad(h["DEC"])))
        assert h["DEC"] == pytest.approx(centre[1], abs=30 / 3600)
        assert h["CREATOR"] == f"remedy-dask {__version__}" and h["ORIGIN"] == "remedy-dask"
        assert h["CALFILE"] == night["cal"].name and h["CALDATE"]
        assert re.fullmatch(r"[0-9a-f]{16}", h["CONFHASH"])
        deps = {h[k]: h[k.replace("NAM", "VER")] for k in h if k.startswith("DEPNAM")}
    for name in ("numpy", "scipy", "astropy", "dask", "distributed", "h5py"):
        assert deps[name] == __import__(name).__version__


def test_fits_units_and_wcs_are_standard(night):
    for path in _fits_products(night):
        with fits.open(path) as hdul:
            for hdu in hdul:
                if hdu.name == "FIBERS":
                    assert u.Unit(hdu.columns["ra"].unit, format="fits") == u.deg
                    continue
                if hdu.name == "MASK":
                    assert hdu.data.dtype == np.uint8 and "BUNIT" not in hdu.header
                    assert hdu.data.shape == hdul["SPECTRUM"].data.shape
                    bad = hdu.data > 0
                    assert bad.any() and np.isnan(hdul["SPECTRUM"].data[bad]).all()
                    continue
                if hdu.data is None:
                    assert "BUNIT" not in hdu.header
                    continue
                per_pixel = path.name.endswith("_cube.fits") or hdu.name == "GIMAGE"
                unit = u.Unit(hdu.header["BUNIT"], format="fits")
                assert unit == (FLUX / u.pix if per_pixel else FLUX), (path.name, hdu.name)
            if path.name.endswith("_cube.fits"):
                w = WCS(hdul[0].header)
                assert w.naxis == 3 and w.has_celestial
                wave = w.spectral.pixel_to_world([0, hdul[0].data.shape[0] - 1])
                np.testing.assert_allclose(wave.to_value(u.AA), [3470.0, 5540.0])
            else:
                assert WCS(hdul["GIMAGE"].header).has_celestial
                w = WCS(hdul["SPECTRUM"].header)
                np.testing.assert_allclose(w.sub([1]).pixel_to_world_values([0, 1035]),
                                           [3470e-10, 5540e-10])  # metres, astropy's SI


SPECTRAL_GROUPS = ("fibers", "sources", "detections")


def test_hdf5_groups_open_in_xarray_with_wavelengths_and_units(night):
    path = night["out"] / f"{PREFIX}.h5"
    with h5py.File(path) as h5:
        assert h5.attrs["Conventions"] == "CF-1.10"
        assert h5.attrs["telescope"] == "HET" and h5.attrs["instrument"] == "VIRUS"
        assert json.loads(h5.attrs["dependencies"])["numpy"] == np.__version__
        scale = h5["fibers/spectrum"].dims[1][0]
        assert scale.name == "/fibers/wavelength" and scale[0] == 3470.0
    for group in (None, *SPECTRAL_GROUPS, "exposures"):
        ds = xr.open_dataset(path, engine="h5netcdf", group=group)
        if group in (None, *SPECTRAL_GROUPS):
            wave = ds.coords["wavelength"]
            assert wave.attrs["units"] == "Angstrom" and wave.size == 1036
            assert wave.values[0] == 3470.0 and wave.values[-1] == 5540.0
        for name, var in {**ds.data_vars, **ds.coords}.items():
            assert var.attrs.get("long_name"), f"{group}/{name}: no long_name"
            if var.dtype.kind in "iuf":
                assert "units" in var.attrs, f"{group}/{name}: no units"
                u.Unit(var.attrs["units"])  # parses
        if group in SPECTRAL_GROUPS:
            assert ds["spectrum"].dims[-1] == "wavelength"
            assert u.Unit(ds["spectrum"].attrs["units"]) == FLUX
        ds.close()
    fibers = xr.open_dataset(path, engine="h5netcdf", group="fibers")
    line = fibers["spectrum"].sel(wavelength=4500.0)  # selection by wavelength works
    assert line.shape == (fibers.sizes["fiber"],)
    fibers.close()


def test_log_file_and_quiet_rerun(e2e, tmp_path, capfd):
    """The e2e reduction left its log (progress lines: pytest's stdout is no terminal); a rerun
    with --quiet after the command prints nothing, not even the dashboard link."""
    log = (e2e["out"] / "remedy-dask.log").read_text()
    assert re.search(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d INFO ", log, re.M)
    assert re.search(r"remedy-dask (--quiet )?reduce 20190822 7 47", log) and "progress: " in log
    assert "dashboard http" in log and f"{PREFIX}.h5" in log
    cal_log = (e2e["cal"].parent / "remedy-dask.log").read_text()
    assert re.search(r"remedy-dask (--quiet )?calibrate ", cal_log)
    out = tmp_path / "rerun"
    shutil.copytree(e2e["out"] / "work", out / "work")
    sim = e2e["sim"]
    capfd.readouterr()
    status = cli.main(["reduce", "20190822", "7", "47", str(e2e["cal"]), "--rootdir",
                       str(sim / "raw"), "--out", str(out), "--catalog",
                       str(sim / "ps1_catalog.csv"), "--fplane", str(sim / "fplane.txt"),
                       "--ifucen", str(sim / "IFUcen_HETDEX.txt"), "--neighbor-dist", "0",
                       "--workers", "2", "--quiet"])
    printed, errors = capfd.readouterr()
    assert status == 0 and printed == "" and errors == "", (printed, errors)
    assert "dashboard http" in (out / "remedy-dask.log").read_text()


def test_performance_report_only_when_asked(e2e, e2e_harsh):
    """Dask's performance report costs seconds: written only with --performance-report (the
    harsh night's reduce passes it, the kind night's does not)."""
    assert not list(e2e["out"].glob("*_dask-report.html"))
    report = e2e_harsh["out"] / f"{PREFIX}_dask-report.html"
    assert report.is_file() and "Dask Performance Report" in report.read_text()[:200_000]
