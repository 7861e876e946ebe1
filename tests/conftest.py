"""Shared fixtures: small simulated nights written once per test session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def sci_night(tmp_path_factory):
    """Science exposures only of one IFU (slot 047), written both untarred and tarred."""
    from remedy_dask.sim import simulate_night

    root = tmp_path_factory.mktemp("sci_night")
    simulate_night(root / "plain", ifuslots=(47,), seed=3, science_only=True)
    simulate_night(root / "tarred", ifuslots=(47,), seed=3, science_only=True, tar=True)
    return root
