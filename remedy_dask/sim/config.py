"""Parameters of the virtual instrument and deterministic random streams.

Every physical number the simulator uses lives in :class:`SimConfig` with a documented default
(see docs/simulator.md for the reasoning behind each value).  Randomness comes only from
:func:`rng_for`, keyed by the night seed plus names (IFU slot, amp, purpose, exposure), so a result
does not depend on the order in which amps are rendered or on the number of worker processes.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from remedy_dask.sim import instrument


@dataclass(frozen=True)
class SimConfig:
    """Every physical parameter of the simulated night (defaults = a realistic VIRUS night)."""

    # --- frames per kind (observation folders 1..6 in this order, skipped when 0) -----------
    n_zro: int = 5
    n_drk: int = 3
    n_flt: int = 3
    n_cmp_hg: int = 2
    n_cmp_cd: int = 2
    n_twi: int = 3
    n_sci: int = 3  # <= len(dither_pattern)
    exptime: dict[str, float] = field(
        default_factory=lambda: {
            "zro": 0.0, "drk": 360.0, "flt": 60.0, "cmp": 60.0, "twi": 20.0, "sci": 360.0
        }
    )
    readout_s: float = 58.4  # gap between consecutive exposure starts beyond EXPTIME

    # --- detector (per amp, drawn uniformly in these ranges) ---------------------------------
    gain_range: tuple[float, float] = (0.80, 0.90)  # e-/ADU
    read_noise_range: tuple[float, float] = (2.5, 3.5)  # e-
    bias_level_range: tuple[float, float] = (960.0, 1040.0)  # ADU, overscan level
    bias_frame_jitter_adu: float = 0.8  # rms frame-to-frame change of the level
    bias_gradient_adu: float = 3.0  # max |gradient| across the chip in each axis
    bias_column_rms_adu: float = 0.7  # fixed column pattern
    dark_current_range: tuple[float, float] = (0.005, 0.02)  # e-/s/px
    hot_pixel_fraction: float = 0.001
    hot_pixel_rate_range: tuple[float, float] = (0.5, 50.0)  # e-/s, log-uniform
    bad_column_response: float = 0.15  # relative QE of the bad column
    trap_capacity_e: float = 250.0  # e- lost per pixel beyond the charge trap
    trap_glow_e_per_s: tuple[float, ...] = (1.5, 0.8, 0.4)  # trap pixel and the next rows
    overscan_bleed: tuple[float, float] = (2e-3, 5e-4)  # fraction of the last data pixel
    cosmics_per_360s: float = 25.0  # mean tracks per amp in 360 s of dark time
    cosmic_kinds: tuple[str, ...] = ("drk", "sci")
    cosmic_e_per_px_range: tuple[float, float] = (300.0, 3000.0)  # log-uniform
    cosmic_max_length_px: float = 8.0
    saturation_adu: int = 65535

    # --- scattered light ------------------------------------------------------------------
    scattered_fraction: float = 0.03  # of the direct fiber light
    scattered_r0_px: float = 60.0  # kernel (1 + (r/r0)^2)^-power
    scattered_power: float = 1.5
    scattered_block: int = 8  # block size of the coarse grid the kernel is applied on

    # --- slit, traces, profile ---------------------------------------------------------------
    fibers_per_group: tuple[int, int, int] = (37, 38, 37)
    fiber_pitch_px: float = 8.72
    group_gap_pitches: float = 2.0  # centre-to-centre distance across a gap, in pitches
    first_fiber_row: float = 25.0
    slit_jitter_px: float = 0.2  # rms per-fiber offset
    trace_curvature_px: float = 3.0  # sagitta across the chip at mid-slit
    trace_curvature_slope_px: float = 0.8  # change of the sagitta from slit centre to end
    trace_tilt_px: float = 1.0  # max end-to-end tilt
    profile_sigma_core: float = 1.40  # px
    profile_sigma_variation: float = 0.06  # relative, across slit and columns
    profile_wing_fraction: float = 0.10
    profile_sigma_wing: float = 3.2  # px
    profile_half_window: int = 16  # rows rendered either side of the trace

    # --- wavelength -------------------------------------------------------------------------
    wave_centre: float = 4510.0  # A at the central column (515.5)
    wave_halfspan: float = 1063.0  # linear term over half the chip
    wave_quadratic: float = -12.0
    wave_cubic: float = 8.0
    wave_smile: float = 3.0  # A, quadratic in slit position
    wave_fiber_offset_rms: float = 0.2  # A, per-fiber zero point
    lsf_fwhm: float = 5.6  # A
    drift_range_px: tuple[float, float] = (0.05, 0.25)  # |shift| of science vs calibrations
    drift_exposure_rms_px: float = 0.02
    drift_half_differential_px: float = 0.005  # rms of (U half - L half) of one CCD (rotation)

    # --- fibers -----------------------------------------------------------------------------
    fiber_throughput_rms: float = 0.05
    dead_fibers_per_ifu: int = 1
    flat_illumination_gradient: float = 0.04  # LDLS illumination across the slit
    flat_color_rms: float = 0.02  # per-fiber chromatic term of the LDLS illumination
    twilight_gradient: float = 0.03  # across the focal plane (per 500")

    # --- lamps and twilight (e-/A per fiber of throughput 1, per frame, at peak) -------------
    flat_peak_e_per_A: float = 5500.0
    twilight_peak_e_per_A: float = 7000.0
    arc_line_e: dict[float, float] = field(
        default_factory=lambda: {  # total e- per fiber per frame
            3650.153: 22000.0, 4046.565: 30000.0, 4358.335: 60000.0, 4916.068: 3000.0,
            5460.750: 48000.0, 3610.508: 18000.0, 4678.149: 27000.0, 4799.912: 42000.0,
            5085.822: 55000.0,
        }
    )

    # --- sky and sources ----------------------------------------------------------------------
    area_cm2: float = instrument.AREA_CM2
    sky_g_mag_arcsec2: float = 22.0
    sky_exposure_rms: float = 0.03  # exposure-to-exposure sky level change
    sky_lines: tuple[tuple[float, float], ...] = (  # (A, 1e-17 erg/s/cm^2/arcsec^2)
        (3914.4, 0.8), (4046.565, 1.2), (4358.335, 2.0), (5198.5, 0.9), (5460.750, 2.5),
    )
    transparency_range: tuple[float, float] = (0.85, 1.0)
    seeing_range: tuple[float, float] = (1.4, 2.2)  # FWHM arcsec
    moffat_beta: float = 3.5
    stars_per_ifu: int = 5  # placed inside each IFU footprint
    bright_stars_per_ifu: int = 2  # of them, with g uniform in bright_star_g_range
    bright_star_g_range: tuple[float, float] = (16.0, 19.0)
    star_density_per_deg2: float = 3000.0  # background stars over the catalogue area
    star_g_range: tuple[float, float] = (15.0, 22.0)
    star_teff_range: tuple[float, float] = (4000.0, 9000.0)
    line_sources_per_ifu: int = 6
    bright_line_sources_per_ifu: int = 2  # of them, with flux >= 2e-16
    line_flux_range: tuple[float, float] = (1.0, 100.0)  # 1e-17 erg/s/cm^2, log-uniform
    line_fwhm_range: tuple[float, float] = (1.0, 5.0)  # intrinsic A
    line_wave_range: tuple[float, float] = (3600.0, 5450.0)

    # --- pointing and astrometry ------------------------------------------------------------
    dither_pattern: tuple[tuple[float, float], ...] = instrument.DITHER_PATTERN
    pointing_offset_arcsec: float = 4.0  # |header - truth| of the field centre
    rotation_offset_deg: float = 0.03  # |header - truth| of the rotation
    trajra_offset_arcsec: float = 2.0  # |TRAJRA - TRAJCRA|
    catalog_margin_arcsec: float = 60.0
    catalog_mag_noise: float = 0.01
    catalog_pos_noise_arcsec: float = 0.01
    ifu_pitch_arcsec: float = 100.0
    ifu_position_jitter_arcsec: float = 1.0

    # --- harsher nights (defaults leave the kind night unchanged; see harsh_config) ----------
    illumination_range: tuple[float, float] = (1.0, 1.0)  # mirror illumination per exposure
    moffat_beta_range: tuple[float, float] | None = None  # per-exposure beta (None: moffat_beta)
    catalog_g_shift_A: float = 0.0  # catalogue g measured through panstarrs-g shifted by this
    catalog_g_tilt: float = 0.0  # ... and multiplied by 1 + tilt * (lambda - 4800 A) / 1000 A
    # (zero point: equal magnitudes for a 6500 K star; spectra.modified_g_magnitudes)
    edge_stars_per_ifu: int = 0  # bright stars 20-25" from the IFU centre along x or y
    close_pairs_per_ifu: int = 0  # bright star + companion 1.5-3" away
    saturated_stars: int = 0  # stars of g = saturated_star_g near IFU centres
    saturated_star_g: float = 11.5  # peaks above 65535 ADU in a 360 s exposure
    profile_halo_fraction: float = 0.0  # exponential (Laplace) cross-dispersion wings
    profile_halo_scale_px: float = 4.0
    cosmic_track_e_range: tuple[float, float] | None = None  # total e- per track, log-uniform
    drift_amp_rms_px: float = 0.0  # per-amp offset of the night's drift (on top of the CCD's)
    drift_amp_exposure_rms_px: float = 0.0  # per-amp, per-exposure jitter
    second_pointing_arcsec: tuple[float, float] | None = None  # (east, north) of a 2nd science obs

    # --- odds and ends ----------------------------------------------------------------------
    ampname_flip: tuple[tuple[str, str], ...] = (("LL", "LR"), ("LU", "UL"))  # even IFU index
    fiber_loc_offset_px: float = 0.3  # reference y = true y at the central column + this
    write_guider: bool = True
    truth_spectra: bool = True  # per-fiber expected spectra in the truth file

    def __post_init__(self) -> None:
        if self.n_sci > len(self.dither_pattern):
            raise ValueError(f"n_sci={self.n_sci} exceeds the dither pattern length")
        if sum(self.fibers_per_group) != instrument.N_FIBERS_AMP:
            raise ValueError("fibers_per_group must add up to 112")


def harsh_config(**overrides: object) -> SimConfig:
    """A harsher night (issue 14): no guider frames, transparency 0.85-1.0 and mirror
    illumination +-4 % per exposure, catalogue noise 0.02 mag / 0.05" and a catalogue g band
    that differs from panstarrs-g (colour term), Moffat beta 2.5-4.5 per exposure, stars at IFU
    edges, close pairs and a saturated star, exponential profile wings, low-energy 1-5 px cosmic
    rays (500-20000 e-) also in flats and twilights, and per-amp trace/wavelength drifts."""
    harsh: dict[str, object] = {
        "write_guider": False, "transparency_range": (0.85, 1.0),
        "illumination_range": (0.96, 1.04), "catalog_mag_noise": 0.02,
        "catalog_pos_noise_arcsec": 0.05, "catalog_g_shift_A": 50.0, "catalog_g_tilt": 0.3,
        "moffat_beta_range": (2.5, 4.5), "edge_stars_per_ifu": 2, "close_pairs_per_ifu": 1,
        "saturated_stars": 1, "profile_halo_fraction": 0.04, "profile_halo_scale_px": 4.0,
        "profile_half_window": 24, "cosmics_per_360s": 40.0,
        "cosmic_kinds": ("drk", "flt", "twi", "sci"), "cosmic_max_length_px": 4.0,
        "cosmic_track_e_range": (500.0, 20000.0), "drift_amp_rms_px": 0.03,
        "drift_amp_exposure_rms_px": 0.01,
    }
    harsh.update(overrides)
    return SimConfig(**harsh)  # type: ignore[arg-type]


def standard_ifuslots() -> tuple[int, ...]:
    """78 IFU slots of a full IHMP: rows 01-10 x columns 1-9 without the 4 corners, the
    centre block (rows 05-06, columns 4-6, guider/WFS) and slots 015 and 105."""
    excluded = {11, 19, 101, 109, 15, 105, 54, 55, 56, 64, 65, 66}
    slots = [r * 10 + c for r in range(1, 11) for c in range(1, 10) if r * 10 + c not in excluded]
    assert len(slots) == 78
    return tuple(slots)


def _key_int(key: object) -> int:
    if isinstance(key, (int, np.integer)):
        return int(key) & 0xFFFFFFFF
    return zlib.crc32(str(key).encode())


def rng_for(seed: int, *keys: object) -> np.random.Generator:
    """Independent generator for (seed, keys...): stable across processes and Python runs."""
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF,
                                                         *map(_key_int, keys)]))
