"""Readers of the auxiliary tables: fplane, IFUcen, fiber locations, throughput, star catalog."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import MaskedColumn, Table

from remedy_dask import geometry
from remedy_dask.errors import InputFileError, RemedyError
from remedy_dask.io import catalog
from remedy_dask.io.catalog import query_panstarrs, read_catalog
from remedy_dask.io.fiberloc import (
    FiberLocations,
    find_fiber_location_file,
    fiber_location_name,
    read_fiber_locations,
    write_fiber_locations,
)
from remedy_dask.io.fplane import FplaneEntry, read_fplane, write_fplane
from remedy_dask.io.ifucen import amp_positions, read_ifucen, standard_ifucen, write_ifucen
from remedy_dask.io.throughput import default_throughput, read_throughput, write_throughput

# --- fplane -------------------------------------------------------------------------------------

FPLANE_TEXT = """\
# IFUSLOT X_FP Y_FP SPECID SPECSLOT IFUID IFUROT PLATESC
047  -150.0  50.0  037 042 024 0.0 1.00
# a comment line

105 100.5 -250.25 008 051 003 0.0 1.00   # trailing comment
"""


def test_read_fplane(tmp_path):
    path = tmp_path / "fplane.txt"
    path.write_text(FPLANE_TEXT)
    fp = read_fplane(path)
    assert sorted(fp) == [47, 105]
    assert fp[47] == FplaneEntry(47, -150.0, 50.0, 37, 42, 24, 0.0, 1.0)
    assert fp[105].y_fp == -250.25 and fp[105].ifuid == 3
    write_fplane(tmp_path / "copy.txt", fp)
    assert read_fplane(tmp_path / "copy.txt") == fp


@pytest.mark.parametrize(
    "bad_line, problem",
    [
        ("048 1.0 2.0 037 042 024 0.0", "line 5: expected 8 columns"),
        ("048 1.0 abc 037 042 024 0.0 1.0", "line 5: not numbers"),
        ("047 1.0 2.0 037 042 024 0.0 1.0", "line 5: IFUSLOT 047 appears twice"),
        ("048 1.0 2.0 03.5 042 024 0.0 1.0", "line 5: not numbers"),
    ],
)
def test_malformed_fplane(tmp_path, bad_line, problem):
    path = tmp_path / "fplane.txt"
    first_two = FPLANE_TEXT.splitlines()[:2]
    path.write_text("\n".join(first_two + ["", "#", bad_line]) + "\n")
    with pytest.raises(InputFileError, match=problem) as info:
        read_fplane(path)
    assert "fplane.txt" in str(info.value)


def test_empty_or_missing_fplane(tmp_path):
    (tmp_path / "f.txt").write_text("# nothing\n")
    with pytest.raises(InputFileError, match="no entries"):
        read_fplane(tmp_path / "f.txt")
    with pytest.raises(InputFileError, match="cannot read"):
        read_fplane(tmp_path / "missing.txt")


# --- IFUcen -------------------------------------------------------------------------------------


def test_standard_ifucen_layout():
    cen = standard_ifucen()
    assert cen.fiber_id.tolist() == list(range(1, 449))
    assert np.unique(np.round(cen.y, 6)).size == 23
    assert cen.x.min() == pytest.approx(-24.13) and cen.x.max() == pytest.approx(24.13)
    assert cen.y.min() == pytest.approx(-24.2) and cen.y.max() == pytest.approx(24.2)
    assert (cen.unit[:224] == "L").all() and (cen.unit[224:] == "R").all()
    assert cen.spec_fiber[0] == 1 and cen.spec_fiber[223] == 224 and cen.spec_fiber[224] == 1
    # nearest neighbours are 2.54" (same row) or hypot(1.27, 2.20) = 2.54" (adjacent rows)
    d = np.hypot(cen.x[:, None] - cen.x, cen.y[:, None] - cen.y) + np.eye(448) * 99
    np.testing.assert_allclose(d.min(axis=1), 2.54, atol=0.01)


def test_amp_positions_follow_the_fiber_id_mapping():
    cen = standard_ifucen()
    for amp, first_id in (("LL", 224), ("LU", 112), ("RL", 336), ("RU", 448)):
        x, y = amp_positions(cen, amp)
        assert x.shape == y.shape == (112,)
        # fiber k of the amp is IFU fiber ID first_id - k (index = ID - 1 in the standard map)
        np.testing.assert_array_equal(x, cen.x[first_id - 1 - np.arange(112)])
        np.testing.assert_array_equal(y, cen.y[first_id - 1 - np.arange(112)])


def test_ifucen_round_trip_and_permuted_file(tmp_path):
    cen = standard_ifucen()
    write_ifucen(tmp_path / "IFUcen.txt")
    lines = (tmp_path / "IFUcen.txt").read_text().splitlines()
    assert len(lines) == 30 + 448
    back = read_ifucen(tmp_path / "IFUcen.txt")
    np.testing.assert_allclose(back.x, cen.x, atol=1e-4)
    np.testing.assert_array_equal(back.fiber_id, cen.fiber_id)
    assert back.unit.tolist() == cen.unit.tolist()
    # rows in another order: amp_positions still looks fibers up by ID
    (tmp_path / "perm.txt").write_text("\n".join(lines[:30] + lines[30:][::-1]) + "\n")
    perm = read_ifucen(tmp_path / "perm.txt")
    np.testing.assert_allclose(amp_positions(perm, "RL")[0], amp_positions(cen, "RL")[0], atol=1e-4)


@pytest.mark.parametrize(
    "row, problem",
    [
        ("449 1.0 2.0 L", "expected 6 columns"),
        ("449 1.0 y L 5 1.0", "line 31: not numbers"),
        ("449 1.0 2.0 Q 5 1.0", "unit must be L or R"),
        ("1 1.0 2.0 L 5 1.0", "fiber IDs repeated"),
    ],
)
def test_malformed_ifucen(tmp_path, row, problem):
    write_ifucen(tmp_path / "IFUcen.txt")
    lines = (tmp_path / "IFUcen.txt").read_text().splitlines()
    (tmp_path / "bad.txt").write_text("\n".join(lines[:30] + [row] + lines[30:]) + "\n")
    with pytest.raises(InputFileError, match=problem):
        read_ifucen(tmp_path / "bad.txt")
    (tmp_path / "short.txt").write_text("\n".join(lines[:30]) + "\n")
    with pytest.raises(InputFileError, match="no fiber rows"):
        read_ifucen(tmp_path / "short.txt")


def test_amp_positions_missing_fiber():
    cen = standard_ifucen()
    keep = cen.fiber_id != 200
    fields = ("fiber_id", "x", "y", "unit", "spec_fiber", "throughput")
    partial = type(cen)(*(getattr(cen, f)[keep] for f in fields))
    with pytest.raises(ValueError, match="200"):
        amp_positions(partial, "LL")
    amp_positions(partial, "LU")  # IDs 1..112 are all there


# --- fiber locations ----------------------------------------------------------------------------


def test_read_fiber_locations(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("# 0.470\n25.1 0\n33.8 1\n# comment\n\n42.5 0\n")
    loc = read_fiber_locations(path)
    assert loc.header_value == 0.47
    np.testing.assert_array_equal(loc.y_ref, [25.1, 33.8, 42.5])
    assert loc.dead.tolist() == [False, True, False]
    path.write_text("25.1 0\n33.8 1.0\n")
    assert read_fiber_locations(path).header_value is None
    write_fiber_locations(tmp_path / "g.txt", loc)
    back = read_fiber_locations(tmp_path / "g.txt")
    assert back.header_value == loc.header_value and back.dead.tolist() == loc.dead.tolist()


@pytest.mark.parametrize(
    "text, problem",
    [
        ("25.1 0\n33.8\n", "line 2: expected 2 columns"),
        ("25.1 0\nabc 1\n", "line 2: not numbers"),
        ("25.1 2\n", "line 1: y must be finite and dead 0 or 1"),
        ("# 0.47\n", "no fiber rows"),
    ],
)
def test_malformed_fiber_locations(tmp_path, text, problem):
    (tmp_path / "f.txt").write_text(text)
    with pytest.raises(InputFileError, match=problem):
        read_fiber_locations(tmp_path / "f.txt")


def test_find_fiber_location_file(tmp_path):
    name = fiber_location_name(37, 47, 24, "LL")
    assert name == "fiber_loc_037_047_024_LL.txt"
    loc = FiberLocations(np.array([1.0]), np.array([False]), None)
    assert find_fiber_location_file(tmp_path, 37, 47, 24, "LL") is None
    for day in ("20190101", "20190801", "20191001"):
        (tmp_path / day).mkdir()
        write_fiber_locations(tmp_path / day / name, loc)
    (tmp_path / "20190901").mkdir()  # a dated folder without this amp's file
    (tmp_path / "notes").mkdir()
    assert find_fiber_location_file(tmp_path, 37, 47, 24, "LL") == tmp_path / "20191001" / name
    def nearest(date):
        return find_fiber_location_file(tmp_path, 37, 47, 24, "LL", date=date)

    assert nearest("20190822") == tmp_path / "20190801" / name
    assert nearest("20190915") == tmp_path / "20191001" / name
    assert nearest("20190831") == tmp_path / "20190801" / name  # 30 days before vs 31 after
    assert find_fiber_location_file(tmp_path, 37, 47, 24, "LU", date="20190831") is None
    write_fiber_locations(tmp_path / name, loc)
    assert find_fiber_location_file(tmp_path, 37, 47, 24, "LL") == tmp_path / name
    with pytest.raises(ValueError):
        find_fiber_location_file(tmp_path, 37, 47, 24, "LL", date="2019-08-22")


def test_fiber_location_nearest_tie_prefers_earlier(tmp_path):
    name = fiber_location_name(1, 2, 3, "RU")
    loc = FiberLocations(np.array([1.0]), np.array([False]), None)
    for day in ("20190810", "20190820"):
        (tmp_path / day).mkdir()
        write_fiber_locations(tmp_path / day / name, loc)
    found = find_fiber_location_file(tmp_path, 1, 2, 3, "RU", date="20190815")
    assert found == tmp_path / "20190810" / name


# --- throughput ---------------------------------------------------------------------------------


def test_default_throughput_curve():
    wave, thr = default_throughput()
    np.testing.assert_array_equal(wave, geometry.DEF_WAVE)
    assert thr[0] == pytest.approx(0.0246, rel=1e-9)
    assert thr[-1] == pytest.approx(0.128, rel=1e-9)
    assert wave[np.argmax(thr)] == 4640.0 and thr.max() == pytest.approx(0.161, rel=1e-9)
    peak = np.argmax(thr)
    assert np.all(np.diff(thr[: peak + 1]) > 0) and np.all(np.diff(thr[peak:]) < 0)
    # smooth: second differences small and without jumps
    assert np.abs(np.diff(thr, 2)).max() < 1e-5


def test_read_throughput(tmp_path):
    wave = np.arange(3400.0, 5601.0, 50.0)
    thr = 0.05 + 1e-5 * (wave - 3400.0)  # linear: interpolation is exact
    path = tmp_path / "t.txt"
    write_throughput(path, wave, thr)
    assert path.read_text().startswith("wavelength throughput\n----------")
    w, t = read_throughput(path)
    np.testing.assert_array_equal(w, geometry.DEF_WAVE)
    np.testing.assert_allclose(t, 0.05 + 1e-5 * (geometry.DEF_WAVE - 3400.0), rtol=1e-7)
    # the default curve written on DEF_WAVE reads back unchanged
    write_throughput(path, *default_throughput())
    np.testing.assert_allclose(read_throughput(path)[1], default_throughput()[1], rtol=1e-7)


@pytest.mark.parametrize(
    "text, problem",
    [
        ("wavelength throughput\n3400 0.1\n4000 x\n6000 0.1\n", "line 3: expected two numbers"),
        ("3400 0.1\n4000 0.1 7\n6000 0.1\n", "line 2: expected two numbers"),
        ("3500 0.1\n6000 0.1\n", "covers 3500.0-6000.0 A"),
        ("3400 0.1\n4000 -0.1\n6000 0.1\n", "must be > 0"),
        ("3400 0.1\n3400 0.1\n6000 0.1\n", "increase strictly"),
        ("# only a comment\n3400 0.1\n", "fewer than two"),
        ("3400 0.1\n6000 nan\n", "non-finite"),
    ],
)
def test_malformed_throughput(tmp_path, text, problem):
    (tmp_path / "t.txt").write_text(text)
    with pytest.raises(InputFileError, match=problem):
        read_throughput(tmp_path / "t.txt")


# --- catalog ------------------------------------------------------------------------------------


def sample_table() -> Table:
    return Table(
        {
            "objID": np.array([1, 2, 3], dtype=np.int64),
            "ra": [150.0, 150.01, 150.02],
            "dec": [2.0, 2.01, 2.02],
            "gApMag": MaskedColumn([17.5, -999.0, 19.0], mask=[False, False, True]),
            "rMeanApMag": [17.0, 18.0, -999.0],
        }
    )


@pytest.mark.parametrize("suffix", [".csv", ".ecsv", ".fits"])
def test_read_catalog_formats_and_aliases(tmp_path, suffix):
    path = tmp_path / f"cat{suffix}"
    sample_table().write(path)
    cat = read_catalog(path)
    np.testing.assert_array_equal(cat["raMean"], [150.0, 150.01, 150.02])
    np.testing.assert_array_equal(cat["decMean"], [2.0, 2.01, 2.02])
    np.testing.assert_array_equal(cat["gMeanApMag"], [17.5, np.nan, np.nan])
    np.testing.assert_array_equal(cat["rMeanApMag"], [17.0, 18.0, np.nan])
    assert cat["gMeanApMag"].dtype == np.float64 and "gApMag" not in cat.colnames


def test_read_catalog_errors(tmp_path):
    path = tmp_path / "cat.csv"
    Table({"ra": [1.0], "dec": [2.0]}).write(path)
    with pytest.raises(InputFileError, match="no gMeanApMag column"):
        read_catalog(path)
    path.write_text("ra,dec,gApMag\n1,2,x\n")
    with pytest.raises(InputFileError, match="not numeric"):
        read_catalog(path)
    (tmp_path / "bad.fits").write_bytes(b"garbage" * 100)
    with pytest.raises(InputFileError, match="cannot read catalog"):
        read_catalog(tmp_path / "bad.fits")
    with pytest.raises(InputFileError, match="does not exist"):
        read_catalog(tmp_path / "missing.csv")


def test_query_panstarrs_caches_and_reuses(tmp_path, monkeypatch):
    calls = []

    def fake_query(ra, dec, radius_deg):
        calls.append((ra, dec, radius_deg))
        t = sample_table()
        t.rename_columns(["ra", "dec", "gApMag"], ["raMean", "decMean", "gMeanApMag"])
        return t

    monkeypatch.setattr(catalog, "_query_mast", fake_query)
    first = query_panstarrs(150.0, 2.0, 0.15, tmp_path / "cache")
    second = query_panstarrs(150.0, 2.0, 0.15, tmp_path / "cache")
    assert calls == [(150.0, 2.0, 0.15)]
    assert len(list((tmp_path / "cache").iterdir())) == 1
    for cat in (first, second):
        np.testing.assert_array_equal(cat["gMeanApMag"], [17.5, np.nan, np.nan])
        np.testing.assert_array_equal(cat["raMean"], [150.0, 150.01, 150.02])


def test_query_panstarrs_uses_astroquery_dr2_mean(tmp_path, monkeypatch):
    from astroquery.mast import Catalogs

    seen = {}

    def fake_query_region(coord, **kwargs):
        seen.update(kwargs, ra=coord.ra.deg, dec=coord.dec.deg)
        return Table({"raMean": [150.0], "decMean": [2.0], "gMeanApMag": [18.0]})

    monkeypatch.setattr(Catalogs, "query_region", fake_query_region)
    query_panstarrs(150.0, 2.0, 0.1, tmp_path)
    assert (seen["catalog"], seen["data_release"], seen["table"]) == ("Panstarrs", "dr2", "mean")
    assert seen["radius"].to_value("deg") == pytest.approx(0.1)
    assert seen["ra"] == pytest.approx(150.0)


def test_query_panstarrs_without_network(tmp_path, monkeypatch):
    def no_network(ra, dec, radius_deg):
        raise ConnectionError("Failed to resolve 'catalogs.mast.stsci.edu'")

    monkeypatch.setattr(catalog, "_query_mast", no_network)
    with pytest.raises(RemedyError, match="no network") as info:
        query_panstarrs(150.0, 2.0, 0.15, tmp_path)
    assert "--catalog" in str(info.value) and "\n" not in str(info.value)
    assert not any(tmp_path.iterdir())


def test_query_panstarrs_empty_answer_not_cached(tmp_path, monkeypatch):
    monkeypatch.setattr(
        catalog, "_query_mast", lambda ra, dec, r: Table(names=("raMean", "decMean", "gMeanApMag"))
    )
    assert len(query_panstarrs(1.0, 2.0, 0.1, tmp_path)) == 0
    assert not any(tmp_path.iterdir())


def test_known_bundle_wiring_is_applied_per_ifuid():
    from remedy_dask.io.ifucen import for_ifuid, standard_ifucen

    std = standard_ifucen()
    swapped = for_ifuid(std, 25)
    assert (swapped.x[208], swapped.x[213]) == (std.x[213], std.x[208])
    reversed_ = for_ifuid(std, 3)
    np.testing.assert_array_equal(reversed_.x[224:], std.x[224:][::-1])
    np.testing.assert_array_equal(reversed_.x[:224], std.x[:224])
    np.testing.assert_array_equal(for_ifuid(std, 24).x, std.x)


def test_amp_fiber_positions_use_the_fplane_swap_or_report_the_nominal_grid():
    from types import SimpleNamespace

    from remedy_dask.io.ifucen import amp_fiber_positions, standard_ifucen

    std = standard_ifucen()
    fplane = {47: SimpleNamespace(ifuid=24, x_fp=-150.0, y_fp=200.0)}
    x, y, fx0, fy0, note = amp_fiber_positions(std, fplane, "047LL")
    assert (fx0, fy0, note) == (200.0, -150.0, None) and x.shape == (112,)
    _, _, fx0, fy0, note = amp_fiber_positions(std, None, "047LL")
    assert (fx0, fy0) == (200.0, -150.0) and "nominal grid" in note
