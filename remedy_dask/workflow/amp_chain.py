"""Task functions of the per-amplifier, per-exposure science chain.

``ccd`` (read, overscan, gain, bias, dark, pixel mask) -> ``trace-shift`` -> ``scattered-light``
-> ``extract`` -> ``wave-shift`` (measure) -> ``ccd-shift`` (pool with the other amp of the CCD,
apply) -> ``mask`` -> ``rectify`` -> ``checkpoint`` (zarr).  Images stay inside the
chain; only the rectified spectra leave it, through the zarr store.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from remedy_dask import geometry
from remedy_dask.amp.ccd import subtract_bias_dark
from remedy_dask.amp.wavelength import shifted_wavelength
from remedy_dask.config import ReductionConfig
from remedy_dask.errors import RawDataError
from remedy_dask.io import calfile, store
from remedy_dask.io.rawframe import FrameRef
from remedy_dask.workflow.faults import kill_if_chosen
from remedy_dask.workflow.frames import reduce_frame
from remedy_dask.workflow.nodes import flag_failures

log = logging.getLogger(__name__)


@dataclass
class AmpExposure:
    """State of one amp-exposure through the chain."""

    key: str  # 047LL
    exp: int
    ref: FrameRef | None
    image: np.ndarray | None = None
    variance: np.ndarray | None = None
    mask: np.ndarray | None = None
    trace: np.ndarray | None = None
    wavelength: np.ndarray | None = None
    exptime: float = float("nan")
    header: dict[str, Any] = field(default_factory=dict)
    trace_shift: float = 0.0
    wave_shift: float = 0.0
    wave_shift_error: float = float("nan")
    wave_shift_amp: float = float("nan")  # measured on this amp alone
    wave_shift_amp_error: float = float("nan")
    wave_shift_pooled: bool = False  # combined with the other amp of the CCD
    extraction: Any = None
    mask_counts: dict[str, Any] = field(default_factory=dict)
    failed: str | None = None
    notes: list[str] = field(default_factory=list)


def _fail_amp_exposure(ax: AmpExposure, reason: str) -> AmpExposure:
    ax.failed = reason
    ax.image = ax.variance = None
    return ax


# skip failed amp-exposures; an exception becomes a flagged failure of this amp only
chain_step = flag_failures(_fail_amp_exposure, prepare=lambda ax: replace(ax, notes=list(ax.notes)),
                           label=lambda ax: f"amp {ax.key} exp{ax.exp:02d}")


# what the chain uses of an amp's calibration (not the QA spectra of the flat, arc, twilight)
CHAIN_ARRAYS = ("bias", "dark_rate", "pixel_mask", "trace", "wavelength", "fiber_to_fiber", "dead")


def load_calibration(calfile_path: str, key: str) -> calfile.AmpCalibration:
    """Read one amp's calibration once; it is shared by all exposures of that amp."""
    return calfile.read_amp(calfile_path, key, arrays=CHAIN_ARRAYS, qa=False)


def ccd(ref: FrameRef, cal: calfile.AmpCalibration, exp: int) -> AmpExposure:
    """Read the frame, apply overscan/gain, subtract bias and dark, attach the pixel mask."""
    key = f"{ref.ifuslot:03d}{ref.amp}"
    kill_if_chosen(key, exp)
    try:
        frame = reduce_frame(ref, cal.read_noise)
    except RawDataError as exc:
        log.error("amp %s exp%02d skipped: %s", key, exp, exc)
        return AmpExposure(key, exp, ref, failed=f"unreadable frame: {exc}")
    h = frame.header
    mismatch = [f"{name.upper()}={getattr(h, name)} (calibration: {getattr(cal, name)})"
                for name in ("specid", "ifuid", "ifuslot") if getattr(h, name) != getattr(cal, name)]
    if mismatch:
        reason = (f"{ref.display_path}: header does not match the calibration of amp {key}: "
                  + ", ".join(mismatch))
        log.error("amp %s exp%02d skipped: %s", key, exp, reason)
        return AmpExposure(key, exp, ref, failed=reason)
    image = subtract_bias_dark(frame.image, cal["bias"], cal["dark_rate"], h.exptime)
    # Poisson variance of the dark and the bias' own noise are small; the frame's read noise
    # and photon noise dominate (variance from basic_reduce).
    header = {
        "exptime": h.exptime, "ra": h.ra_deg, "dec": h.dec_deg, "parangle": h.parangle,
        "object": h.object, "date": h.date, "specid": h.specid, "ifuid": h.ifuid,
    }
    return AmpExposure(
        key, exp, ref, image=np.asarray(image, np.float32), variance=frame.variance,
        mask=cal["pixel_mask"].astype(bool), trace=cal["trace"], wavelength=cal["wavelength"],
        exptime=h.exptime, header=header, notes=list(frame.notes),
    )


@chain_step
def trace_shift(ax: AmpExposure, config: ReductionConfig) -> AmpExposure:
    """Measure the frame's trace offset from the calibration and shift the trace."""
    if not config.measure_trace_shift:
        return ax
    from remedy_dask.amp.trace.shift import measure_trace_shift

    shift = float(measure_trace_shift(ax.image, ax.variance, ax.mask, ax.trace))
    ax.trace_shift = shift
    ax.trace = ax.trace + shift
    return ax


@chain_step
def scattered(ax: AmpExposure, config: ReductionConfig) -> AmpExposure:
    if not config.subtract_scattered_light:
        return ax
    from remedy_dask.amp.scatter import subtract_scattered_light

    ax.image = subtract_scattered_light(ax.image, ax.trace, ax.mask)
    return ax


@chain_step
def extract(ax: AmpExposure, cal: calfile.AmpCalibration, config: ReductionConfig) -> AmpExposure:
    from remedy_dask.amp.extract.optimal import extract_aperture, extract_optimal
    from remedy_dask.amp.profile.model import ProfileModel

    if config.extraction == "optimal":
        profile = ProfileModel.from_arrays(cal.profile)
        ax.extraction = extract_optimal(ax.image, ax.variance, ax.mask, ax.trace, profile)
    else:
        ax.extraction = extract_aperture(ax.image, ax.variance, ax.mask, ax.trace,
                                         config.aperture_half_width)
    ax.image = ax.variance = None  # images do not leave the chain
    return ax


def wave_shift(ax: AmpExposure, config: ReductionConfig) -> dict[str, Any] | None:
    """This amp-exposure's own wavelength shift from its night-sky lines: a small dict
    (``shift``, ``error`` px, or ``failed``), the only thing the other amp of the CCD needs.
    None when the amp failed earlier or the measurement is switched off."""
    if ax.failed or not config.measure_wavelength_shift:
        return None
    from remedy_dask.amp.skyshift import fit_wavelength_shift

    ex = ax.extraction
    try:
        fit = fit_wavelength_shift(ex.spectrum, ax.wavelength, ex.mask, error=ex.error,
                                   per_line=False)  # (the per-line QA is not kept here)
    except Exception as exc:  # the amp is flagged by apply_wave_shift, never set to zero
        log.exception("amp %s exp%02d: wavelength shift failed", ax.key, ax.exp)
        return {"failed": f"wave_shift: {type(exc).__name__}: {exc}"}
    return {"shift": float(fit.shift), "error": float(fit.error), "trace_shift": ax.trace_shift,
            "failed": None}


@chain_step
def apply_wave_shift(ax: AmpExposure, own: dict[str, Any] | None,
                     other: dict[str, Any] | None, config: ReductionConfig) -> AmpExposure:
    """Shift the wavelengths by the amp's measured shift, pooled with the other amp of its
    CCD (``ccdshift.pool_ccd_shift``) unless ``wave_shift_pooling`` is ``"amp"``."""
    if own is None:
        return ax
    if own["failed"]:
        raise RuntimeError(own["failed"])
    from remedy_dask.amp.ccdshift import pool_ccd_shift

    ax.wave_shift_amp, ax.wave_shift_amp_error = own["shift"], own["error"]
    usable = other is not None and not other.get("failed") and config.wave_shift_pooling == "ccd"
    pooled = pool_ccd_shift((own["shift"], own["error"]),
                            (other["shift"], other["error"]) if usable else None,
                            config.wave_shift_ccd_differential_px,
                            trace_difference=(own["trace_shift"] - other["trace_shift"]
                                              if usable else 0.0),
                            max_trace_difference=config.wave_shift_ccd_max_trace_difference_px)
    if pooled.note:
        log.warning("amp %s exp%02d: %s", ax.key, ax.exp, pooled.note)
        ax.notes.append(pooled.note)
    ax.wave_shift, ax.wave_shift_error, ax.wave_shift_pooled = (pooled.shift, pooled.error,
                                                                pooled.pooled)
    ax.wavelength = shifted_wavelength(ax.wavelength, pooled.shift)
    return ax


def stored_shift(root: str | Path, exp: int, amp_key: str) -> dict[str, Any] | None:
    """The own shift measurement of an amp-exposure already checkpointed (resumed run)."""
    attrs = store.read_attrs(root, exp, amp_key)
    if "wave_shift_amp" not in attrs or not np.isfinite(attrs["wave_shift_amp"]):
        return None
    return {"shift": float(attrs["wave_shift_amp"]), "error": float(attrs["wave_shift_amp_error"]),
            "trace_shift": float(attrs["trace_shift"]), "failed": None}


@chain_step
def mask_spectra(ax: AmpExposure, cal: calfile.AmpCalibration, config: ReductionConfig
                 ) -> AmpExposure:
    """Spectral mask on the native grid: chi2 (cosmics, bad columns), dead and low-throughput
    fibers, fibers and the amp with too much masked."""
    from remedy_dask.exposure.fiberflat import ftf_on_native
    from remedy_dask.amp.masking import spectral_mask

    ex = ax.extraction
    if not config.spectral_masking:  # the extraction's own mask only (unmeasured pixels)
        ax.mask_counts = {"skipped": "reduction.spectral_masking is false",
                          "extraction": int(np.count_nonzero(ex.mask))}
        return ax
    ftf = ftf_on_native(cal["fiber_to_fiber"], ax.wavelength)
    ftf[np.asarray(cal["dead"], bool)] = 0.0
    mask, counts = spectral_mask(
        ex.chi2, ex.mask, ftf, chi2_max=config.chi2_threshold,
        max_fiber_fraction=config.max_masked_fiber_fraction,
        max_amp_fraction=config.max_masked_amp_fraction,
    )
    ax.extraction = replace(ex, mask=mask)
    ax.mask_counts = {k: (int(v) if np.isscalar(v) else np.asarray(v).tolist())
                      for k, v in counts.items()}
    return ax


def rectify_and_store(ax: AmpExposure, root: str, key: str
                      ) -> dict[str, Any]:
    """Rectify onto DEF_WAVE (e-/s/A), write the zarr checkpoint, return a small summary."""
    summary = {"key": ax.key, "exp": ax.exp, "failed": ax.failed, "notes": ax.notes}
    if ax.failed:
        return summary
    from remedy_dask.amp.rectify import rectify

    ex = ax.extraction
    flux, error, mask = rectify(ex.spectrum, ex.error, ex.mask, ax.wavelength)
    rate = 1.0 / ax.exptime if ax.exptime > 0 else np.nan
    n = geometry.N_FIBERS_AMP
    ds = xr.Dataset(
        {
            "flux": (("fiber", "wave"), (flux * rate).astype(np.float32),
                     {"units": "electron / (s Angstrom)"}),
            "error": (("fiber", "wave"), (error * rate).astype(np.float32),
                      {"units": "electron / (s Angstrom)"}),
            "mask": (("fiber", "wave"), np.asarray(mask, np.uint8)),
            "native_flux": (("fiber", "column"), np.asarray(ex.spectrum, np.float32),
                            {"units": "electron"}),
            "native_error": (("fiber", "column"), np.asarray(ex.error, np.float32)),
            "native_mask": (("fiber", "column"), np.asarray(ex.mask, np.uint8)),
            "wavelength_native": (("fiber", "column"), ax.wavelength.astype(np.float32)),
            "rejected_pixels": ("rejected", _rejected_indices(ex),
                                {"description": "flat indices row*1032+col of CCD pixels "
                                                "rejected as outliers (cosmic rays)"}),
        },
        coords={"wave": geometry.DEF_WAVE, "fiber": np.arange(n)},
        attrs={
            "ifuslot": int(ax.key[:3]), "amp": ax.key[3:], "exp": ax.exp,
            "exptime": ax.exptime, "trace_shift": ax.trace_shift, "wave_shift": ax.wave_shift,
            "wave_shift_error": ax.wave_shift_error, "wave_shift_amp": ax.wave_shift_amp,
            "wave_shift_amp_error": ax.wave_shift_amp_error,
            "wave_shift_pooled": int(ax.wave_shift_pooled),
            "frame": ax.ref.name if ax.ref else "", "notes": "; ".join(ax.notes),
            "mask_counts": json.dumps(ax.mask_counts),
            **{f"header_{k}": (v if v is not None else "") for k, v in ax.header.items()},
        },
    )
    store.write_dataset(root, ax.exp, ax.key, ds, key)
    summary.update(trace_shift=ax.trace_shift, wave_shift=ax.wave_shift,
                   masked_fraction=float(np.mean(mask)))
    return summary


def _rejected_indices(extraction: Any) -> np.ndarray:
    """Flat (C-order) indices of the rejected pixels (a column-major mask is searched as it
    is stored: no C-ordered copy)."""
    rejected = getattr(extraction, "rejected", None)
    if rejected is None:
        return np.zeros(0, np.int32)
    rejected = np.asarray(rejected)
    if rejected.ndim == 2 and rejected.flags.f_contiguous and not rejected.flags.c_contiguous:
        cols, rows = np.divmod(np.flatnonzero(rejected.T), rejected.shape[0])
        return np.sort(rows * rejected.shape[1] + cols).astype(np.int32)
    return np.flatnonzero(rejected).astype(np.int32)
