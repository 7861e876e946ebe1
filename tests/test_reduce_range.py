"""``reduce-range``: calibration windows, program selection, reuse on rerun, the summary CSV."""

from __future__ import annotations

import csv
from pathlib import Path

import h5py
import numpy as np
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
    """A one-IFU night with two overlapping science observations (obs 7, and obs 8 pointed
    30" E, 20" N): one calibration window, both observations reduced in one cluster, the summary,
    reuse on rerun, and the two products merged into one catalogue."""
    from astropy.io import fits

    from remedy_dask.sim import SimConfig, simulate_night

    root = tmp_path_factory.mktemp("range")
    sim, out = root / "sim", root / "out"
    simulate_night(sim, ifuslots=(47,), seed=5, tar=True, n_workers=2,
                   config=SimConfig(second_pointing_arcsec=(30.0, 20.0)))
    argv = ["--quiet", "reduce-range", str(sim / "raw"), "--start", "20190820", "--end",
            "20190823", "--cal-window", "3", "--out", str(out), "--fplane",
            str(sim / "fplane.txt"), "--ifucen", str(sim / "IFUcen_HETDEX.txt"),
            "--fiber-locations", str(sim / "fiber_loc"), "--catalog",
            str(sim / "ps1_catalog.csv"), "--workers", "2"]
    assert cli.main(argv) == 0
    cal = out / "cal" / "cal_20190820_3d.h5"  # the night 0822 falls in the window 0820-0822
    products = [out / "reduced" / f"20190822_000000{obs}.h5" for obs in (7, 8)]
    assert cal.is_file() and all(p.is_file() for p in products)
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["date"], r["obs"], r["program"], r["status"]) for r in rows] == [
        ("20190822", "7", "HETSIM-1", "ok"), ("20190822", "8", "HETSIM-1", "ok")]
    centres = []
    for row, product in zip(rows, products):
        assert row["calibration"] == str(cal) and row["product"] == str(product)
        assert int(row["n_ifus"]) == 1 and int(row["n_exposures"]) == 3
        with h5py.File(product) as h5:
            assert int(row["astrometry_n_stars"]) == int(h5["astrometry"].attrs["n_stars"])
            assert int(row["n_detections"]) == h5["detections/ra"].shape[0]
            centres.append((np.mean(h5["fibers/ra"][:]), np.mean(h5["fibers/dec"][:])))
    # two different fields: the IFU moved by the second pointing's (30", 20") offset
    east = (centres[1][0] - centres[0][0]) * np.cos(np.radians(centres[0][1])) * 3600
    north = (centres[1][1] - centres[0][1]) * 3600
    assert abs(east - 30.0) < 1.0 and abs(north - 20.0) < 1.0
    stamps = (cal.stat().st_mtime_ns, *(p.stat().st_mtime_ns for p in products))
    assert cli.main(argv) == 0  # rerun: calibration and products reused, not rebuilt
    assert (cal.stat().st_mtime_ns, *(p.stat().st_mtime_ns for p in products)) == stamps
    assert cli.main(argv + ["--program", "HETDEX"]) == 2
    assert "for program HETDEX" in capsys.readouterr().err
    # one catalogue row per object: the catalogue stars extracted in both observations (sources
    # sit at catalogue positions) are exactly the continuum rows seen twice
    merged = root / "catalog.fits"
    assert cli.main(["--quiet", "catalog", *map(str, products), "--out", str(merged),
                     "--workers", "2"]) == 0
    with fits.open(merged) as hdul:
        cat = hdul["CATALOG"].data
    positions = []
    for product in products:
        with h5py.File(product) as h5:
            positions.append({(round(r, 7), round(d, 7)) for r, d in
                              zip(h5["sources/ra"][:], h5["sources/dec"][:])})
    in_both = positions[0] & positions[1]
    assert len(in_both) >= 2, "the two pointings should share stars"
    continuum = cat[cat["kind"] == "continuum"]
    twice = continuum[continuum["n_observations"] == 2]
    assert len(twice) == len(in_both)
    assert len(continuum) == len(positions[0] | positions[1])
    assert {(round(r, 7), round(d, 7)) for r, d in zip(twice["ra"], twice["dec"])} == in_both


def test_range_request_refuses_a_reversed_range(tmp_path):
    (tmp_path / "fplane.txt").write_text("x")
    argv = ["reduce-range", str(tmp_path), "--start", "20190823", "--end", "20190820",
            "--out", str(tmp_path / "o"), "--fplane", str(Path(tmp_path / "fplane.txt"))]
    assert cli.main(argv) == 2
