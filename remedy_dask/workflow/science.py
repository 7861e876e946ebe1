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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask

from remedy_dask import geometry
from remedy_dask.config import PipelineConfig, check_dither
from remedy_dask.errors import RemedyError
from remedy_dask.io import calfile, store
from remedy_dask.io.raw import FrameRef, RawArchive
from remedy_dask.io.slot_history import slot_note
from remedy_dask.requests import NightRequest, ReduceRequest
from remedy_dask.workflow import amp_chain
from remedy_dask.workflow.cluster import open_client
from remedy_dask.workflow.keys import CheckpointKeys

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
    notes: list[str] = field(default_factory=list)  # substitutions, recorded in the product
    kind: str = "sci"  # frame kind reduced (reduce --kind)

    @property
    def tag(self) -> str:
        """``DATE_OBS``: ends every task name of the observation, so that observations sharing a
        cluster (``reduce-night``, ``reduce-range``) never share a task."""
        return f"{self.date}_{self.obs:07d}"


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
                     neighbor_dist: int = 1, all_ifus: bool = False, kind: str = "sci"
                     ) -> ObservationPlan:
    refs = archive.frames(date, obs, kind=kind)
    if not refs:
        what = "science" if kind == "sci" else f"'{kind}'"
        raise RemedyError(f"no {what} frames for {date} observation {obs:07d} under "
                          f"{archive.rootdir}")
    slots = select_slots(sorted({r.ifuslot for r in refs}), target_slot, neighbor_dist, all_ifus)
    exposures = sorted({r.exp for r in refs})
    by_key = {(r.exp, f"{r.ifuslot:03d}{r.amp}"): r for r in refs if r.ifuslot in slots}
    cal_status = calfile.amp_statuses(cal_path, science=True)
    skipped, cal_keys = [], []
    for slot in slots:
        for amp in geometry.AMPS:
            key = f"{slot:03d}{amp}"
            status = cal_status.get(key)
            if status is None:
                skipped.append(f"{key}: no calibration in {cal_path.name}")
            elif status.startswith("invalid: "):
                skipped.append(f"{key}: {status[len('invalid: '):]}")
            elif status != "ok":
                skipped.append(f"{key}: calibration {status}")
            elif not any((e, key) in by_key for e in exposures):
                skipped.append(f"{key}: no {kind} frames")
            else:
                cal_keys.append(key)
                for e in exposures:
                    if (e, key) not in by_key:
                        skipped.append(f"{key} exp{e:02d}: frame missing")
    for reason in skipped:
        log.warning("left out: %s", reason)
    notes = sorted({slot_note(date, r.recorded_ifuslot) for r in by_key.values()
                    if r.recorded_ifuslot is not None})
    for note in notes:
        log.info(note)
    return ObservationPlan(date, obs, target_slot, slots, exposures, by_key, cal_keys, skipped,
                           notes, kind)


def build_amp_graph(plan: ObservationPlan, cal_path: Path, work_root: Path,
                    config: PipelineConfig, keys: CheckpointKeys
                    ) -> tuple[dict[int, list[Any]], int]:
    """Delayed chains per exposure; returns ({exp: [summaries]}, number of chains skipped).

    Each chain measures its wavelength shift (``wave-shift``, a small result) and applies it
    pooled with the other amp of its CCD (``ccd-shift``); a partner already checkpointed
    contributes its stored measurement.  Each exposure lists its amps in the plan's order,
    resumed or not (the exposure fan-in concatenates them in that order)."""
    rc, tag = config.reduction, plan.tag
    chains: dict[tuple[int, str], Any] = {}  # in plan order: a summary (resumed) or a delayed one
    pending: dict[tuple[int, str], tuple[Any, Any, Any, str]] = {}  # (ax, shift, cal, ikey)
    resumed: set[tuple[int, str]] = set()
    for key in plan.cal_keys:
        cal = None
        for exp in plan.exposures:
            ref = plan.refs.get((exp, key))
            if ref is None:
                continue
            ikey = keys.amp(plan, exp, key)
            if store.is_complete(work_root, exp, key, ikey):
                resumed.add((exp, key))
                chains[(exp, key)] = {"key": key, "exp": exp, "failed": None, "resumed": True}
                continue
            if cal is None:
                cal = dask.delayed(amp_chain.load_calibration, pure=True)(
                    str(cal_path), key, dask_key_name=f"load-cal-{key}-{tag}")
            node = _chain_node(key, exp, tag)
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
        node = _chain_node(key, exp, tag)
        ax = node(amp_chain.apply_wave_shift, ax, measured, other, rc, step="ccd-shift")
        ax = node(amp_chain.mask_spectra, ax, cal, rc, step="mask")
        chains[(exp, key)] = node(amp_chain.rectify_and_store, ax, str(work_root), ikey,
                                  step="rectify")
    summaries: dict[int, list[Any]] = defaultdict(list)
    for (exp, _), chain in chains.items():
        summaries[exp].append(chain)
    return summaries, len(resumed)


def _chain_node(key: str, exp: int, tag: str) -> Any:
    """``node(func, *args, step=...)``: a delayed task of the chain of (``key``, ``exp``), named
    ``{step}-{key}-expNN-{tag}`` (the dashboard and the benchmarks group by ``step``)."""
    def node(func: Any, *args: Any, step: str) -> Any:
        return dask.delayed(func, pure=False)(*args, dask_key_name=f"{step}-{key}-exp{exp:02d}-{tag}")
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


def build_reduction(req: ReduceRequest, archive: RawArchive) -> Reduction:
    """Plan one observation and build its whole graph (amp chains, exposures, observation)."""
    from remedy_dask.workflow.exposure import build_exposure_graph
    from remedy_dask.workflow.finalize import build_observation_graph

    config = req.config
    cal_path = Path(req.calfile)
    plan = plan_observation(archive, req.date, req.obs, req.ifuslot, cal_path,
                            req.neighbor_dist, req.all_ifus, req.kind)
    if not plan.cal_keys:
        raise RemedyError("no amplifier of the selected IFUs can be reduced: "
                          + "; ".join(plan.skipped[:5]))
    check_dither(config, plan.exposures, str(req.config_file or "the default configuration"))
    config = kind_config(config, plan)
    if not config.reduction.spectral_masking:
        plan.notes.append("spectral masking off (reduction.spectral_masking: false): only "
                          "pixels the extraction could not measure are flagged")
    out = Path(req.out)
    work_root = out / "work" / f"{req.date}_{req.obs:07d}.zarr"
    work_root.mkdir(parents=True, exist_ok=True)
    store.clean_temporaries(work_root)
    keys = CheckpointKeys.of(plan, cal_path, config, req.fplane, req.ifucen)
    summaries, n_done = build_amp_graph(plan, cal_path, work_root, config, keys)
    if n_done:
        print(f"resuming: {n_done} amp-exposure(s) already reduced in {work_root}")
    exposures = build_exposure_graph(plan, summaries, cal_path, work_root, req.fplane, req.ifucen,
                                     config, keys)
    from remedy_dask.workflow.conditions import prepare_observation

    cond, catalog, pointing = prepare_observation(plan, archive, req, out)
    final = build_observation_graph(plan, exposures, cal_path, out, req.cubes, config, cond,
                                    catalog, pointing, injection=_injection(req, plan),
                                    native=req.native_spectra)
    return Reduction(plan, final, out, catalog, n_done)


def kind_config(config: PipelineConfig, plan: ObservationPlan) -> PipelineConfig:
    """The configuration for the plan's frame kind: frames other than ``sci`` have no night-sky
    lines, so their wavelength shift is not measured (the calibration's wavelengths are used);
    the change is noted in the plan (and so in the product)."""
    if plan.kind == "sci" or not config.reduction.measure_wavelength_shift:
        return config
    import copy

    config = copy.deepcopy(config)
    config.reduction.measure_wavelength_shift = False
    plan.notes.append(f"frame kind {plan.kind}: no night-sky lines, wavelength shift not "
                      "measured (calibration wavelengths)")
    return config


def pending_checkpoints(req: ReduceRequest) -> list[str]:
    """The checkpoints (``expNN/{IFUSLOT}{AMP}``, ``expNN/sky``) a run of ``req`` would
    compute rather than reuse: those whose key differs from their completion marker's, or
    whose files are incomplete.  Nothing is computed or written."""
    cal_path = Path(req.calfile)
    plan = plan_observation(RawArchive(req.rootdir), req.date, req.obs, req.ifuslot,
                            cal_path, req.neighbor_dist, req.all_ifus, req.kind)
    keys = CheckpointKeys.of(plan, cal_path, kind_config(req.config, plan), req.fplane,
                             req.ifucen)
    work_root = Path(req.out) / "work" / f"{req.date}_{req.obs:07d}.zarr"
    pending = [f"exp{e:02d}/{k}" for k in plan.cal_keys for e in plan.exposures
               if (e, k) in plan.refs
               and not store.is_complete(work_root, e, k, keys.amp(plan, e, k))]
    return pending + [f"exp{e:02d}/sky" for e in plan.exposures
                      if not store.is_complete(work_root, e, "sky", keys.sky(plan, e))]


def report(red: Reduction, product: str, seconds: float, page: Path | None = None,
           qa_seconds: float | None = None) -> Path:
    """QA page (made here unless given) and the closing lines of a reduction."""
    if page is None:
        page, qa_seconds = _qa_page(red, product)
    print(f"reduced {len(red.plan.cal_keys)} amps x {len(red.plan.exposures)} exposures "
          f"in {seconds:.1f} s: {product}")
    for reason in red.plan.skipped:
        print(f"  left out: {reason}")
    print(f"QA report: {page} ({qa_seconds:.1f} s)")
    return page


def _qa_page(red: Reduction, product: str) -> tuple[Path, float]:
    """The observation's QA page and the seconds it took."""
    from remedy_dask.qa.observation import observation_report

    t1 = time.perf_counter()
    page = observation_report(product, catalog=red.catalog)
    return page, time.perf_counter() - t1


def run_reduce(req: ReduceRequest) -> Path:
    """``remedy-dask reduce``: plan, build the graph, run it, write the products (holding the
    output folder's lock).  The QA page is made while the cluster closes."""
    from concurrent.futures import ThreadPoolExecutor

    from remedy_dask.io.lock import output_lock

    t0 = time.perf_counter()
    with output_lock(req.out), ThreadPoolExecutor(1, thread_name_prefix="qa") as pool:
        red = build_reduction(req, RawArchive(req.rootdir))
        with open_client(**req.cluster.client_kwargs(),
                         amp_exposures=len(red.plan.refs)) as client:
            product = _compute_with_progress(red.final, client, red.out, red.plan,
                                             req.performance_report)
            qa = pool.submit(_qa_page, red, product)
        seconds = time.perf_counter() - t0
        report(red, product, seconds, *qa.result())
    return Path(product)


def run_reduce_night(req: NightRequest) -> dict[int, dict[str, Any]]:
    """``remedy-dask reduce-night``: every science observation of a night in one cluster."""
    with open_client(**req.cluster.client_kwargs()) as client:
        return reduce_night(req, client)


def reduce_night(req: NightRequest, client: Any) -> dict[int, dict[str, Any]]:
    """The observations of ``req`` on a running ``client`` (None: synchronous), each isolated
    (an observation that cannot be read or reduced is flagged in the summary and the others are
    reduced); returns ``{obs: {"product", "flags", "error", "bad_input"}}``."""
    from remedy_dask.io.lock import output_lock

    archive = RawArchive(req.rootdir)
    results: dict[int, dict[str, Any]] = {}
    with output_lock(req.out):
        observations = _night_observations(archive, req, results)
        t0 = time.perf_counter()
        reductions = _build_night(archive, req, observations, results)
        _compute_night(client, reductions, results)
    print(f"\nnight {req.date}: {len(observations)} observation(s) in "
          f"{time.perf_counter() - t0:.0f} s")
    print(f"{'obs':>8}  {'amps':>5}  result")
    for obs in observations:
        n = len(reductions[obs].plan.cal_keys) if obs in reductions else 0
        r = results[obs]
        text = (f"{r['product']}" + (f" ({len(r['flags'])} left out)" if r["flags"] else "")
                if r.get("product") else f"failed: {r['error']}")
        print(f"{obs:08d}  {n:5d}  {text}")
    return results


def _failure(exc: BaseException) -> dict[str, Any]:
    """A per-observation failure: one line, and whether it is the input's fault."""
    bad = isinstance(exc, RemedyError)
    return {"product": None, "flags": [], "bad_input": bad,
            "error": str(exc) if bad else f"{type(exc).__name__}: {exc}"}


def _night_observations(archive: RawArchive, req: NightRequest,
                        results: dict[int, dict[str, Any]]) -> list[int]:
    """The night's science observations (or ``--observations``); one whose frames cannot be
    listed (an unreadable tar) is kept with its failure recorded in ``results``."""
    candidates = req.observations or archive.observations(req.date)
    observations = []
    for obs in candidates:
        try:
            if req.observations or archive.frames(req.date, obs, kind="sci"):
                observations.append(obs)
        except RemedyError as exc:
            log.warning("observation %07d: %s", obs, exc)
            results[obs] = _failure(exc)
            observations.append(obs)
    if not observations:
        raise RemedyError(f"no science observations on {req.date} under {req.rootdir}")
    return observations


def _build_night(archive: RawArchive, req: NightRequest, observations: list[int],
                 results: dict[int, dict[str, Any]]) -> dict[int, Reduction]:
    reductions: dict[int, Reduction] = {}
    for obs in observations:
        if obs in results:
            continue
        try:
            slots = archive.ifuslots(req.date, obs, "sci")
            reductions[obs] = build_reduction(req.observation(obs, slots[0] if slots else 0),
                                              archive)
        except Exception as exc:  # one bad observation does not stop the others
            log.debug("observation %07d", obs, exc_info=True)
            log.error("observation %07d left out: %s", obs, _failure(exc)["error"])
            results[obs] = _failure(exc)
    return reductions


def _compute_night(client: Any, reductions: dict[int, Reduction],
                   results: dict[int, dict[str, Any]]) -> None:
    """All observations share the cluster: submitted together, collected one by one."""
    from remedy_dask.qa.observation import observation_report
    from remedy_dask.workflow.cluster import compute
    from remedy_dask.workflow.outcome import product_flags

    pending = {obs: (client.compute(red.final) if client is not None else red.final)
               for obs, red in reductions.items()}
    if client is not None and pending:
        from remedy_dask.workflow.progress import wait_with_progress

        wait_with_progress(list(pending.values()))
    for obs, job in pending.items():
        try:
            product = job.result() if client is not None else compute(job, None)
        except Exception as exc:  # one failing observation does not stop the others
            log.debug("observation %07d", obs, exc_info=True)
            log.error("observation %07d failed: %s: %s", obs, type(exc).__name__, exc)
            results[obs] = _failure(exc)
            continue
        results[obs] = {"product": str(product), "flags": product_flags(product),
                        "error": None, "bad_input": False}
    for obs, red in reductions.items():
        if results[obs].get("product"):
            observation_report(results[obs]["product"], catalog=red.catalog)


def _injection(req: ReduceRequest, plan: ObservationPlan) -> Any:
    """The ``--source-file/--source-x/--source-y/--source-seeing`` injection, if requested."""
    inj = req.injection
    if inj is None:
        return None
    from remedy_dask.io.throughput import read_source_spectrum
    from remedy_dask.workflow.finalize import Injection

    spectrum = read_source_spectrum(inj.spectrum_file)
    log.info("injecting %s at (%.2f, %.2f)\" in IFU %03d, seeing %s", inj.spectrum_file,
             inj.x, inj.y, plan.target_slot, inj.seeing or "fitted PSF")
    return Injection(plan.target_slot, inj.x, inj.y, inj.seeing, spectrum)


def _compute_with_progress(final: Any, client: Any, out: Path, plan: ObservationPlan,
                           performance_report: bool = False) -> Any:
    """Compute (progress bar in a terminal), with Dask's performance report if asked."""
    from remedy_dask.workflow.cluster import compute

    if client is None or not performance_report:
        return compute(final, client)
    from distributed import performance_report as dask_report

    report_path = out / f"{plan.date}_{plan.obs:07d}_dask-report.html"
    with dask_report(filename=str(report_path)):
        return compute(final, client)
