"""``reduce-range``: calibration windows, program selection, reuse on rerun, the summary CSV."""

from __future__ import annotations

import csv
from pathlib import Path

import h5py
import pytest

from remedy_dask import cli
from remedy_dask.workflow.archive import _nearest_good, window_start


def test_windows_are_fixed_blocks_from_the_start():
    assert window_start("20190822", "20190801", 7) == "20190822"  # days 21-27 from the 1st
    assert window_start("20190828", "20190801", 7) == "20190822"
    assert window_start("20190829", "20190801", 7) == "20190829"
    assert window_start("20190801", "20190801", 30) == "20190801"
    assert window_start("20190831", "20190801", 30) == "20190831"


def test_a_night_without_calibration_takes_the_nearest_window(tmp_path):
    cals = {"20190801": tmp_path / "a.h5", "20190808": "failed: no frames",
            "20190822": tmp_path / "c.h5"}
    assert _nearest_good("20190801", cals) == (tmp_path / "a.h5", "")
    path, note = _nearest_good("20190808", cals)
    assert path == tmp_path / "a.h5" and "used window 20190801" in note
    assert _nearest_good("20190808", {"20190808": "failed: x"})[0] is None


@pytest.mark.e2e
def test_reduce_range_end_to_end(tmp_path_factory, capsys):
    from remedy_dask.sim import simulate_night

    root = tmp_path_factory.mktemp("range")
    sim, out = root / "sim", root / "out"
    simulate_night(sim, ifuslots=(47,), seed=5, tar=True, n_workers=2)
    argv = ["--quiet", "reduce-range", str(sim / "raw"), "--start", "20190820", "--end",
            "20190823", "--cal-window", "3", "--out", str(out), "--fplane",
            str(sim / "fplane.txt"), "--ifucen", str(sim / "IFUcen_HETDEX.txt"),
            "--fiber-locations", str(sim / "fiber_loc"), "--catalog",
            str(sim / "ps1_catalog.csv"), "--workers", "2"]
    assert cli.main(argv) == 0
    cal = out / "cal" / "cal_20190820_3d.h5"  # the night 0822 falls in the window 0820-0822
    product = out / "reduced" / "20190822_0000007.h5"
    assert cal.is_file() and product.is_file()
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1
    row = rows[0]
    assert (row["date"], row["obs"], row["program"], row["status"]) == ("20190822", "7",
                                                                         "HETSIM-1", "ok")
    assert row["calibration"] == str(cal) and row["product"] == str(product)
    assert int(row["n_ifus"]) == 1 and int(row["n_exposures"]) == 3
    with h5py.File(product) as h5:
        assert int(row["astrometry_n_stars"]) == int(h5["astrometry"].attrs["n_stars"])
        assert int(row["n_detections"]) == h5["detections/ra"].shape[0]
    stamps = (cal.stat().st_mtime_ns, product.stat().st_mtime_ns)
    assert cli.main(argv) == 0  # rerun: calibration and product reused, not rebuilt
    assert (cal.stat().st_mtime_ns, product.stat().st_mtime_ns) == stamps
    # another program: nothing to reduce is an error naming the program
    assert cli.main(argv + ["--program", "HETDEX"]) == 2
    assert "for program HETDEX" in capsys.readouterr().err


def test_range_request_refuses_a_reversed_range(tmp_path):
    (tmp_path / "fplane.txt").write_text("x")
    argv = ["reduce-range", str(tmp_path), "--start", "20190823", "--end", "20190820",
            "--out", str(tmp_path / "o"), "--fplane", str(Path(tmp_path / "fplane.txt"))]
    assert cli.main(argv) == 2
