"""Kernels of the multi-observation commands on literal inputs (remedy_dask/multiobs)."""

from __future__ import annotations

import numpy as np
import pytest

from remedy_dask import geometry
from remedy_dask.multiobs.merge import group_entries, merge_entries
from remedy_dask.multiobs.positions import (
    combine_observations,
    extract_positions,
    near_edge,
    rows_near,
    sky_offsets,
)

DEC0 = 51.0
COSD = np.cos(np.deg2rad(DEC0))


def test_merge_links_within_radius_and_wavelength():
    # four entries: 0 and 1 are 0.5" apart (obs 0 and 1), 2 is 3.6" east of 0 (obs 1),
    # 3 is at the position of 0 but in another observation and 20 A away in wavelength
    ra = np.array([150.0, 150.0, 150.0 + 3.6 / 3600 / COSD, 150.0])
    dec = np.array([DEC0, DEC0 + 0.5 / 3600, DEC0, DEC0])
    flux = np.array([10.0, 14.0, 5.0, 7.0])
    err = np.array([1.0, 2.0, 1.0, 1.0])
    obs = np.array([0, 1, 1, 2])
    wave = np.array([4500.0, 4501.0, 4500.0, 4520.0])
    assert list(group_entries(ra, dec, 1.0)) == [0, 0, 1, 0]
    out = merge_entries(ra, dec, flux, err, obs, 1.0, wave, wave_tol=4.0)
    assert list(out["label"]) == [0, 0, 1, 2]
    # inverse-variance mean of 10 +- 1 and 14 +- 2: (10 + 14/4) / 1.25 = 10.8, error 1/sqrt(1.25)
    assert out["flux"][0] == pytest.approx(10.8)
    assert out["flux_err"][0] == pytest.approx(1 / np.sqrt(1.25))
    assert list(out["n_observations"]) == [2, 1, 1]
    assert list(out["n_entries"]) == [2, 1, 1]
    # weights 1 and 1/4 along dec: merged dec 0.1" north of entry 0
    assert (out["dec"][0] - DEC0) * 3600 == pytest.approx(0.1, abs=1e-6)
    assert out["max_sep"][0] == pytest.approx(0.4, abs=1e-4)
    assert out["wave"][0] == pytest.approx(4500.2)


def test_merge_same_observation_twice_counts_two():
    ra = np.array([10.0, 10.01, 10.02])
    dec = np.array([0.0, 0.0, 0.0])
    out = merge_entries(np.r_[ra, ra], np.r_[dec, dec], np.ones(6), np.ones(6),
                        np.r_[0, 0, 0, 1, 1, 1], 1.0)
    assert list(out["n_observations"]) == [2, 2, 2]
    assert out["flux_err"] == pytest.approx(np.full(3, 1 / np.sqrt(2)))


def test_merge_chains_friends_of_friends_and_handles_ra_wrap():
    ra = np.array([359.99995, 0.00005, 0.00015])  # 0.36" steps across RA = 0
    out = merge_entries(ra, np.zeros(3), np.ones(3), np.ones(3), np.arange(3), 0.5)
    assert list(out["label"]) == [0, 0, 0]
    assert out["ra"][0] == pytest.approx(0.00005, abs=1e-9)  # the mean across the wrap


def test_sky_offsets_east_north():
    xi, eta = sky_offsets(np.array([150.0 + 2 / 3600 / COSD, 150.0]),
                          np.array([DEC0, DEC0 + 3 / 3600]), 150.0, DEC0)
    assert xi == pytest.approx([2.0, 0.0], abs=1e-6)
    assert eta == pytest.approx([0.0, 3.0], abs=1e-4)  # TAN curvature: 1e-5"


def _fibers(ra0, dec0, spacing=1.27, half=12.0):
    """A dense hexagonal fiber pattern about (ra0, dec0): ra, dec of every fiber."""
    rows = []
    for j, y in enumerate(np.arange(-half, half + 1e-9, spacing * np.sqrt(3) / 2)):
        for x in np.arange(-half, half + 1e-9, spacing) + (spacing / 2 if j % 2 else 0.0):
            rows.append((x, y))
    x, y = np.array(rows).T
    return geometry.focal_to_sky(-x, y, ra0, dec0, 0.0)  # rotation 0: xi = -fx, eta = fy


def test_extract_positions_recovers_a_source_with_dar_and_edge_flag():
    from remedy_dask.observation.psf import fiber_integrated_moffat
    from remedy_dask.observation.sources import source_weights

    ra0, dec0 = 150.0, DEC0
    fra, fdec = _fibers(ra0, dec0)
    n, n_wave = len(fra), 50
    dar_ra, dar_dec = np.linspace(-0.6, 0.3, n_wave), np.linspace(0.2, -0.1, n_wave)
    true = np.linspace(5.0, 8.0, n_wave)
    src_ra, src_dec = ra0 + 1.0 / 3600 / COSD, dec0 - 0.5 / 3600
    x, y = sky_offsets(fra, fdec, src_ra, src_dec)
    w = source_weights(x, y, 0.0, 0.0, fiber_integrated_moffat(1.6), np.vstack([dar_ra, dar_dec]),
                       n_wave)
    # the fibers tile the plane with ~1 fiber per fiber area x 1.5: weights sum to pi R^2 / a
    flux = w * true
    err = np.full_like(flux, 0.01)
    mask = np.zeros_like(flux, bool)
    exp = np.zeros(n, int)
    pos_ra = np.array([src_ra, ra0 + 11.0 / 3600 / COSD])  # the source; a point near the edge
    pos_dec = np.array([src_dec, dec0])
    rows = rows_near(fra, fdec, pos_ra, pos_dec, 6.0)
    res = extract_positions(flux, err, mask, fra, fdec, exp, rows, np.array([1.6]), dar_ra,
                            dar_dec, pos_ra, pos_dec)
    assert res.spectrum[0] == pytest.approx(true, rel=1e-10)
    assert list(res.edge) == [False, True]
    assert list(res.n_exposures) == [1, 1]
    # combining two identical observations halves the variance
    both = combine_observations([res, res])
    assert both.spectrum[0] == pytest.approx(true, rel=1e-10)
    assert both.error[0] == pytest.approx(res.error[0] / np.sqrt(2))
    assert list(both.n_exposures) == [2, 2]


def test_near_edge_inside_and_outside():
    g = np.arange(-10, 10.01, 1.0)
    xx, yy = np.meshgrid(g, g)
    assert not near_edge(xx.ravel(), yy.ravel(), 3.0)
    assert near_edge(xx.ravel() + 9.0, yy.ravel(), 3.0)  # edge 1" away: circle 2" beyond it


def test_mosaic_of_tiles_equals_one_cube_of_all_fibers():
    """Splitting fibers into tiles (IFUs, observations) changes nothing: each pixel is the same
    linear combination of fiber values as make_cube over all fibers at once."""
    from remedy_dask.observation.cube import ImageGrid, make_cube
    from remedy_dask.multiobs.mosaic import MosaicFibers, mosaic_chunk

    rng = np.random.default_rng(3)
    x, y = rng.uniform(-8, 8, 400), rng.uniform(-8, 8, 400)
    flux = rng.normal(1.0, 0.3, (400, 5))
    err = rng.uniform(0.1, 0.2, (400, 5))
    mask = rng.uniform(size=(400, 5)) < 0.05
    dar = np.zeros(5), np.linspace(-0.3, 0.3, 5)
    grid = ImageGrid(-10.0, -10.0, 41, 41, 0.5)
    left = x < 0
    tiles = [MosaicFibers(flux[k], err[k], mask[k], x[k], y[k], *dar) for k in (left, ~left)]
    out = mosaic_chunk(tiles, grid)
    ref = make_cube(flux, err, mask, x, y, np.arange(5.0), np.vstack(dar), grid,
                    dtype=np.float64)
    assert np.array_equal(np.isnan(out[0]), np.isnan(ref.cube))
    ok = np.isfinite(ref.cube)
    assert np.allclose(out[0][ok], ref.cube[ok], rtol=1e-5)
    assert np.allclose(out[1][ok], ref.error[ok], rtol=1e-5)
    assert np.allclose(out[2], ref.weight, rtol=1e-5, atol=1e-6)
