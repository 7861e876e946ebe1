"""The published VIRUS conventions, pinned with literal values worked out by hand from
shared/virus-raw-format.md (and the Remedy reference where the format page defers to it) or
computed here with astropy, for both the simulator's own implementation (remedy_dask.sim.instrument)
and the reduction's (remedy_dask.geometry).  Each is compared with the literal values, never with
the other, so a shared convention error cannot pass."""

from __future__ import annotations

import ast
import pathlib

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord

from remedy_dask import geometry
from remedy_dask.sim import instrument

SIM_DIR = pathlib.Path(__file__).resolve().parents[1] / "remedy_dask" / "sim"

# Hand-worked from "Fiber identity": fiber k has ID 224-k (LL), 112-k (LU), 336-k (RL), 448-k (RU).
FIBER_ID_TABLE = {  # amp: (ID of k=0, ID of k=1, ID of k=111)
    "LL": (224, 223, 113), "LU": (112, 111, 1), "RL": (336, 335, 225), "RU": (448, 447, 337),
}

# Hand-worked from "IFU fiber map": 23 rows 2.20" apart (top row y = 11 * 2.20 = 24.2"), rows of
# 19 and 20 alternating (12 x 19 + 11 x 20 = 448, so the top row has 19) at 2.54" with the rows
# of 20 offset by 1.27": a row of 19 spans +-9 * 2.54 = +-22.86", a row of 20 +-24.13".  IDs from
# the top row down, left to right.
LAYOUT_TABLE = {  # ID: (x, y)
    1: (-22.86, 24.2), 10: (0.0, 24.2), 19: (22.86, 24.2), 20: (-24.13, 22.0),
    39: (24.13, 22.0), 40: (-22.86, 19.8),
    448: (22.86, -24.2), 430: (-22.86, -24.2), 429: (24.13, -22.0),
}


def _allowed_import(name: str) -> bool:
    return not name.startswith("remedy_dask") or name.startswith(
        ("remedy_dask.sim", "remedy_dask.errors"))


def test_simulator_imports_nothing_from_the_reduction():
    for path in SIM_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                if node.module == "remedy_dask":
                    names = [f"remedy_dask.{a.name}" for a in node.names]
                bad = [n for n in names if not _allowed_import(n)]
            elif isinstance(node, ast.Import):
                bad = [a.name for a in node.names if not _allowed_import(a.name)]
            else:
                continue
            assert not bad, f"{path.name} imports {bad}"


@pytest.mark.parametrize("impl", ["sim", "geometry"])
@pytest.mark.parametrize("amp", list(FIBER_ID_TABLE))
def test_fiber_ids(impl, amp):
    ids = instrument.amp_fiber_ids(amp) if impl == "sim" else geometry.fiber_ids(amp)
    first, second, last = FIBER_ID_TABLE[amp]
    assert len(ids) == 112 and (ids[0], ids[1], ids[111]) == (first, second, last)


def test_fiber_ids_cover_the_ifu_once():
    for ids in ([instrument.amp_fiber_ids(a) for a in instrument.AMPS],
                [geometry.fiber_ids(a) for a in geometry.AMPS]):
        assert sorted(np.concatenate(ids)) == list(range(1, 449))


# Hand-worked from "Orientation": mark raw data pixel (row 0, column 0) and (row 0, column 1) of a
# 1032-column data section; after the flips (LU/RL: both axes; then AMPNAME LR/UL: columns)
# they land at these oriented (row, col) positions.
ORIENT_TABLE = {  # (amp, AMPNAME): (where raw[0, 0] goes, where raw[0, 1] goes)
    ("LL", "LL"): ((0, 0), (0, 1)),
    ("LL", "LR"): ((0, 1031), (0, 1030)),
    ("LU", "LU"): ((1031, 1031), (1031, 1030)),
    ("LU", "UL"): ((1031, 0), (1031, 1)),
    ("RL", "RL"): ((1031, 1031), (1031, 1030)),
    ("RU", "RU"): ((0, 0), (0, 1)),
}


def _geometry_orient(data, amp, ampname):
    if amp in geometry.FLIP_BOTH_AMPS:
        data = data[::-1, ::-1]
    if ampname in geometry.FLIP_COLUMNS_AMPNAMES:
        data = data[:, ::-1]
    return data


@pytest.mark.parametrize("impl", ["sim", "geometry"])
@pytest.mark.parametrize("key", list(ORIENT_TABLE))
def test_orientation(impl, key):
    amp, ampname = key
    raw = np.zeros((1032, 1064), np.uint16)
    raw[0, 0], raw[0, 1] = 7, 9
    raw[:, 1032:] = 1  # overscan
    if impl == "sim":
        data = instrument.trim_overscan(raw)
        out = instrument.to_oriented(data, amp, ampname)
        np.testing.assert_array_equal(instrument.to_raw(out, amp, ampname), data)
    else:
        data = raw[:, : geometry.N_COLS]
        out = _geometry_orient(data, amp, ampname)
    assert out.shape == (1032, 1032) and out.max() == 9 and out.sum() == 16
    (r7, c7), (r9, c9) = ORIENT_TABLE[key]
    assert out[r7, c7] == 7 and out[r9, c9] == 9


@pytest.mark.parametrize("impl", ["sim", "geometry"])
def test_ifu_layout(impl):
    x, y = instrument.ifu_layout() if impl == "sim" else geometry.ifu_fiber_layout()
    assert x.shape == y.shape == (448,)
    for fid, xy in LAYOUT_TABLE.items():
        assert (x[fid - 1], y[fid - 1]) == pytest.approx(xy, abs=1e-9), fid
    assert len(np.unique(np.round(y, 6))) == 23
    assert np.ptp(x) == pytest.approx(48.26) and np.ptp(y) == pytest.approx(48.4)


@pytest.mark.parametrize("impl", ["sim", "geometry"])
def test_rotation_from_parangle(impl):
    f = instrument.parangle_rotation if impl == "sim" else geometry.rotation_from_parangle
    # 360 - (90 + PA + 1.55), in [0, 360)
    for pa, rot in ((0.0, 268.45), (-60.0, 328.45), (45.0, 223.45), (178.45, 90.0),
                    (-91.55, 0.0), (268.45, 0.0)):
        assert f(pa) % 360.0 == pytest.approx(rot, abs=1e-9), pa


# Remedy's WCS (CDELT = (-1", +1"), PC = [[cos r, sin r], [-sin r, cos r]]) sends focal-plane
# (fx, fy) to standard coordinates xi (east) = -(cos r fx + sin r fy), eta (north) =
# -sin r fx + cos r fy.  Worked by hand for these cases (arcsec):
PROJECTION_TABLE = [  # (fx, fy, rotation deg, xi east, eta north)
    (100.0, 0.0, 0.0, -100.0, 0.0),
    (0.0, 100.0, 0.0, 0.0, 100.0),
    (100.0, 0.0, 90.0, 0.0, -100.0),
    (0.0, 100.0, 90.0, -100.0, 0.0),
    (100.0, 0.0, 30.0, -86.60254037844386, -50.0),
    (-250.0, 400.0, 268.45,  # cos r = -0.027049303815332, sin r = -0.999634100640382
     250.0 * -0.027049303815332 - 400.0 * -0.999634100640382,
     250.0 * -0.999634100640382 + 400.0 * -0.027049303815332),
]


@pytest.mark.parametrize("impl", ["sim", "geometry"])
@pytest.mark.parametrize("dec0", [0.0, 47.5, -71.0])
@pytest.mark.parametrize("case", PROJECTION_TABLE)
def test_focal_plane_to_sky(impl, dec0, case):
    """A TAN projection puts standard coordinates (xi, eta) at distance atan(hypot(xi, eta))
    from the tangent point, at position angle atan2(xi, eta) east of north: checked with
    astropy's SkyCoord separation and position angle."""
    fx, fy, rot, xi, eta = case
    ra0 = 201.25
    f = instrument.focal_to_radec if impl == "sim" else geometry.focal_to_sky
    ra, dec = f(np.array([fx]), np.array([fy]), ra0, dec0, rot)
    centre = SkyCoord(ra0 * u.deg, dec0 * u.deg)
    point = SkyCoord(float(ra[0]) * u.deg, float(dec[0]) * u.deg)
    rho = np.hypot(xi, eta) / 206264.80624709636
    assert centre.separation(point).to_value(u.rad) == pytest.approx(np.arctan(rho), rel=1e-9)
    pa = centre.position_angle(point).to_value(u.deg)
    dpa = np.mod(pa - np.degrees(np.arctan2(xi, eta)) + 180, 360) - 180
    assert dpa == pytest.approx(0, abs=1e-5)


def test_focal_plane_round_trip_and_origin():
    ra, dec = instrument.focal_to_radec(0.0, 0.0, 10.0, 20.0, 33.0)
    assert (float(ra), float(dec)) == pytest.approx((10.0, 20.0), abs=1e-12)
    fx, fy = np.meshgrid(np.linspace(-300, 300, 5), np.linspace(-400, 400, 5))
    ra, dec = instrument.focal_to_radec(fx, fy, 359.99, 60.0, 123.0)
    bx, by = instrument.radec_to_focal(ra, dec, 359.99, 60.0, 123.0)
    np.testing.assert_allclose(bx, fx, atol=1e-7)
    np.testing.assert_allclose(by, fy, atol=1e-7)


@pytest.mark.parametrize("dec0", [0.0, 62.0])
def test_tangent_offsets_match_astropy(dec0):
    """offset_radec moves by (east, north) on the tangent plane: at 30" the TAN offset equals
    astropy's spherical offset to ~1e-8 arcsec relative (third-order difference)."""
    ra, dec = instrument.offset_radec(150.0, dec0, 3.0, -4.0)
    c = SkyCoord(150.0 * u.deg, dec0 * u.deg)
    p = SkyCoord(ra * u.deg, dec * u.deg)
    assert c.separation(p).to_value(u.arcsec) == pytest.approx(5.0, abs=1e-9)
    pa = np.degrees(np.arctan2(3.0, -4.0)) % 360
    assert c.position_angle(p).to_value(u.deg) == pytest.approx(pa)
    assert instrument.tangent_offset(ra, dec, 150.0, dec0) == pytest.approx((3.0, -4.0), abs=1e-9)


@pytest.mark.parametrize("impl", ["sim", "geometry"])
def test_dar_table(impl):
    """The published offsets at 3500..5500 A; the reduction's cubic fit may deviate from them by
    up to 0.025" (the fit residual), the simulator's spline passes through them."""
    f = instrument.dar_offset if impl == "sim" else geometry.dar_offsets
    tol = 1e-12 if impl == "sim" else 0.025
    got = f(np.array([3500.0, 4000.0, 4500.0, 5000.0, 5500.0]))
    np.testing.assert_allclose(got, [-0.74, -0.40, -0.08, 0.08, 0.20], atol=tol)
    w = np.linspace(3470, 5540, 300)
    assert np.all(np.diff(f(w)) > 0)  # refraction decreases monotonically to the red


@pytest.mark.parametrize("impl", ["sim", "geometry"])
def test_dither_pattern_and_wavelength_grid(impl):
    pattern = instrument.DITHER_PATTERN if impl == "sim" else geometry.DITHER_PATTERN
    assert tuple(map(tuple, pattern)) == ((0.0, 0.0), (1.215, -0.70), (1.215, 0.70))
    wave = instrument.WAVE if impl == "sim" else geometry.DEF_WAVE
    assert wave.size == 1036 and wave[0] == 3470.0 and wave[-1] == 5540.0
    np.testing.assert_allclose(np.diff(wave), 2.0)


def test_focal_position_of_an_ifu_fiber():
    """fplane row "047 -150.0 50.0 ...": the IFU centre is at (fx, fy) = (Y_FP, X_FP) =
    (50, -150); a fiber at IFU (x, y) = (2.54, -2.2) is at (52.54, -152.2)."""
    fx, fy = instrument.fiber_focal_xy(-150.0, 50.0, np.array([2.54]), np.array([-2.2]))
    assert (float(fx[0]), float(fy[0])) == pytest.approx((52.54, -152.2))
    assert instrument.ihmp_row_col(47) == (4, 7) and geometry.slot_row_col(105) == (10, 5)
