"""Typed, validated configuration of every reduction parameter, loadable from YAML.

One ``PipelineConfig`` holds everything; ``remedy-dask config show`` prints the effective values.
A YAML file given with ``--config`` may set any subset; unknown keys are an error (no silent
typos).  The cluster sections live in ``configs/*.yaml`` and are read by ``workflow.cluster``.
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
            value = type(current)(value) if isinstance(current, float) else value
        if isinstance(current, str) and not isinstance(value, str):
            raise ConfigError(f"{where}.{key}: expected a string, got {value!r}")
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
    if config.reduction.extraction not in ("optimal", "aperture"):
        raise ConfigError(f"{path}: reduction.extraction must be 'optimal' or 'aperture'")
    if config.reduction.wave_shift_pooling not in ("ccd", "amp"):
        raise ConfigError(f"{path}: reduction.wave_shift_pooling must be 'ccd' or 'amp'")
    return config
