"""Progress of a computation on a ``distributed`` cluster: a bar in a terminal, and in a batch
log (stdout not a terminal) one log line every 30 s,
``progress: N/M tasks done after T s (unfinished: stage, stage)``.

The scheduler counts the tasks (``distributed``'s ``MultiProgress`` plugin, grouped by the task
name's prefix such as ``extract`` or ``sky``) and sends one small message a second.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from distributed.diagnostics.progressbar import MultiProgressBar
from distributed.utils import LoopRunner

log = logging.getLogger("remedy_dask.progress")

INTERVAL_S = 30.0  # between two log lines
FEED_S = 0.25  # between two messages from the scheduler (the wait after the last one is FEED_S + 0.2)


def progress_line(remaining: dict[Any, int], total: dict[Any, int], elapsed: float) -> str:
    """One line: tasks done / all, and the unfinished stages (started ones first)."""
    n_all = sum(total.values())
    n_done = n_all - sum(remaining.values())
    unfinished = sorted((k for k in total if remaining.get(k, 0) > 0),
                        key=lambda k: (remaining[k] == total[k], str(k)))
    stage = "done" if not unfinished else "unfinished: " + ", ".join(map(str, unfinished[:3]))
    if len(unfinished) > 3:
        stage += f" and {len(unfinished) - 3} more"
    return f"progress: {n_done}/{n_all} tasks done after {elapsed:.0f} s ({stage})"


class LogProgress(MultiProgressBar):
    """Log :func:`progress_line` at the start, every ``interval`` s and at the end."""

    def __init__(self, futures: list[Any], interval: float = INTERVAL_S) -> None:
        # the scheduler reports every FEED_S (a few hundred bytes); a longer feed period would
        # keep the scheduler's feed asleep, and cancelled at shutdown, after the last task
        super().__init__(futures, interval=f"{FEED_S}s", complete=True)
        self._loop_runner = LoopRunner(loop=None)
        self.log_interval = interval
        self._last = -float("inf")

    def run(self) -> None:
        self._loop_runner.run_sync(self.listen)
        time.sleep(FEED_S + 0.2)  # let the scheduler's feed see the closed comm and end

    def _draw_bar(self, remaining: dict[Any, int], all: dict[Any, int], status: str,
                  **kwargs: Any) -> None:
        if status not in ("error", "finished") and self.elapsed - self._last >= self.log_interval:
            self._last = self.elapsed
            log.info(progress_line(remaining, all, self.elapsed))

    def _draw_stop(self, remaining: dict[Any, int], all: dict[Any, int], status: str,
                   **kwargs: Any) -> None:
        if status == "error":
            log.info("progress: stopped by a failed task after %.0f s", self.elapsed)
        else:
            log.info(progress_line(remaining, all, self.elapsed))


def wait_with_progress(futures: list[Any], interval: float = INTERVAL_S) -> None:
    """Block until ``futures`` are finished, showing progress (bar or log lines); the caller
    then collects the results (and their errors) itself."""
    if sys.stdout.isatty():
        from distributed import progress

        progress(futures, notebook=False)
        print()
    elif log.isEnabledFor(logging.INFO):
        LogProgress(futures, interval).run()
