"""The cross-dispersion fiber profile used by the extraction, from the trace's fiber model.

The model is the *pixel-integrated* profile ``P(d)``: the fraction of a fiber's electrons at one
column that fall in the pixel whose centre is ``d`` rows from the trace.  Because it is already
integrated over the pixel, ``sum_n P(n - t) = 1`` for any trace position ``t``: the amplitude
fitted with it is the *total* flux of the fiber at that column, wings included.

It is measured once, by the trace's joint fiber + background model of the master flat
(:mod:`remedy_dask.amp.profile.fibermodel`: one shared symmetric profile, wings included, and a
width term per fiber and column chunk), and tabulated here (:func:`profile_from_fiber_fit`) on a
uniform fine offset grid for a few column chunks and slit groups; in between it is interpolated
linearly in column and in fiber index (:class:`ProfileModel`, what the calibration file stores).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from numpy.polynomial import legendre

from remedy_dask.amp.profile.fibermodel import (
    FINE_STEP, PROFILE_RADIUS, FiberFit, profile_eval, width_derivative,
)
from remedy_dask.errors import CalibrationError
from remedy_dask.numeric.robust import mad_sigma

EVAL_STEP = FINE_STEP  # px, the stored grid: the tables hold the fiber model's nodes exactly


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


def uniform_grid(half_width: float) -> np.ndarray:
    n = int(round(half_width / EVAL_STEP))
    return np.linspace(-n * EVAL_STEP, n * EVAL_STEP, 2 * n + 1)



def profile_from_fiber_fit(table: np.ndarray, fibers: FiberFit, live: np.ndarray,
                           centres: np.ndarray, n_cols: int, *, n_chunks: int = 12,
                           n_groups: int = 5, degree: int = 2) -> ProfileModel:
    """The extraction's tables from the trace's joint fiber model of a flat (``fibermodel``):
    its shared symmetric profile ``table`` widened by the width term P + w Q, with the
    relative width w(column, fiber) = width / amplitude of the chunk fits ``fibers`` (at the
    chunk ``centres``) smoothed by a robust Legendre surface of ``degree`` in column and fiber
    index, tabulated at ``n_chunks`` column chunks x ``n_groups`` slit groups on +-PROFILE_RADIUS.
    """
    n_fib = live.size
    use = live[None, :] & (fibers.amp > 0.05 * np.median(fibers.amp[:, live]))
    if use.sum() < 4 * (degree + 1) ** 2:
        raise CalibrationError("profile: too few fiber amplitudes to measure the width variation")
    ratio = fibers.width[use] / fibers.amp[use]
    chunk_of, fiber_of = np.nonzero(use)
    surface = _robust_surface(centres[chunk_of] / (n_cols - 1), fiber_of / max(n_fib - 1, 1),
                              ratio, degree)
    edges = np.linspace(0, n_cols, n_chunks + 1).round().astype(int)
    chunk_centers = 0.5 * (edges[:-1] + edges[1:] - 1)
    group_edges = np.linspace(0, n_fib, n_groups + 1)
    group_centers = 0.5 * (group_edges[:-1] + group_edges[1:] - 1)
    cc, gc = np.meshgrid(chunk_centers / (n_cols - 1), group_centers / max(n_fib - 1, 1),
                         indexing="ij")
    width = surface(cc.ravel(), gc.ravel()).reshape(cc.shape)
    return tabulate_profile(table, width, chunk_centers, group_centers, PROFILE_RADIUS)


def _robust_surface(x: np.ndarray, y: np.ndarray, values: np.ndarray, degree: int,
                    clip: float = 4.0, n_iter: int = 4) -> Callable[[np.ndarray, np.ndarray],
                                                                     np.ndarray]:
    """Legendre surface of ``degree`` in x and y (both in [0, 1]) fitted to ``values`` with
    iterative ``clip`` x robust-sigma rejection; returns its evaluator."""
    def design(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        vx = legendre.legvander(2.0 * x - 1.0, degree)
        vy = legendre.legvander(2.0 * y - 1.0, degree)
        return (vx[:, :, None] * vy[:, None, :]).reshape(x.size, -1)

    a = design(x, y)
    keep = np.isfinite(values)
    coef = np.zeros(a.shape[1])
    for _ in range(n_iter):
        coef = np.linalg.lstsq(a[keep], values[keep], rcond=None)[0]
        res = values - a @ coef
        keep = np.isfinite(values) & (np.abs(res) <= clip * mad_sigma(res[keep], 0.0) + 1e-12)
    return lambda x_, y_: design(x_, y_) @ coef


def tabulate_profile(table: np.ndarray, width_ratio: np.ndarray, chunk_centers: np.ndarray,
                     group_centers: np.ndarray, half_width: float) -> ProfileModel:
    """The trace's fiber model as extraction tables: the shared symmetric profile ``table`` (on
    ``fibermodel.PROFILE_NODES``) widened by its width term, P + w Q, with ``width_ratio``
    (n_chunks, n_groups) the width amplitude over the fiber amplitude at each chunk and group;
    every table renormalised to unit integral on the uniform grid of +-``half_width`` px."""
    offsets = uniform_grid(half_width)
    p, q = profile_eval(table, offsets), profile_eval(width_derivative(table), offsets)
    tables = p + np.asarray(width_ratio, float)[..., None] * q
    norm = np.trapezoid(tables, offsets, axis=-1)
    if not np.all(norm > 0):
        raise CalibrationError("profile: a tabulated profile has no flux")
    model = ProfileModel(offsets, tables / norm[..., None], np.asarray(chunk_centers, float),
                         np.asarray(group_centers, float))
    model.validate()
    return model
