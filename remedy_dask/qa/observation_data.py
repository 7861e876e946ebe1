"""What the observation QA page reads from a product: the per-fiber columns of every fiber and,
for a sample of chunks balanced over the exposures, the (n, 1036) spectra, errors and sky.

The (N, 1036) fiber arrays are read chunk by chunk: ``spectrum`` for every fiber (collapsed to
a g-band mean), ``error`` and ``sky`` only for the sampled chunks (all of them for small
products).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import h5py
import numpy as np

G_BAND = (4600.0, 5400.0)  # A: collapsed "g-band-ish" fiber value
MAX_SAMPLE_FIBERS = 16384


@dataclass
class FiberSummary:
    """Per-fiber columns of all N fibers plus the (n, 1036) arrays of a sample of rows."""

    ifuslot: np.ndarray
    exposure: np.ndarray
    fx: np.ndarray
    fy: np.ndarray
    ifu_x: np.ndarray
    ifu_y: np.ndarray
    gband: np.ndarray  # mean of spectrum over G_BAND
    bad_fraction: np.ndarray  # fraction of NaN (masked) pixels
    sample: np.ndarray  # row indices of the sampled fibers
    spectrum: np.ndarray
    error: np.ndarray
    sky: np.ndarray


def columns(h5: h5py.File, name: str) -> dict[str, np.ndarray]:
    """The 1-D columns of a table group (empty dict if the group is missing)."""
    if name not in h5:
        return {}
    return {k: v[...] for k, v in h5[name].items() if isinstance(v, h5py.Dataset) and v.ndim == 1}


def _sample_chunks(starts: np.ndarray, exposure: np.ndarray, step: int, max_rows: int) -> set[int]:
    """Chunk starts to read in full: all if small, else evenly spread within each exposure."""
    if len(starts) * step <= max_rows:
        return set(starts.tolist())
    dominant = exposure[starts]
    exps = np.unique(dominant)
    per_exp = max(1, max_rows // step // len(exps))
    chosen: set[int] = set()
    for e in exps:
        group = starts[dominant == e]
        pick = np.linspace(0, len(group) - 1, min(per_exp, len(group))).round().astype(int)
        chosen.update(group[pick].tolist())
    return chosen


def read_fibers(fibers: h5py.Group, wave: np.ndarray, max_sample: int = MAX_SAMPLE_FIBERS
                ) -> FiberSummary:
    """Stream ``fibers/spectrum`` chunk by chunk; keep error and sky of sampled chunks only."""
    spec = fibers["spectrum"] if "spectrum" in fibers else np.zeros((0, len(wave)), np.float32)
    n = spec.shape[0]
    col = {k: fibers[k][...] if k in fibers else np.zeros(n) for k in
           ("ifuslot", "exposure", "fx", "fy", "ifu_x", "ifu_y")}
    step = getattr(spec, "chunks", None)
    step = step[0] if step else 448
    starts = np.arange(0, n, step)
    chosen = _sample_chunks(starts, col["exposure"], step, max_sample)
    band = np.flatnonzero((wave >= G_BAND[0]) & (wave <= G_BAND[1]))
    gband = np.full(n, np.nan)
    bad = np.ones(n)
    rows, sp, er, sk = [], [], [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for a in starts.tolist():
            b = min(a + step, n)
            block = spec[a:b]
            nan = np.isnan(block)
            gband[a:b] = np.nanmean(block[:, band[0]:band[-1] + 1], axis=1)
            bad[a:b] = nan.mean(axis=1)
            if a in chosen:
                rows.append(np.arange(a, b))
                sp.append(block)
                nans = np.full(block.shape, np.nan, np.float32)
                er.append(fibers["error"][a:b] if "error" in fibers else nans)
                sk.append(fibers["sky"][a:b] if "sky" in fibers else nans)
    empty = np.zeros((0, len(wave)), np.float32)
    stack = lambda parts: np.concatenate(parts) if parts else empty  # noqa: E731
    return FiberSummary(col["ifuslot"].astype(int), col["exposure"].astype(int), col["fx"],
                        col["fy"], col["ifu_x"], col["ifu_y"], gband, bad,
                        np.concatenate(rows) if rows else np.zeros(0, int),
                        stack(sp), stack(er), stack(sk))
