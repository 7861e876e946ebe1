"""Calibration frame gates: frames of another IFU and empty or saturated frames are dropped with
a flag naming the file; too few usable frames fail the amp with a clear reason."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from remedy_dask.errors import CalibrationError
from remedy_dask.workflow import cal_chain


def _frame(name, image, specid=37, ifuid=24, ifuslot=47):
    header = SimpleNamespace(specid=specid, ifuid=ifuid, ifuslot=ifuslot, exptime=360.0)
    return SimpleNamespace(ref=SimpleNamespace(name=name), header=header, image=image)


def test_bad_frames_are_dropped_with_reasons(monkeypatch):
    rng = np.random.default_rng(0)
    good = rng.normal(2000, 40, (1032, 1032))
    frames = [
        _frame("a_flt.fits", good),
        _frame("b_flt.fits", np.zeros((1032, 1032))),  # empty
        _frame("c_flt.fits", np.where(good > 1990, 60000.0, good)),  # mostly saturated
        _frame("d_flt.fits", good, ifuid=99),  # another IFU bundle
    ]
    monkeypatch.setattr(cal_chain, "reduce_frames", lambda refs, rn=None: (frames, []))
    work = cal_chain.AmpWork("047LL", 47, "LL", specid=37, ifuid=24)
    out, kept = cal_chain._reduce_checked(work, [], "flt", 1)
    assert [f.ref.name for f in kept] == ["a_flt.fits"]
    text = " | ".join(out.flags)
    assert "b_flt.fits: empty frame" in text and "c_flt.fits" in text and "saturated" in text
    assert "d_flt.fits: SPECID/IFUID/IFUSLOT" in text
    with pytest.raises(CalibrationError, match="1 usable flt frame"):
        cal_chain._reduce_checked(work, [], "flt", 2)
