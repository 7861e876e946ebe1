"""SPECID 504 / IFUID 018 amp RU: its fiber-location reference lists 113 rows for 112 fibers.
The extra last row is dropped (noted) and the amp traces all 112 fibers; any other amp with a
wrong row count is a one-line input error naming the file."""

from __future__ import annotations

import numpy as np
import pytest
from synth_calib import flat_image, slit_rows

from remedy_dask.amp.trace.fit import fit_trace
from remedy_dask.errors import CalibrationError, InputFileError
from remedy_dask.io.fiberloc import (
    FiberLocations, fiber_location_name, locations_for_amp, read_fiber_locations,
    write_fiber_locations,
)


def _reference_113(tmp_path, specid: int, ifuid: int, amp: str):
    rows = np.append(slit_rows(), 1025.0)  # 112 fibers and one row beyond the last fiber
    dead = np.zeros(113, bool)
    dead[37] = True
    path = tmp_path / fiber_location_name(specid, 50, ifuid, amp)
    write_fiber_locations(path, FiberLocations(rows, dead, 0.47))
    return path


def test_the_504_018_RU_reference_drops_its_last_row_and_traces_112_fibers(tmp_path):
    path = _reference_113(tmp_path, 504, 18, "RU")
    floc = read_fiber_locations(path)
    assert floc.y_ref.size == 113
    with pytest.raises(CalibrationError, match="113 fibers, expected 112"):
        fit_trace(*flat_image(seed=8, dead=(37,), peak=4000.0)[:2], reference_y=floc.y_ref,
                  dead=floc.dead)
    ref, note = locations_for_amp(floc, path, 504, 18, "RU", 112)
    assert ref.y_ref.size == 112 and ref.y_ref[-1] == slit_rows()[-1] and ref.dead[37]
    assert "fiber_loc_504_050_018_RU.txt" in note and "y=1025.00" in note
    img, var, truth, _ = flat_image(seed=8, dead=(37,), peak=4000.0)
    res = fit_trace(img, var, reference_y=ref.y_ref, dead=ref.dead)
    assert res.trace.shape == (112, 1032)
    assert np.flatnonzero(res.dead).tolist() == [37]
    live = ~res.dead
    assert np.sqrt(np.mean((res.trace[live] - truth[live]) ** 2)) < 0.005


def test_other_amps_with_a_wrong_row_count_are_an_input_error(tmp_path):
    path = _reference_113(tmp_path, 504, 18, "RL")
    with pytest.raises(InputFileError, match="fiber_loc_504_050_018_RL.txt.*113 fiber rows"):
        locations_for_amp(read_fiber_locations(path), path, 504, 18, "RL", 112)


def test_a_reference_of_the_right_length_is_kept_as_it_is(tmp_path):
    floc = FiberLocations(slit_rows(), np.zeros(112, bool), None)
    assert locations_for_amp(floc, tmp_path / "x.txt", 504, 18, "RU", 112) == (floc, None)
