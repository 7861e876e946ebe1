"""Mirror illumination of the HET: the fraction of the pupil that falls on the primary mirror,
relative to the centre of the track.

The HET primary (M1) is fixed; the tracker follows a target across the focal surface and the
10 m pupil of the wide-field corrector slides over the hexagonal 11 m primary, so that near the
ends of a track part of the pupil falls off the mirror.  The model (geometry only; Remedy calls
the external ``hetillum`` program for this):

* M1: a regular hexagon of circumradius :data:`M1_CIRCUMRADIUS_M` (11 m corner to corner), two
  corners on the x axis (``M1_ROTATION_DEG`` rotates it);
* pupil: an annulus of outer diameter :data:`PUPIL_DIAMETER_M` and central obscuration
  :data:`OBSCURATION_DIAMETER_M` (the corrector's);
* the pupil centre sits at ``PUPIL_SHIFT_PER_TRACKER`` x the tracker position (x, y) in m from
  the optical axis: the chief ray pivots about M1's centre of curvature (radius 26.16 m) while the
  focal surface has half that radius, so the footprint moves by about twice the tracker offset.

:func:`relative_illumination` is the illuminated area over its value at the track centre, so
``illumination x 51.4 m^2`` is the collecting area (the constant that remedy-dask uses for the
flux conversion; docs/accuracy.md says why the illumination is recorded, not applied).
"""

from __future__ import annotations

import numpy as np

M1_CIRCUMRADIUS_M = 5.5
M1_ROTATION_DEG = 0.0
PUPIL_DIAMETER_M = 10.0
OBSCURATION_DIAMETER_M = 4.5
PUPIL_SHIFT_PER_TRACKER = 2.0
GRID = 512  # samples per pupil diameter of the area integral (relative error ~1e-4)


def inside_hexagon(x: np.ndarray, y: np.ndarray, circumradius: float = M1_CIRCUMRADIUS_M,
                   rotation_deg: float = M1_ROTATION_DEG) -> np.ndarray:
    """True where (x, y) lies on the regular hexagon (corners at ``rotation_deg`` + k 60 deg)."""
    apothem = circumradius * np.sqrt(3.0) / 2.0
    inside = np.ones(np.broadcast(x, y).shape, bool)
    for k in range(3):  # the normals of the flats sit halfway between corners
        angle = np.radians(rotation_deg + 30.0 + 60.0 * k)
        inside &= np.abs(x * np.cos(angle) + y * np.sin(angle)) <= apothem
    return inside


def illuminated_area(dx: float, dy: float, pupil_diameter: float = PUPIL_DIAMETER_M,
                     obscuration_diameter: float = OBSCURATION_DIAMETER_M,
                     circumradius: float = M1_CIRCUMRADIUS_M,
                     rotation_deg: float = M1_ROTATION_DEG, grid: int = GRID) -> float:
    """Area (m^2) of the pupil annulus centred at (``dx``, ``dy``) m on M1 that falls on M1
    (midpoint rule on a ``grid`` x ``grid`` raster of the pupil's bounding square)."""
    r_out, r_in = pupil_diameter / 2.0, obscuration_diameter / 2.0
    step = pupil_diameter / grid
    u = (np.arange(grid) + 0.5) * step - r_out
    x, y = np.meshgrid(u, u, indexing="xy")
    r2 = x * x + y * y
    pupil = (r2 <= r_out * r_out) & (r2 >= r_in * r_in)
    on = inside_hexagon(x + dx, y + dy, circumradius, rotation_deg)
    return float(np.count_nonzero(pupil & on) * step * step)


def relative_illumination(tracker_x: float, tracker_y: float,
                          shift_per_tracker: float = PUPIL_SHIFT_PER_TRACKER) -> float:
    """Illuminated pupil area at tracker position (x, y) m over that at the track centre."""
    if not (np.isfinite(tracker_x) and np.isfinite(tracker_y)):
        return float("nan")
    centre = illuminated_area(0.0, 0.0)
    return illuminated_area(shift_per_tracker * tracker_x,
                            shift_per_tracker * tracker_y) / centre
