"""Sub-pixel peak position: the vertex of a parabola through three samples."""

from __future__ import annotations

import numpy as np


def parabola_vertex(vm: float, v0: float, vp: float) -> float:
    """Offset (within +-0.5) of the maximum of the parabola through values at -1, 0, +1; 0 if
    the three values do not curve downwards."""
    denom = vm - 2.0 * v0 + vp
    if not (np.isfinite(denom) and denom < 0):
        return 0.0
    return float(np.clip(0.5 * (vm - vp) / denom, -0.5, 0.5))
