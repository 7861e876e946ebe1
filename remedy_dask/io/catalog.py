"""Reference star catalog (Pan-STARRS DR2 "mean" table) for astrometry and flux calibration.

:func:`read_catalog` reads a user file (CSV, ECSV or FITS) and returns a table with at least the
float columns ``raMean``, ``decMean`` (deg) and ``gMeanApMag`` (AB mag; NaN where unknown).
Column aliases are accepted (``ra``/``RA``/``RAJ2000``, ``dec``/``DEC``/``DEJ2000``, and
``gApMag``/``gmag`` for ``gMeanApMag``; the same ``{band}ApMag`` alias for r, i, z, y); the
Pan-STARRS sentinel ``-999`` and masked entries become NaN.

:func:`query_panstarrs` asks MAST through astroquery and caches the answer as FITS; without
network it raises a :class:`RemedyError` that says so and points to ``--catalog``.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.table import Table

from remedy_dask.errors import InputFileError, RemedyError

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Catalog:
    """Reference stars as the pipeline uses them: position (deg) and AB g magnitude (NaN where
    unknown).  The only place that knows the Pan-STARRS column names."""

    ra: np.ndarray
    dec: np.ndarray
    gmag: np.ndarray

    def __len__(self) -> int:
        return int(self.ra.size)

    @classmethod
    def from_table(cls, table: Table) -> "Catalog":
        """From a table with the standardized columns (:func:`standardize_catalog`)."""
        return cls(np.asarray(table["raMean"], float), np.asarray(table["decMean"], float),
                   np.asarray(table["gMeanApMag"], float))


def as_catalog(catalog: "Catalog | Table") -> Catalog:
    """A :class:`Catalog` from a Catalog or a standardized table."""
    return catalog if isinstance(catalog, Catalog) else Catalog.from_table(catalog)

SENTINEL = -999.0
BANDS = ("g", "r", "i", "z", "y")
QUERY_COLUMNS = ["objID", "raMean", "decMean", "nDetections"] + [f"{b}MeanApMag" for b in BANDS]
_ALIASES: dict[str, tuple[str, ...]] = {
    "raMean": ("raMean", "ra", "RA", "RAJ2000", "RAMEAN", "ramean"),
    "decMean": ("decMean", "dec", "DEC", "Dec", "DEJ2000", "DECMEAN", "decmean"),
}
for _band in BANDS:
    _ALIASES[f"{_band}MeanApMag"] = (f"{_band}MeanApMag", f"{_band}ApMag", f"{_band}mag")
REQUIRED = ("raMean", "decMean", "gMeanApMag")
_FORMATS = {
    ".csv": "ascii.csv", ".ecsv": "ascii.ecsv", ".fits": "fits", ".fit": "fits", ".fits.gz": "fits"
}


def _format_of(path: Path) -> str | None:
    name = path.name.lower()
    for suffix, fmt in _FORMATS.items():
        if name.endswith(suffix):
            return fmt
    return None


def _as_float(column) -> np.ndarray:
    """A column as float64 with masked entries and the -999 sentinel set to NaN."""
    values = np.ma.filled(np.ma.asarray(column).astype(float), np.nan)
    values[values == SENTINEL] = np.nan
    return values


def standardize_catalog(table: Table, source: str) -> Table:
    """Rename aliased columns to the Pan-STARRS names and clean the numeric ones."""
    out = Table(table, copy=True)
    for name, aliases in _ALIASES.items():
        found = next((a for a in aliases if a in out.colnames), None)
        if found is None:
            if name in REQUIRED:
                raise InputFileError(
                    source, f"catalog has no {name} column (accepted: {', '.join(aliases)}); "
                    f"columns are {', '.join(out.colnames[:12])}"
                )
            continue
        try:
            values = _as_float(out[found])
        except (TypeError, ValueError):
            raise InputFileError(source, f"catalog column {found} is not numeric") from None
        if found != name:
            out.remove_column(found)
        out[name] = values
    for name, (lo, hi) in (("raMean", (0.0, 360.0)), ("decMean", (-90.0, 90.0))):
        bad = ~((out[name] >= lo) & (out[name] <= hi))
        if np.any(bad):
            rows = np.flatnonzero(bad)
            raise InputFileError(source, f"catalog: {rows.size} row(s) with {name} not a number "
                                 f"in [{lo:g}, {hi:g}] (first: row {rows[0] + 1})")
    return out


def read_catalog(path: str | os.PathLike) -> Table:
    """Read a star catalog file (CSV/ECSV/FITS) into a standardized table (see module doc)."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(str(path), "catalog file does not exist")
    fmt = _format_of(path)
    try:
        table = Table.read(path, format=fmt) if fmt else Table.read(path)
    except Exception as exc:  # astropy raises many types for unreadable tables
        problem = f"cannot read catalog ({type(exc).__name__}: {exc})"
        raise InputFileError(str(path), problem) from None
    return standardize_catalog(table, str(path))


def cache_name(ra: float, dec: float, radius_deg: float) -> str:
    """File name of the FITS cache of a Pan-STARRS cone."""
    return f"panstarrs_dr2_mean_{ra:.6f}_{dec:+.6f}_{radius_deg:.4f}.fits"


def _query_mast(ra: float, dec: float, radius_deg: float) -> Table:
    """One astroquery cone search of the Pan-STARRS DR2 mean table (network)."""
    import astropy.units as u
    from astropy.coordinates import SkyCoord
    from astroquery.mast import Catalogs

    return Catalogs.query_region(
        SkyCoord(ra, dec, unit="deg"),
        radius=radius_deg * u.deg,
        catalog="Panstarrs",
        data_release="dr2",
        table="mean",
        columns=QUERY_COLUMNS,
    )


def _network_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError, TimeoutError]
    try:
        from astroquery.exceptions import RemoteServiceError, TimeoutError as AqTimeout

        errors += [RemoteServiceError, AqTimeout]
    except ImportError:  # pragma: no cover - astroquery is a dependency
        pass
    return tuple(errors)


def query_panstarrs(
    ra: float, dec: float, radius_deg: float, cache_dir: str | os.PathLike
) -> Table:
    """Pan-STARRS DR2 stars within ``radius_deg`` of (ra, dec), from the cache or from MAST.

    The answer is cached as FITS in ``cache_dir`` (written atomically); an empty answer is
    returned but not cached.  A network failure raises :class:`RemedyError` (no retries).
    """
    cache_dir = Path(cache_dir)
    cache = cache_dir / cache_name(ra, dec, radius_deg)
    if cache.is_file():
        log.info("Pan-STARRS catalog from cache %s", cache)
        return read_catalog(cache)
    try:
        table = _query_mast(ra, dec, radius_deg)
    except _network_errors() as exc:
        raise RemedyError(
            f"Pan-STARRS query at ra={ra:.5f} dec={dec:.5f} failed (no network?) and no catalog "
            f"file was given: pass one with --catalog ({type(exc).__name__}: {str(exc)[:200]})"
        ) from exc
    table = standardize_catalog(Table(table), f"Pan-STARRS DR2 query at {ra:.5f} {dec:+.5f}")
    if len(table) == 0:
        log.warning("Pan-STARRS: no stars within %.3f deg of %.5f %+.5f", radius_deg, ra, dec)
        return table
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".fits", dir=cache_dir)
    os.close(fd)
    try:
        table.write(tmp, format="fits", overwrite=True)
        os.replace(tmp, cache)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    log.info("Pan-STARRS catalog: %d stars cached in %s", len(table), cache)
    return table
