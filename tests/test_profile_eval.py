"""The compiled profile evaluation against the numpy formula, bit for bit."""

import numpy as np

from remedy_dask.amp.profile.fibermodel import (
    FINE_STEP, PROFILE_NODES, _FINE_GRID, initial_profile, profile_eval, width_derivative,
)


def numpy_reference(table, r):
    fine = np.r_[np.interp(_FINE_GRID, PROFILE_NODES[:table.size], table, right=0.0), 0.0]
    x = np.abs(r) * (1.0 / FINE_STEP)
    i = np.minimum(x.astype(np.intp), _FINE_GRID.size - 1)
    frac = x - i
    out = fine[i] * (1.0 - frac) + fine[i + 1] * frac
    return np.where(np.abs(r) <= PROFILE_NODES[table.size - 1], out, 0.0)


def test_profile_eval_equals_numpy():
    rng = np.random.default_rng(3)
    r = rng.uniform(-16.0, 16.0, (7, 11, 29))
    r[0, 0, :5] = [0.0, -0.0, 14.0, -14.0, 0.05 * 37]  # nodes, the edge
    for table in (initial_profile(), width_derivative(initial_profile()), initial_profile()[:60]):
        got = profile_eval(table, r)
        assert got.shape == r.shape
        assert np.array_equal(got, numpy_reference(table, r))
        assert np.array_equal(profile_eval(table, r[:, ::2]), numpy_reference(table, r[:, ::2]))
    # hand-worked: at a node the table value; beyond the last node 0
    table = initial_profile()
    assert profile_eval(table, np.array([0.0]))[0] == table[0]
    assert profile_eval(table, np.array([-14.5]))[0] == 0.0
