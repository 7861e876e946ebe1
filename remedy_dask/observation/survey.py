"""Survey information of an observation (Remedy's ``Survey`` table): the astrometric offset of
the fitted field centre from the header pointing and the spread of the star residuals."""

from __future__ import annotations

import numpy as np


def pointing_offset(ra: float, dec: float, ra_header: float, dec_header: float
                    ) -> tuple[float, float]:
    """(east, north) arcsec of the fitted centre (``ra``, ``dec``) from the header pointing, on
    the tangent plane at the header pointing (gnomonic; deg in)."""
    a, d = np.radians(ra - ra_header), np.radians(dec)
    d0 = np.radians(dec_header)
    cos_c = np.sin(d0) * np.sin(d) + np.cos(d0) * np.cos(d) * np.cos(a)
    east = np.cos(d) * np.sin(a) / cos_c
    north = (np.cos(d0) * np.sin(d) - np.sin(d0) * np.cos(d) * np.cos(a)) / cos_c
    return float(np.degrees(east) * 3600.0), float(np.degrees(north) * 3600.0)


def residual_spread(residuals: np.ndarray | None) -> tuple[float, float]:
    """Standard deviation (ddof 1) of the (east, north) residuals (n, 2) arcsec of the stars of
    the astrometric fit; NaN with fewer than 2 stars."""
    res = np.asarray(residuals if residuals is not None else np.zeros((0, 2)), float)
    if res.ndim != 2 or res.shape[0] < 2:
        return float("nan"), float("nan")
    return float(np.std(res[:, 0], ddof=1)), float(np.std(res[:, 1], ddof=1))
