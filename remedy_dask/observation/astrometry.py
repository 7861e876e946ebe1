"""Astrometry: collapsed broad-band images from fibers, star detection, catalogue matching and a
robust least-squares fit of the focal-plane shift and rotation.

The sky position of focal-plane arcsec ``(fx, fy)`` is :func:`remedy_dask.geometry.focal_to_sky`
with tangent point ``(ra0, dec0)`` and ``rotation``.  :func:`fit_astrometry` solves for those three
numbers in closed form (a 2-D Procrustes fit of a rotation + shift, iterated because moving the
tangent point changes the standard coordinates slightly) with sigma clipping, instead of Remedy's
0.01-deg rotation grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from astropy.stats import sigma_clipped_stats
from scipy import ndimage
from scipy.spatial import cKDTree

from remedy_dask.observation.cube import ImageGrid, make_cube
from remedy_dask.errors import CalibrationError
from remedy_dask.observation.fluxcal import panstarrs_g
from remedy_dask.geometry import DEF_WAVE, sky_to_focal, tan_deproject, tan_project
from remedy_dask.observation.psf import dar_xy, good_pixels
from remedy_dask.numeric.peaks import parabola_vertex
from remedy_dask.numeric.robust import mad_sigma

ARCSEC = np.pi / 180.0 / 3600.0
FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))


# --- collapsed image --------------------------------------------------------------------------


@dataclass
class CollapsedImage:
    """Band-averaged image: photon-weighted mean f_lambda per pixel (input units per pixel)."""

    image: np.ndarray  # (ny, nx), NaN without fiber coverage
    weight: np.ndarray  # (ny, nx) summed kernel weight
    grid: ImageGrid


def collapsed_image(
    flux: np.ndarray,
    mask: np.ndarray | None,
    fiber_x: np.ndarray,
    fiber_y: np.ndarray,
    wave: np.ndarray = DEF_WAVE,
    filter_curve: tuple[np.ndarray, np.ndarray] | None = None,
    dar: np.ndarray | None = None,
    grid: ImageGrid | None = None,
    n_chunks: int = 11,
    kernel_sigma: float = 0.7,
) -> CollapsedImage:
    """Image in a filter (default Pan-STARRS g) from fiber spectra, DAR removed.

    Each fiber's spectrum is averaged with photon-counting weights ``T(lambda) * lambda`` in
    ``n_chunks`` wavelength chunks across the filter; each chunk is resampled like a cube plane
    (:func:`remedy_dask.observation.cube.make_cube`, fiber positions shifted by the chunk's DAR), and the
    chunk images are averaged with the chunks' filter weights.  The result is the band-averaged
    flux density per pixel, so an aperture sum over a star is its band-averaged f_lambda.
    """
    flux = np.asarray(flux, dtype=float)
    wave = np.asarray(wave, dtype=float)
    fw, fr = panstarrs_g() if filter_curve is None else filter_curve
    t = np.interp(wave, fw, fr, left=0.0, right=0.0) * wave
    inband = np.flatnonzero(t > 0.01 * t.max())
    if inband.size < n_chunks:
        raise CalibrationError("collapsed_image: the filter does not overlap the wavelengths")
    good = good_pixels(flux, np.ones_like(flux), mask)
    dxy = dar_xy(dar, len(wave))
    edges = np.linspace(inband[0], inband[-1] + 1, n_chunks + 1).astype(int)
    values = np.full((flux.shape[0], n_chunks), np.nan)
    chunk_w = np.zeros(n_chunks)
    chunk_dar = np.zeros((2, n_chunks))
    for c in range(n_chunks):
        sl = slice(edges[c], edges[c + 1])
        tw = t[sl]
        gw = good[:, sl] * tw[None, :]
        wsum = gw.sum(axis=1)
        ok = wsum > 0.5 * tw.sum()
        values[ok, c] = (gw * np.where(good[:, sl], flux[:, sl], 0.0)).sum(axis=1)[ok] / wsum[ok]
        chunk_w[c] = tw.sum()
        chunk_dar[:, c] = (dxy[:, sl] * tw).sum(axis=1) / tw.sum()
    if not np.isfinite(values).any():
        raise CalibrationError("collapsed_image: no fiber has unmasked data in the filter")
    res = make_cube(
        values, np.ones_like(values), ~np.isfinite(values), fiber_x, fiber_y,
        wave=np.arange(n_chunks, dtype=float), dar=chunk_dar, grid=grid,
        kernel_sigma=kernel_sigma, max_dar_step=0.0, dtype=np.float64,
    )
    planes = res.cube
    ok = np.isfinite(planes)
    wsum = (ok * chunk_w[:, None, None]).sum(axis=0)
    image = np.where(
        wsum > 0.5 * chunk_w.sum(),
        np.nansum(planes * chunk_w[:, None, None], axis=0) / np.where(wsum > 0, wsum, 1.0),
        np.nan,
    )
    return CollapsedImage(image, res.weight.mean(axis=0), res.grid)


# --- star detection ---------------------------------------------------------------------------


@dataclass
class StarList:
    """Detected stars: positions (arcsec, grid frame), smoothed peak and flux in image units."""

    x: np.ndarray
    y: np.ndarray
    peak: np.ndarray
    flux: np.ndarray


def detect_stars(
    image: CollapsedImage, fwhm: float = 2.5, nsigma: float = 5.0, max_stars: int = 50
) -> StarList:
    """Find point sources in a collapsed image.

    The image (median removed) is smoothed with a Gaussian of the given ``fwhm`` (arcsec: the
    image resolution, seeing + fiber + kernel) by normalised convolution (NaN pixels carry no
    weight).  Because neighbouring pixels of a fiber image are correlated, the noise is measured
    on the smoothed image itself (sigma-clipped std); local maxima above ``nsigma`` times that
    noise, away from the data edge, are stars.  Positions are the vertices of parabolas through
    the smoothed peak (sub-pixel), ``flux`` the image sum within 1 FWHM.  No stars is a valid
    answer; an image without data raises :class:`CalibrationError`.
    """
    data = image.image
    finite = np.isfinite(data)
    if finite.sum() < 25:
        raise CalibrationError("detect_stars: the image has no data")
    _, median, _ = sigma_clipped_stats(data[finite], sigma=3.0)
    sig_px = fwhm * FWHM_TO_SIGMA / image.grid.pixscale
    filled = np.where(finite, data - median, 0.0)
    num = ndimage.gaussian_filter(filled, sig_px, mode="constant")
    den = ndimage.gaussian_filter(finite.astype(float), sig_px, mode="constant")
    inner = den > 0.9 * den.max()
    if inner.sum() < 25:
        raise CalibrationError("detect_stars: the image has too few well-covered pixels")
    smooth = np.where(inner, num / np.where(inner, den, 1.0), 0.0)
    _, _, noise = sigma_clipped_stats(smooth[inner], sigma=3.0)
    if not noise > 0:
        raise CalibrationError("detect_stars: the image has zero noise")
    size = max(int(round(fwhm / image.grid.pixscale)), 3)
    peak = (smooth == ndimage.maximum_filter(smooth, size=size)) & inner
    peak &= smooth > nsigma * noise
    iy, ix = np.nonzero(peak)
    order = np.argsort(-smooth[iy, ix])[:max_stars]
    iy, ix = iy[order], ix[order]
    ny, nx = smooth.shape
    px = np.array([
        i + (parabola_vertex(*smooth[j, i - 1 : i + 2]) if 0 < i < nx - 1 else 0.0) for i, j in zip(ix, iy)
    ], dtype=float)
    py = np.array([
        j + (parabola_vertex(*smooth[j - 1 : j + 2, i]) if 0 < j < ny - 1 else 0.0) for i, j in zip(ix, iy)
    ], dtype=float)
    x, y = image.grid.to_arcsec(px, py)
    yy, xx = np.mgrid[:ny, :nx]
    rad = fwhm / image.grid.pixscale
    flux = np.array([np.sum(filled[np.hypot(xx - a, yy - b) < rad]) for a, b in zip(px, py)])
    return StarList(np.atleast_1d(x).astype(float), np.atleast_1d(y).astype(float),
                    smooth[iy, ix], flux)


# --- matching ---------------------------------------------------------------------------------


@dataclass
class CatalogMatch:
    """Pairs detection ``det_index[k]`` <-> catalogue ``cat_index[k]``."""

    det_index: np.ndarray
    cat_index: np.ndarray
    offset: tuple[float, float]  # common (dfx, dfy) arcsec: detection - catalogue prediction
    distance: np.ndarray  # after removing the common offset, arcsec


def match_catalog(
    det_fx: np.ndarray,
    det_fy: np.ndarray,
    cat_ra: np.ndarray,
    cat_dec: np.ndarray,
    ra0: float,
    dec0: float,
    rotation: float,
    search_radius: float = 8.0,
    match_radius: float = 1.2,
) -> CatalogMatch:
    """Match detections (focal-plane arcsec) to catalogue stars under the current solution.

    The common offset of the current solution (up to ``search_radius``) is the densest point of
    all detection-catalogue offset vectors (a robust 2-D mode: the offset with the most others
    within ``match_radius``); then each detection takes its nearest catalogue star within
    ``match_radius`` of the offset-corrected position, one detection per catalogue star.
    """
    det_fx = np.asarray(det_fx, dtype=float)
    det_fy = np.asarray(det_fy, dtype=float)
    cfx, cfy = sky_to_focal(cat_ra, cat_dec, ra0, dec0, rotation)
    empty = CatalogMatch(np.zeros(0, int), np.zeros(0, int), (0.0, 0.0), np.zeros(0))
    if det_fx.size == 0 or cfx.size == 0:
        return empty
    tc = cKDTree(np.column_stack([cfx, cfy]))
    td = cKDTree(np.column_stack([det_fx, det_fy]))
    pairs = td.sparse_distance_matrix(tc, search_radius, output_type="ndarray")
    if pairs.size == 0:
        return empty
    off = np.column_stack(
        [det_fx[pairs["i"]] - cfx[pairs["j"]], det_fy[pairs["i"]] - cfy[pairs["j"]]]
    )
    counts = np.array([len(v) for v in cKDTree(off).query_ball_point(off, match_radius)])
    best = off[counts == counts.max()]
    centre = np.median(best, axis=0)
    near = np.hypot(*(off - centre).T) < match_radius
    centre = np.median(off[near], axis=0)
    dist, j = tc.query(np.column_stack([det_fx - centre[0], det_fy - centre[1]]))
    ok = np.flatnonzero(dist < match_radius)
    # one detection per catalogue star: keep the closest
    order = ok[np.argsort(dist[ok])]
    _, first = np.unique(j[order], return_index=True)
    keep = np.sort(order[first])
    return CatalogMatch(keep, j[keep], (float(centre[0]), float(centre[1])), dist[keep])


# --- fit --------------------------------------------------------------------------------------


@dataclass
class AstrometryResult:
    """Fitted sky position of the focal-plane origin and rotation (``focal_to_sky`` convention)."""

    ra0: float
    dec0: float
    rotation: float  # deg
    n_stars: int  # stars kept after clipping
    rms: float  # arcsec, 2-D rms of the kept residuals
    residuals: np.ndarray  # (n, 2) arcsec, (east, north), catalogue - model, for every input star
    used: np.ndarray  # (n,) bool
    ra0_err: float  # arcsec (on the sky, east)
    dec0_err: float  # arcsec
    rotation_err: float  # deg


def _procrustes(p: np.ndarray, q: np.ndarray, w: np.ndarray) -> tuple[float, np.ndarray]:
    """Angle theta and shift t minimising sum w |R(theta) p + t - q|^2 (R counter-clockwise)."""
    pm = (w[:, None] * p).sum(0) / w.sum()
    qm = (w[:, None] * q).sum(0) / w.sum()
    pc, qc = p - pm, q - qm
    cross = np.sum(w * (pc[:, 0] * qc[:, 1] - pc[:, 1] * qc[:, 0]))
    dot = np.sum(w * (pc[:, 0] * qc[:, 0] + pc[:, 1] * qc[:, 1]))
    theta = np.arctan2(cross, dot)
    c, s = np.cos(theta), np.sin(theta)
    t = qm - np.array([c * pm[0] - s * pm[1], s * pm[0] + c * pm[1]])
    return float(theta), t


def _model_residuals(fx, fy, ra, dec, ra0, dec0, rotation) -> np.ndarray:
    """(catalogue - model) in (east, north) arcsec, in the tangent plane at (ra0, dec0)."""
    xi, eta = tan_project(ra, dec, ra0, dec0)
    r = np.deg2rad(rotation)
    c, s = np.cos(r), np.sin(r)
    mxi = -(c * fx + s * fy)
    meta = -s * fx + c * fy
    return np.column_stack([xi / ARCSEC - mxi, eta / ARCSEC - meta])


def fit_astrometry(
    fx: np.ndarray,
    fy: np.ndarray,
    ra: np.ndarray,
    dec: np.ndarray,
    ra0: float,
    dec0: float,
    rotation0: float,
    weights: np.ndarray | None = None,
    clip: float = 4.0,
    floor: float = 0.05,
    max_iter: int = 20,
    min_stars: int = 3,
) -> AstrometryResult:
    """Robust fit of the tangent point and rotation that map focal-plane ``(fx, fy)`` to the sky.

    Each pass projects the catalogue about the current tangent point, solves the rotation and
    shift in closed form (weighted Procrustes; the mapping has a fixed reflection, east = -x at
    rotation 0), moves the tangent point to the shifted origin, and rejects stars whose residual
    exceeds ``clip`` x the robust per-axis scatter (at least ``clip * floor``).  Raises
    :class:`CalibrationError` with fewer than ``min_stars`` usable stars.
    """
    fx = np.asarray(fx, dtype=float)
    fy = np.asarray(fy, dtype=float)
    ra = np.asarray(ra, dtype=float)
    dec = np.asarray(dec, dtype=float)
    w_in = np.ones(fx.size) if weights is None else np.asarray(weights, dtype=float)
    used = np.isfinite(fx) & np.isfinite(fy) & np.isfinite(ra) & np.isfinite(dec) & (w_in > 0)
    if used.sum() < min_stars:
        raise CalibrationError(f"fit_astrometry: {used.sum()} usable stars, need {min_stars}")
    p = np.column_stack([fx, fy])
    for _ in range(max_iter):
        for _inner in range(4):
            xi, eta = tan_project(ra, dec, ra0, dec0)
            # u = -xi, v = eta is a pure rotation by -rotation of (fx, fy) plus a shift
            q = np.column_stack([-xi / ARCSEC, eta / ARCSEC])
            theta, t = _procrustes(p[used], q[used], w_in[used])
            rotation0 = (-np.rad2deg(theta)) % 360.0
            ra0, dec0 = tan_deproject(-t[0] * ARCSEC, t[1] * ARCSEC, ra0, dec0)
            ra0, dec0 = float(ra0), float(dec0)
            if np.hypot(*t) < 1e-7:
                break
        res = _model_residuals(fx, fy, ra, dec, ra0, dec0, rotation0)
        scale = mad_sigma(res[used], 0.0)
        limit = clip * max(scale, floor)
        new_used = used & (np.hypot(res[:, 0], res[:, 1]) < limit * np.sqrt(2.0))
        if new_used.sum() < min_stars:
            raise CalibrationError("fit_astrometry: too few stars survive outlier rejection")
        if np.array_equal(new_used, used):
            break
        used = new_used
    res = _model_residuals(fx, fy, ra, dec, ra0, dec0, rotation0)
    n = int(used.sum())
    rms = float(np.sqrt(np.mean(np.sum(res[used] ** 2, axis=1))))
    sigma_axis = rms / np.sqrt(2.0)
    spread = np.sum((p[used] - p[used].mean(0)) ** 2)
    return AstrometryResult(
        ra0=ra0, dec0=dec0, rotation=float(rotation0), n_stars=n, rms=rms, residuals=res,
        used=used, ra0_err=sigma_axis / np.sqrt(n), dec0_err=sigma_axis / np.sqrt(n),
        rotation_err=float(np.rad2deg(sigma_axis / np.sqrt(max(spread, 1e-12)))),
    )


def dar_on_sky(dar: np.ndarray, rotation: float) -> tuple[np.ndarray, np.ndarray]:
    """DAR offsets (arcsec east, north): the focal-plane x offsets ``dar`` rotated to the sky
    by the field rotation (degrees)."""
    r = np.deg2rad(rotation)
    return -np.cos(r) * dar, -np.sin(r) * dar


def catalog_position_error(residuals: np.ndarray, fit_error: np.ndarray, floor: float) -> float:
    """Per-axis catalogue position error implied by astrometric residuals (n, 2) arcsec of stars
    whose own position errors are ``fit_error`` (n,): ``sqrt(mean(res^2) - mean(fit_error^2))``
    over both axes, at least ``floor``."""
    res = np.asarray(residuals, dtype=float)
    if res.size == 0:
        return float(floor)
    excess = np.mean(res**2) - np.mean(np.asarray(fit_error, dtype=float) ** 2)
    return float(max(np.sqrt(max(excess, 0.0)), floor))
