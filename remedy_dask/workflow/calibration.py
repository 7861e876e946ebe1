"""The calibration graph: one chain of Dask nodes per amplifier
(:mod:`remedy_dask.workflow.cal_chain`), one fan-in for fiber-to-fiber.

Per amp: ``cal-identify`` (headers, expected ids) -> ``cal-bias`` -> ``cal-dark`` -> ``cal-flat``
(master flat, pixel mask, trace, scattered light, profile) -> ``cal-arc`` (wavelength) ->
``cal-twilight`` (rectified twilight spectra) -> ``cal-write-amp`` (a part file, which releases
the amp's state).  Fan-in: ``cal-fiber-to-fiber`` over the twilight pieces of all amps, then
``cal-finish-amp`` adds each amp's result to its part and ``cal-merge`` joins the parts into the
final HDF5.

An amp whose step fails carries ``status="failed"`` and the reason into the file; no step ever
passes zeros off as a calibration.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import dask
import numpy as np

from remedy_dask import __version__, geometry
from remedy_dask.config import PipelineConfig
from remedy_dask.errors import RemedyError
from remedy_dask.io import calfile
from remedy_dask.io.raw import RawArchive
from remedy_dask.io.rawframe import FrameRef
from remedy_dask.requests import CalibrateRequest
from remedy_dask.workflow.cal_chain import (
    AmpWork, cal_arc, cal_bias, cal_dark, cal_fiber_to_fiber, cal_flat, cal_identify,
    cal_twilight, finish_amp_part, ftf_of_amp, twilight_piece, write_amp_part,
)
from remedy_dask.workflow.cluster import compute, open_client
from remedy_dask.workflow.nodes import gather, gather_dict

log = logging.getLogger(__name__)


def build_calibration_graph(
    refs: list[FrameRef], dates: list[str], rootdir: Path, out: Path, config: PipelineConfig,
    positions: dict[str, tuple[np.ndarray, np.ndarray]],
    ifuslots: list[int] | None = None, fplane: dict | None = None,
    fiber_loc_dir: Path | None = None,
) -> tuple[Any, list[str]]:
    """Build the delayed graph of the frames ``refs`` of the nights ``dates`` under ``rootdir``;
    returns (final delayed, amp keys).

    ``positions`` maps amp keys to the focal-plane (x, y) arcsec of their 112 fibers.
    """
    by_amp: dict[tuple[int, str], dict[str, list[FrameRef]]] = defaultdict(lambda: defaultdict(list))
    for ref in refs:
        if ifuslots and ref.ifuslot not in ifuslots:
            continue
        by_amp[(ref.ifuslot, ref.amp)][ref.kind].append(ref)
    if not by_amp:
        raise RemedyError(f"no calibration frames found for {', '.join(dates)} under {rootdir}")
    cc = config.calibration
    # ends every task name: two calibrations in one cluster (reduce-range) never share a task
    tag = f"{dates[0]}_{hashlib.sha1(str(out).encode()).hexdigest()[:8]}"
    parts_dir = out.with_name(out.name + ".parts")
    works, pieces, keys = [], {}, []
    for (slot, amp), kinds in sorted(by_amp.items()):
        key = f"{slot:03d}{amp}"
        keys.append(key)

        def node(func: Callable[..., Any], *args: Any, step: str) -> Any:
            return dask.delayed(func, pure=False)(*args, dask_key_name=f"cal-{step}-{key}-{tag}")

        expected = None
        if fplane is not None and slot in fplane:
            expected = (fplane[slot].specid, fplane[slot].ifuid)
        w = node(cal_identify, AmpWork(key, slot, amp), kinds["flt"] + kinds["twi"], expected,
                 step="identify")
        w = node(cal_bias, w, kinds["zro"], cc, step="bias")
        w = node(cal_dark, w, kinds["drk"], cc, step="dark")
        w = node(cal_flat, w, kinds["flt"], cc, fiber_loc_dir, step="flat")
        w = node(cal_arc, w, kinds["cmp"], cc, step="arc")
        w = node(cal_twilight, w, kinds["twi"], cc, step="twilight")
        pieces[key] = node(twilight_piece, w, step="twilight-piece")
        works.append(node(write_amp_part, w, parts_dir, step="write-amp"))
    ftf = dask.delayed(cal_fiber_to_fiber, pure=False)(
        gather_dict(pieces, f"cal-twilight-all-{tag}"), positions, cc, dask_key_name=f"cal-fiber-to-fiber-{tag}")
    parts = [
        dask.delayed(finish_amp_part, pure=False)(
            part, dask.delayed(ftf_of_amp, pure=False)(ftf, k, dask_key_name=f"cal-ftf-{k}-{tag}"),
            dask_key_name=f"cal-finish-amp-{k}-{tag}")
        for part, k in zip(works, keys)
    ]
    attrs = {"window": dates, "config": config.to_yaml(), "code_version": __version__}
    final = dask.delayed(calfile.merge_parts, pure=False)(gather(parts, f"cal-parts-{tag}"), out, attrs,
                                                          dask_key_name=f"cal-merge-{tag}")
    return final, keys


def focal_positions(keys: list[str], fplane: dict | None, ifucen: Any
                    ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str]]:
    """Focal-plane (x, y) arcsec of each amp's fibers; slots missing from the fplane are
    placed on the nominal IHMP grid (100" pitch) and reported."""
    from remedy_dask.io.ifucen import amp_fiber_positions

    notes, out = [], {}
    for key in keys:
        x, y, x0, y0, note = amp_fiber_positions(ifucen, fplane, key)
        if note:
            notes.append(note)
        out[key] = (x + x0, y + y0)
    return out, sorted(set(notes))


def run_calibrate(req: CalibrateRequest) -> Path:
    """``remedy-dask calibrate``: plan and build the graph (bad input stops here, before any
    cluster starts), then run it on the chosen cluster."""
    with _calibration_run(req) as build:
        with open_client(**req.cluster.client_kwargs()) as client:
            return _finish(req, build, client)


def calibrate(req: CalibrateRequest, client: Any) -> Path:
    """The calibration of ``req`` on a running ``client`` (None: synchronous)."""
    with _calibration_run(req) as build:
        return _finish(req, build, client)


@contextlib.contextmanager
def _calibration_run(req: CalibrateRequest) -> Iterator[tuple[Any, list[str], float]]:
    """Hold the lock of the output file's folder and build the graph; the per-amp parts
    (``CAL.h5.parts/``) are removed after the merge, or when the run fails."""
    import shutil

    from remedy_dask.io.lock import output_lock

    out = Path(req.out)
    with output_lock(out.parent, f".{out.name}.remedy-dask.lock"):
        try:
            yield _build(req)
        finally:
            shutil.rmtree(out.with_name(out.name + ".parts"), ignore_errors=True)


def _build(req: CalibrateRequest) -> tuple[Any, list[str], float]:
    """(final delayed, amp keys, start time) of the calibration of ``req``."""
    from datetime import datetime, timedelta

    from remedy_dask.io.fplane import read_fplane
    from remedy_dask.io.ifucen import read_ifucen, standard_ifucen

    start = datetime.strptime(req.date, "%Y%m%d")
    dates = [(start + timedelta(days=i)).strftime("%Y%m%d") for i in range(req.days)]
    archive = RawArchive(req.rootdir)
    fplane = read_fplane(req.fplane) if req.fplane else None
    ifucen = read_ifucen(req.ifucen) if req.ifucen else standard_ifucen()
    t0 = time.perf_counter()
    refs = archive.frames_in_window(dates, geometry.FRAME_KINDS)
    keys = sorted({f"{r.ifuslot:03d}{r.amp}" for r in refs
                   if r.kind == "flt" and (not req.ifuslots or r.ifuslot in req.ifuslots)})
    positions, notes = focal_positions(keys, fplane, ifucen)
    for note in notes:
        log.warning(note)
    final, keys = build_calibration_graph(
        refs, dates, archive.rootdir, Path(req.out), req.config, positions, ifuslots=req.ifuslots,
        fplane=fplane, fiber_loc_dir=req.fiber_locations,
    )
    return final, keys, t0


def _finish(req: CalibrateRequest, build: tuple[Any, list[str], float], client: Any) -> Path:
    """Compute the built graph, write the QA page and print the summary."""
    from remedy_dask.qa.calibration import calibration_report

    final, keys, t0 = build
    path = compute(final, client)
    statuses = calfile.amp_statuses(path)
    failed = {k: v for k, v in statuses.items() if v != "ok"}
    report = calibration_report(path)
    print(f"calibration of {len(keys)} amps written to {path} in {time.perf_counter() - t0:.1f} s "
          f"({len(failed)} failed)")
    for key, status in sorted(failed.items()):
        print(f"  {key}: {status}")
    print(f"QA report: {report}")
    return path
