"""End-to-end throughput curve of VIRUS + HET on ``geometry.DEF_WAVE``.

The default curve is generated (no data file is shipped) from the published HETDEX numbers
(Gebhardt et al. 2021): 0.0246 at 3470 A, a peak of 0.161 at 4640 A and 0.128 at 5540 A.
Model: ``ln T(lam) = ln T_peak + b u^2 + c u^3`` with ``u = lam - 4640 A``.  The missing linear term
puts the maximum exactly at 4640 A; ``b`` and ``c`` are solved so the curve passes through the two
end points.  The result is smooth, positive, rises monotonically to 4640 A and falls
monotonically from there to 5540 A (d ln T / d lam vanishes again only at u = -2b/3c ~ 959 A,
beyond the red end).  Between the anchors it is a model, not a measurement.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from remedy_dask import geometry
from remedy_dask.errors import InputFileError

ANCHORS = ((3470.0, 0.0246), (4640.0, 0.161), (5540.0, 0.128))  # (A, throughput)


def _log_cubic_coefficients() -> tuple[float, float, float, float]:
    """(lam_peak, ln T_peak, b, c) of the default curve."""
    (l1, t1), (l0, t0), (l2, t2) = ANCHORS
    u = np.array([l1 - l0, l2 - l0])
    matrix = np.column_stack([u**2, u**3])
    b, c = np.linalg.solve(matrix, np.log([t1 / t0, t2 / t0]))
    return l0, float(np.log(t0)), float(b), float(c)


def default_throughput(wave: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(wave, throughput) of the default HETDEX curve on ``DEF_WAVE`` (or on ``wave``)."""
    wave = geometry.DEF_WAVE.copy() if wave is None else np.asarray(wave, dtype=float)
    l0, ln_t0, b, c = _log_cubic_coefficients()
    u = wave - l0
    return wave, np.exp(ln_t0 + b * u**2 + c * u**3)


def read_two_columns(path: str | os.PathLike, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(wavelength, value) rows of a two-column text file, strictly increasing in wavelength.

    Leading header lines that are not two numbers (e.g. ``wavelength throughput`` and a
    ``----`` rule) and ``#`` lines are skipped; anything else raises :class:`InputFileError`.
    """
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(str(path), f"cannot read {what} file: {exc}") from None
    waves: list[float] = []
    values: list[float] = []
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        try:
            if len(fields) != 2:
                raise ValueError
            w, t = float(fields[0]), float(fields[1])
        except ValueError:
            if not waves:
                continue  # header line before the data
            raise InputFileError(
                str(path), f"line {number}: expected two numbers (wavelength {what}): "
                f"{line.strip()!r}",
            ) from None
        waves.append(w)
        values.append(t)
    if len(waves) < 2:
        raise InputFileError(str(path), f"{what} file has fewer than two data rows")
    wave, value = np.array(waves), np.array(values)
    if not (np.all(np.isfinite(wave)) and np.all(np.isfinite(value))):
        raise InputFileError(str(path), f"{what} file holds non-finite values")
    if np.any(np.diff(wave) <= 0):
        raise InputFileError(str(path), "wavelengths must increase strictly")
    return wave, value


def read_throughput(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a two-column (wavelength A, throughput) file and interpolate it onto ``DEF_WAVE``.

    The table must cover 3470-5540 A and be positive there.
    """
    wave, thr = read_two_columns(path, "throughput")
    lo, hi = geometry.WAVE_MIN, geometry.WAVE_MAX
    if wave[0] > lo + 1e-6 or wave[-1] < hi - 1e-6:
        raise InputFileError(
            str(path), f"covers {wave[0]:.1f}-{wave[-1]:.1f} A, needs at least {lo:.0f}-{hi:.0f} A"
        )
    out = np.interp(geometry.DEF_WAVE, wave, thr)
    if np.any(out <= 0):
        raise InputFileError(str(path), "throughput must be > 0 over 3470-5540 A (it divides)")
    return geometry.DEF_WAVE.copy(), out


def read_source_spectrum(path: str | os.PathLike) -> np.ndarray:
    """A spectrum to inject (two columns: wavelength A, F_lambda erg/s/cm^2/A, Remedy's format)
    on ``DEF_WAVE`` in 1e-17 erg/s/cm^2/A; zero outside the file's range."""
    wave, flam = read_two_columns(path, "source spectrum")
    return np.interp(geometry.DEF_WAVE, wave, flam, left=0.0, right=0.0) * 1e17


def write_throughput(path: str | os.PathLike, wave: np.ndarray, throughput: np.ndarray) -> None:
    """Write a throughput table with a ``wavelength throughput`` header line (read_throughput)."""
    rows = ["wavelength throughput", "---------- ----------"]
    rows += [f"{w:.3f} {t:.8g}" for w, t in zip(np.asarray(wave), np.asarray(throughput))]
    Path(path).write_text("\n".join(rows) + "\n")
