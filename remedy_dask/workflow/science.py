"""The science graph of one observation.

Per (exposure, amp): the chain of ``workflow.amp_graph`` (``load-cal`` is shared by the
exposures of an amp); on a cluster the chains run first, as futures (``workflow.lost_workers``:
a chain lost with its worker flags only its amp-exposure).  Per exposure: ``sky-expNN`` fans
in every amp of the exposure from the zarr store (fiber-to-fiber, masking, sky).  Per
observation: ``observation`` (astrometry, flux calibration, sources, detections, cubes) and
``write-products``.

A rerun with the same inputs skips every amp-exposure whose checkpoint is complete.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from remedy_dask import geometry
from remedy_dask.config import PipelineConfig, check_dither
from remedy_dask.errors import RemedyError
from remedy_dask.io import calfile, store
from remedy_dask.io.raw import RawArchive
from remedy_dask.io.rawframe import FrameRef
from remedy_dask.io.slot_history import slot_note
from remedy_dask.requests import NightRequest, ReduceRequest
from remedy_dask.workflow.amp_graph import alone_chain, build_amp_graph
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


@dataclass
class Reduction:
    """One observation's graph: the amp chains, and the rest built on their summaries (the
    chains run first on a cluster, so that a chain lost with its worker is only flagged)."""

    plan: ObservationPlan
    chains: dict[int, list[Any]]  # per exposure, plan order: resumed summaries or delayed chains
    finish: Callable[[dict[int, list[Any]]], Any]  # chains' summaries -> delayed product path
    rebuild: Callable[[str], dict[int, list[Any]]]  # attempt mark -> chains as a rerun's
    alone: Callable[[int, str], Any]  # (exp, amp) -> its chain without its CCD partner
    out: Path
    catalog: Any
    n_resumed: int

    @property
    def final(self) -> Any:
        """The whole graph in one (the synchronous scheduler: no worker can be lost)."""
        return self.finish(self.chains)


def build_reduction(req: ReduceRequest, archive: RawArchive) -> Reduction:
    """Plan one observation and build its graph (amp chains, exposures, observation)."""
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
    chains, n_done = build_amp_graph(plan, cal_path, work_root, config, keys)
    if n_done:
        print(f"resuming: {n_done} amp-exposure(s) already reduced in {work_root}")
    from remedy_dask.workflow.conditions import prepare_observation

    cond, catalog, pointing = prepare_observation(plan, archive, req, out)
    injection = _injection(req, plan)

    def finish(summaries: dict[int, list[Any]]) -> Any:
        exposures = build_exposure_graph(plan, summaries, cal_path, work_root, req.fplane,
                                         req.ifucen, config, keys)
        return build_observation_graph(plan, exposures, cal_path, out, req.cubes, config, cond,
                                       catalog, pointing, injection=injection,
                                       native=req.native_spectra)

    def rebuild(attempt: str) -> dict[int, list[Any]]:
        return build_amp_graph(plan, cal_path, work_root, config, keys, attempt)[0]

    alone = functools.partial(alone_chain, plan, cal_path, work_root, config, keys)
    return Reduction(plan, chains, finish, rebuild, alone, out, catalog, n_done)


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
    from remedy_dask.workflow.outcome import product_flags

    if page is None:
        page, qa_seconds = _qa_page(red, product)
    print(f"reduced {len(red.plan.cal_keys)} amps x {len(red.plan.exposures)} exposures "
          f"in {seconds:.1f} s: {product}")
    for reason in product_flags(product):  # the plan's and those of the run (a lost worker)
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
            product = _compute_with_progress(red, client, req.performance_report)
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
    """All observations share the cluster: their amp chains first, then the rest of each
    observation's graph, submitted together and collected one by one."""
    from remedy_dask.qa.observation import observation_report
    from remedy_dask.workflow.cluster import compute
    from remedy_dask.workflow.outcome import product_flags

    if client is None:
        pending = {obs: red.final for obs, red in reductions.items()}
    else:
        from remedy_dask.workflow.lost_workers import compute_chains
        from remedy_dask.workflow.progress import wait_with_progress

        pending = {}
        chains = compute_chains(client, list(reductions.values()))
        for (obs, red), summaries in zip(reductions.items(), chains):
            try:
                if isinstance(summaries, BaseException):
                    raise summaries
                pending[obs] = client.compute(red.finish(summaries))
            except Exception as exc:  # one failing observation does not stop the others
                log.debug("observation %07d", obs, exc_info=True)
                log.error("observation %07d failed: %s: %s", obs, type(exc).__name__, exc)
                results[obs] = _failure(exc)
        if pending:
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


def _compute_with_progress(red: Reduction, client: Any, performance_report: bool = False
                           ) -> Any:
    """Compute (progress bar in a terminal): on a cluster the amp chains first
    (``workflow.lost_workers``), then the rest; with Dask's performance report if asked."""
    import contextlib

    from remedy_dask.workflow.cluster import compute

    if client is None:
        return compute(red.final, None)
    from remedy_dask.workflow.lost_workers import compute_chains

    recording: Any = contextlib.nullcontext()
    if performance_report:
        from distributed import performance_report as dask_report

        path = red.out / f"{red.plan.date}_{red.plan.obs:07d}_dask-report.html"
        recording = dask_report(filename=str(path))
    with recording:
        summaries = compute_chains(client, [red])[0]
        if isinstance(summaries, BaseException):
            raise summaries
        return compute(red.finish(summaries), client)
