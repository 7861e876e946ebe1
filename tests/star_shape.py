"""Spectral shape of the product's star spectra against the truth (helper of the e2e tests).

The g-band zero point fixes each star's flux where the g filter looks; a wrong throughput
*shape* (e.g. the default HETDEX model curve in place of the instrument's) leaves it right there
and wrong by tens of per cent at 3700 A, and every line flux inherits it at the line's
wavelength.  ``band_ratios`` shows it.
"""

from __future__ import annotations

import numpy as np

BANDS = tuple((lo, lo + 200.0) for lo in np.arange(3600.0, 5400.0, 200.0))


def _sep_arcsec(ra1, dec1, ra2, dec2):
    return np.hypot((ra1 - ra2) * np.cos(np.deg2rad(dec2)), dec1 - dec2) * 3600.0


def band_ratios(P, T, gmax: float = 19.0) -> np.ndarray:
    """(n_star, n_band) product / true flux density of the isolated (field) stars brighter than
    ``gmax`` in the 200-A ``BANDS``, each star divided by its median over the bands."""
    ra, dec, spec = P["sources/ra"][...], P["sources/dec"][...], P["sources/spectrum"]
    wave = P["sources/wavelength"][...]
    tra, tdec, g, kind = (T["stars"][k][...] for k in ("ra", "dec", "g", "kind"))
    rows = []
    for i in range(len(ra)):
        d = _sep_arcsec(tra, tdec, ra[i], dec[i])
        j = int(np.argmin(d))
        if d[j] < 1.0 and g[j] < gmax and kind[j] == 0:
            r = spec[i] / T["stars/spectrum"][j]
            rows.append([np.nanmedian(r[(wave >= lo) & (wave < hi)]) for lo, hi in BANDS])
    rows = np.array(rows).reshape(-1, len(BANDS))
    return rows / np.median(rows, axis=1, keepdims=True)
