"""Entry point of the virtual instrument: write a whole simulated VIRUS night with its truth."""

from __future__ import annotations

import logging
import multiprocessing
import shutil
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import h5py

from remedy_dask import geometry
from remedy_dask.errors import ConfigError
from remedy_dask.sim import files, truth
from remedy_dask.sim.amp import AmpModel, check_coverage, make_amp_model
from remedy_dask.sim.config import SimConfig
from remedy_dask.sim.render import AmpCache, RenderedFrame, render_amp_frame
from remedy_dask.sim.scene import Frame, NightPlan, make_plan

log = logging.getLogger(__name__)


@dataclass
class SimResult:
    """Where everything of a simulated night was written."""

    out: Path
    raw_root: Path  # OUT/raw (the archive ROOT that io/raw.py reads)
    truth_dir: Path
    truth_file: Path
    fplane: Path
    ifucen: Path
    fiber_loc_dir: Path
    throughput: Path
    catalog: Path
    raw_files: list[Path]  # FITS files, or the observation tars with tar=True
    guider_files: list[Path]
    exposures: list[tuple[int, int]]  # (obs, exp) written
    frames: list[Frame]
    seconds: dict[str, float] = field(default_factory=dict)


def _render_and_write(plan: NightPlan, model: AmpModel, raw_root: Path
                      ) -> Iterator[tuple[Frame, RenderedFrame]]:
    cache = AmpCache()
    for frame in plan.frames:
        rendered = render_amp_frame(plan, model, frame, cache)
        path = raw_root / frame.rel_dir(plan.date) / frame.file_name(model.ifuslot, model.amp)
        files.write_bytes(path, files.fits_bytes(rendered.raw, rendered.header))
        rendered.electrons = rendered.raw = None  # keep only what the truth needs
        yield frame, rendered


def simulate_amp(plan: NightPlan, ifuslot: int, amp: str, out: str) -> dict:
    """Render and write every frame of one amp plus its fiber_loc file; return its truth record
    (top-level function so that spawned worker processes can run it)."""
    out_path = Path(out)
    model = make_amp_model(plan, ifuslot, amp)
    check_coverage(model)
    files.write_fiber_loc(model, out_path / "fiber_loc")
    frames = _render_and_write(plan, model, out_path / "raw")
    return truth.amp_record(plan, model, frames)


def _check_inputs(date: str, ifuslots: Sequence[int], n_workers: int) -> tuple[int, ...]:
    if len(date) != 8 or not date.isdigit():
        raise ConfigError(f"date must be YYYYMMDD, got {date!r}")
    slots = tuple(int(s) for s in ifuslots)
    if not slots or len(set(slots)) != len(slots):
        raise ConfigError(f"ifuslots must be unique and non-empty, got {list(ifuslots)}")
    for s in slots:
        row, col = geometry.slot_row_col(s)
        if not (1 <= row <= 10 and 1 <= col <= 9):
            raise ConfigError(f"IFU slot {s:03d} is not an IHMP slot RRC (row 01-10, col 1-9)")
    if n_workers < 1:
        raise ConfigError(f"n_workers must be >= 1, got {n_workers}")
    return slots


def _checked_plan(date: str, slots: tuple[int, ...], seed: int, science_obs: int,
                  cfg: SimConfig, kinds: tuple[str, ...]) -> NightPlan:
    """The night plan; ConfigError for unknown kinds, a bad plan or a drawn wavelength solution
    that misses the detector (checked before any rendering)."""
    unknown = set(kinds) - set(geometry.FRAME_KINDS)
    if unknown:
        raise ConfigError(f"unknown frame kinds {sorted(unknown)}")
    try:
        plan = make_plan(date, slots, seed, science_obs, cfg, kinds)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    for s in slots:
        for amp in geometry.AMPS:
            try:
                check_coverage(make_amp_model(plan, s, amp))
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
    return plan


def _render_all(plan: NightPlan, tasks: list[tuple[int, str]], out: Path, truth_file: Path,
                n_workers: int) -> None:
    """Render and write every amp (in a spawn-based pool if ``n_workers`` > 1) and the truth."""
    with h5py.File(truth_file, "w") as h5:
        truth.write_global(h5, plan, list(plan.frames))
        if n_workers == 1:
            for s, amp in tasks:
                truth.write_amp(h5, simulate_amp(plan, s, amp, str(out)))
        else:
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx) as pool:
                results = pool.map(simulate_amp, [plan] * len(tasks), [t[0] for t in tasks],
                                   [t[1] for t in tasks], [str(out)] * len(tasks))
                for record in results:
                    truth.write_amp(h5, record)


def simulate_night(out: str | Path, date: str = "20190822",
                   ifuslots: Sequence[int] = (47, 48, 57, 58), seed: int = 1, tar: bool = False,
                   science_obs: int = 7, config: SimConfig | None = None, n_workers: int = 1,
                   science_only: bool = False, kinds: Sequence[str] | None = None) -> SimResult:
    """Write a simulated night under ``out`` (raw data, auxiliary files, truth).

    ``kinds`` restricts the frame kinds written (``science_only`` = ``kinds=("sci",)``); the
    truth always describes the full instrument state.  ``n_workers > 1`` renders amps in a
    spawn-based process pool; the output does not depend on ``n_workers``.
    """
    t0 = time.perf_counter()
    cfg = config or SimConfig()
    slots = _check_inputs(date, ifuslots, n_workers)
    kinds = tuple(kinds) if kinds is not None else ("sci",) if science_only \
        else geometry.FRAME_KINDS
    plan = _checked_plan(date, slots, seed, science_obs, cfg, kinds)
    out = Path(out)
    raw_root = out / "raw"
    virus_dir = raw_root / date / "virus"
    for obs in sorted({f.obs for f in plan.frames}):  # replace earlier runs of these folders
        for old in (virus_dir / f"virus{obs:07d}", virus_dir / f"virus{obs:07d}.tar"):
            if old.is_dir():
                shutil.rmtree(old)
            elif old.exists():
                old.unlink()
    truth_dir = out / "truth"
    truth_dir.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    files.write_fplane(plan, out / "fplane.txt")
    files.write_ifucen(out / "IFUcen_HETDEX.txt")
    files.write_throughput(out / "throughput.txt")
    files.write_catalog(plan, out / "ps1_catalog.csv")
    seconds = {"setup": time.perf_counter() - t0}

    tasks = [(s, amp) for s in sorted(slots) for amp in geometry.AMPS]
    truth_file = truth_dir / truth.TRUTH_FILE
    t1 = time.perf_counter()
    _render_all(plan, tasks, out, truth_file, n_workers)
    seconds["render"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    if tar:
        raw_files = files.tar_observations(virus_dir)
    else:
        raw_files = sorted(virus_dir.rglob("*.fits"))
    guider = files.write_guider(plan, raw_root) if cfg.write_guider and any(
        f.kind == "sci" for f in plan.frames) else []
    truth.write_readme(truth_dir)
    seconds["finish"] = time.perf_counter() - t2
    seconds["total"] = time.perf_counter() - t0
    log.info("simulated %d frames x %d amps in %.1f s", len(plan.frames), len(tasks),
             seconds["total"])
    return SimResult(
        out=out, raw_root=raw_root, truth_dir=truth_dir, truth_file=truth_file,
        fplane=out / "fplane.txt", ifucen=out / "IFUcen_HETDEX.txt",
        fiber_loc_dir=out / "fiber_loc", throughput=out / "throughput.txt",
        catalog=out / "ps1_catalog.csv", raw_files=raw_files, guider_files=guider,
        exposures=[(f.obs, f.exp) for f in plan.frames], frames=list(plan.frames),
        seconds=seconds,
    )
