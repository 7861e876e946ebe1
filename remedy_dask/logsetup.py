"""Where a command's messages go: the console (stderr; ``--quiet``: errors only, ``--debug``:
everything) and a log file (the full log at INFO level with timestamps, including what the
command printed on stdout).

Console output of the command itself (summaries, the dashboard link) is written to stdout; with
``--quiet`` it is not shown but still goes to the log file.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

from remedy_dask import __version__

STDOUT_LOGGER = "remedy_dask.stdout"  # lines the command printed (log file only)
NOISY = ("distributed", "bokeh", "tornado", "numba", "fsspec", "asyncio", "numcodecs")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class StdoutToLog(io.TextIOBase):
    """A stdout that shows text on ``stream`` (unless ``echo`` is false) and logs each complete
    line (progress-bar redraws reduced to their last state) to :data:`STDOUT_LOGGER`."""

    def __init__(self, stream: io.TextIOBase, echo: bool) -> None:
        self.stream = stream
        self.echo = echo
        self._pending = ""
        self._log = logging.getLogger(STDOUT_LOGGER)

    def write(self, text: str) -> int:
        if self.echo:
            self.stream.write(text)
        self._pending += text
        while "\n" in self._pending:
            line, self._pending = self._pending.split("\n", 1)
            line = line.rsplit("\r", 1)[-1].replace("\33[2K", "").strip()
            if line:
                self._log.info(line)
        return len(text)

    def flush(self) -> None:
        if self.echo:
            self.stream.flush()

    def isatty(self) -> bool:
        return self.echo and self.stream.isatty()

    def writable(self) -> bool:
        return True


_quiet: list[bool] = []  # stack of the --quiet flags of the commands running in this process


def console_quiet() -> bool:
    """True while a ``--quiet`` command runs (worker processes are then told to log only
    critical messages)."""
    return bool(_quiet) and _quiet[-1]


def _not_stdout(record: logging.LogRecord) -> bool:
    return not record.name.startswith(STDOUT_LOGGER)


@contextlib.contextmanager
def command_logging(debug: bool, quiet: bool, log_file: Path | None, command_line: str,
                    stdout_is_result: bool = False) -> Iterator[Path | None]:
    """Console and file logging (and stdout capture) for one command; undone on exit.
    ``stdout_is_result``: what the command prints is its answer (``config show``), shown even
    with ``quiet``."""
    root = logging.getLogger()
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.DEBUG if debug else logging.ERROR if quiet else logging.INFO)
    console.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
    console.addFilter(_not_stdout)
    handlers: list[logging.Handler] = [console]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        to_file = logging.FileHandler(log_file, mode="a", encoding="utf-8")
        to_file.setLevel(logging.DEBUG if debug else logging.INFO)
        to_file.setFormatter(logging.Formatter(FORMAT, datefmt="%Y-%m-%dT%H:%M:%S"))
        handlers.append(to_file)
    old_levels = {name: logging.getLogger(name).level for name in ("", "remedy_dask", *NOISY)}
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    logging.getLogger("remedy_dask").setLevel(logging.DEBUG if debug else logging.INFO)
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)
    for handler in handlers:
        root.addHandler(handler)
    old_stdout = sys.stdout
    if (quiet and not stdout_is_result) or log_file is not None:
        sys.stdout = StdoutToLog(old_stdout, echo=not quiet or stdout_is_result)
    logging.getLogger(STDOUT_LOGGER).info("remedy-dask %s: %s", __version__, command_line)
    _quiet.append(quiet)
    try:
        yield log_file
    finally:
        _quiet.pop()
        sys.stdout.flush()
        sys.stdout = old_stdout
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()
        for name, level in old_levels.items():
            logging.getLogger(name).setLevel(level)
