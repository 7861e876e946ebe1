"""What every product records about how it was made: observation keywords (ISO 8601 start,
MJD, pointing, exposure time), the calibration file, a digest of the configuration, the
version and source digests of the code (those the checkpoint keys use, and the whole package's)
and the versions of its main dependencies.

:func:`observation_cards` gives FITS cards (``{KEY: (value, comment)}``) for the per-IFU files;
the same values go into the observation HDF5's root attributes.
"""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from astropy.time import Time

from remedy_dask import __version__
from remedy_dask.io.digest import AMP_CODE, SKY_CODE, code_digest

TELESCOPE = "HET"
INSTRUMENT = "VIRUS"
CREATOR = f"remedy-dask {__version__}"

DEPENDENCIES = ("numpy", "scipy", "astropy", "dask", "distributed", "h5py", "h5netcdf",
                "xarray", "zarr", "photutils", "numba")


def dependency_versions() -> list[tuple[str, str]]:
    """(name, installed version) of the main dependencies ("not installed" if absent)."""
    out = []
    for name in DEPENDENCIES:
        try:
            out.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            out.append((name, "not installed"))
    return out


def config_digest(config: Any) -> str:
    """SHA-256 (first 16 hex digits) of the whole configuration, keys sorted."""
    payload = json.dumps(config.to_dict(), sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def calibration_identity(cal_path: str | Path) -> dict[str, str]:
    """Name of the calibration file, when and by which code (version, source digest) it was
    written."""
    cal_path = Path(cal_path)
    ident = {"name": cal_path.name, "created": "", "code_version": "", "code_digest": ""}
    with h5py.File(cal_path, "r") as h5:  # a file older than its code digest gives ""
        for key in ("created", "code_version", "code_digest"):
            value = h5.attrs.get(key, "")
            ident[key] = value.decode() if isinstance(value, bytes) else str(value)
    return ident


def code_cards() -> dict[str, tuple[str, str]]:
    """Digests of the code that made a product: those in the checkpoint keys (amp chain; amp
    chain and sky) and the whole package's (the observation stage is recomputed every run)."""
    return {"CODEAMP": (code_digest(AMP_CODE), "source digest: amp chain (checkpoints)"),
            "CODESKY": (code_digest(SKY_CODE), "source digest: amp chain and sky"),
            "CODEALL": (code_digest(), "source digest: whole package")}


def observation_cards(date_obs: str, object_name: str, exptimes: np.ndarray,
                      pointing: tuple[float, float, float], cal_path: str | Path,
                      config: Any, obsid: int) -> dict[str, tuple[Any, str]]:
    """FITS cards describing one reduced observation (first exposure's start as DATE-OBS)."""
    start = Time(date_obs, format="isot", scale="utc")
    cal = calibration_identity(cal_path)
    exptimes = np.asarray(exptimes, float)
    cards: dict[str, tuple[Any, str]] = {
        "TELESCOP": (TELESCOPE, "Hobby-Eberly Telescope"),
        "INSTRUME": (INSTRUMENT, "instrument"),
        "OBJECT": (object_name, "target name from the raw header"),
        "OBSID": (int(obsid), "observation number of the night"),
        "TIMESYS": ("UTC", "time scale of DATE-OBS and MJD-OBS"),
        "DATE-OBS": (start.isot, "start of the first exposure (UTC)"),
        "MJD-OBS": (float(f"{start.mjd:.8f}"), "[d] MJD of DATE-OBS"),
        "EXPTIME": (float(np.nanmedian(exptimes)) if exptimes.size else 0.0,
                    "[s] exposure time (median of the exposures)"),
        "NEXP": (int(exptimes.size), "number of dithered exposures combined"),
        "RA": (float(pointing[0]), "[deg] field centre (raw header pointing)"),
        "DEC": (float(pointing[1]), "[deg] field centre (raw header pointing)"),
        "ORIGIN": ("remedy-dask", "software that wrote this file"),
        "CREATOR": (CREATOR, "program and version"),
        "PIPEVER": (__version__, "remedy-dask version"),
        **code_cards(),
        "CALFILE": (cal["name"][:68], "calibration file"),
        "CALDATE": (cal["created"], "creation time (UTC) of the calibration file"),
        "CALVER": (cal["code_version"], "remedy-dask version that wrote the calibration"),
        "CALCODE": (cal["code_digest"], "source digest (whole package) of the calibration"),
        "CONFHASH": (config_digest(config), "SHA-256 (16 hex) of the configuration"),
    }
    for i, (name, version) in enumerate(dependency_versions(), start=1):
        cards[f"DEPNAM{i:02d}"] = (name, "dependency name")
        cards[f"DEPVER{i:02d}"] = (version, f"{name} version")
    return cards


def hdf5_attributes(cards: dict[str, tuple[Any, str]]) -> dict[str, Any]:
    """The observation cards as root attributes of the HDF5 product (lower-case names)."""
    names = {"TELESCOP": "telescope", "INSTRUME": "instrument", "OBJECT": "object",
             "DATE-OBS": "date_obs", "MJD-OBS": "mjd_obs",
             "RA": "ra_pointing", "DEC": "dec_pointing", "CALDATE": "calibration_created",
             "CONFHASH": "config_digest", "CODEAMP": "code_digest_amp_chain",
             "CODESKY": "code_digest_sky", "CODEALL": "code_digest",
             "CALCODE": "calibration_code_digest"}
    attrs = {attr: cards[key][0] for key, attr in names.items() if key in cards}
    deps = {cards[k][0]: cards[k.replace("NAM", "VER")][0] for k in cards if k.startswith("DEPNAM")}
    attrs["dependencies"] = json.dumps(deps)
    return attrs
