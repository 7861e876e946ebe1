"""The virtual VIRUS instrument: simulated raw nights with complete truth (docs/simulator.md)."""

from remedy_dask.sim.config import SimConfig, standard_ifuslots
from remedy_dask.sim.inmemory import find_frame, render_amp_electrons
from remedy_dask.sim.night import SimResult, simulate_amp, simulate_night
from remedy_dask.sim.render import RenderedFrame, orient_raw, render_amp_frame

__all__ = [
    "SimConfig", "SimResult", "RenderedFrame", "simulate_night", "simulate_amp",
    "render_amp_frame", "render_amp_electrons", "find_frame", "orient_raw", "standard_ifuslots",
]
