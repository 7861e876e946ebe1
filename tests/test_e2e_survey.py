"""Product content beyond the spectra, against the simulator's truth and the raw headers:
per-fiber SPECID/IFUID and fiber-to-fiber, per-exposure survey information (parallactic angle,
mirror illumination, object, star counts) and the astrometric offset from the header pointing."""

from __future__ import annotations

import json
import tarfile

import h5py
import numpy as np
import pytest
import xarray as xr
from astropy.io import fits

pytestmark = pytest.mark.e2e

NIGHTS = ("e2e", "e2e_harsh")


@pytest.fixture(params=NIGHTS)
def night(request):
    return request.getfixturevalue(request.param)


def _raw_headers(night, obs: int = 7) -> list[fits.Header]:
    """Primary headers of the first science amp file of every exposure, read from the raw tar."""
    tar_path = night["sim"] / "raw" / "20190822" / "virus" / f"virus{obs:07d}.tar"
    with tarfile.open(tar_path) as tar:
        names = sorted(m.name for m in tar.getmembers() if m.name.endswith(".fits"))
        out = {}
        for name in names:
            exp = name.split("/exp")[1][:2]
            if exp not in out:
                with tar.extractfile(name) as fh:
                    out[exp] = fits.Header.fromfile(fh)
    return [out[k] for k in sorted(out)]


def test_fibers_carry_specid_ifuid_and_fiber_to_fiber_of_the_truth(night):
    with h5py.File(night["truth"]) as truth, h5py.File(night["product"]) as h5:
        ifus = truth["ifus"]
        ids = {int(s): (int(p), int(i)) for s, p, i in
               zip(ifus["ifuslot"][:], ifus["specid"][:], ifus["ifuid"][:])}
        f = h5["fibers"]
        slot, amp, fid = f["ifuslot"][:], f["amp"].asstr()[:], f["fiber_id"][:]
        expected = np.array([ids[s] for s in slot])
        np.testing.assert_array_equal(f["specid"][:], expected[:, 0])
        np.testing.assert_array_equal(f["ifuid"][:], expected[:, 1])
        ftf = f["fiber_to_fiber"]
        assert ftf.shape == f["spectrum"].shape and ftf.attrs["units"] == "1"
        first = f["exposure"][:] == 1
        for key in truth:
            if not key[:3].isdigit():
                continue
            t = truth[key]
            rows = np.flatnonzero(first & (slot == int(key[:3])) & (amp == key[3:]))
            k = {"LL": 224, "LU": 112, "RL": 336, "RU": 448}[key[3:]] - fid[rows]
            live = ~t["dead"][:][k]
            measured = np.nanmedian(ftf[rows[0]:rows[-1] + 1][:, 250:750], axis=1)[live]
            true = t["fiber_throughput"][:][k][live]
            ratio = measured / true
            # one amp's fibers: the same relative throughput up to one scale (measured 0.1 %;
            # the throughputs scatter 5 %)
            assert np.std(ratio / np.median(ratio)) < 0.005, key


def test_exposures_record_parangle_object_illumination_and_star_counts(night):
    raw = _raw_headers(night)
    with h5py.File(night["truth"]) as truth, h5py.File(night["product"]) as h5:
        e = h5["exposures"]
        np.testing.assert_allclose(e["parangle"][:], [h["PARANGLE"] for h in raw])
        assert e["parangle"].attrs["units"] == "deg"
        assert list(e["object"].asstr()[:]) == [h["OBJECT"] for h in raw]
        assert list(e["object"].asstr()[:]) == [h5.attrs["object"]] * len(raw)
        source = list(e["illumination_source"].asstr()[:])
        illum = e["illumination"][:]
        true = truth["exposures/illumination"][:]
        if truth["exposures"].attrs["guider_frames_written"]:
            assert source == ["guider PUPILLUM"] * len(raw)
            np.testing.assert_allclose(illum, true, atol=1e-6)  # the simulator writes the truth
        else:
            assert source == ["none: no guider frames"] * len(raw) and np.isnan(illum).all()
        np.testing.assert_allclose(e["mirror_area"][:], 51.4e4)
        assert e["mirror_area"].attrs["units"] == "cm2"
        assert (e["n_stars_photometry"][:] == h5["fluxcal"].attrs["n_stars"]).all()
        assert (e["n_stars_astrometry"][:] == h5["astrometry"].attrs["n_stars"]).all()
    ds = xr.open_dataset(night["product"], engine="h5netcdf", group="exposures")
    assert ds["illumination"].attrs["units"] == "1" and ds["object"].dtype.kind in "OU"
    ds.close()


def test_astrometric_offset_from_the_header_pointing_matches_the_truth(night):
    with h5py.File(night["truth"]) as truth, h5py.File(night["product"]) as h5:
        t, a = truth["astrometry"].attrs, h5["astrometry"].attrs
        units = json.loads(a["units"])
        assert units["ra_offset"] == units["ra_std"] == "arcsec"
        # truth: header - true pointing; product: fitted - header pointing
        assert a["ra_offset"] == pytest.approx(-t["header_offset_east_arcsec"], abs=0.1)
        assert a["dec_offset"] == pytest.approx(-t["header_offset_north_arcsec"], abs=0.1)
        # the spread of the stars' residuals: within a factor 2 of the fit's rms per axis
        per_axis = a["rms"] / np.sqrt(2)
        assert 0.5 * per_axis < a["ra_std"] < 2 * per_axis
        assert 0.5 * per_axis < a["dec_std"] < 2 * per_axis
