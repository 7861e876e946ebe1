"""Reading raw frames into electrons, shared by the calibration and science graphs.

A frame that cannot be read is never replaced by zeros: it is dropped with a logged reason that
ends up in the products (``flags``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from remedy_dask.amp.ccd import basic_reduce
from remedy_dask.errors import RawDataError
from remedy_dask.io.header import AmpHeader
from remedy_dask.io.rawframe import FrameRef, read_raw_amp

log = logging.getLogger(__name__)


@dataclass
class ReducedFrame:
    """One amp frame in electrons: oriented, trimmed, overscan-subtracted, gain-multiplied."""

    ref: FrameRef
    header: AmpHeader
    image: np.ndarray
    variance: np.ndarray
    overscan_adu: float
    notes: list[str] = field(default_factory=list)


def reduce_frame(ref: FrameRef, read_noise: float | None = None) -> ReducedFrame:
    """Read one frame and apply the basic CCD reduction (overscan, trim, orient, gain).

    ``read_noise`` (e-) overrides the header value, as the calibration's measured read noise
    does in the science reduction.
    """
    raw = read_raw_amp(ref)
    if raw.binning != (1, 1):
        raise RawDataError(ref.display_path, f"frame binned {raw.binning[0]}x{raw.binning[1]} "
                           f"(shape {raw.data.shape}): the reduction needs unbinned 1032 x 1064 "
                           "frames")
    h = raw.header
    rn = read_noise if read_noise is not None and np.isfinite(read_noise) and read_noise > 0 else h.rdnoise
    image, variance, level = basic_reduce(raw.data, h.amp, h.ampname, h.gain, rn)
    return ReducedFrame(ref, h, image, variance, level, list(h.substitutions))


def reduce_frames(
    refs: list[FrameRef], read_noise: float | None = None
) -> tuple[list[ReducedFrame], list[str]]:
    """Reduce every frame that can be read; returns the frames and one note per dropped frame."""
    frames, dropped = [], []
    for ref in refs:
        try:
            frames.append(reduce_frame(ref, read_noise))
        except RawDataError as exc:
            log.warning("dropping frame: %s", exc)
            dropped.append(f"dropped {ref.name}: {exc.problem}")
    return frames, dropped
