"""The HET pupil-illumination model against closed-form areas of circles cut by straight edges."""

from __future__ import annotations

import numpy as np
import pytest

from remedy_dask.observation.illumination import (
    M1_CIRCUMRADIUS_M, illuminated_area, inside_hexagon, relative_illumination,
)


def _segment(r: float, d: float) -> float:
    """Area of the part of a circle of radius r beyond a chord at distance d from its centre."""
    return r * r * np.arccos(d / r) - d * np.sqrt(r * r - d * d)


def test_hexagon_corners_lie_on_the_x_axis_and_flats_at_the_apothem():
    apothem = M1_CIRCUMRADIUS_M * np.sqrt(3) / 2  # 4.7631 m
    assert inside_hexagon(np.array([5.49, -5.49]), np.array([0.0, 0.0])).all()
    assert not inside_hexagon(np.array([5.51]), np.array([0.0])).any()
    assert inside_hexagon(np.array([0.0]), np.array([apothem - 0.01])).all()
    assert not inside_hexagon(np.array([0.0]), np.array([apothem + 0.01])).any()


def test_centred_pupil_loses_six_circular_segments_beyond_the_flats():
    # 10 m pupil, 4.5 m obscuration, hexagon apothem 4.76314 m: the corners (5.5 m) are outside
    # the pupil, so the area is the annulus minus six disjoint segments:
    # pi (25 - 5.0625) - 6 * (25 acos(0.952628) - 4.76314 sqrt(25 - 22.6875))
    # = 62.6355 - 6 * 0.4820 = 59.74 m^2
    expected = np.pi * (25 - 2.25**2) - 6 * _segment(5.0, 5.5 * np.sqrt(3) / 2)
    assert expected == pytest.approx(59.74, abs=0.01)
    assert illuminated_area(0.0, 0.0) == pytest.approx(expected, rel=2e-3)


def test_pupil_shifted_towards_a_corner_loses_four_segments():
    # shifted 0.3 m along +x (the corner at 5.5 m stays 5.2 m away, outside the pupil): the
    # flats with normals at +-30 deg come to 4.76314 - 0.3 cos 30 = 4.50333 m, those at +-90 deg
    # stay at 4.76314 m, those at +-150 deg move to 5.023 m (beyond the pupil):
    # 62.6355 - 2 * 1.4572 - 2 * 0.4820 = 58.76 m^2
    apothem = 5.5 * np.sqrt(3) / 2
    d30 = apothem - 0.3 * np.cos(np.radians(30))
    expected = np.pi * (25 - 2.25**2) - 2 * _segment(5.0, d30) - 2 * _segment(5.0, apothem)
    assert expected == pytest.approx(58.76, abs=0.01)
    assert illuminated_area(0.3, 0.0) == pytest.approx(expected, rel=2e-3)


def test_relative_illumination_is_one_at_the_track_centre_and_falls_off_the_mirror():
    assert relative_illumination(0.0, 0.0) == pytest.approx(1.0)
    assert relative_illumination(0.0, 1.0) < relative_illumination(0.0, 0.5) < 1.0
    assert relative_illumination(10.0, 0.0) == 0.0
    assert np.isnan(relative_illumination(np.nan, 0.0))
