"""Shared helpers of the benchmark scripts: wall time, peak memory of a process tree."""

from __future__ import annotations

import argparse
import json
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import psutil


class PeakMemory:
    """Sample the RSS of this process and all its children (Dask workers) every 0.2 s."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.peak = 0
        self.peak_single = 0  # the largest single process (a worker, or the client)
        self.peak_time = float("nan")  # time.time() of the process tree's peak
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    rss = p.memory_info().rss
                except psutil.Error:
                    continue
                total += rss
                self.peak_single = max(self.peak_single, rss)
            if total > self.peak:
                self.peak, self.peak_time = total, time.time()
            time.sleep(self.interval)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_gb(self) -> float:
        return self.peak / 1e9

    @property
    def peak_single_gb(self) -> float:
        return self.peak_single / 1e9


@contextmanager
def timed(results: dict, name: str) -> Iterator[None]:
    t0 = time.perf_counter()
    with PeakMemory() as mem:
        yield
    results[name] = {"seconds": round(time.perf_counter() - t0, 2), "peak_gb": round(mem.peak_gb, 2)}
    print(f"{name}: {results[name]}", flush=True)


def save(results: dict, path: str | Path) -> None:
    Path(path).write_text(json.dumps(results, indent=2))
    print(f"results written to {path}")


def seeded_reduction_parser(description: str | None) -> argparse.ArgumentParser:
    """Arguments of the scripts that time the observation stage on a finished reduction: the
    simulated night, its calibration file and the ``--out`` of a ``reduce --all-ifus``."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sim", type=Path, help="simulated night (raw/, fplane.txt, ...)")
    parser.add_argument("cal", type=Path, help="calibration file of the night")
    parser.add_argument("seed", type=Path, help="--out of a finished reduce --all-ifus")
    return parser
