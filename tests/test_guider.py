"""Guider conditions: signed time window (frames before the start count), validity ranges."""

import io
import tarfile
from datetime import datetime

import numpy as np
from astropy.io import fits

from remedy_dask.io.guider import GuiderArchive


def _member(tar: tarfile.TarFile, name: str, **cards) -> None:
    hdu = fits.PrimaryHDU(np.zeros((4, 4), np.int16))
    hdu.header.update(cards)
    buf = io.BytesIO()
    hdu.writeto(buf)
    info = tarfile.TarInfo(name)
    info.size = buf.tell()
    buf.seek(0)
    tar.addfile(info, buf)


def test_window_validity_and_defaults(tmp_path):
    gc = tmp_path / "20190822" / "gc1"
    gc.mkdir(parents=True)
    with tarfile.open(gc / "gc1_0300.tar", "w") as tar:
        _member(tar, "20190822T025955.0_gc1_sci.fits", TRANSPAR=0.80, IQ=1.5, PUPILLUM=0.9)  # 5 s early
        _member(tar, "20190822T030100.0_gc1_sci.fits", TRANSPAR=0.90, IQ=1.7, PUPILLUM=0.9)
        _member(tar, "20190822T030200.0_gc1_sci.fits", TRANSPAR=5.0, IQ=9.0)  # invalid values
        _member(tar, "20190822T031000.0_gc1_sci.fits", TRANSPAR=0.20, IQ=3.0)  # after the end
    archive = GuiderArchive(tmp_path, "20190822")
    cond = archive.conditions(datetime(2019, 8, 22, 3, 0, 0), exptime=360.0)
    assert cond.n_frames == 3
    assert np.isclose(cond.transparency, 0.85) and np.isclose(cond.fwhm, 1.6)
    none = archive.conditions(datetime(2019, 8, 22, 5, 0, 0), exptime=360.0)
    assert none.n_frames == 0 and none.transparency == 1.0 and none.fwhm == 1.8 and none.notes


def test_illumination_from_pupillum_else_the_pupil_model_at_the_tracker_position(tmp_path):
    from remedy_dask.observation.illumination import relative_illumination
    from remedy_dask.workflow.conditions import exposure_illumination

    gc = tmp_path / "20190822" / "gc1"
    gc.mkdir(parents=True)
    with tarfile.open(gc / "gc1_0300.tar", "w") as tar:
        _member(tar, "20190822T030000.0_gc1_sci.fits", TRANSPAR=0.9, IQ=1.5, PUPILLUM=0.92,
                X_STRT=0.1, Y_STRT=0.2)
        _member(tar, "20190822T040000.0_gc1_sci.fits", TRANSPAR=0.9, IQ=1.5, X_STRT=0.4,
                Y_STRT=-0.6)
        _member(tar, "20190822T040030.0_gc1_sci.fits", TRANSPAR=0.9, IQ=1.5, X_STRT=0.6,
                Y_STRT=-0.2)
        _member(tar, "20190822T050000.0_gc1_sci.fits", TRANSPAR=0.9, IQ=1.5)
    archive = GuiderArchive(tmp_path, "20190822")
    at = lambda h: archive.conditions(datetime(2019, 8, 22, h, 0, 0), exptime=60.0)  # noqa: E731
    assert exposure_illumination(at(3)) == (0.92, "guider PUPILLUM")
    value, source = exposure_illumination(at(4))  # medians of the tracker: (0.5, -0.4) m
    assert source.startswith("model") and value == relative_illumination(0.5, -0.4) < 1.0
    value, source = exposure_illumination(at(5))
    assert np.isnan(value) and source.startswith("none: no PUPILLUM")
    value, source = exposure_illumination(at(6))
    assert np.isnan(value) and source == "none: no guider frames"
