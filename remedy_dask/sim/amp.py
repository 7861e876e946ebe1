"""True optical and detector model of one amplifier: traces, cross-dispersion profile, wavelength
solution, fiber throughputs, drifts, bias, dark, defects.  All in the oriented frame (rows =
fibers, columns = wavelength), drawn deterministically from (seed, ifuslot, amp)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from remedy_dask.sim import instrument
from remedy_dask.sim.config import rng_for
from remedy_dask.sim.scene import NightPlan, fiber_focal_positions

COLS = np.arange(instrument.N_COLS, dtype=float)
X_MID = (instrument.N_COLS - 1) / 2.0


def col_u(x: np.ndarray) -> np.ndarray:
    """Column -> u in [-1, 1] (the polynomial variable of traces and wavelengths)."""
    return (np.asarray(x, float) - X_MID) / X_MID


@dataclass
class AmpModel:
    """Truth of one amp (arrays indexed by fiber k = 0..111 by increasing row)."""

    ifuslot: int
    amp: str
    specid: int
    ifuid: int
    contid: str
    ampname: str
    fiber_ids: np.ndarray  # (112,)
    ifu_x: np.ndarray  # (112,) arcsec, IFU frame
    ifu_y: np.ndarray
    focal_x: np.ndarray  # (112,) arcsec, focal plane without dither
    focal_y: np.ndarray
    trace: np.ndarray  # (112, 1032) calibration trace, px
    wave_coeff: np.ndarray  # (112, 4) lambda = sum c_i u^i, u = col_u(x)
    sigma_core: np.ndarray  # (112, 1032) px
    wing_fraction: float
    sigma_wing: float
    fiber_throughput: np.ndarray  # (112,), 0 for the dead fiber
    dead: np.ndarray  # (112,) bool
    flat_illum: np.ndarray  # (112,) LDLS illumination
    flat_color: np.ndarray  # (112,) chromatic LDLS term per 1000 A
    twi_illum: np.ndarray  # (112,) twilight illumination (focal-plane gradient)
    trace_shift: np.ndarray  # (n_sci,) px, science minus calibration
    wave_shift: np.ndarray  # (n_sci,) px, features move by +shift columns
    gain: float
    read_noise: float
    bias_level: float  # ADU
    bias_grad_row: float  # ADU across all rows (oriented)
    bias_grad_col: float  # ADU across all columns (oriented)
    bias_columns: np.ndarray  # (1032,) ADU, oriented column order
    dark_current: float  # e-/s/px
    hot_index: np.ndarray  # flat indices (row * 1032 + col) of hot pixels
    hot_rate: np.ndarray  # e-/s
    bad_column: int
    trap_row: int
    trap_col: int
    fiber_loc_ref: np.ndarray  # (112,) reference y of the fiber-location file

    def wavelength(self, shift: float = 0.0, x: np.ndarray = COLS) -> np.ndarray:
        """(112, len(x)) wavelengths; ``shift`` px moves features right: lambda(x - shift)."""
        u = col_u(np.asarray(x, float) - shift)
        c = self.wave_coeff
        return c[:, :1] + u * (c[:, 1:2] + u * (c[:, 2:3] + u * c[:, 3:4]))

    def pixel_edges(self, shift: float = 0.0) -> np.ndarray:
        """(112, 1033) wavelengths of the pixel edges x = -0.5 .. 1031.5."""
        return self.wavelength(shift, np.arange(instrument.N_COLS + 1) - 0.5)

    def bias_image(self) -> np.ndarray:
        """Fixed 2-D bias structure (ADU, oriented, without the frame level)."""
        r = np.linspace(-0.5, 0.5, instrument.N_ROWS)[:, None]
        c = np.linspace(-0.5, 0.5, instrument.N_COLS)[None, :]
        return self.bias_grad_row * r + self.bias_grad_col * c + self.bias_columns[None, :]


def slit_rows(cfg, rng: np.random.Generator) -> np.ndarray:
    """Nominal fiber rows at the central column: three groups, gaps of ``group_gap_pitches``."""
    pitch = cfg.fiber_pitch_px * (1.0 + rng.normal(0.0, 0.002))
    steps = np.full(instrument.N_FIBERS_AMP - 1, pitch)
    g1, g2, _ = cfg.fibers_per_group
    steps[g1 - 1] = steps[g1 + g2 - 1] = cfg.group_gap_pitches * pitch
    y0 = cfg.first_fiber_row + rng.normal(0.0, 0.5)
    return y0 + np.concatenate([[0.0], np.cumsum(steps)])


def ccd_drifts(plan: NightPlan, ifuslot: int, amp: str) -> tuple[np.ndarray, np.ndarray]:
    """Trace and wavelength shifts (px) of the science exposures vs the calibrations for one
    amp.  The spectrum moves on the detector (temperature), so the two amps of one CCD (``LL``
    and ``LU``, or ``RL`` and ``RU``) share the CCD's drift; a small rotation adds +-half of a
    differential term to the two halves.  Base (night) + per-exposure jitter, per CCD, plus (on
    harsh nights) a per-amp offset and per-amp jitter."""
    cfg = plan.config
    rng = rng_for(plan.seed, "ccd-drift", ifuslot, amp[0])
    half = 0.5 if amp[1] == "U" else -0.5
    shifts = []
    for _ in ("trace", "wave"):
        base = rng.uniform(*cfg.drift_range_px) * rng.choice([-1.0, 1.0])
        jitter = rng.normal(0.0, cfg.drift_exposure_rms_px, plan.n_sci)
        differential = rng.normal(0.0, cfg.drift_half_differential_px, plan.n_sci)
        shifts.append(base + jitter + half * differential)
    if cfg.drift_amp_rms_px or cfg.drift_amp_exposure_rms_px:  # the amp's own share
        rng = rng_for(plan.seed, "amp-drift", ifuslot, amp)
        for i in range(2):
            shifts[i] = shifts[i] + rng.normal(0.0, cfg.drift_amp_rms_px) + rng.normal(
                0.0, cfg.drift_amp_exposure_rms_px, plan.n_sci)
    return shifts[0], shifts[1]


def make_amp_model(plan: NightPlan, ifuslot: int, amp: str) -> AmpModel:
    """Draw the true model of ``ifuslot``/``amp`` for this night."""
    cfg = plan.config
    rng = rng_for(plan.seed, "amp", ifuslot, amp)
    n = instrument.N_FIBERS_AMP
    specid, ifuid, contid = plan.ids[ifuslot]
    fid = instrument.amp_fiber_ids(amp)
    lx, ly = instrument.ifu_layout()
    fx, fy = fiber_focal_positions(plan, ifuslot, fid)
    slot_index = plan.ifuslots.index(ifuslot)
    flips = dict(cfg.ampname_flip) if slot_index % 2 == 0 else {}

    # traces: y(k, x) = y0_k + jitter_k + tilt(s) u + curvature(s) (u^2 - 1/3) + cubic u^3
    y_nom = slit_rows(cfg, rng)
    s = (y_nom - y_nom.mean()) / (0.5 * (y_nom[-1] - y_nom[0]))  # slit position in [-1, 1]
    jitter = rng.normal(0.0, cfg.slit_jitter_px, n)
    u = col_u(COLS)[None, :]
    sag = cfg.trace_curvature_px * rng.uniform(0.8, 1.2) + cfg.trace_curvature_slope_px * s
    tilt = rng.uniform(-0.5, 0.5) * cfg.trace_tilt_px + 0.3 * s
    cubic = rng.uniform(-0.3, 0.3)
    trace = ((y_nom + jitter)[:, None] + tilt[:, None] * u
             + sag[:, None] * (u**2 - 1.0 / 3.0) + cubic * u**3)

    # cross-dispersion profile width, slowly varying across the chip
    v = cfg.profile_sigma_variation
    sigma_core = cfg.profile_sigma_core * rng.uniform(0.97, 1.03) * (
        1.0 + v * (0.5 * s[:, None] + 0.7 * u**2 - 0.3 * u * s[:, None]))

    # wavelength: smooth in fiber (smile, tilt) + per-fiber zero points
    c0 = (cfg.wave_centre + rng.normal(0.0, 2.0) + cfg.wave_smile * (s**2 - 1.0 / 3.0)
          + rng.uniform(-1.0, 1.0) * s + rng.normal(0.0, cfg.wave_fiber_offset_rms, n))
    c1 = cfg.wave_halfspan * (1.0 + rng.normal(0.0, 0.001) + 0.0015 * s)
    c2 = np.full(n, cfg.wave_quadratic + rng.normal(0.0, 1.0)) + 0.8 * s
    c3 = np.full(n, cfg.wave_cubic + rng.normal(0.0, 0.5))
    wave_coeff = np.column_stack([c0, c1, c2, c3])

    # fibers
    thr = np.clip(1.0 + rng.normal(0.0, cfg.fiber_throughput_rms, n), 0.7, 1.3)
    dead = fid == plan.dead_fiber.get(ifuslot, 0)
    thr[dead] = 0.0
    flat_illum = 1.0 + cfg.flat_illumination_gradient * (0.6 * s + 0.4 * (s**2 - 1.0 / 3.0))
    flat_color = rng.normal(0.0, cfg.flat_color_rms, n) * 0.3 + cfg.flat_color_rms * s
    twi_illum = 1.0 + cfg.twilight_gradient * (fx * 0.8 + fy * 0.6) / 500.0

    trace_shift, wave_shift = ccd_drifts(plan, ifuslot, amp)

    # detector
    gain = round(float(rng.uniform(*cfg.gain_range)), 3)
    read_noise = round(float(rng.uniform(*cfg.read_noise_range)), 2)
    npix = instrument.N_ROWS * instrument.N_COLS
    n_hot = rng.poisson(cfg.hot_pixel_fraction * npix)
    hot_index = np.unique(rng.integers(0, npix, n_hot))
    lo, hi = np.log(cfg.hot_pixel_rate_range)
    hot_rate = np.exp(rng.uniform(lo, hi, hot_index.size))
    bad_column, trap_col = (int(c) for c in rng.choice(np.arange(60, 970), 2, replace=False))
    trap_row = int(rng.integers(150, 850))

    ref = trace[:, int(X_MID)] + cfg.fiber_loc_offset_px + rng.normal(0.0, 0.03, n)
    return AmpModel(
        ifuslot=ifuslot, amp=amp, specid=specid, ifuid=ifuid, contid=contid,
        ampname=flips.get(amp, amp), fiber_ids=fid, ifu_x=lx[fid - 1], ifu_y=ly[fid - 1],
        focal_x=fx, focal_y=fy, trace=trace, wave_coeff=wave_coeff, sigma_core=sigma_core,
        wing_fraction=cfg.profile_wing_fraction, sigma_wing=cfg.profile_sigma_wing,
        fiber_throughput=thr, dead=dead, flat_illum=flat_illum, flat_color=flat_color,
        twi_illum=twi_illum, trace_shift=trace_shift, wave_shift=wave_shift, gain=gain,
        read_noise=read_noise, bias_level=float(rng.uniform(*cfg.bias_level_range)),
        bias_grad_row=float(rng.uniform(-1, 1) * cfg.bias_gradient_adu),
        bias_grad_col=float(rng.uniform(-1, 1) * cfg.bias_gradient_adu),
        bias_columns=rng.normal(0.0, cfg.bias_column_rms_adu, instrument.N_COLS),
        dark_current=float(rng.uniform(*cfg.dark_current_range)), hot_index=hot_index,
        hot_rate=hot_rate, bad_column=bad_column, trap_row=trap_row, trap_col=trap_col,
        fiber_loc_ref=np.round(ref, 3),
    )


def check_coverage(model: AmpModel) -> None:
    """The solution must cover 3460-5550 A on every fiber (raise otherwise)."""
    lam = model.wavelength()
    if lam[:, 0].max() > 3460.0 or lam[:, -1].min() < 5550.0:
        raise ValueError(f"{model.ifuslot:03d}{model.amp}: wavelength range "
                         f"{lam[:, 0].max():.1f}-{lam[:, -1].min():.1f} A does not cover "
                         "3460-5550 A; adjust wave_centre/wave_halfspan")
