"""In-memory rendering of single amp frames (no files): for tests and reader round trips."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from remedy_dask.sim import instrument
from remedy_dask.sim.amp import AmpModel, make_amp_model
from remedy_dask.sim.config import SimConfig
from remedy_dask.sim.render import AmpCache, RenderedFrame, render_amp_frame
from remedy_dask.sim.scene import Frame, NightPlan, make_plan


def find_frame(plan: NightPlan, kind: str, exp: int = 1, lamp: str | None = None) -> Frame:
    """The frame of ``kind`` (and arc ``lamp``) with exposure number ``exp``."""
    for frame in plan.frames:
        if frame.kind == kind and frame.exp == exp and (lamp is None or frame.lamp == lamp):
            return frame
    raise KeyError(f"no {kind} frame exp{exp:02d} (lamp {lamp}) in this plan")


def render_amp_electrons(
    ifuslot: int = 47, amp: str = "LL", kind: str = "flt", exp: int = 1,
    lamp: str | None = None, seed: int = 1, date: str = "20190822",
    ifuslots: Sequence[int] | None = None, config: SimConfig | None = None,
    plan: NightPlan | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, object], AmpModel, RenderedFrame]:
    """Render one amp frame exactly as ``simulate_night`` writes it (same seed -> same frame).

    Returns (expected electrons (1032, 1032) oriented float64 before noise/quantization, raw
    uint16 (1032, 1064) in the file layout, header {keyword: value}, the amp's true model, and
    the full :class:`RenderedFrame`).  Pass ``plan`` to reuse a night plan between calls.
    """
    if plan is None:
        slots = tuple(ifuslots) if ifuslots is not None else (ifuslot,)
        plan = make_plan(date, slots, seed, 7, config or SimConfig(), instrument.FRAME_KINDS)
    model = make_amp_model(plan, ifuslot, amp)
    frame = find_frame(plan, kind, exp, lamp)
    rendered = render_amp_frame(plan, model, frame, AmpCache())
    header = {k: v for k, (v, _) in rendered.header.items()}
    return rendered.electrons, rendered.raw, header, model, rendered
