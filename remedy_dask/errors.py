"""Exceptions with messages meant for the command line: one line naming the input and the problem."""

from __future__ import annotations


class RemedyError(Exception):
    """Base class: the CLI prints ``error: <message>`` and exits non-zero, without a traceback."""


class RawDataError(RemedyError):
    """A raw VIRUS file or tar is missing, corrupt, truncated or not in the documented format."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class InputFileError(RemedyError):
    """An auxiliary input (fplane, IFUcen, fiber locations, catalog, throughput, config) is bad."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class CalibrationError(RemedyError):
    """A calibration step cannot produce a trustworthy result for an amplifier."""


class ConfigError(RemedyError):
    """An invalid configuration value or command-line combination."""
