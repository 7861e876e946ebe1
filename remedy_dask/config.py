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

from remedy_dask import geometry
from remedy_dask.errors import ConfigError


def setting(default: Any, doc: str) -> Any:
    """A configuration field with its one-line description (printed by ``config show``)."""
    if isinstance(default, list):
        return field(default_factory=lambda: [list(v) if isinstance(v, (list, tuple)) else v
                                              for v in default], metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})


@dataclass
class CalibrationConfig:
    """Parameters of ``remedy-dask calibrate``."""

    min_bias_frames: int = setting(3, "fewest usable bias frames per amp")
    min_dark_frames: int = setting(1, "fewest usable dark frames per amp")
    min_flat_frames: int = setting(1, "fewest usable flat frames per amp")
    min_twilight_frames: int = setting(1, "fewest usable twilight frames per amp")
    combine: str = setting("median", "how frames are combined into a master")
    dead_fiber_threshold: float = setting(
        0.5, "relative throughput below which a fiber is dead")
    illumination_degree: int = setting(
        1, "degree of the 2-D polynomial of the twilight illumination across the focal plane")


@dataclass
class ReductionConfig:
    """Parameters of the per-amplifier chain and the per-exposure fan-in."""

    extraction: str = setting(
        "optimal", "'optimal' or 'aperture' (Remedy's 5-pixel weighted aperture)")
    aperture_half_width: float = setting(2.5, "half width (pixels) of the aperture extraction")
    subtract_scattered_light: bool = setting(True, "model and subtract the scattered light")
    measure_trace_shift: bool = setting(True, "measure each frame's trace offset")
    measure_wavelength_shift: bool = setting(
        True, "measure each frame's wavelength shift on the night-sky lines")
    wave_shift_pooling: str = setting(
        "ccd", "'ccd': combine the wavelength shifts of a CCD's two amps; 'amp': each alone")
    wave_shift_ccd_differential_px: float = setting(
        0.005, "rms wavelength-shift difference (px) of a CCD's two halves")
    wave_shift_ccd_max_trace_difference_px: float = setting(
        0.02, "pool a CCD's shifts only if its halves' traces moved alike within this (px)")
    quick_sky: bool = setting(False, "global sky only, no smooth per-amp residual model")
    spectral_masking: bool = setting(
        True, "mask by the spectral rules (chi2, low throughput, dead fibers, fiber/column/amp "
        "fractions); false (Remedy's --no_masking, reduce --no-masking): only pixels the "
        "extraction could not measure are flagged")
    chi2_threshold: float = setting(5.0, "extraction chi2 above which a pixel is masked")
    max_masked_fiber_fraction: float = setting(
        0.2, "a fiber with a larger masked fraction is masked whole")
    max_masked_amp_fraction: float = setting(
        0.2, "an amp with a larger masked fraction is masked whole")


@dataclass
class ObservationConfig:
    """Parameters of astrometry, flux calibration, sources, detections and cubes."""

    dither_pattern: list[list[float]] = setting(
        [list(offset) for offset in geometry.DITHER_PATTERN],
        "dither offsets (arcsec, IFU frame) of the exposures")
    catalog_radius_deg: float = setting(0.25, "radius (deg) of the Pan-STARRS query")
    astrometry_gmag_range: list[float] = setting(
        [14.0, 21.5], "g range of the catalogue stars matched for the astrometry")
    astrometry_match_radii: list[float] = setting(
        [8.0, 2.0], "match radii (arcsec) of the successive astrometric fits")
    astrometry_refine_clip: float = setting(
        3.5, "clip (sigma) of the astrometric refinement on PSF-fitted positions")
    astrometry_refine_floor: float = setting(
        0.01, "floor (arcsec) of the residual scale of that refinement")
    psf_star_gmax: float = setting(19.5, "faintest g of the stars of the PSF fit")
    psf_star_radius: float = setting(4.5, "fibers within this (arcsec) of a star enter the PSF fit")
    psf_star_half_size: float = setting(
        22.0, "PSF stars within this (arcsec) of the IFU centre in x and y")
    source_gmax: float = setting(23.0, "faintest g of the catalogue sources extracted")
    source_half_size: float = setting(
        26.0, "sources within this (arcsec) of the IFU centre in x and y are extracted")
    detect: bool = setting(True, "search for emission lines")
    detection_threshold: float = setting(
        5.4, "matched-filter S/N of a detection (~0.3 false detections per IFU)")
    detection_continuum_error: float = setting(
        0.02, "fraction of each fiber's continuum added to the matched filter's noise (residual "
        "stellar features after the running-median continuum)")
    make_cube: bool = setting(True, "write the data cube of the target IFU")
    cube_pixscale: float = setting(0.5, "cube pixel size (arcsec)")
    psf_fit_beta: bool = setting(True, "fit the Moffat beta of each exposure (else psf_beta)")
    psf_beta: float = setting(3.5, "Moffat beta when not fitted, and the fit's starting value")
    psf_star_clip: float = setting(
        3.0, "drop PSF stars whose reduced chi^2 exceeds this x the median star's")
    psf_max_stars: int = setting(
        40, "the joint PSF fit uses at most this many of the brightest isolated stars (its cost "
        "grows with every star)")
    star_bright_limit: float = setting(
        15.0, "g: brighter catalogue stars saturate and do not calibrate")
    star_blend_radius: float = setting(
        15.0, "catalogue neighbours within this (arcsec) are considered for blending")
    star_blend_limit: float = setting(
        0.01, "neighbour / own light in a star's optimal extraction above which it is a blend")
    star_blend_fwhm: float = setting(
        1.8, "FWHM (arcsec) of the beta 2.5 Moffat that predicts a neighbour's light")
    star_min_coverage: float = setting(
        0.9, "PSF weight on the fibers relative to the IFU centre below which a star is at an edge")
    fluxcal_mag_range: list[float] = setting(
        [15.0, 19.0], "catalogue g range of the stars of the flux zero point")
    fluxcal_clip: float = setting(
        3.0, "reject stars with |g_cat - g_virus - median| > clip x max(1.4826 MAD, floor)")
    fluxcal_scatter_floor: float = setting(0.02, "floor (mag) of that clipping scale")
    astrometry_star_gmax: float = setting(
        20.5, "faintest catalogue g whose PSF-fitted position enters the astrometry")
    astrometry_catalog_error: float = setting(
        0.01, "floor (arcsec per axis) of the catalogue position error in the astrometric weights")
    deblend_radius: float = setting(
        8.0, "catalogue sources closer than this (arcsec) are extracted jointly")
    exposure_norm_min_stars: int = setting(
        3, "fewer stars in every exposure: per-exposure normalisation 1 (noted)")


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

    def describe(self) -> str:
        """The effective values as YAML, each with its description as a comment."""
        lines = []
        for section in dataclasses.fields(self):
            lines.append(f"{section.name}:")
            for f in dataclasses.fields(getattr(self, section.name)):
                value = yaml.safe_dump(getattr(getattr(self, section.name), f.name),
                                       default_flow_style=True).strip().removesuffix("\n...")
                lines.append(f"  {f.name}: {value}  # {f.metadata.get('doc', '')}")
        return "\n".join(lines) + "\n"

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
    ("observation", "detection_continuum_error"): (0.0, 1.0),
    ("observation", "cube_pixscale"): (0.05, 10.0),
    ("observation", "psf_beta"): (1.1, 20.0),
    ("observation", "psf_star_gmax"): (5.0, 30.0),
    ("observation", "psf_star_clip"): (1.0, 1e6),
    ("observation", "psf_max_stars"): (3, 100_000),
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
