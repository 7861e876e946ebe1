"""Survey kernels: offsets of the fitted field centre from the header pointing, residual spread."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
import astropy.units as u

from remedy_dask.observation.survey import pointing_offset, residual_spread


def test_pointing_offset_matches_astropy_spherical_offsets():
    # 10" east and 5" north of (150, 60): astropy places the point, the kernel measures it back
    centre = SkyCoord(150.0 * u.deg, 60.0 * u.deg)
    point = centre.spherical_offsets_by(10.0 * u.arcsec, 5.0 * u.arcsec)
    east, north = pointing_offset(point.ra.deg, point.dec.deg, 150.0, 60.0)
    assert east == pytest.approx(10.0, abs=1e-6) and north == pytest.approx(5.0, abs=1e-6)


def test_pointing_offset_across_ra_zero():
    # 0.001 deg of RA at the equator across RA 0: 3.6" east
    east, north = pointing_offset(0.0005, 0.0, 359.9995, 0.0)
    assert east == pytest.approx(3.6, abs=1e-6) and north == pytest.approx(0.0, abs=1e-9)


def test_residual_spread_is_the_sample_standard_deviation_per_axis():
    res = np.array([[0.1, 0.0], [-0.1, 0.2], [0.0, -0.2]])
    # east: values 0.1, -0.1, 0: sum of squares 0.02 / 2 -> 0.1; north: 0.08 / 2 -> 0.2
    assert residual_spread(res) == pytest.approx((0.1, 0.2))
    assert np.isnan(residual_spread(res[:1])).all() and np.isnan(residual_spread(None)).all()
