"""Spectra of the simulated sources, the throughput curve, the fiber-integrated PSF and the
pixel integration of spectra (the simulator's own physics; no reduction kernel is used).

All continua live on the fine grid :data:`FINE_WAVE` (0.25 A) as photon densities; the line
spread function (Gaussian, FWHM ``lsf_fwhm``) is applied there, and pixel values are differences
of the cumulative integral at the pixel edges.  Lines are integrated analytically (Gaussian CDF
differences between pixel edges).
"""

from __future__ import annotations

import numpy as np
from scipy.interpolate import PchipInterpolator
from scipy.special import ndtr

from remedy_dask.sim import instrument

HC_ERG_A = 6.62607015e-27 * 2.99792458e18  # h c in erg * Angstrom
C_A_PER_S = 2.99792458e18
FINE_STEP = 0.25
FINE_WAVE = np.arange(3300.0, 5700.0 + FINE_STEP / 2, FINE_STEP)
FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
FIBER_AREA_ARCSEC2 = np.pi * (instrument.FIBER_DIAMETER / 2.0) ** 2

# Published HETDEX end-to-end throughput anchors (0.0246 at 3470, peak 0.161 at 4640, 0.128 at
# 5540 A) plus smooth intermediate nodes; PCHIP keeps the curve monotone between nodes, so the
# maximum sits exactly at 4640 A.
_THROUGHPUT_NODES = (
    (3300.0, 0.004), (3470.0, 0.0246), (3600.0, 0.052), (3800.0, 0.092), (4000.0, 0.122),
    (4300.0, 0.150), (4640.0, 0.161), (5000.0, 0.156), (5300.0, 0.143), (5540.0, 0.128),
    (5700.0, 0.118),
)

# Solar / twilight absorption features: (centre A, depth, sigma A).
_SOLAR_LINES = (
    (3933.66, 0.80, 6.0), (3968.47, 0.75, 6.0), (4045.8, 0.25, 1.5), (4101.74, 0.45, 4.0),
    (4226.7, 0.30, 1.5), (4300.0, 0.35, 8.0), (4340.47, 0.45, 4.0), (4383.5, 0.30, 1.5),
    (4861.33, 0.45, 4.0), (5167.3, 0.35, 1.5), (5172.7, 0.40, 1.5), (5183.6, 0.45, 1.5),
    (5270.0, 0.30, 1.5), (5328.0, 0.20, 1.5),
)


def throughput(wave: np.ndarray) -> np.ndarray:
    """End-to-end (atmosphere + telescope + VIRUS) throughput at ``wave`` (A)."""
    nodes = np.array(_THROUGHPUT_NODES)
    return PchipInterpolator(nodes[:, 0], nodes[:, 1], extrapolate=True)(np.asarray(wave, float))


def blackbody_flam(wave: np.ndarray, teff: np.ndarray | float) -> np.ndarray:
    """Planck F_lambda shape (arbitrary scale) at ``wave`` A: shape (len(wave),) for a scalar
    ``teff``, (N, len(wave)) for N temperatures."""
    t = np.asarray(teff, dtype=float)
    w = np.asarray(wave, float)
    x = 1.4387769e8 / (w * (t[..., None] if t.ndim else t))  # h c / (lambda k T), lambda in A
    return (w / 5000.0) ** -5 / np.expm1(x)


def ab_magnitudes(flam: np.ndarray, wave: np.ndarray, bands: tuple[str, ...]) -> np.ndarray:
    """AB magnitudes (..., len(bands)) of F_lambda spectra (erg/s/cm^2/A) with speclite's
    Pan-STARRS filters (``bands`` like ``("g", "r")``)."""
    import astropy.units as u
    import speclite.filters as sf

    filters = sf.load_filters(*[f"panstarrs-{b}" for b in bands])
    flam2 = np.atleast_2d(flam)
    table = filters.get_ab_magnitudes(
        flam2 * u.erg / u.s / u.cm**2 / u.AA, np.asarray(wave, float) * u.AA
    )
    mags = np.column_stack([np.asarray(table[f"panstarrs-{b}"], float) for b in bands])
    return mags.reshape(np.shape(flam)[:-1] + (len(bands),))


def star_norm_and_colors(teff: np.ndarray, g_mag: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale factors s with F_lambda = s * blackbody_flam(wave, teff) (erg/s/cm^2/A) giving AB
    magnitude ``g_mag`` in panstarrs-g, and the star's (N, 5) grizy AB magnitudes."""
    wave = np.arange(3000.0, 11500.0, 2.0)
    shape = blackbody_flam(wave, np.asarray(teff, float))
    mags = ab_magnitudes(shape, wave, ("g", "r", "i", "z", "y"))
    scale = 10.0 ** (-0.4 * (np.asarray(g_mag, float) - mags[:, 0]))
    return scale, mags + (np.asarray(g_mag, float) - mags[:, 0])[:, None]


def modified_g_magnitudes(scale: np.ndarray, teff: np.ndarray, shift_A: float, tilt: float
                          ) -> np.ndarray:
    """AB magnitudes of stars ``scale * blackbody_flam(teff)`` through a g band that is not the
    one the pipeline uses: speclite's panstarrs-g response moved by ``shift_A`` and multiplied by
    1 + tilt (lambda - 4800 A)/1000 A (clipped at 0), the way a real survey's g differs from a
    synthetic band by colour terms; the zero point is set so that a 6500 K star has the same
    magnitude in both bands.  Photon-counting AB definition, integrated on a 2 A grid."""
    import speclite.filters as sf

    band = sf.load_filter("panstarrs-g")
    wave = np.arange(3000.0, 11500.0, 2.0)
    resp = np.interp(wave - shift_A, band.wavelength, band.response, left=0.0, right=0.0)
    resp = resp * np.clip(1.0 + tilt * (wave - 4800.0) / 1000.0, 0.0, None)
    f_nu_ab = 3631e-23 * C_A_PER_S / wave**2  # AB zero point as F_lambda

    def mags(flam: np.ndarray, weights: np.ndarray) -> np.ndarray:
        return -2.5 * np.log10(np.sum(flam * weights * wave, axis=-1)
                               / np.sum(f_nu_ab * weights * wave))

    ref = blackbody_flam(wave, 6500.0)
    offset = mags(ref, resp) - mags(ref, np.interp(wave, band.wavelength, band.response,
                                                   left=0.0, right=0.0))
    flam = np.asarray(scale, float)[:, None] * blackbody_flam(wave, np.asarray(teff, float))
    return mags(flam, resp) - offset


def sky_continuum(wave: np.ndarray, g_mag_arcsec2: float) -> np.ndarray:
    """Dark-sky continuum F_lambda per arcsec^2 (erg/s/cm^2/A/arcsec^2): a 5800 K solar-like
    shape reddened by (lambda/4700)^1, normalised to ``g_mag_arcsec2`` AB in panstarrs-g."""
    grid = np.arange(3000.0, 11500.0, 2.0)
    shape = lambda w: blackbody_flam(w, 5800.0) * (np.asarray(w) / 4700.0)  # noqa: E731
    g0 = ab_magnitudes(shape(grid), grid, ("g",))[..., 0]
    return shape(wave) * 10.0 ** (-0.4 * (g_mag_arcsec2 - float(np.ravel(g0)[0])))


def solar_shape(wave: np.ndarray) -> np.ndarray:
    """Twilight spectrum shape: 5800 K Planck x (lambda/4500)^-2 (Rayleigh-like blueing) with
    Ca II H&K, Balmer, G band, Mg b and Fe absorption; peak over 3470-5540 A equals 1."""
    w = np.asarray(wave, float)
    spec = blackbody_flam(w, 5800.0) * (w / 4500.0) ** -2
    absorb = np.ones_like(w)
    for centre, depth, sig in _SOLAR_LINES:
        absorb *= 1.0 - depth * np.exp(-0.5 * ((w - centre) / sig) ** 2)
    spec = spec * absorb
    ref = blackbody_flam(instrument.WAVE, 5800.0) * (instrument.WAVE / 4500.0) ** -2
    return spec / ref.max()


def ldls_shape(wave: np.ndarray) -> np.ndarray:
    """LDLS flat lamp as seen through the spectrograph (e-/A shape): the throughput curve times
    a blue-rising lamp (lambda/4500)^-1, peak over 3470-5540 A equals 1."""
    f = lambda w: throughput(w) * (np.asarray(w, float) / 4500.0) ** -1.0  # noqa: E731
    return f(wave) / f(instrument.WAVE).max()


def flux_to_counts(wave: np.ndarray, exptime: float, transparency: float, area_cm2: float
                   ) -> np.ndarray:
    """Electrons per A per unit F_lambda (erg/s/cm^2/A) for a fiber of throughput 1 and a source
    fully inside it: lambda/(h c) * area * transparency * exptime * throughput(lambda)."""
    w = np.asarray(wave, float)
    return w / HC_ERG_A * area_cm2 * transparency * exptime * throughput(w)


def lsf_convolve(density: np.ndarray, fwhm: float) -> np.ndarray:
    """Convolve fine-grid densities (..., len(FINE_WAVE)) with the Gaussian LSF (FFT, zero
    padded; the grid extends >100 A beyond every pixel edge, so the padding never matters)."""
    n = density.shape[-1]
    nfft = 1 << int(np.ceil(np.log2(2 * n)))
    freq = np.fft.rfftfreq(nfft, d=FINE_STEP)
    sigma = fwhm * FWHM_TO_SIGMA
    transfer = np.exp(-2.0 * (np.pi * sigma * freq) ** 2)
    out = np.fft.irfft(np.fft.rfft(density, n=nfft, axis=-1) * transfer, n=nfft, axis=-1)
    return out[..., :n]


def cumulative(density: np.ndarray) -> np.ndarray:
    """Trapezoid cumulative integral along the fine grid (same shape, starting at 0)."""
    out = np.zeros_like(density)
    np.cumsum(0.5 * (density[..., 1:] + density[..., :-1]) * FINE_STEP, axis=-1, out=out[..., 1:])
    return out


def interp_fine(values: np.ndarray, wave: np.ndarray) -> np.ndarray:
    """Linear interpolation of fine-grid rows ``values`` (F,) or (R, F) at ``wave`` (R, M) or (M,);
    one row of wavelengths per row of values (vectorised, uniform grid)."""
    pos = (np.asarray(wave, float) - FINE_WAVE[0]) / FINE_STEP
    if pos.min() < 0 or pos.max() > FINE_WAVE.size - 1:
        raise ValueError("wavelength outside the simulator's fine grid")
    i0 = np.minimum(pos.astype(np.int64), FINE_WAVE.size - 2)
    frac = pos - i0
    if values.ndim == 1:
        return values[i0] * (1.0 - frac) + values[i0 + 1] * frac
    rows = np.arange(values.shape[0])[:, None]
    return values[rows, i0] * (1.0 - frac) + values[rows, i0 + 1] * frac


def line_pixel_counts(edges: np.ndarray, centres: np.ndarray, sigmas: np.ndarray,
                      totals: np.ndarray) -> np.ndarray:
    """Counts per pixel (F, P) of Gaussian lines between pixel ``edges`` (F, P+1) in A.

    ``centres``/``sigmas`` (L,), ``totals`` (F, L): integrated counts of line l in fiber f.
    """
    out = np.zeros((edges.shape[0], edges.shape[1] - 1))
    for c, s, tot in zip(np.atleast_1d(centres), np.atleast_1d(sigmas), np.asarray(totals).T):
        if not np.any(tot):
            continue
        cdf = ndtr((edges - c) / s)
        out += tot[:, None] * np.diff(cdf, axis=1)
    return out


def line_density(wave: np.ndarray, centres: np.ndarray, sigmas: np.ndarray,
                 totals: np.ndarray) -> np.ndarray:
    """Density (F, M) in counts/A of Gaussian lines at ``wave`` (M,); shapes as above."""
    w = np.asarray(wave, float)[None, :]
    out = np.zeros((np.asarray(totals).shape[0], w.shape[1]))
    for c, s, tot in zip(np.atleast_1d(centres), np.atleast_1d(sigmas), np.asarray(totals).T):
        out += tot[:, None] * np.exp(-0.5 * ((w - c) / s) ** 2) / (np.sqrt(2 * np.pi) * s)
    return out


def moffat_fiber_fraction(fwhm: float, beta: float, r_max: float = 20.0, dr: float = 0.01
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Fraction of a unit-flux Moffat(fwhm, beta) source collected by a 1.5" fiber whose centre is
    r arcsec from the source: (r grid, fraction).  Exact quadrature over the disc (Gauss-Legendre
    in radius x 96-point trapezoid in angle, spectrally accurate for this smooth integrand)."""
    alpha = fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))
    radius = instrument.FIBER_DIAMETER / 2.0
    x, wx = np.polynomial.legendre.leggauss(24)
    rho = 0.5 * radius * (x + 1.0)
    w_rho = 0.5 * radius * wx * rho
    theta = np.arange(96) * (2 * np.pi / 96)
    px = (rho[:, None] * np.cos(theta)).ravel()
    py = (rho[:, None] * np.sin(theta)).ravel()
    weights = np.repeat(w_rho, theta.size) * (2 * np.pi / 96)
    r = np.arange(0.0, r_max + dr / 2, dr)
    d2 = (r[:, None] + px[None, :]) ** 2 + py[None, :] ** 2
    psf = (beta - 1.0) / (np.pi * alpha**2) * (1.0 + d2 / alpha**2) ** (-beta)
    return r, psf @ weights
