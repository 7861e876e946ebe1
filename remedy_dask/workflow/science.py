"""The science graph of one observation.

Per (exposure, amp): the chain of ``workflow.amp_chain`` (``load-cal`` is shared by the
exposures of an amp).  Per exposure: ``sky-expNN`` fans in every amp of the exposure from the
zarr store (fiber-to-fiber, masking, sky).  Per observation: ``observation`` (astrometry, flux
calibration, sources, detections, cubes) and ``write-products``.

A rerun with the same inputs skips every amp-exposure whose checkpoint is complete.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import numpy as np

from remedy_dask import __version__, geometry
from remedy_dask.config import PipelineConfig, load_config
from remedy_dask.errors import RemedyError
from remedy_dask.io import calfile, store
from remedy_dask.io.raw import FrameRef, RawArchive
from remedy_dask.workflow import amp_chain
from remedy_dask.workflow.cluster import open_client

log = logging.getLogger(__name__)


@dataclass
class ObservationPlan:
    """What one ``reduce`` run will do."""

    date: str
    obs: int
    target_slot: int
    slots: list[int]
    exposures: list[int]
    refs: dict[tuple[int, str], FrameRef]  # (exp, amp key) -> frame
    cal_keys: list[str]  # amps with a usable calibration
    skipped: list[str]  # reasons for amps left out


def select_slots(available: list[int], target: int, neighbor_dist: int, all_ifus: bool) -> list[int]:
    """The target slot and its IHMP neighbours within ``neighbor_dist`` rows/columns."""
    if all_ifus:
        return sorted(available)
    if target not in available:
        raise RemedyError(f"IFU slot {target:03d} is not in this observation "
                          f"(slots: {', '.join(f'{s:03d}' for s in sorted(available))})")
    r0, c0 = geometry.slot_row_col(target)
    return sorted(s for s in available
                  if abs(geometry.slot_row_col(s)[0] - r0) <= neighbor_dist
                  and abs(geometry.slot_row_col(s)[1] - c0) <= neighbor_dist)


def plan_observation(archive: RawArchive, date: str, obs: int, target_slot: int, cal_path: Path,
                     neighbor_dist: int = 1, all_ifus: bool = False) -> ObservationPlan:
    refs = archive.frames(date, obs, kind="sci")
    if not refs:
        raise RemedyError(f"no science frames for {date} observation {obs:07d} under {archive.root}")
    slots = select_slots(sorted({r.ifuslot for r in refs}), target_slot, neighbor_dist, all_ifus)
    exposures = sorted({r.exp for r in refs})
    by_key = {(r.exp, f"{r.ifuslot:03d}{r.amp}"): r for r in refs if r.ifuslot in slots}
    cal_status = calfile.amp_statuses(cal_path)
    skipped, cal_keys = [], []
    for slot in slots:
        for amp in geometry.AMPS:
            key = f"{slot:03d}{amp}"
            status = cal_status.get(key)
            if status is None:
                skipped.append(f"{key}: no calibration in {cal_path.name}")
            elif status != "ok":
                skipped.append(f"{key}: calibration {status}")
            elif not any((e, key) in by_key for e in exposures):
                skipped.append(f"{key}: no science frames")
            else:
                cal_keys.append(key)
                for e in exposures:
                    if (e, key) not in by_key:
                        skipped.append(f"{key} exp{e:02d}: frame missing")
    for reason in skipped:
        log.warning("left out: %s", reason)
    return ObservationPlan(date, obs, target_slot, slots, exposures, by_key, cal_keys, skipped)


def build_amp_graph(plan: ObservationPlan, cal_path: Path, work_root: Path,
                    config: PipelineConfig) -> tuple[dict[int, list[Any]], int]:
    """Delayed chains per exposure; returns ({exp: [summaries]}, number of chains skipped).

    Each chain measures its wavelength shift (``wave-shift``, a small result) and applies it
    pooled with the other amp of its CCD (``ccd-shift``); a partner already checkpointed
    contributes its stored measurement.  Each exposure lists its amps in the plan's order,
    resumed or not (the exposure fan-in concatenates them in that order)."""
    rc = config.reduction
    chash = config.section_hash("reduction")
    chains: dict[tuple[int, str], Any] = {}  # in plan order: a summary (resumed) or a delayed one
    pending: dict[tuple[int, str], tuple[Any, Any, Any, str]] = {}  # (ax, shift, cal, ikey)
    resumed: set[tuple[int, str]] = set()
    for key in plan.cal_keys:
        cal = None
        partner = _partner_key(plan, key)
        for exp in plan.exposures:
            ref = plan.refs.get((exp, key))
            if ref is None:
                continue
            ikey = amp_chain.frame_input_key(ref, cal_path, chash, __version__,
                                             plan.refs.get((exp, partner)) if partner else None)
            if store.is_complete(work_root, exp, key, ikey):
                resumed.add((exp, key))
                chains[(exp, key)] = {"key": key, "exp": exp, "failed": None, "resumed": True}
                continue
            if cal is None:
                cal = dask.delayed(amp_chain.load_calibration, pure=True)(
                    str(cal_path), key, dask_key_name=f"load-cal-{key}")
            node = _chain_node(key, exp)
            ax = node(amp_chain.ccd, ref, cal, exp, step="ccd")
            ax = node(amp_chain.trace_shift, ax, rc, step="trace-shift")
            ax = node(amp_chain.scattered, ax, rc, step="scattered-light")
            ax = node(amp_chain.extract, ax, cal, rc, step="extract")
            measured = node(amp_chain.wave_shift, ax, rc, step="wave-shift")
            pending[(exp, key)] = (ax, measured, cal, ikey)
            chains[(exp, key)] = None  # its place; built below, once every shift is known
    for (exp, key), (ax, measured, cal, ikey) in pending.items():
        partner = _partner_key(plan, key)
        other = None
        if partner and (exp, partner) in pending:
            other = pending[(exp, partner)][1]
        elif partner and (exp, partner) in resumed:
            other = amp_chain.stored_shift(work_root, exp, partner)
        node = _chain_node(key, exp)
        ax = node(amp_chain.apply_wave_shift, ax, measured, other, rc, step="ccd-shift")
        ax = node(amp_chain.mask_spectra, ax, cal, rc, step="mask")
        chains[(exp, key)] = node(amp_chain.rectify_and_store, ax, str(work_root), ikey,
                                  step="rectify")
    summaries: dict[int, list[Any]] = defaultdict(list)
    for (exp, _), chain in chains.items():
        summaries[exp].append(chain)
    return summaries, len(resumed)


def _chain_node(key: str, exp: int) -> Any:
    """``node(func, *args, step=...)``: a delayed task of the chain of (``key``, ``exp``), named
    ``{step}-{key}-expNN`` (the names the dashboard and the benchmarks group by)."""
    def node(func: Any, *args: Any, step: str) -> Any:
        return dask.delayed(func, pure=False)(*args, dask_key_name=f"{step}-{key}-exp{exp:02d}")
    return node


def _partner_key(plan: ObservationPlan, key: str) -> str | None:
    """The other amp of the CCD, if it is reduced in this run."""
    partner = key[:3] + geometry.ccd_partner(key[3:])
    return partner if partner in plan.cal_keys else None


@dataclass
class Reduction:
    """One observation's graph, ready to compute."""

    plan: ObservationPlan
    final: Any
    out: Path
    catalog: Any
    n_resumed: int


def build_reduction(args: Any, config: PipelineConfig, archive: RawArchive) -> Reduction:
    """Plan one observation and build its whole graph (amp chains, exposures, observation)."""
    from remedy_dask.workflow.exposure import build_exposure_graph
    from remedy_dask.workflow.finalize import build_observation_graph

    cal_path = Path(args.calfile)
    plan = plan_observation(archive, args.date, args.obs, args.ifuslot, cal_path,
                            args.neighbor_dist, args.all_ifus)
    if not plan.cal_keys:
        raise RemedyError("no amplifier of the selected IFUs can be reduced: "
                          + "; ".join(plan.skipped[:5]))
    out = Path(args.out)
    work_root = out / "work" / f"{args.date}_{args.obs:07d}.zarr"
    work_root.mkdir(parents=True, exist_ok=True)
    store.clean_temporaries(work_root)
    summaries, n_done = build_amp_graph(plan, cal_path, work_root, config)
    if n_done:
        print(f"resuming: {n_done} amp-exposure(s) already reduced in {work_root}")
    exposures = build_exposure_graph(plan, summaries, cal_path, work_root, args, config)
    cond, catalog, pointing = prepare_observation(plan, archive, args, config, out)
    final = build_observation_graph(plan, exposures, cal_path, out, args, config, cond, catalog,
                                    pointing, injection=_injection(args, plan))
    return Reduction(plan, final, out, catalog, n_done)


def report(red: Reduction, product: str, seconds: float) -> Path:
    """QA page and the closing lines of a reduction."""
    from remedy_dask.qa.observation import observation_report

    t1 = time.perf_counter()
    page = observation_report(product, catalog=red.catalog)
    print(f"reduced {len(red.plan.cal_keys)} amps x {len(red.plan.exposures)} exposures "
          f"in {seconds:.1f} s: {product}")
    for reason in red.plan.skipped:
        print(f"  left out: {reason}")
    print(f"QA report: {page} ({time.perf_counter() - t1:.1f} s)")
    return page


def run_reduce(args: Any) -> Path:
    """``remedy-dask reduce``: plan, build the graph, run it, write the products."""
    config = load_config(getattr(args, "config", None))
    t0 = time.perf_counter()
    red = build_reduction(args, config, RawArchive(args.rootdir))
    with open_client(args.cluster, args.workers, getattr(args, "cluster_config", None)) as client:
        product = _compute_with_progress(red.final, client, red.out, red.plan)
    report(red, product, time.perf_counter() - t0)
    return Path(product)


def run_reduce_night(args: Any) -> dict[int, str]:
    """``remedy-dask reduce-night``: every science observation of a night in one cluster, each
    isolated (one failing observation does not stop the others), and a summary table."""
    import copy

    from remedy_dask.workflow.cluster import compute

    config = load_config(getattr(args, "config", None))
    archive = RawArchive(args.rootdir)
    observations = args.observations or [
        o for o in archive.observations(args.date) if archive.frames(args.date, o, kind="sci")]
    if not observations:
        raise RemedyError(f"no science observations on {args.date} under {args.rootdir}")
    results: dict[int, str] = {}
    reductions: dict[int, Reduction] = {}
    t0 = time.perf_counter()
    for obs in observations:
        a = copy.copy(args)
        a.obs, a.all_ifus = obs, True
        a.ifuslot = archive.ifuslots(args.date, obs, "sci")[0] if archive.ifuslots(
            args.date, obs, "sci") else 0
        try:
            reductions[obs] = build_reduction(a, config, archive)
        except RemedyError as exc:
            results[obs] = f"failed: {exc}"
    with open_client(args.cluster, args.workers, getattr(args, "cluster_config", None)) as client:
        # all observations share the cluster: submitted together, collected one by one
        pending = {obs: (client.compute(red.final) if client is not None else red.final)
                   for obs, red in reductions.items()}
        if client is not None and pending:
            from remedy_dask.workflow.progress import wait_with_progress

            wait_with_progress(list(pending.values()))
        for obs, job in pending.items():
            try:
                results[obs] = job.result() if client is not None else compute(job, None)
            except Exception as exc:  # one failing observation does not stop the others
                log.exception("observation %07d failed", obs)
                results[obs] = f"failed: {type(exc).__name__}: {exc}"
    for obs, red in reductions.items():
        if not str(results[obs]).startswith("failed"):
            from remedy_dask.qa.observation import observation_report

            observation_report(results[obs], catalog=red.catalog)
    print(f"\nnight {args.date}: {len(observations)} observation(s) in "
          f"{time.perf_counter() - t0:.0f} s")
    print(f"{'obs':>8}  {'amps':>5}  result")
    for obs in observations:
        n = len(reductions[obs].plan.cal_keys) if obs in reductions else 0
        print(f"{obs:08d}  {n:5d}  {results[obs]}")
    return results


def _injection(args: Any, plan: ObservationPlan) -> Any:
    """The ``--source-file/--source-x/--source-y/--source-seeing`` injection, if requested."""
    if not getattr(args, "source_file", None):
        return None
    from remedy_dask.io.throughput import read_source_spectrum
    from remedy_dask.workflow.finalize import Injection

    if args.source_x is None or args.source_y is None:
        raise RemedyError("--source-file needs --source-x and --source-y (IFU-frame arcsec)")
    spectrum = read_source_spectrum(args.source_file)
    log.info("injecting %s at (%.2f, %.2f)\" in IFU %03d, seeing %s", args.source_file,
             args.source_x, args.source_y, plan.target_slot, args.source_seeing or "fitted PSF")
    return Injection(plan.target_slot, args.source_x, args.source_y, args.source_seeing, spectrum)


def prepare_observation(plan: ObservationPlan, archive: RawArchive, args: Any,
                        config: PipelineConfig, out: Path) -> tuple[Any, Any, tuple[float, float, float]]:
    """Conditions per exposure (headers, guider), the star catalogue and the header pointing."""
    from remedy_dask.io.catalog import query_panstarrs, read_catalog
    from remedy_dask.io.guider import GuiderArchive, parse_stamp
    from remedy_dask.io.raw import read_header_model
    from remedy_dask.io.throughput import default_throughput, read_throughput
    from remedy_dask.workflow.observation import Conditions

    key0 = next(k for k in plan.cal_keys if int(k[:3]) == plan.target_slot) \
        if any(int(k[:3]) == plan.target_slot for k in plan.cal_keys) else plan.cal_keys[0]
    headers = {e: read_header_model(plan.refs[(e, key0)]) for e in plan.exposures
               if (e, key0) in plan.refs}
    h0 = headers[min(headers)]
    if h0.parangle is None or h0.ra_deg is None:
        raise RemedyError(f"{plan.refs[(min(headers), key0)].display_path}: no pointing "
                          "(TRAJRA/TRAJDEC, PARANGLE) in the science header")
    pointing = (h0.ra_deg, h0.dec_deg, geometry.rotation_from_parangle(h0.parangle))
    guider = GuiderArchive(args.rootdir, plan.date)
    exptime, transp, iq, notes = [], [], [], []
    for e in plan.exposures:
        h = headers.get(e, h0)
        exptime.append(h.exptime)
        start = parse_stamp(plan.refs[(e, key0)].name) if (e, key0) in plan.refs else None
        c = guider.conditions(start, h.exptime) if start else None
        if c is None or c.n_frames == 0:
            transp.append(geometry.DEFAULT_TRANSPARENCY)
            iq.append(geometry.DEFAULT_IQ_FWHM)
            notes.append(f"exp{e:02d}: no guider frames, transparency 1.0 and IQ 1.8\" assumed")
        else:
            transp.append(c.transparency)
            iq.append(c.fwhm)
            notes += [f"exp{e:02d}: {n}" for n in c.notes]
    if getattr(args, "throughput", None):
        _, tput = read_throughput(args.throughput)
    else:
        _, tput = default_throughput()
        notes.append("default HETDEX throughput curve")
    cond = Conditions(list(plan.exposures), np.array(exptime, float), np.array(transp, float),
                      np.array(iq, float), np.asarray(tput, float), notes=notes)
    if getattr(args, "catalog", None):
        catalog = read_catalog(args.catalog)
    else:
        catalog = query_panstarrs(pointing[0], pointing[1], config.observation.catalog_radius_deg,
                                  out / "catalog_cache")
    return cond, catalog, pointing


def _compute_with_progress(final: Any, client: Any, out: Path, plan: ObservationPlan) -> Any:
    """Compute (progress bar in a terminal) and save a Dask performance report."""
    from remedy_dask.workflow.cluster import compute

    if client is None:
        return compute(final, None)
    from distributed import performance_report

    report = out / f"{plan.date}_{plan.obs:07d}_dask-report.html"
    with performance_report(filename=str(report)):
        return compute(final, client)
