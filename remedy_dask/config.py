"""Typed, validated configuration of every reduction parameter, loadable from YAML.

One ``PipelineConfig`` holds everything; ``remedy-dask config show`` prints the effective values.
A YAML file given with ``--config`` may set any subset; unknown keys are an error (no silent
typos).  The cluster settings live in ``remedy_dask/configs/*.yaml`` and are read by
``workflow.cluster_settings``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from remedy_dask.errors import ConfigError


@dataclass
class CalibrationConfig:
    """Parameters of ``remedy-dask calibrate``."""

    min_bias_frames: int = 3
    min_dark_frames: int = 1
    min_flat_frames: int = 1
    min_twilight_frames: int = 1
    combine: str = "median"
    dead_fiber_threshold: float = 0.5  # relative throughput below which a fiber is dead
    illumination_degree: int = 1  # 2-D polynomial of the twilight illumination across the focal plane


@dataclass
class ReductionConfig:
    """Parameters of the per-amplifier chain and the per-exposure fan-in."""

    extraction: str = "optimal"  # "optimal" or "aperture" (Remedy's 5-pixel weighted aperture)
    aperture_half_width: float = 2.5
    subtract_scattered_light: bool = True
    measure_trace_shift: bool = True
    measure_wavelength_shift: bool = True
    wave_shift_pooling: str = "ccd"  # "ccd": combine the two amps of a CCD; "amp": each alone
    wave_shift_ccd_differential_px: float = 0.005  # rms shift difference of a CCD's two halves
    wave_shift_ccd_max_trace_difference_px: float = 0.02  # halves moved alike: pool only then
    mask_bad_pixels: bool = True  # NaN the masked pixels in the products
    quick_sky: bool = False  # global sky only, no smooth per-amp residual model
    chi2_threshold: float = 5.0
    max_masked_fiber_fraction: float = 0.2
    max_masked_amp_fraction: float = 0.2


@dataclass
class ObservationConfig:
    """Parameters of astrometry, flux calibration, sources, detections and cubes."""

    dither_pattern: list[list[float]] = field(
        default_factory=lambda: [[0.0, 0.0], [1.215, -0.70], [1.215, 0.70]]
    )
    catalog_radius_deg: float = 0.25
    detect: bool = True
    detection_threshold: float = 5.4  # matched-filter S/N: ~0.3 false detections per IFU
    make_cube: bool = True
    cube_pixscale: float = 0.5  # arcsec
    psf_fit_beta: bool = True  # fit the Moffat beta of each exposure (else psf_beta for all)
    psf_beta: float = 3.5  # Moffat beta when not fitted, and the fit's starting value
    psf_star_gmax: float = 19.5  # faintest catalogue g used for the PSF fit
    psf_star_clip: float = 3.0  # drop PSF stars with reduced chi^2 above this x the median star's
    star_bright_limit: float = 15.0  # g: brighter stars saturate; not used to calibrate
    star_blend_radius: float = 15.0  # arcsec: catalogue neighbours considered for blending
    star_blend_limit: float = 0.01  # neighbour / own light in the optimal extraction: above = blend
    star_blend_fwhm: float = 1.8  # arcsec: FWHM of the beta 2.5 Moffat predicting neighbour light
    star_min_coverage: float = 0.9  # PSF weight on the fibers relative to the IFU centre: below = edge
    fluxcal_mag_range: list[float] = field(default_factory=lambda: [15.0, 19.0])  # catalogue g
    fluxcal_clip: float = 3.0  # reject |g_cat - g_virus - median| > clip x max(1.4826 MAD, floor)
    fluxcal_scatter_floor: float = 0.02  # mag: floor of the clipping scale
    astrometry_star_gmax: float = 20.5  # faintest catalogue g whose fitted position enters the astrometry
    astrometry_catalog_error: float = 0.01  # arcsec per axis: floor of the catalogue position error (weights; re-estimated from the residuals)
    deblend_radius: float = 8.0  # arcsec: catalogue sources this close are extracted jointly
    exposure_norm_min_stars: int = 3  # fewer stars in every exposure: normalisation 1 (noted)


@dataclass
class PipelineConfig:
    """All configuration of one run."""

    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    reduction: ReductionConfig = field(default_factory=ReductionConfig)
    observation: ObservationConfig = field(default_factory=ObservationConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def section_hash(self, name: str) -> str:
        """Stable short hash of one section: part of the key of resumable intermediates."""
        payload = json.dumps(self.to_dict()[name], sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _update_dataclass(obj: Any, values: dict[str, Any], where: str) -> None:
    names = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"{where}: unknown setting '{key}' (known: {', '.join(names)})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}.{key}: expected a mapping")
            _update_dataclass(current, value, f"{where}.{key}")
            continue
        if isinstance(current, bool) and not isinstance(value, bool):
            raise ConfigError(f"{where}.{key}: expected true/false, got {value!r}")
        if isinstance(current, (int, float)) and not isinstance(current, bool):
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ConfigError(f"{where}.{key}: expected a number, got {value!r}")
            if isinstance(current, int) and not float(value).is_integer():
                raise ConfigError(f"{where}.{key}: expected an integer, got {value!r}")
            value = type(current)(value)
        if isinstance(current, str) and not isinstance(value, str):
            raise ConfigError(f"{where}.{key}: expected a string, got {value!r}")
        if isinstance(current, list) and not isinstance(value, list):
            raise ConfigError(f"{where}.{key}: expected a list, got {value!r}")
        setattr(obj, key, value)


def load_config(path: str | Path | None = None) -> PipelineConfig:
    """Defaults, updated by the YAML file at ``path`` if given."""
    config = PipelineConfig()
    if path is None:
        return config
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of sections")
    _update_dataclass(config, values, path.name)
    validate(config, str(path))
    return config


CHOICES = {("calibration", "combine"): ("median", "mean_clipped"),
           ("reduction", "extraction"): ("optimal", "aperture"),
           ("reduction", "wave_shift_pooling"): ("ccd", "amp")}
# (section, name) -> (low, high): inclusive bounds of numbers
RANGES = {
    ("calibration", "min_bias_frames"): (1, 1000), ("calibration", "min_dark_frames"): (1, 1000),
    ("calibration", "min_flat_frames"): (1, 1000),
    ("calibration", "min_twilight_frames"): (1, 1000),
    ("calibration", "dead_fiber_threshold"): (0.0, 1.0),
    ("calibration", "illumination_degree"): (0, 5),
    ("reduction", "aperture_half_width"): (0.5, 10.0),
    ("reduction", "wave_shift_ccd_differential_px"): (0.0, 10.0),
    ("reduction", "wave_shift_ccd_max_trace_difference_px"): (0.0, 10.0),
    ("reduction", "chi2_threshold"): (0.1, 1e6),
    ("reduction", "max_masked_fiber_fraction"): (0.0, 1.0),
    ("reduction", "max_masked_amp_fraction"): (0.0, 1.0),
    ("observation", "catalog_radius_deg"): (0.001, 5.0),
    ("observation", "detection_threshold"): (0.0, 1e3),
    ("observation", "cube_pixscale"): (0.05, 10.0),
    ("observation", "psf_beta"): (1.1, 20.0),
    ("observation", "psf_star_gmax"): (5.0, 30.0),
    ("observation", "psf_star_clip"): (1.0, 1e6),
    ("observation", "star_bright_limit"): (0.0, 30.0),
    ("observation", "star_blend_radius"): (0.0, 60.0),
    ("observation", "star_blend_limit"): (0.0, 100.0),
    ("observation", "star_blend_fwhm"): (0.3, 10.0),
    ("observation", "star_min_coverage"): (0.0, 1.0),
    ("observation", "fluxcal_clip"): (1.0, 100.0),
    ("observation", "fluxcal_scatter_floor"): (0.0, 1.0),
    ("observation", "exposure_norm_min_stars"): (1, 1000),
    ("observation", "deblend_radius"): (0.0, 60.0),
    ("observation", "astrometry_star_gmax"): (5.0, 30.0),
    ("observation", "astrometry_catalog_error"): (0.0, 10.0),
}
MAX_DITHER_ARCSEC = 60.0


def validate(config: PipelineConfig, where: str = "configuration") -> None:
    """Choices, numeric ranges and the dither pattern; raises ConfigError naming the setting."""
    for (section, name), allowed in CHOICES.items():
        value = getattr(getattr(config, section), name)
        if value not in allowed:
            raise ConfigError(f"{where}: {section}.{name} must be "
                              f"{' or '.join(map(repr, allowed))}, got {value!r}")
    for (section, name), (lo, hi) in RANGES.items():
        value = getattr(getattr(config, section), name)
        if not lo <= value <= hi:
            raise ConfigError(f"{where}: {section}.{name}={value!r} is outside [{lo}, {hi}]")
    mags = config.observation.fluxcal_mag_range
    if not (isinstance(mags, list) and len(mags) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in mags)
            and mags[0] < mags[1]):
        raise ConfigError(f"{where}: observation.fluxcal_mag_range must be [bright, faint] "
                          f"catalogue g with bright < faint, got {mags!r}")
    dither = config.observation.dither_pattern
    ok = isinstance(dither, list) and dither and all(
        isinstance(d, (list, tuple)) and len(d) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                and abs(v) <= MAX_DITHER_ARCSEC for v in d) for d in dither)
    if not ok:
        raise ConfigError(f"{where}: observation.dither_pattern must be a list of [dx, dy] "
                          f"offsets in arcsec (|offset| <= {MAX_DITHER_ARCSEC:g}), one per "
                          f"exposure, got {dither!r}")


def check_dither(config: PipelineConfig, exposures: list[int], where: str) -> None:
    """The dither pattern must give an offset for every exposure number."""
    n = len(config.observation.dither_pattern)
    if exposures and max(exposures) > n:
        raise ConfigError(f"{where}: observation.dither_pattern has {n} offset(s) but the "
                          f"observation has exposure {max(exposures)}: give one per exposure")
