"""The wavelength shift of one amp pooled with the other amp of its CCD.

The spectrum moves on the detector (temperature), and one CCD is one rigid piece of silicon, so
its two amps (LL/LU, RL/RU) share the drift up to a small differential (a rotation of the CCD).
Each amp's own measurement comes from :mod:`remedy_dask.amp.skyshift`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class PooledShift:
    """Shift (px) of one amp after combining it with the other half of its CCD; ``pooled``
    False (and a ``note``) when the halves disagree and the amp's own measurement is kept."""

    shift: float
    error: float
    pooled: bool
    note: str = ""


def pool_ccd_shift(own: tuple[float, float], other: tuple[float, float] | None,
                   differential_rms: float, max_sigma: float = 4.0,
                   trace_difference: float = 0.0, max_trace_difference: float = 0.02
                   ) -> PooledShift:
    """Combine an amp's measured shift ``own`` = (shift, error) with that of the other amp of
    the same CCD.  The spectrum moves on the detector, so both halves share the drift up to a
    differential ``differential_rms`` (px, rotation): the other half estimates this amp's shift
    with variance error^2 + differential_rms^2 and the inverse-variance mean is the best
    estimate.  The model is checked first: the halves of a rigid CCD also share the trace
    shift (measured to ~0.002 px), so a ``trace_difference`` above ``max_trace_difference`` (px)
    means they moved differently and are not pooled; nor are wavelength shifts that disagree by
    more than ``max_sigma``."""
    s1, e1 = own
    if other is None or not (np.isfinite(other[0]) and np.isfinite(other[1]) and other[1] > 0):
        return PooledShift(s1, e1, False)
    if not (np.isfinite(s1) and np.isfinite(e1) and e1 > 0):
        return PooledShift(s1, e1, False)
    if not abs(trace_difference) <= max_trace_difference:
        return PooledShift(s1, e1, False, f"trace shift differs by {trace_difference:+.3f} px "
                           "from the other amp of the CCD: wavelength shift not pooled")
    s2, e2 = other
    var2 = e2**2 + differential_rms**2
    z = (s1 - s2) / np.sqrt(e1**2 + var2)
    if abs(z) > max_sigma:
        return PooledShift(s1, e1, False, f"wavelength shift {s1:+.3f} px disagrees with the "
                           f"other amp of the CCD ({s2:+.3f} px, {z:+.1f} sigma): not pooled")
    w1, w2 = 1.0 / e1**2, 1.0 / var2
    return PooledShift(float((w1 * s1 + w2 * s2) / (w1 + w2)), float(1.0 / np.sqrt(w1 + w2)), True)
