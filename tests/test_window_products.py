"""The fiber-window products of the fiber model against the sparse-matrix product they
replace, bit for bit (windows clipped at the chip edges included)."""

import numpy as np
from scipy import sparse

from remedy_dask.amp.profile.fibermodel import (
    FiberWindows, _window_products, bspline_basis, initial_profile, profile_eval,
)


def test_window_products_equal_the_sparse_product():
    rng = np.random.default_rng(7)
    n_chunks, n_rows, n_fib = 5, 120, 12
    pos = np.sort(rng.uniform(2.0, n_rows - 3.0, (n_chunks, n_fib)), axis=1)
    pos[:, 0], pos[:, -1] = 1.2, n_rows - 1.6  # windows beyond the chip
    profiles = rng.normal(100.0, 10.0, (n_chunks, n_rows))
    good = rng.random((n_chunks, n_rows)) > 0.05
    data = np.where(good, profiles, 0.0)
    win = FiberWindows.around(pos, good)
    table = initial_profile()
    v = np.stack([profile_eval(table, win.r), -0.3 * profile_eval(table, win.r)], -1)
    v *= win.valid[..., None]
    by = bspline_basis(np.arange(n_rows), n_rows, 64.0)
    design_t = sparse.csr_matrix(
        (np.moveaxis(v, -1, 2).ravel(), np.repeat(win.flat_rows(n_rows), 2, axis=1).ravel(),
         np.arange(v.size // v.shape[2] + 1) * v.shape[2]),
        shape=(v.size // v.shape[2], n_chunks * n_rows))
    want = np.column_stack([design_t @ np.tile(by, (n_chunks, 1)), design_t @ data.ravel()])
    got = np.empty(want.shape)
    _window_products(v, win.rows, by, data, got)
    assert np.array_equal(got, want)
    assert np.abs(got).max() > 1.0  # not trivially zero


def test_banded_gram_equals_the_dense_normal_matrix():
    """The band of the fiber normal matrix against X^T X of the dense design (to rounding), and
    its gathered neighbour windows against the padded sliding windows they replace (exactly)."""
    from remedy_dask.amp.profile.fibermodel import _banded_gram, _shifted_windows

    rng = np.random.default_rng(8)
    n_chunks, n_rows, n_fib = 3, 90, 9
    pos = np.sort(rng.uniform(3.0, n_rows - 4.0, (n_chunks, n_fib)), axis=1)
    good = np.ones((n_chunks, n_rows), bool)
    win = FiberWindows.around(pos, good)
    table = initial_profile()
    v = np.stack([profile_eval(table, win.r), rng.normal(size=win.r.shape)], -1)
    v *= win.valid[..., None]
    n_win, n_sh = v.shape[2], v.shape[3]
    vt = np.swapaxes(v, -1, -2)
    padded = np.zeros((n_chunks, n_fib, n_sh, 3 * n_win))
    padded[..., n_win:2 * n_win] = vt
    shifted = np.lib.stride_tricks.sliding_window_view(padded, n_win, axis=-1)
    for d in range(3):
        offset = n_win - np.clip(win.base[:, d:] - win.base[:, :n_fib - d], -n_win, n_win)
        want = shifted[np.arange(n_chunks)[:, None], np.arange(d, n_fib), :, offset]
        got = np.empty(want.shape)
        _shifted_windows(v, win.base.astype(np.int64), d, got)
        assert np.array_equal(got, want)
    ab = _banded_gram(v, win.base)
    for j in range(n_chunks):  # dense design of chunk j: (n_rows, n_fib * n_sh)
        x = np.zeros((n_rows, n_fib * n_sh))
        for k in range(n_fib):
            for s in range(n_sh):
                np.add.at(x[:, k * n_sh + s], win.rows[j, k][win.valid[j, k]],
                          v[j, k, win.valid[j, k], s])
        dense = x.T @ x
        m = n_fib * n_sh
        band = ab[:, j * m:(j + 1) * m]
        for row in range(band.shape[0]):
            np.testing.assert_allclose(band[row, :m - row], np.diag(dense, -row), rtol=1e-12,
                                       atol=1e-12)
