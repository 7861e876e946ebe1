"""Data cubes: flux conservation against the extraction, exact error propagation, DAR, WCS."""

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from remedy_dask.observation.cube import (
    FIBER_AREA,
    ImageGrid,
    aperture_correction,
    aperture_sum,
    aperture_weights,
    celestial_wcs,
    cube_header,
    cube_wcs,
    make_cube,
)
from remedy_dask.geometry import (
    DEF_WAVE,
    DITHER_PATTERN,
    FIBER_DIAMETER,
    dar_offsets,
    focal_to_sky,
    ifu_fiber_layout,
)
from remedy_dask.observation.psf import fiber_integrated_moffat, moffat_alpha
from remedy_dask.observation.sources import extract_source

R = FIBER_DIAMETER / 2.0
BAND = (DEF_WAVE > 4000) & (DEF_WAVE < 5400)


def brute_fraction(dx, dy, fwhm, beta=3.5, step=0.05):
    """Independent truth: Moffat summed over a square grid of points inside the fiber disc."""
    g = np.arange(-R + step / 2, R, step)
    gx, gy = np.meshgrid(g, g)
    inside = gx**2 + gy**2 <= R**2
    alpha = moffat_alpha(fwhm, beta)
    r2 = (np.asarray(dx)[..., None] + gx[inside]) ** 2 + (np.asarray(dy)[..., None] + gy[inside]) ** 2
    dens = (beta - 1) / (np.pi * alpha**2) * (1 + r2 / alpha**2) ** (-beta)
    return dens.sum(-1) * (np.pi * R**2) / inside.sum()


def star_model(fx, fy, x0, y0, fwhm, dar, spectrum, n_nodes=25):
    nodes = np.linspace(dar.min(), dar.max(), n_nodes)
    out = np.zeros((fx.size, dar.size))
    near = np.flatnonzero(np.hypot(fx - x0, fy - y0) < 9.0)
    at_nodes = np.array([brute_fraction(fx[near] - x0 - n, fy[near] - y0, fwhm) for n in nodes])
    for k, i in enumerate(near):
        out[i] = np.interp(dar, nodes, at_nodes[:, k])
    return out * spectrum[None, :]


@pytest.fixture(scope="module")
def fibers():
    x, y = ifu_fiber_layout()
    fx = np.concatenate([x + d[0] for d in DITHER_PATTERN])
    fy = np.concatenate([y + d[1] for d in DITHER_PATTERN])
    return fx, fy


@pytest.fixture(scope="module")
def star_cube(fibers):
    fx, fy = fibers
    rng = np.random.default_rng(11)
    dar = dar_offsets(DEF_WAVE)
    x0, y0, fwhm = 3.3, -2.1, 1.8
    truth = 2.0 * (DEF_WAVE / 4500.0) ** -2  # 1e-17 erg/s/cm^2/A, g ~ 18
    model = star_model(fx, fy, x0, y0, fwhm, dar, truth)
    sigma = np.sqrt(0.15**2 + 0.02 * model)
    flux = model + rng.normal(size=model.shape) * sigma
    cube = make_cube(flux, sigma, None, fx, fy, DEF_WAVE, dar, pixscale=0.5)
    return dict(fx=fx, fy=fy, dar=dar, x0=x0, y0=y0, fwhm=fwhm, truth=truth, flux=flux,
                sigma=sigma, cube=cube)


def test_aperture_flux_matches_extraction(star_cube):
    """3" radius aperture / its exact enclosed fraction = extracted spectrum within 2%."""
    s = star_cube
    psf = fiber_integrated_moffat(s["fwhm"])
    grid = s["cube"].grid
    ap = aperture_weights(grid, s["x0"], s["y0"], 3.0)
    assert ap.sum() * grid.pixscale**2 == pytest.approx(np.pi * 9.0, rel=2e-3)
    raw = aperture_sum(s["cube"], ap)
    corr = aperture_correction(None, s["fx"], s["fy"], s["x0"], s["y0"], psf, ap, grid, DEF_WAVE, s["dar"])
    ext = extract_source(s["flux"], s["sigma"], None, s["fx"], s["fy"], s["x0"], s["y0"], psf, s["dar"])
    ratio = raw[BAND] / corr[BAND] / ext.spectrum[BAND]
    assert np.median(ratio) == pytest.approx(1.0, abs=0.02)
    assert np.median(raw[BAND] / corr[BAND] / s["truth"][BAND]) == pytest.approx(1.0, abs=0.02)
    # the correction is real: a 3" aperture holds ~92% of a 1.8" Moffat seen through fibers
    assert 0.85 < np.median(corr[BAND]) < 0.96


def test_dar_is_removed(star_cube):
    s = star_cube
    c = s["cube"]
    ap = aperture_weights(c.grid, s["x0"], s["y0"], 3.0)
    yy, xx = np.meshgrid(c.grid.y, c.grid.x, indexing="ij")
    w = np.where(np.isfinite(c.cube), c.cube, 0.0) * ap
    cx = (w * xx).sum((1, 2)) / w.sum((1, 2))
    # the raw DAR moves the star by 0.97" over the band; in the cube it moves < 0.1"
    blue, red = np.median(cx[20:60]), np.median(cx[-60:-20])
    assert abs(red - blue) < 0.1


def test_uniform_surface_brightness_is_exact(fibers):
    fx, fy = fibers
    sb = 3.0  # per arcsec^2
    n_wave = 12
    flux = np.full((fx.size, n_wave), sb * FIBER_AREA)
    mask = np.zeros(flux.shape, bool)
    mask[::5, 3] = True
    flux[::5, 3] = np.nan
    c = make_cube(flux, np.ones_like(flux), mask, fx, fy, DEF_WAVE[:n_wave], pixscale=0.75)
    inner = np.abs(c.grid.x) < 18
    vals = c.cube[:, inner][:, :, inner]
    np.testing.assert_allclose(vals, sb * 0.75**2, rtol=1e-5)
    # beyond the fibers: no data, NaN
    assert np.isnan(c.cube[:, 0, 0]).all() and (c.weight[:, 0, 0] == 0).all()


def test_error_cube_is_propagated(fibers):
    """The error cube equals the scatter of cubes over noise realisations (not interpolated)."""
    fx, fy = fibers
    rng = np.random.default_rng(4)
    n_wave, n_real = 4, 200
    sigma = rng.uniform(0.5, 2.0, size=(fx.size, n_wave))
    grid = ImageGrid.centered(6.0, 0.5)
    cubes = np.array([
        make_cube(rng.normal(size=sigma.shape) * sigma, sigma, None, fx, fy, DEF_WAVE[:n_wave],
                  grid=grid, dtype=np.float64).cube
        for _ in range(n_real)
    ])
    err = make_cube(np.zeros_like(sigma), sigma, None, fx, fy, DEF_WAVE[:n_wave], grid=grid).error
    ratio = cubes.std(axis=0) / err
    assert np.median(ratio) == pytest.approx(1.0, abs=0.05)
    assert np.percentile(ratio, 2) > 0.75 and np.percentile(ratio, 98) < 1.25


def test_cube_wcs_reproduces_focal_plane_projection():
    grid = ImageGrid.centered(25.0, 0.5)
    ra0, dec0, rot, ifu_fx, ifu_fy = 150.1, 52.3, 237.4, -304.0, 198.0
    w = cube_wcs(ra0, dec0, rot, grid, ifu_fx, ifu_fy)
    assert list(w.wcs.ctype) == ["RA---TAN", "DEC--TAN", "AWAV"]
    assert w.has_celestial and w.wcs.spec == 2
    px = np.array([0, grid.nx - 1, 37, 0])
    py = np.array([0, grid.ny - 1, 80, grid.ny - 1])
    ra, dec, wav = w.pixel_to_world_values(px, py, np.array([0, 1035, 10, 500]))
    want_ra, want_dec = focal_to_sky(ifu_fx + grid.x[px], ifu_fy + grid.y[py], ra0, dec0, rot)
    sep = np.hypot((ra - want_ra) * np.cos(np.deg2rad(dec)), dec - want_dec) * 3600
    assert sep.max() < 1e-6
    np.testing.assert_allclose(wav * 1e10, DEF_WAVE[[0, 1035, 10, 500]], rtol=1e-12)
    hdr = cube_header(w)
    assert hdr["CUNIT3"] == "Angstrom" and hdr["CRVAL3"] == 3470.0 and hdr["CDELT3"] == 2.0
    # the header round-trips through FITS
    back = WCS(fits.Header.fromstring(hdr.tostring()))
    np.testing.assert_allclose(back.pixel_to_world_values(px, py, px)[0], w.pixel_to_world_values(px, py, px)[0])
    w2 = celestial_wcs(ra0, dec0, rot, grid, ifu_fx, ifu_fy)
    np.testing.assert_allclose(w2.pixel_to_world_values(px, py)[1], want_dec, atol=1e-10)


def test_shifted_weight_matrices_equal_a_kdtree_per_shift():
    """The matrices built from pairs found once equal, bit for bit, those of a KD-tree query
    at each shift (distances, the cutoff, column order)."""
    from scipy import sparse
    from scipy.spatial import cKDTree

    from remedy_dask.observation.cube import ImageGrid, shifted_weight_matrices

    rng = np.random.default_rng(8)
    fx, fy = rng.uniform(-12, 12, 300), rng.uniform(-12, 12, 300)
    px, py = ImageGrid.centered(13.0, 0.5).points()
    shifts = np.column_stack([np.linspace(-0.9, 0.4, 6), np.linspace(0.3, -0.2, 6)])
    kernel = lambda r: np.exp(-0.5 * (r / 0.7) ** 2)  # noqa: E731
    for d, got in zip(shifts, shifted_weight_matrices(px, py, fx, fy, shifts, kernel, 2.1)):
        pairs = cKDTree(np.column_stack([px, py])).sparse_distance_matrix(
            cKDTree(np.column_stack([fx - d[0], fy - d[1]])), 2.1, output_type="ndarray")
        want = sparse.csr_matrix((kernel(pairs["v"]), (pairs["i"], pairs["j"])),
                                 shape=(px.size, fx.size))
        assert got.nnz == want.nnz > 0
        np.testing.assert_array_equal(got.indptr, want.indptr)
        np.testing.assert_array_equal(got.indices, want.indices)
        np.testing.assert_array_equal(got.data, want.data)
