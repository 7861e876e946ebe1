"""Reader vs simulator: what io.raw + ccd recover equals the electrons the simulator put in."""

from __future__ import annotations


import numpy as np
import pytest
from astropy.io import fits

from remedy_dask import geometry
from remedy_dask.io.raw import RawArchive, frame_ref_from_path
from remedy_dask.sim import render_amp_electrons
from remedy_dask.workflow.frames import reduce_frame


@pytest.mark.parametrize("amp", geometry.AMPS)
def test_reduced_image_equals_simulated_electrons(tmp_path, amp):
    expected, raw, header, model, rendered = render_amp_electrons(47, amp, kind="twi", seed=5)
    hdu = fits.PrimaryHDU(raw)
    for key, value in header.items():
        hdu.header[key] = value
    name = f"20190822T031512.3_047{amp}_twi.fits"
    hdu.writeto(tmp_path / name)
    frame = reduce_frame(frame_ref_from_path(tmp_path / name))
    assert frame.header.amp == amp and frame.header.gain == pytest.approx(model.gain)
    # remove the fixed bias structure (ADU -> e-); the rest is Poisson + read noise + quantisation
    residual = frame.image - model.bias_image() * model.gain - expected
    sigma = np.sqrt(model.read_noise**2 + np.maximum(expected, 0) + model.gain**2 / 12)
    pull = (residual / sigma)[expected < 0.8 * 65535 * model.gain]
    assert abs(np.mean(pull)) < 0.02, "a bias, gain or orientation error"
    assert 0.97 < np.std(pull) < 1.03
    # the overscan level is recovered to a fraction of an ADU
    assert frame.overscan_adu == pytest.approx(rendered.bias_level, abs=0.2)
    # orientation: the brightest fiber rows coincide with the true trace
    col = 500
    profile = frame.image[:, col] - model.bias_image()[:, col] * model.gain
    true_rows = np.round(model.trace[:, col]).astype(int)
    assert np.median(profile[true_rows]) > 5 * np.median(profile[true_rows + 4])


def test_tarred_and_untarred_layouts_read_identically(sci_night):
    plain = RawArchive(sci_night / "plain" / "raw")
    tarred = RawArchive(sci_night / "tarred" / "raw")
    refs_p = plain.frames("20190822", 7, kind="sci")
    refs_t = tarred.frames("20190822", 7, kind="sci")
    assert [r.name for r in refs_p] == [r.name for r in refs_t] and len(refs_p) == 12
    assert all(r.in_tar for r in refs_t) and not any(r.in_tar for r in refs_p)
    for rp, rt in zip(refs_p[:4], refs_t[:4]):
        a, b = reduce_frame(rp), reduce_frame(rt)
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.variance, b.variance)
        assert a.header == b.header


def test_simulated_fiber_ids_follow_the_format_page(sci_night):
    import h5py

    with h5py.File(sci_night / "plain" / "truth" / "truth.h5") as truth:
        for amp in geometry.AMPS:
            np.testing.assert_array_equal(truth[f"047{amp}"]["fiber_id"][...], geometry.fiber_ids(amp))
