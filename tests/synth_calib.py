"""Analytic synthetic calibration data with known truth, for the calibration-kernel tests.

Fibers are rendered with a non-Gaussian profile (Gaussian core + 10% broad Gaussian wings)
integrated exactly over each pixel, along curved traces with per-fiber slit jitter; arcs are
pixel-integrated Gaussian lines at known wavelengths.  Independent of the package's kernels.
``simulated_amp`` / ``simulated_calibration`` render one amp of the simulator (remedy_dask.sim)
and run the calibration kernels on it, cached for the truth tests of all modules.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy.signal import fftconvolve
from scipy.special import erf

N_ROWS = N_COLS = 1032
GROUPS = (37, 38, 37)


def slit_rows(pitch: float = 8.7, first: float = 25.0, gap: float = 1.1,
              stretch: float = 0.01) -> np.ndarray:
    """Nominal rows of the 112 fibers at the central column (three groups, gaps of ~2 pitches)."""
    k = np.arange(sum(GROUPS))
    u = k + gap * ((k >= GROUPS[0]).astype(float) + (k >= GROUPS[0] + GROUPS[1]))
    return first + pitch * u * (1.0 + stretch * (u / u.max() - 0.5))


def true_traces(seed: int = 1, jitter: float = 0.2, n_cols: int = N_COLS, **slit) -> np.ndarray:
    """(112, n_cols) curved traces: smooth in column and fiber plus per-fiber offset jitter."""
    rng = np.random.default_rng(seed)
    y0 = slit_rows(**slit)
    yu = (y0 - 516.0) / 516.0
    u = (np.arange(n_cols) - 515.5) / 515.5
    off = rng.normal(0.0, jitter, y0.size)
    tilt = 1.5 + 0.8 * yu + rng.normal(0.0, 0.02, y0.size)
    curv = 2.5 + 1.2 * yu + 0.5 * yu**2
    cubic = -0.4 + 0.3 * yu
    return ((y0 + off)[:, None] + tilt[:, None] * u + curv[:, None] * (u**2 - 1.0 / 3.0)
            + cubic[:, None] * u**3)


def _cdf(x: np.ndarray, sigma: np.ndarray | float) -> np.ndarray:
    return 0.5 * (1.0 + erf(x / (np.sqrt(2.0) * sigma)))


def render_fibers(trace: np.ndarray, flux: np.ndarray, sigma: float | np.ndarray = 1.4,
                  wing_frac: float = 0.1, wing_sigma: float = 3.2, n_rows: int = N_ROWS,
                  half: int = 25) -> np.ndarray:
    """Image of fibers with total flux ``flux`` (n_fib, n_cols) e- per column along ``trace``."""
    n_fib, n_cols = trace.shape
    sigma = np.broadcast_to(np.asarray(sigma, dtype=float), trace.shape)
    image = np.zeros(n_rows * n_cols)
    cols = np.arange(n_cols)
    offs = np.arange(-half, half + 1)
    for k in range(n_fib):
        t = trace[k]
        rows = np.round(t).astype(int)[None, :] + offs[:, None]
        lo, hi = rows - 0.5 - t, rows + 0.5 - t
        s = sigma[k][None, :]
        frac = ((1 - wing_frac) * (_cdf(hi, s) - _cdf(lo, s))
                + wing_frac * (_cdf(hi, wing_sigma) - _cdf(lo, wing_sigma)))
        ok = (rows >= 0) & (rows < n_rows)
        image += np.bincount((rows * n_cols + cols[None, :])[ok], weights=(frac * flux[k])[ok],
                             minlength=n_rows * n_cols)
    return image.reshape(n_rows, n_cols)


def scattered_component(image: np.ndarray, fraction: float = 0.03, r0: float = 60.0,
                        power: float = 1.5, block: int = 8) -> np.ndarray:
    """Smooth scattered light: ``fraction`` of the light redistributed with a (1 + (r/r0)^2)^-power
    kernel (computed on ``block`` x ``block`` pixel blocks, bilinearly interpolated)."""
    n_r, n_c = image.shape
    coarse = image.reshape(n_r // block, block, n_c // block, block).sum(axis=(1, 3))
    n = coarse.shape[0]
    off = np.arange(-(n - 1), n) * float(block)
    kernel = (1.0 + (off[:, None] ** 2 + off[None, :] ** 2) / r0**2) ** (-power)
    kernel *= fraction / kernel.sum()
    out = np.maximum(fftconvolve(coarse, kernel, mode="same"), 0.0) / block**2
    centres = (np.arange(n) + 0.5) * block - 0.5
    rows = np.arange(n_r)
    tmp = np.stack([np.interp(rows, centres, out[:, j]) for j in range(out.shape[1])], axis=1)
    return np.stack([np.interp(rows, centres, tmp[i]) for i in range(n_r)], axis=0)


def add_noise(image: np.ndarray, read_noise: float = 3.0, seed: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Poisson + read noise; returns (noisy image, variance)."""
    rng = np.random.default_rng(seed)
    noisy = rng.poisson(np.clip(image, 0, None)).astype(float) + rng.normal(0, read_noise, image.shape)
    return noisy, np.clip(image, 0, None) + read_noise**2


def flat_flux(n_fib: int = 112, n_cols: int = N_COLS, peak: float = 12000.0, seed: int = 3,
              dead: tuple[int, ...] = ()) -> np.ndarray:
    """Smooth lamp continuum times per-fiber throughput (~5% rms); dead fibers get zero."""
    rng = np.random.default_rng(seed)
    u = (np.arange(n_cols) - 515.5) / 515.5
    spec = peak * (0.6 + 0.4 * np.exp(-0.5 * ((u - 0.2) / 0.6) ** 2))
    thr = rng.normal(1.0, 0.05, n_fib)
    thr[list(dead)] = 0.0
    return thr[:, None] * spec[None, :]


def flat_image(seed: int = 1, dead: tuple[int, ...] = (), jitter: float = 0.2, scatter: float = 0.03,
               peak: float = 12000.0, sigma: float | np.ndarray = 1.4, wing_frac: float = 0.1,
               **slit) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(noisy flat, variance, true trace, true scattered light)."""
    trace = true_traces(seed, jitter, **slit)
    clean = render_fibers(trace, flat_flux(peak=peak, seed=seed + 1, dead=dead), sigma=sigma,
                          wing_frac=wing_frac)
    scat = scattered_component(clean, scatter)
    noisy, var = add_noise(clean + scat, seed=seed + 2)
    return noisy, var, trace, scat


# --- wavelength --------------------------------------------------------------------------------
def true_wavelength(seed: int = 5, n_fib: int = 112, n_cols: int = N_COLS, zero_jitter: float = 0.5,
                    slope_jitter: float = 0.2) -> np.ndarray:
    """(n_fib, n_cols) wavelength maps: smooth curved solution plus per-fiber zero point and slope."""
    rng = np.random.default_rng(seed)
    u = (np.arange(n_cols) - 515.5) / 515.5
    f = (np.arange(n_fib) - 55.5) / 55.5
    centre = 4505.0 + 3.0 * f**2 + rng.normal(0, zero_jitter, n_fib)
    half_span = 1035.0 + 2.0 * f + rng.normal(0, slope_jitter, n_fib)
    quad = -6.0 + 1.5 * f
    cubic = -2.0 + 0.5 * f**2
    return (centre[:, None] + half_span[:, None] * u + quad[:, None] * (u**2 - 1 / 3)
            + cubic[:, None] * u**3)


def render_arcs(wavelength: np.ndarray, lines: dict[float, float], fwhm: float = 5.6,
                continuum: float = 5.0) -> np.ndarray:
    """Arc spectra (e- per pixel): pixel-integrated Gaussian lines of total flux ``lines[wave]``."""
    n_fib, n_cols = wavelength.shape
    x = np.arange(n_cols)
    edges = np.stack([np.interp(x - 0.5, x, w, left=np.nan) for w in wavelength])
    edges_hi = np.stack([np.interp(x + 0.5, x, w, right=np.nan) for w in wavelength])
    disp = np.gradient(wavelength, axis=1)
    lo = np.where(np.isnan(edges), wavelength - 0.5 * disp, edges)
    hi = np.where(np.isnan(edges_hi), wavelength + 0.5 * disp, edges_hi)
    sig = fwhm / 2.3548
    spec = np.full((n_fib, n_cols), continuum)
    for wave, total in lines.items():
        spec += total * (_cdf(hi - wave, sig) - _cdf(lo - wave, sig))
    return spec


def default_arc_lines() -> dict[float, float]:
    """Total e- per line: realistic spread of intensities (some lines 10x weaker)."""
    return {3610.508: 6000.0, 3650.153: 9000.0, 4046.565: 20000.0, 4358.335: 40000.0,
            4678.149: 5000.0, 4799.912: 8000.0, 4916.068: 2500.0, 5085.822: 9000.0,
            5460.750: 30000.0}


def noisy_spectra(spec: np.ndarray, read_noise: float = 8.0, seed: int = 6
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Poisson + Gaussian noise on extracted spectra; returns (spectra, error sigma)."""
    rng = np.random.default_rng(seed)
    noisy = rng.poisson(np.clip(spec, 0, None)).astype(float) + rng.normal(0, read_noise, spec.shape)
    return noisy, np.sqrt(np.clip(spec, 0, None) + read_noise**2)


# --- the simulator (truth tests) ----------------------------------------------------------------
@functools.lru_cache(maxsize=2)
def simulated_amp(amp: str = "LL", ifuslot: int = 47, seed: int = 1) -> dict:
    """Every frame of one amp of a simulated night, reduced to oriented electrons (overscan,
    gain) the way the pipeline's reader does, plus the simulator's truth model.  Cached: the
    rendering (~5 s) is shared by the truth tests of all calibration test modules."""
    from remedy_dask import geometry
    from remedy_dask.amp.ccd import basic_reduce
    from remedy_dask.sim.amp import make_amp_model
    from remedy_dask.sim.config import SimConfig
    from remedy_dask.sim.render import AmpCache, render_amp_frame
    from remedy_dask.sim.scene import make_plan

    plan = make_plan("20190822", (ifuslot,), seed, 7, SimConfig(), geometry.FRAME_KINDS)
    model = make_amp_model(plan, ifuslot, amp)
    cache = AmpCache()
    frames: dict[tuple[str, str | None], list[dict]] = {}
    for frame in plan.frames:
        rendered = render_amp_frame(plan, model, frame, cache)
        hdr = {k: v for k, (v, _) in rendered.header.items()}
        image, variance, _ = basic_reduce(rendered.raw, amp, hdr["AMPNAME"], hdr["GAIN"],
                                          hdr["RDNOISE"])
        frames.setdefault((frame.kind, frame.lamp), []).append(
            {"image": image.astype(float), "variance": variance.astype(float), "header": hdr,
             "rendered": rendered})
    return {"model": model, "frames": frames, "config": plan.config}


def boxcar_spectra(image: np.ndarray, trace: np.ndarray, mask: np.ndarray | None = None,
                   half: int = 4) -> np.ndarray:
    """Sum of +-``half`` rows around each trace (NaN where a masked pixel is inside)."""
    rows = np.clip(np.round(trace).astype(int)[..., None] + np.arange(-half, half + 1), 0,
                   image.shape[0] - 1)
    cols = np.arange(image.shape[1])[None, :, None]
    spec = image[rows, cols].sum(-1)
    if mask is not None:
        spec = np.where(mask[rows, cols].any(-1), np.nan, spec)
    return spec


@functools.lru_cache(maxsize=2)
def simulated_calibration(amp: str = "LL") -> dict:
    """Masters, pixel mask and trace of a simulated amp (the calibration chain under test), with
    the time each kernel took."""
    import time

    from remedy_dask.amp.masters import combine_frames, master_bias, master_dark, pixel_mask
    from remedy_dask.amp.trace.fit import fit_trace

    sim = simulated_amp(amp)
    frames = sim["frames"]
    timing: dict[str, float] = {}

    def timed(name, fn, *args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        timing[name] = time.perf_counter() - t0
        return out

    bias, read_noise = timed("master_bias", master_bias,
                             np.stack([f["image"] for f in frames[("zro", None)]]))
    darks = frames[("drk", None)]
    dark_args = (np.stack([f["image"] for f in darks]), bias,
                 np.array([f["header"]["EXPTIME"] for f in darks]))
    dark_raw = timed("master_dark", master_dark, *dark_args)
    dark = master_dark(*dark_args, denoise=True)

    def master(key):
        stack = np.stack([f["image"] - bias - dark * f["header"]["EXPTIME"] for f in frames[key]])
        return combine_frames(stack, "median")

    flat, flat_err = timed("combine_frames", master, ("flt", None))
    mask, mask_stats = timed("pixel_mask", pixel_mask, dark_raw, flat)
    trace = timed("fit_trace", fit_trace, flat, flat_err**2, mask)
    return {**sim, "bias": bias, "read_noise": read_noise, "dark_raw": dark_raw, "dark": dark,
            "flat": flat, "flat_var": flat_err**2, "mask": mask, "mask_stats": mask_stats,
            "trace": trace, "master": master, "timing": timing}


def profile_weighted_spectra(image: np.ndarray, variance: np.ndarray, trace: np.ndarray,
                             table: np.ndarray, mask: np.ndarray | None = None, half: int = 5
                             ) -> tuple[np.ndarray, np.ndarray]:
    """Simple optimal (Horne) extraction with one radial profile ``table`` (PROFILE_NODES):
    returns (spectrum, error); NaN where a masked pixel has weight inside the window."""
    from remedy_dask.amp.profile.fibermodel import profile_eval

    rows = np.clip(np.round(trace).astype(int)[..., None] + np.arange(-half, half + 1), 0,
                   image.shape[0] - 1)
    cols = np.arange(image.shape[1])[None, :, None]
    p = profile_eval(table, rows - trace[..., None])
    d, v = image[rows, cols], np.maximum(variance[rows, cols], 1.0)
    norm = (p * p / v).sum(-1)
    spec = (p * d / v).sum(-1) / norm
    err = 1.0 / np.sqrt(norm)
    if mask is not None:
        bad = (mask[rows, cols] & (p > 0.02 * p.max())).any(-1)
        spec, err = np.where(bad, np.nan, spec), np.where(bad, np.nan, err)
    return spec, err
