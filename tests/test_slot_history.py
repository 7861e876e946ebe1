"""The known IFU-slot swaps of the raw files (Remedy's catch_ifuslot_swap), corrected on reading."""

from __future__ import annotations

import pytest

from remedy_dask.io.raw import RawArchive
from remedy_dask.io.rawframe import read_header_model, read_raw_amp
from remedy_dask.io.slot_history import physical_slot, slot_note


@pytest.mark.parametrize("date,recorded,physical", [
    ("20191201", 15, 15), ("20191202", 15, 24), ("20191202", 24, 15), ("20200623", 24, 15),
    ("20200624", 24, 24), ("20200114", 78, 78), ("20200115", 78, 79), ("20200127", 78, 79),
    ("20200128", 78, 78), ("20200120", 79, 79), ("20200120", 47, 47), ("20200120", 15, 24),
])
def test_swap_table(date, recorded, physical):
    assert physical_slot(date, recorded) == physical
    assert (slot_note(date, recorded) == "") == (recorded == physical)


def test_frames_of_a_swapped_night_are_listed_and_read_under_the_physical_slot(tmp_path):
    from remedy_dask.sim import simulate_night

    simulate_night(tmp_path, date="20200301", ifuslots=(15,), seed=2, science_only=True)
    archive = RawArchive(tmp_path / "raw")
    refs = archive.frames("20200301", 7, kind="sci")
    assert refs and {r.ifuslot for r in refs} == {24} and {r.recorded_ifuslot for r in refs} == {15}
    assert all("_015" in r.name for r in refs)
    assert read_header_model(refs[0]).ifuslot == 24 == read_raw_amp(refs[0]).header.ifuslot
    assert "slot 015" in slot_note("20200301", 15) and "reduced as 024" in slot_note("20200301", 15)
