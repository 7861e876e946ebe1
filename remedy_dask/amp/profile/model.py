"""Empirical cross-dispersion fiber profile measured on the master flat.

The model is the *pixel-integrated* profile ``P(d)``: the fraction of a fiber's electrons at one
column that fall in the pixel whose centre is ``d`` rows from the trace.  Because it is already
integrated over the pixel, ``sum_n P(n - t) = 1`` for any trace position ``t``: the amplitude
fitted with it is the *total* flux of the fiber at that column, wings included.

``P`` is tabulated on a uniform fine offset grid for a few column chunks and a few fiber groups
(slit positions); in between it is interpolated linearly in column and in fiber index.  The flat
oversamples ``P`` because the 112 fibers sit at different sub-pixel phases and the traces curve.

"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from remedy_dask.errors import CalibrationError

EVAL_STEP = 0.05  # px, spacing of the stored uniform offset grid


@dataclass
class ProfileModel:
    """Tabulated pixel-integrated profile.

    ``offsets`` (n_grid,) uniform grid of (pixel centre - trace) in px from -half_width to
    +half_width; ``tables`` (n_chunks, n_groups, n_grid) profile values, each table integrating
    to 1 over the offset; ``chunk_centers`` (n_chunks,) column of each chunk; ``group_centers``
    (n_groups,) fiber index (0..111, float) of each fiber group.  Outside the grid P = 0.
    """

    offsets: np.ndarray
    tables: np.ndarray
    chunk_centers: np.ndarray
    group_centers: np.ndarray

    @property
    def half_width(self) -> float:
        return float(self.offsets[-1])

    @property
    def step(self) -> float:
        return float(self.offsets[1] - self.offsets[0])

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays for storage (e.g. one HDF5 group)."""
        return {
            "profile_offsets": np.asarray(self.offsets, dtype=np.float64),
            "profile_tables": np.asarray(self.tables, dtype=np.float64),
            "profile_chunk_centers": np.asarray(self.chunk_centers, dtype=np.float64),
            "profile_group_centers": np.asarray(self.group_centers, dtype=np.float64),
        }

    @classmethod
    def from_arrays(cls, d: dict[str, np.ndarray]) -> ProfileModel:
        """Inverse of :meth:`to_arrays`."""
        model = cls(
            offsets=np.asarray(d["profile_offsets"], dtype=np.float64),
            tables=np.asarray(d["profile_tables"], dtype=np.float64),
            chunk_centers=np.asarray(d["profile_chunk_centers"], dtype=np.float64),
            group_centers=np.asarray(d["profile_group_centers"], dtype=np.float64),
        )
        model.validate()
        return model

    def validate(self) -> None:
        """Raise CalibrationError if the arrays are inconsistent or not finite."""
        off, tab = self.offsets, self.tables
        if off.ndim != 1 or off.size < 3 or not np.allclose(np.diff(off), off[1] - off[0]):
            raise CalibrationError("profile offsets must be a uniform 1-D grid")
        if tab.shape != (self.chunk_centers.size, self.group_centers.size, off.size):
            raise CalibrationError(f"profile tables have shape {tab.shape}, inconsistent with grids")
        if not np.all(np.isfinite(tab)):
            raise CalibrationError("profile tables contain non-finite values")

    def evaluate(self, offset: np.ndarray, column: np.ndarray, fiber: np.ndarray) -> np.ndarray:
        """P at (pixel centre - trace) ``offset`` for fiber index ``fiber`` at ``column``.

        The three arguments broadcast against each other.  Vectorised numpy; for tests and QA
        (extraction evaluates the same interpolation inside its compiled kernel).
        """
        m = padded(self)
        offset, column, fiber = np.broadcast_arrays(
            np.asarray(offset, float), np.asarray(column, float), np.asarray(fiber, float)
        )
        ic, wc = bracket(m.chunk_centers, column)
        ig, wg = bracket(m.group_centers, fiber)
        x = (offset - m.offsets[0]) / m.step
        inside = (x >= 0) & (x <= m.offsets.size - 1)
        i0 = np.clip(np.floor(x).astype(int), 0, m.offsets.size - 2)
        fx = np.clip(x - i0, 0.0, 1.0)
        out = np.zeros(offset.shape)
        for dc, wcc in ((0, 1 - wc), (1, wc)):
            for dg, wgg in ((0, 1 - wg), (1, wg)):
                lo = m.tables[ic + dc, ig + dg, i0]
                hi = m.tables[ic + dc, ig + dg, i0 + 1]
                out += wcc * wgg * (lo * (1 - fx) + hi * fx)
        return np.where(inside, out, 0.0)


def bracket(centers: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower index and weight of linear interpolation between ``centers`` (clamped at ends).

    With a single centre the index is 0 and the weight 0; the caller must then not use index+1,
    so a degenerate grid is padded by duplicating the centre (see :func:`padded`).
    """
    n = centers.size
    if n == 1:
        return np.zeros(np.shape(x), dtype=int), np.zeros(np.shape(x))
    i = np.clip(np.searchsorted(centers, x, side="right") - 1, 0, n - 2)
    w = np.clip((x - centers[i]) / (centers[i + 1] - centers[i]), 0.0, 1.0)
    return i, w


def padded(model: ProfileModel) -> ProfileModel:
    """The same model with singleton chunk/group axes duplicated (so index+1 always exists)."""
    tab, cc, gc = model.tables, model.chunk_centers, model.group_centers
    if cc.size == 1:
        tab = np.concatenate([tab, tab], axis=0)
        cc = np.array([cc[0], cc[0] + 1.0])
    if gc.size == 1:
        tab = np.concatenate([tab, tab], axis=1)
        gc = np.array([gc[0], gc[0] + 1.0])
    return ProfileModel(model.offsets, tab, cc, gc)


def gaussian_profile(
    sigma: float = 1.4,
    half_width: float = 12.0,
    n_cols: int = 1032,
    n_fibers: int = 112,
) -> ProfileModel:
    """A pixel-integrated Gaussian profile (one chunk, one group): the starting model."""
    from scipy.special import erf

    offsets = uniform_grid(half_width)
    s = np.sqrt(2.0) * sigma
    table = 0.5 * (erf((offsets + 0.5) / s) - erf((offsets - 0.5) / s))
    table[[0, -1]] = 0.0
    table /= np.trapezoid(table, offsets)
    return ProfileModel(
        offsets=offsets,
        tables=table[None, None, :],
        chunk_centers=np.array([(n_cols - 1) / 2.0]),
        group_centers=np.array([(n_fibers - 1) / 2.0]),
    )


def uniform_grid(half_width: float) -> np.ndarray:
    n = int(round(half_width / EVAL_STEP))
    return np.linspace(-n * EVAL_STEP, n * EVAL_STEP, 2 * n + 1)
