"""Compiled per-pixel noise model of the line search (step 1 of
:mod:`remedy_dask.observation.detect.lines`), one pass instead of numpy's chain of full-size
temporaries; the arithmetic is that of the numpy expressions in the docstring, operation for
operation, so the results are bit-identical."""

from __future__ import annotations

import numpy as np
from numba import njit

_BIG = np.finfo(np.float64).max


@njit(cache=True, nogil=True)
def _inverse_variance(resid, error, cont, sky, good, continuum_error, sky_error, has_sky
                      ):  # pragma: no cover - compiled
    ivar = np.empty_like(resid)
    n_row, n_col = resid.shape
    for i in range(n_row):
        for j in range(n_col):
            if good[i, j]:
                e = error[i, j]
                c = continuum_error * cont[i, j]
                v = e * e + c * c
                if has_sky:
                    s = sky[i, j]
                    if np.isnan(s):
                        s = 0.0
                    elif np.isinf(s):
                        s = _BIG if s > 0 else -_BIG
                    t = sky_error * s
                    v += t * t
                ivar[i, j] = 1.0 / v
            else:
                resid[i, j] = 0.0
                ivar[i, j] = 0.0
    return ivar


def inverse_variance(resid: np.ndarray, error: np.ndarray, cont: np.ndarray,
                     sky: np.ndarray | None, good: np.ndarray, continuum_error: float,
                     sky_error: float) -> np.ndarray:
    """Inverse variance of the continuum-subtracted spectra, 0 where not ``good``, and
    ``resid`` set to 0 there (in place)::

        var = error**2 + (continuum_error * cont)**2 [+ (sky_error * nan_to_num(sky))**2]
        ivar = where(good, 1 / var, 0);  resid = where(good, resid, 0)

    All (n_fiber, n_wave) float64 (``good`` bool); ``sky`` None: no sky term."""
    arrays = [resid, error, cont] + ([] if sky is None else [sky])
    if any(a.dtype != np.float64 or a.shape != resid.shape for a in arrays) or \
            good.shape != resid.shape:
        raise ValueError("inverse_variance needs float64 arrays of one shape")
    return _inverse_variance(resid, error, cont, resid if sky is None else sky,
                             good.astype(bool, copy=False), float(continuum_error),
                             float(sky_error), sky is not None)
