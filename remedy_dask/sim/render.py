"""From fiber light to a raw amplifier frame: cross-dispersion profile, scattered light, detector
(dark, hot pixels, bad column, charge trap, cosmic rays, Poisson and read noise, bias, gain,
quantization) and the inverse of the documented orientation, plus the FITS header."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.signal import fftconvolve
from scipy.special import ndtr

from remedy_dask import geometry
from remedy_dask.sim.amp import AmpModel
from remedy_dask.sim.config import SimConfig, rng_for
from remedy_dask.sim.light import FiberLight, fiber_light
from remedy_dask.sim.scene import Frame, NightPlan

NR, NC = geometry.N_ROWS, geometry.N_COLS


@dataclass
class RenderedFrame:
    """One amp frame: the expected electrons (oriented, float64, before noise and quantization,
    cosmic rays and the charge trap included), the raw uint16 array and the header cards."""

    electrons: np.ndarray  # (1032, 1032)
    raw: np.ndarray  # (1032, 1064) uint16, raw layout
    header: dict[str, tuple[object, str]]
    light: FiberLight | None  # fiber-space light (None for zro/drk)
    scattered_coarse: np.ndarray | None  # (129, 129) e- per 8x8 block of scattered light
    cosmic_mask: np.ndarray | None  # (1032, 1032) bool, oriented, or None
    bias_level: float  # ADU of this frame's overscan level


@dataclass
class AmpCache:
    """Per-amp reusable pieces (profile weights, noiseless calibration images)."""

    profiles: dict[object, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    light_images: dict[object, tuple[np.ndarray, FiberLight, np.ndarray]] = field(
        default_factory=dict)


def profile_weights(trace: np.ndarray, sigma_core: np.ndarray, wing_fraction: float,
                    sigma_wing: float, half_window: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat pixel indices and weights (F, 2h+1, C) of the cross-dispersion profile (Gaussian
    core + Gaussian wings) integrated exactly over each pixel (CDF differences)."""
    base = np.rint(trace).astype(np.int32)
    offs = np.arange(-half_window, half_window + 2, dtype=np.int32)
    edge = (base[:, None, :] + offs[None, :, None]) - 0.5 - trace[:, None, :]
    cdf = wing_fraction * ndtr(edge / sigma_wing)
    # the core is exactly 0 / 1 (to < 1e-15) beyond 8 sigma: evaluate it only near the trace
    reach = min(half_window, int(np.ceil(8.0 * float(sigma_core.max()))))
    inner = slice(half_window - reach, half_window + reach + 2)
    cdf[:, inner] += (1.0 - wing_fraction) * ndtr(edge[:, inner] / sigma_core[:, None, :])
    cdf[:, half_window + reach + 2:] += 1.0 - wing_fraction
    weights = np.diff(cdf, axis=1)
    rows = base[:, None, :] + offs[None, :-1, None]
    valid = (rows >= 0) & (rows < NR)
    index = rows * NC + np.arange(NC, dtype=np.int32)[None, None, :]
    index[~valid] = 0
    weights[~valid] = 0.0
    return index, weights


def render_direct(counts: np.ndarray, index: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Image (1032, 1032) e- of fiber counts (F, C) spread by the profile weights."""
    img = np.bincount(index.ravel(), weights=(weights * counts[:, None, :]).ravel(),
                      minlength=NR * NC)
    return img.reshape(NR, NC)


def _upsample_matrix(n_fine: int, block: int) -> np.ndarray:
    n_coarse = n_fine // block
    q = np.clip((np.arange(n_fine) - (block - 1) / 2.0) / block, 0.0, n_coarse - 1.0)
    i0 = np.minimum(q.astype(int), n_coarse - 2)
    t = q - i0
    m = np.zeros((n_fine, n_coarse))
    m[np.arange(n_fine), i0] = 1.0 - t
    m[np.arange(n_fine), i0 + 1] = t
    return m


def upsample_scattered(coarse: np.ndarray, block: int = 8) -> np.ndarray:
    """Full-resolution scattered light (e-/px) from the coarse block totals: bilinear
    interpolation between block centres (edge values held), divided by the block area."""
    mr = _upsample_matrix(NR, block)
    mc = _upsample_matrix(NC, block)
    return mr @ (coarse / block**2) @ mc.T


def scattered_light(direct: np.ndarray, cfg: SimConfig) -> tuple[np.ndarray, np.ndarray]:
    """Smooth scattered light: ``scattered_fraction`` of the direct light redistributed with a
    (1 + (r/r0)^2)^-power kernel (normalised over +-1032 px; light scattered off the chip is
    lost).  Computed on 8x8 blocks.  Returns (full image e-/px, coarse block totals)."""
    b = cfg.scattered_block
    coarse = direct.reshape(NR // b, b, NC // b, b).sum(axis=(1, 3))
    n = coarse.shape[0]
    off = np.arange(-(n - 1), n) * float(b)
    r2 = off[:, None] ** 2 + off[None, :] ** 2
    kernel = (1.0 + r2 / cfg.scattered_r0_px**2) ** (-cfg.scattered_power)
    kernel *= cfg.scattered_fraction / kernel.sum()
    out = np.maximum(fftconvolve(coarse, kernel, mode="same"), 0.0)
    return upsample_scattered(out, b), out


def dark_image(model: AmpModel, cfg: SimConfig, darktime: float) -> np.ndarray:
    """Expected dark electrons: uniform current, hot pixels and the charge-trap glow."""
    img = np.full((NR, NC), model.dark_current * darktime)
    img.ravel()[model.hot_index] += model.hot_rate * darktime
    for i, rate in enumerate(cfg.trap_glow_e_per_s):
        if model.trap_row - i >= 0:
            img[model.trap_row - i, model.trap_col] += rate * darktime
    return img


def cosmic_rays(rng: np.random.Generator, cfg: SimConfig, darktime: float
                ) -> tuple[np.ndarray, np.ndarray]:
    """Cosmic-ray deposits (e-, oriented image) and their pixel mask: short straight tracks."""
    n = rng.poisson(cfg.cosmics_per_360s * darktime / 360.0)
    img = np.zeros(NR * NC)
    if n == 0:
        return img.reshape(NR, NC), np.zeros((NR, NC), bool)
    r0, c0 = rng.uniform(0, NR - 1, n), rng.uniform(0, NC - 1, n)
    length = rng.uniform(0.0, cfg.cosmic_max_length_px, n)
    theta = rng.uniform(0.0, np.pi, n)
    lo, hi = np.log(cfg.cosmic_e_per_px_range)
    e_px = np.exp(rng.uniform(lo, hi, n))
    nstep = np.maximum(1, np.ceil(length / 0.25)).astype(int)
    track = np.repeat(np.arange(n), nstep)
    t = (np.arange(track.size) - np.repeat(np.cumsum(nstep) - nstep, nstep)) * 0.25
    rr = np.rint(r0[track] + t * np.sin(theta[track])).astype(int)
    cc = np.rint(c0[track] + t * np.cos(theta[track])).astype(int)
    dep = e_px[track] * np.where(nstep[track] == 1, 1.0, 0.25)
    ok = (rr >= 0) & (rr < NR) & (cc >= 0) & (cc < NC)
    img += np.bincount(rr[ok] * NC + cc[ok], weights=dep[ok], minlength=NR * NC)
    img = img.reshape(NR, NC)
    return img, img > 0


def apply_charge_trap(img: np.ndarray, model: AmpModel, cfg: SimConfig) -> None:
    """In place: every pixel above the trap row of the trap column loses up to the capacity."""
    col = img[model.trap_row + 1:, model.trap_col]
    img[model.trap_row + 1:, model.trap_col] = np.maximum(col - cfg.trap_capacity_e, 0.0)


def raw_layout(oriented: np.ndarray, amp: str, ampname: str) -> np.ndarray:
    """Inverse of the documented orientation (flips are involutions and commute)."""
    out = oriented
    if amp in geometry.FLIP_BOTH_AMPS:
        out = out[::-1, ::-1]
    if ampname in geometry.FLIP_COLUMNS_AMPNAMES:
        out = out[:, ::-1]
    return out


def orient_raw(raw: np.ndarray, amp: str, ampname: str) -> np.ndarray:
    """The documented reader rule (trim, flip LU/RL, flip columns for AMPNAME LR/UL)."""
    ncols = raw.shape[1]
    data = raw[:, : ncols - int(32 * ncols / 1064)]
    if amp in geometry.FLIP_BOTH_AMPS:
        data = data[::-1, ::-1]
    if ampname in geometry.FLIP_COLUMNS_AMPNAMES:
        data = data[:, ::-1]
    return data


def _light_image(plan: NightPlan, model: AmpModel, frame: Frame, cache: AmpCache
                 ) -> tuple[np.ndarray, FiberLight, np.ndarray]:
    """Noiseless light image (direct + scattered) of a frame, cached for calibration kinds."""
    cfg = plan.config
    key = (frame.kind, frame.lamp) if frame.sci_index is None else ("sci", frame.sci_index)
    if key in cache.light_images:
        return cache.light_images[key]
    pkey = "cal" if frame.sci_index is None else frame.sci_index
    if pkey not in cache.profiles:
        dy = 0.0 if frame.sci_index is None else float(model.trace_shift[frame.sci_index])
        cache.profiles[pkey] = profile_weights(model.trace + dy, model.sigma_core,
                                               model.wing_fraction, model.sigma_wing,
                                               cfg.profile_half_window)
    light = fiber_light(plan, model, frame)
    direct = render_direct(light.counts, *cache.profiles[pkey])
    scat, coarse = scattered_light(direct, cfg)
    image = direct + scat
    image[:, model.bad_column] *= cfg.bad_column_response
    result = (image, light, coarse)
    if frame.sci_index is None:
        cache.light_images[key] = result
    return result


def render_amp_frame(plan: NightPlan, model: AmpModel, frame: Frame,
                     cache: AmpCache | None = None) -> RenderedFrame:
    """Render one frame of one amp: expected electrons, raw uint16 and header."""
    cfg = plan.config
    cache = AmpCache() if cache is None else cache
    keys = (plan.seed, model.ifuslot, model.amp, frame.obs, frame.exp)
    light = coarse = mask = None
    expected = dark_image(model, cfg, frame.darktime)
    if frame.kind in ("zro", "drk"):
        photons = expected
    else:
        img, light, coarse = _light_image(plan, model, frame, cache)
        photons = expected + img
    cr = np.zeros((NR, NC))
    if frame.kind in cfg.cosmic_kinds and frame.darktime > 0:
        cr, mask = cosmic_rays(rng_for(*keys, "cosmics"), cfg, frame.darktime)
    rng = rng_for(*keys, "noise")
    electrons = rng.poisson(photons).astype(float) + cr
    expected = photons + cr
    apply_charge_trap(electrons, model, cfg)
    apply_charge_trap(expected, model, cfg)

    level = model.bias_level + rng.normal(0.0, cfg.bias_frame_jitter_adu)
    adu = level + model.bias_image() + electrons / model.gain
    adu += rng.normal(0.0, model.read_noise / model.gain, adu.shape)
    data = raw_layout(adu, model.amp, model.ampname)
    over = level + rng.normal(0.0, model.read_noise / model.gain, (NR, geometry.N_OVERSCAN))
    for j, frac in enumerate(cfg.overscan_bleed):
        over[:, j] += frac * np.maximum(data[:, -1] - level, 0.0)
    raw = np.rint(np.hstack([data, over]))
    raw = np.clip(raw, 0, cfg.saturation_adu).astype(np.uint16)
    return RenderedFrame(expected, raw, make_header(plan, model, frame), light, coarse, mask,
                         float(level))


def make_header(plan: NightPlan, model: AmpModel, frame: Frame) -> dict[str, tuple[object, str]]:
    """Header cards (keyword -> (value, comment)) of an amp frame, as io/raw.py reads them."""
    ccdpos, ccdhalf = model.amp[0], model.amp[1]
    sci = frame.kind == "sci"
    return {
        "CCDPOS": (ccdpos, "CCD position L/R"),
        "CCDHALF": (ccdhalf, "amplifier half L/U"),
        "AMPNAME": (model.ampname, "amplifier name"),
        "SPECID": (model.specid, "spectrograph id"),
        "IFUID": (model.ifuid, "IFU bundle id"),
        "IFUSLOT": (model.ifuslot, "IHMP slot"),
        "CONTID": (model.contid, "controller id"),
        "OBJECT": (frame.object_name, "target or lamp"),
        "IMAGETYP": (frame.kind, "frame kind"),
        "EXPTIME": (frame.exptime, "exposure time s"),
        "DARKTIME": (frame.darktime, "dark time s"),
        "DATE": (frame.date_str, "UT start of exposure"),
        "DATE-OBS": (frame.start.strftime("%Y-%m-%d"), "UT date of exposure start"),
        "UT": (frame.date_str.split("T")[1], "UT time of exposure start"),
        "TRAJRA": (round(plan.trajra / 15.0, 8), "telescope RA, hours"),
        "TRAJDEC": (round(plan.trajdec, 7), "telescope Dec, deg"),
        "TRAJCRA": (round(plan.header_ra / 15.0, 8), "commanded RA, hours"),
        "TRAJCDEC": (round(plan.header_dec, 7), "commanded Dec, deg"),
        "PARANGLE": (plan.parangle, "parallactic angle, deg"),
        "AMBTEMP": (16.2 if sci else 18.6, "ambient temperature, C"),
        "QPROG": ("HETSIM-1" if sci else "CAL", "program id"),
        "GAIN": (model.gain, "e-/ADU"),
        "RDNOISE": (model.read_noise, "read noise, e-"),
        "DATASEC": ("[1:1032,1:1032]", "data section"),
        "BIASSEC": ("[1033:1064,1:1032]", "overscan section"),
        "SIMULATE": (True, "remedy-dask virtual instrument"),
    }
