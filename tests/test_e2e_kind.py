"""``reduce --kind twi --no-masking --native-spectra`` on the e2e night's twilight observation:
the steps that need a star field are skipped and recorded, masking is off, the twilight comes
out flat across the fibers after the fiber-to-fiber correction (the simulator's twilight
illumination), and the native spectra and wavelengths are the simulator's."""

from __future__ import annotations

import json
import tarfile

import h5py
import numpy as np
import pytest
import xarray as xr
import yaml
from astropy.io import fits

pytestmark = pytest.mark.e2e

OFFSET = {"LL": 224, "LU": 112, "RL": 336, "RU": 448}


def _twilight_header(night) -> fits.Header:
    tar_path = night["sim"] / "raw" / "20190822" / "virus" / "virus0000006.tar"
    with tarfile.open(tar_path) as tar:
        name = sorted(m.name for m in tar.getmembers() if m.name.endswith("_twi.fits"))[0]
        with tar.extractfile(name) as fh:
            return fits.Header.fromfile(fh)


def _rows(h5, truth_amp_key: str, exposure: int = 1):
    f = h5["fibers"]
    rows = np.flatnonzero((f["exposure"][:] == exposure) & (f["ifuslot"][:] == 47)
                          & (f["amp"].asstr()[:] == truth_amp_key[3:]))
    return rows, OFFSET[truth_amp_key[3:]] - f["fiber_id"][:][rows]


def test_twilight_reduction_records_its_kind_and_the_skipped_steps(e2e_kind):
    assert e2e_kind["status"] == 0
    raw = _twilight_header(e2e_kind)
    with h5py.File(e2e_kind["product"]) as h5, h5py.File(e2e_kind["truth"]) as truth:
        assert h5.attrs["frame_kind"] == "twi"
        assert json.loads(h5.attrs["steps_skipped"]) == [
            "astrometry", "psf_fit", "sources", "flux_calibration", "detections"]
        assert h5["astrometry"].attrs["fitted"] == 0 and h5["fluxcal"].attrs["fitted"] == 0
        assert h5["sources/ra"].shape == (0,) and h5["detections/ra"].shape == (0,)
        twi_exptime = json.loads(truth.attrs["config_json"])["exptime"]["twi"]
        np.testing.assert_allclose(h5["exposures/exptime"][:], twi_exptime)
        assert list(h5["exposures/object"].asstr()[:]) == [raw["OBJECT"]] * 3
        notes = " ".join(json.loads(h5.attrs["notes"]))
        assert "frame kind twi" in notes and "wavelength shift not measured" in notes
        config = yaml.safe_load(h5.attrs["config"])
        assert config["reduction"]["measure_wavelength_shift"] is False


def test_no_masking_is_recorded_and_only_unmeasurable_pixels_are_flagged(e2e_kind):
    with h5py.File(e2e_kind["product"]) as h5, h5py.File(e2e_kind["truth"]) as truth:
        config = yaml.safe_load(h5.attrs["config"])
        assert config["reduction"]["spectral_masking"] is False
        assert "spectral masking off" in " ".join(json.loads(h5.attrs["notes"]))
        for key in ("047LL", "047LU", "047RL", "047RU"):
            rows, k = _rows(h5, key)
            mask = h5["fibers/mask"][rows[0]:rows[-1] + 1].astype(bool)
            t = truth[key]
            dead = t["dead"][:][k]
            assert mask[dead].all()  # no light: nothing to divide by
            # live fibers: only the wavelengths of the simulator's bad column and charge-trap
            # column (pixels masked by the calibration, which the extraction cannot use)
            wave = t["wavelength"][:][k]
            bins = [(wave[:, t.attrs[c]] - 3470.0) / 2.0 for c in ("bad_column", "charge_trap_col")]
            fiber, b = np.nonzero(mask & ~dead[:, None])
            near = np.minimum(*(np.abs(b - centre[fiber]) for centre in bins))
            assert b.size and near.max() <= 3.0, key
            assert mask[~dead].mean() < 0.01, key
        meta = json.loads((e2e_kind["work"] / "exp01" / "047LL" / "zarr.json").read_text())
        assert json.loads(meta["attributes"]["mask_counts"])["skipped"] == \
            "reduction.spectral_masking is false"


def test_twilight_is_flat_across_the_fibers_after_fiber_to_fiber(e2e_kind):
    """Spectrum + sky of a twilight is the twilight itself; after the fiber-to-fiber division
    the fibers differ only by the simulator's twilight illumination (a focal-plane gradient)."""
    with h5py.File(e2e_kind["product"]) as h5, h5py.File(e2e_kind["truth"]) as truth:
        for key in ("047LL", "047LU", "047RL", "047RU"):
            rows, k = _rows(h5, key)
            sl = slice(rows[0], rows[-1] + 1)
            live = ~truth[key]["dead"][:][k]
            total = (h5["fibers/spectrum"][sl] + h5["fibers/sky"][sl])[live]
            level = np.nanmedian(total[:, 300:800], axis=1)
            ratio = level / truth[key]["twilight_illumination"][:][k][live]
            # measured 0.27 % (the fiber throughputs scatter 5 %)
            assert np.std(ratio / np.median(ratio)) < 0.008, key


def test_native_spectra_and_wavelengths_are_the_simulators(e2e_kind):
    ds = xr.open_dataset(e2e_kind["product"], engine="h5netcdf", group="fibers")
    assert ds["native_spectrum"].dims == ("fiber", "column") and ds.sizes["column"] == 1032
    assert ds["native_spectrum"].attrs["units"] == "electron"
    assert ds["native_wavelength"].attrs["units"] == "Angstrom"
    assert ds["column"].values[0] == 0 and ds["column"].values[-1] == 1031
    ds.close()
    with h5py.File(e2e_kind["product"]) as h5, h5py.File(e2e_kind["truth"]) as truth:
        assert h5.attrs["native_spectra"] == 1
        for key in ("047LL", "047RU"):
            rows, k = _rows(h5, key)
            sl = slice(rows[0], rows[-1] + 1)
            t = truth[key]
            live = ~t["dead"][:][k]
            wave = h5["fibers/native_wavelength"][sl][live]
            # no wavelength shift for a twilight: the calibration's wavelengths (measured 0.006 A)
            diff = wave - t["wavelength"][:][k][live]
            assert np.sqrt(np.mean(diff[:, 20:-20] ** 2)) < 0.03, key
            # counts before the fiber-to-fiber: fiber throughput x twilight illumination
            counts = np.nanmedian(h5["fibers/native_spectrum"][sl][live][:, 300:700], axis=1)
            true = (t["fiber_throughput"][:] * t["twilight_illumination"][:])[k][live]
            ratio = counts / true
            assert np.std(ratio / np.median(ratio)) < 0.008, key  # measured 0.2 %
