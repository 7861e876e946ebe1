"""The per-amp chain of the calibration graph: ``cal-identify`` (headers, expected ids) ->
``cal-bias`` -> ``cal-dark`` -> ``cal-flat`` (master flat, pixel mask, trace, scattered light,
profile) -> ``cal-arc`` (wavelength) -> ``cal-twilight`` (rectified twilight spectra), the
fiber-to-fiber fan-in and the amp's part file.  :mod:`remedy_dask.workflow.calibration` wires
them into the graph.

An amp whose step fails carries ``status="failed"`` and the reason into the file; no step ever
passes zeros off as a calibration.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from remedy_dask import geometry
from remedy_dask.config import CalibrationConfig
from remedy_dask.errors import CalibrationError, RawDataError
from remedy_dask.io import calfile
from remedy_dask.io.rawframe import FrameRef
from remedy_dask.workflow.frames import ReducedFrame, reduce_frames
from remedy_dask.workflow.nodes import flag_failures

log = logging.getLogger(__name__)


@dataclass
class AmpWork:
    """State of one amp through the calibration chain (each step returns a new one)."""

    key: str
    ifuslot: int
    amp: str
    specid: int = -1
    ifuid: int = -1
    contid: str = ""
    failed: str | None = None
    flags: list[str] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    qa: dict[str, Any] = field(default_factory=dict)
    read_noise: float = float("nan")
    data: dict[str, Any] = field(default_factory=dict)

    def but(self, **changes: Any) -> "AmpWork":
        """A copy with ``changes``; lists and dicts are copied so no task mutates its input."""
        new = replace(self, flags=list(self.flags), inputs=list(self.inputs), qa=dict(self.qa),
                      data=dict(self.data))
        for name, value in changes.items():
            setattr(new, name, value)
        return new


def _fail_amp(work: AmpWork, reason: str) -> AmpWork:
    out = work.but(failed=reason)
    out.flags.append(reason)
    return out


# skip failed amps; a CalibrationError/RawDataError or a bug becomes a failed amp with a reason
stage = flag_failures(_fail_amp, expected=(CalibrationError, RawDataError),
                      internal="internal error ", label=lambda work: f"amp {work.key}")


def _reduce_checked(work: AmpWork, refs: list[FrameRef], kind: str, minimum: int,
                    read_noise: float | None = None) -> tuple[AmpWork, list[ReducedFrame]]:
    """Reduce the frames of one kind, dropping unreadable ones and frames of another IFU."""
    from remedy_dask.amp.masters import frame_quality

    frames, dropped = reduce_frames(refs, read_noise)
    work = work.but()
    work.flags.extend(dropped)
    kept = []
    for f in frames:
        h = f.header
        if (h.specid, h.ifuid, h.ifuslot) != (work.specid, work.ifuid, work.ifuslot):
            work.flags.append(
                f"dropped {f.ref.name}: SPECID/IFUID/IFUSLOT {h.specid:03d}/{h.ifuid:03d}/"
                f"{h.ifuslot:03d} do not match {work.specid:03d}/{work.ifuid:03d}/{work.ifuslot:03d}"
            )
            continue
        reason = frame_quality(f.image, kind)
        if reason is not None:  # empty, saturated or the wrong level for its kind
            log.warning("amp %s: dropping %s: %s", work.key, f.ref.name, reason)
            work.flags.append(f"dropped {f.ref.name}: {reason}")
            continue
        kept.append(f)
        work.inputs.append(f.ref.name)
    if len(kept) < minimum:
        raise CalibrationError(f"{len(kept)} usable {kind} frame(s), at least {minimum} needed")
    return work, kept


@stage
def cal_identify(work: AmpWork, refs: list[FrameRef], expected: tuple[int, int] | None) -> AmpWork:
    """Decide the amp's SPECID/IFUID: from the fplane if given, else the majority of headers."""
    from remedy_dask.io.rawframe import read_header_model

    if expected is not None:
        return work.but(specid=expected[0], ifuid=expected[1])
    votes: dict[tuple[int, int, str], int] = defaultdict(int)
    for ref in refs:
        try:
            h = read_header_model(ref)
        except RawDataError as exc:
            log.warning("%s", exc)
            continue
        votes[(h.specid, h.ifuid, h.contid)] += 1
    if not votes:
        raise CalibrationError("no readable frame headers")
    (specid, ifuid, contid), _ = max(votes.items(), key=lambda kv: kv[1])
    return work.but(specid=specid, ifuid=ifuid, contid=contid)


@stage
def cal_bias(work: AmpWork, refs: list[FrameRef], config: CalibrationConfig) -> AmpWork:
    from remedy_dask.amp.ccd import smooth_master
    from remedy_dask.amp.masters import master_bias

    work, frames = _reduce_checked(work, refs, "zro", config.min_bias_frames)
    bias, read_noise = master_bias(np.stack([f.image for f in frames]))
    work.data["bias"], work.qa["bias_residual_rms"] = smooth_master(bias)
    work.read_noise = float(read_noise)
    work.qa["read_noise"] = float(read_noise)
    work.qa["n_zro"] = len(frames)
    return work


@stage
def cal_dark(work: AmpWork, refs: list[FrameRef], config: CalibrationConfig) -> AmpWork:
    from remedy_dask.amp.ccd import smooth_master
    from remedy_dask.amp.masters import master_dark

    work, frames = _reduce_checked(work, refs, "drk", config.min_dark_frames, work.read_noise)
    exptimes = np.array([f.header.exptime for f in frames])
    rate = master_dark(np.stack([f.image for f in frames]), work.data["bias"], exptimes)
    work.data["dark_rate_raw"] = rate  # per pixel: finds hot pixels; not stored
    work.data["dark_rate"], work.qa["dark_residual_rms"] = smooth_master(rate)
    work.qa["n_drk"] = len(frames)
    return work


def _master(work: AmpWork, frames: list[ReducedFrame], config: CalibrationConfig,
            normalize: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Bias- and dark-subtracted combination of frames; returns (master, variance)."""
    from remedy_dask.amp.ccd import subtract_bias_dark
    from remedy_dask.amp.masters import combine_frames

    bias, dark = work.data["bias"], work.data["dark_rate"]
    stack = np.stack([subtract_bias_dark(f.image, bias, dark, f.header.exptime) for f in frames])
    master, error = combine_frames(stack, method=config.combine, normalize=normalize)
    return master, error**2


@stage
def cal_flat(work: AmpWork, refs: list[FrameRef], config: CalibrationConfig,
             fiber_loc_dir: Path | None) -> AmpWork:
    from remedy_dask.amp.extract.optimal import extract_optimal
    from remedy_dask.amp.masters import pixel_mask
    from remedy_dask.amp.scatter import scattered_light
    from remedy_dask.amp.trace.fit import fit_trace

    work, frames = _reduce_checked(work, refs, "flt", config.min_flat_frames, work.read_noise)
    flat, flat_var = _master(work, frames, config)
    mask, mask_stats = pixel_mask(work.data["dark_rate_raw"], flat)
    ref_y = dead = None
    if fiber_loc_dir is not None:
        from remedy_dask.io.fiberloc import (
            find_fiber_location_file, locations_for_amp, read_fiber_locations,
        )

        path = find_fiber_location_file(fiber_loc_dir, work.specid, work.ifuslot, work.ifuid, work.amp)
        if path is None:
            work.flags.append(f"no fiber-location file in {fiber_loc_dir}: fibers placed by the slit pattern")
        else:
            floc, note = locations_for_amp(read_fiber_locations(path), path, work.specid,
                                           work.ifuid, work.amp, geometry.N_FIBERS_AMP)
            if note:
                log.info(note)
                work.flags.append(note)
            ref_y, dead = floc.y_ref, floc.dead
            work.inputs.append(Path(path).name)
    tr = fit_trace(flat, flat_var, mask, n_fibers=geometry.N_FIBERS_AMP, reference_y=ref_y, dead=dead)
    flat = flat - scattered_light(flat, tr.trace, mask)
    ex = extract_optimal(flat, flat_var, mask, tr.trace, tr.profile, poisson=False)
    work.data.update(pixel_mask=mask, trace=tr.trace, dead=tr.dead, profile=tr.profile,
                     flat_spectra=ex.spectrum)
    work.qa.update(_prefixed("trace", tr.qa))
    work.qa.update({f"mask_{k}": v for k, v in mask_stats.items() if np.isscalar(v)})
    work.qa.update(n_flt=len(frames), trace_rms_median=float(np.nanmedian(tr.rms)),
                   trace_rms_max=float(np.nanmax(tr.rms)), n_dead=int(tr.dead.sum()),
                   masked_pixel_fraction=float(mask.mean()))
    work.data["qa_trace_rms"] = tr.rms
    return work


@stage
def cal_arc(work: AmpWork, refs: list[FrameRef], config: CalibrationConfig) -> AmpWork:
    from remedy_dask.amp.extract.optimal import extract_optimal
    from remedy_dask.amp.scatter import scattered_light
    from remedy_dask.amp.wavelength import solve_wavelength

    work, frames = _reduce_checked(work, refs, "cmp", 1, work.read_noise)
    by_lamp: dict[str, list[ReducedFrame]] = defaultdict(list)
    for f in frames:
        by_lamp[f.header.object.strip().lower()].append(f)
    lamps = {lamp.lower() for lamp in geometry.ARC_LAMPS}
    missing = sorted(lamps - set(by_lamp))
    if missing:
        work.flags.append(f"arc lamp(s) missing in the window: {', '.join(missing)}")
    arc = np.zeros_like(frames[0].image)
    arc_var = np.zeros_like(arc)
    for lamp in sorted(lamps & set(by_lamp)):  # a fixed order: the sum is bit-reproducible
        master, var = _master(work, by_lamp[lamp], config)
        arc += master
        arc_var += var
    trace, mask = work.data["trace"], work.data["pixel_mask"]
    arc = arc - scattered_light(arc, trace, mask)
    ex = extract_optimal(arc, arc_var, mask, trace, work.data["profile"], poisson=False)
    sol = solve_wavelength(ex.spectrum, ex.error, dead=work.data["dead"])
    work.data.update(wavelength=sol.wavelength, arc_spectra=ex.spectrum, qa_arc_rms=sol.rms,
                     qa_n_lines=sol.n_lines)
    work.qa.update(_prefixed("arc", sol.qa))
    work.qa.update(arc_rms_median=float(np.nanmedian(sol.rms)),
                   arc_rms_max=float(np.nanmax(sol.rms)), arc_lamps=sorted(by_lamp))
    return work


@stage
def cal_twilight(work: AmpWork, refs: list[FrameRef], config: CalibrationConfig) -> AmpWork:
    from remedy_dask.amp.extract.optimal import extract_optimal
    from remedy_dask.amp.rectify import rectify
    from remedy_dask.amp.scatter import scattered_light

    work, frames = _reduce_checked(work, refs, "twi", config.min_twilight_frames, work.read_noise)
    twi, twi_var = _master(work, frames, config, normalize=True)
    trace, mask = work.data["trace"], work.data["pixel_mask"]
    twi = twi - scattered_light(twi, trace, mask)
    ex = extract_optimal(twi, twi_var, mask, trace, work.data["profile"], poisson=False)
    flux, error, rmask = rectify(ex.spectrum, ex.error, ex.mask, work.data["wavelength"])
    work.data.update(twilight_spectra=ex.spectrum, twi_flux=flux, twi_error=error, twi_mask=rmask)
    return work


def _prefixed(prefix: str, qa: dict[str, Any]) -> dict[str, Any]:
    return {f"{prefix}_{k}": v for k, v in qa.items() if np.isscalar(v) or isinstance(v, str)}


def twilight_piece(work: AmpWork) -> dict[str, Any] | None:
    """The small part of an amp's state that the fiber-to-fiber fan-in needs."""
    if work.failed:
        return None
    return {k: work.data[k] for k in ("twi_flux", "twi_error", "twi_mask", "dead")}


def cal_fiber_to_fiber(pieces: dict[str, dict[str, Any] | None],
                       positions: dict[str, tuple[np.ndarray, np.ndarray]],
                       config: CalibrationConfig) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Fan-in: fiber-to-fiber throughput relative to every fiber of the focal plane.

    Returns per amp key (ftf (112, 1036), dead (112,)).
    """
    from remedy_dask.exposure.fiberflat import fiber_to_fiber

    good = [k for k, p in pieces.items() if p is not None]
    if not good:
        return {}
    cat = lambda name: np.concatenate([pieces[k][name] for k in good])  # noqa: E731
    fx = np.concatenate([positions[k][0] for k in good])
    fy = np.concatenate([positions[k][1] for k in good])
    n_ifus = len({k[:3] for k in good})
    # the focal-plane illumination is only separable from per-IFU throughput with many IFUs
    degree = config.illumination_degree if n_ifus > 2 else 0
    ff = fiber_to_fiber(cat("twi_flux"), cat("twi_error"), cat("twi_mask"), fx, fy,
                        illumination_degree=degree, dead_threshold=config.dead_fiber_threshold)
    n = geometry.N_FIBERS_AMP
    return {
        k: (ff.ftf[i * n:(i + 1) * n], np.asarray(pieces[k]["dead"], bool) | ff.dead[i * n:(i + 1) * n])
        for i, k in enumerate(good)
    }


def ftf_of_amp(ftf: dict[str, tuple[np.ndarray, np.ndarray]], key: str
               ) -> tuple[np.ndarray, np.ndarray] | None:
    """One amp's (ftf, dead) from the fan-in (a small node: the focal-plane result is not
    copied to every worker that amends a part)."""
    return ftf.get(key)


def write_amp_part(work: AmpWork, parts_dir: Path) -> dict[str, Any]:
    """Write the amp's part file as soon as its chain is done, so that its state (masters,
    profile, spectra: ~24 MB per amp) is released before the focal-plane fan-in; the
    fiber-to-fiber result is added by :func:`finish_amp_part`."""
    path = calfile.write_calibration(parts_dir / f"{work.key}.h5", [to_amp_calibration(work)])
    return {"key": work.key, "path": str(path), "failed": bool(work.failed)}


def finish_amp_part(part: dict[str, Any], ftf: tuple[np.ndarray, np.ndarray] | None) -> Path:
    """Add the fan-in's fiber-to-fiber and dead fibers to an amp's part (or mark it failed)."""
    if part["failed"]:
        return Path(part["path"])
    if ftf is None:
        return calfile.amend_amp(part["path"], part["key"], {},
                                 failed="fiber-to-fiber: not computed")
    ftf_values, dead = ftf
    return calfile.amend_amp(part["path"], part["key"],
                             {"fiber_to_fiber": ftf_values, "dead": dead},
                             qa={"n_dead": int(np.sum(dead))})


def to_amp_calibration(work: AmpWork) -> calfile.AmpCalibration:
    names = ("trace", "wavelength", "bias", "dark_rate", "pixel_mask", "fiber_to_fiber", "dead",
             "flat_spectra", "twilight_spectra", "arc_spectra")
    arrays = {n: work.data[n] for n in names if n in work.data}
    profile = work.data.get("profile")
    qa_arrays = {k.removeprefix("qa_"): v for k, v in work.data.items() if k.startswith("qa_")}
    return calfile.AmpCalibration(
        ifuslot=work.ifuslot, amp=work.amp, specid=work.specid, ifuid=work.ifuid,
        contid=work.contid, read_noise=work.read_noise,
        status="failed" if work.failed else "ok", flags=work.flags, qa=work.qa, arrays=arrays,
        profile=profile.to_arrays() if profile is not None else {}, qa_arrays=qa_arrays,
        inputs=work.inputs,
    )
