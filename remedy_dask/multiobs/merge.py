"""Merge per-observation source lists into one catalogue.

Entries closer than ``radius`` arcsec on the sky (and, for emission lines, closer than
``wave_tol`` A in wavelength) are linked, and every connected group of links (friends of friends)
becomes one object.  Its flux is the inverse-variance mean of the entries' fluxes, its position
the inverse-variance-weighted mean direction, and it counts the distinct observations (inputs)
that saw it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

AB_ZERO_UJY = 23.9  # AB magnitude of 1 uJy


def unit_vectors(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    a, d = np.deg2rad(np.asarray(ra, float)), np.deg2rad(np.asarray(dec, float))
    return np.column_stack([np.cos(d) * np.cos(a), np.cos(d) * np.sin(a), np.sin(d)])


def group_entries(ra: np.ndarray, dec: np.ndarray, radius: float, wave: np.ndarray | None = None,
                  wave_tol: float | None = None) -> np.ndarray:
    """Group label (0..n_groups-1, in order of first appearance) of each entry."""
    n = len(np.atleast_1d(ra))
    if n == 0:
        return np.zeros(0, int)
    chord = 2.0 * np.sin(np.deg2rad(radius / 3600.0) / 2.0)
    pairs = cKDTree(unit_vectors(ra, dec)).query_pairs(chord, output_type="ndarray")
    if wave is not None and len(pairs):
        if wave_tol is None:
            raise ValueError("group_entries: wave given without wave_tol")
        wave = np.asarray(wave, float)
        pairs = pairs[np.abs(wave[pairs[:, 0]] - wave[pairs[:, 1]]) <= wave_tol]
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n)) \
        if len(pairs) else coo_matrix((n, n))
    _, labels = connected_components(graph, directed=False)
    _, first = np.unique(labels, return_index=True)
    relabel = np.empty(labels.max() + 1, int)
    relabel[labels[np.sort(first)]] = np.arange(len(first))
    return relabel[labels]


def ivar_mean(values: np.ndarray, errors: np.ndarray, labels: np.ndarray, n_groups: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """Inverse-variance mean and its error per group (entries with a bad error are left out;
    a group without any good entry gets NaN)."""
    values = np.asarray(values, float)
    errors = np.asarray(errors, float)
    good = np.isfinite(values) & np.isfinite(errors) & (errors > 0)
    ivar = np.where(good, 1.0 / np.where(good, errors, 1.0) ** 2, 0.0)
    num = np.bincount(labels, ivar * np.where(good, values, 0.0), n_groups)
    den = np.bincount(labels, ivar, n_groups)
    ok = den > 0
    safe = np.where(ok, den, 1.0)
    return np.where(ok, num / safe, np.nan), np.where(ok, 1.0 / np.sqrt(safe), np.nan)


def merge_entries(ra: np.ndarray, dec: np.ndarray, flux: np.ndarray, flux_err: np.ndarray,
                  observation: np.ndarray, radius: float, wave: np.ndarray | None = None,
                  wave_tol: float | None = None) -> dict[str, np.ndarray]:
    """One row per object: ``ra``, ``dec``, ``flux``, ``flux_err`` (inverse-variance mean),
    ``n_observations`` (distinct values of ``observation`` in the group), ``n_entries``,
    ``max_sep`` (arcsec, largest entry distance from the merged position), ``wave`` (if given,
    inverse-variance weighted with the flux errors) and ``label`` (group of each input entry)."""
    labels = group_entries(ra, dec, radius, wave, wave_tol)
    n = int(labels.max()) + 1 if labels.size else 0
    flux_err = np.asarray(flux_err, float)
    good = np.isfinite(flux_err) & (flux_err > 0)
    w = np.where(good, 1.0 / np.where(good, flux_err, 1.0) ** 2, 0.0)
    w = np.where(np.bincount(labels, w, n)[labels] > 0, w, 1.0)  # no good error: plain mean
    vec = unit_vectors(ra, dec)
    mean = np.column_stack([np.bincount(labels, w * vec[:, i], n) for i in range(3)])
    mean /= np.linalg.norm(mean, axis=1, keepdims=True) if n else 1.0
    out_ra = np.rad2deg(np.arctan2(mean[:, 1], mean[:, 0])) % 360.0
    out_dec = np.rad2deg(np.arcsin(np.clip(mean[:, 2], -1.0, 1.0)))
    sep = np.rad2deg(np.arccos(np.clip(np.sum(vec * mean[labels], axis=1), -1.0, 1.0))) * 3600.0
    value, error = ivar_mean(flux, flux_err, labels, n)
    pairs = np.unique(np.column_stack([labels, np.asarray(observation)]), axis=0) if n else \
        np.zeros((0, 2), int)
    out = {"ra": out_ra, "dec": out_dec, "flux": value, "flux_err": error,
           "n_observations": np.bincount(pairs[:, 0], minlength=n).astype(int),
           "n_entries": np.bincount(labels, minlength=n).astype(int),
           "max_sep": np.maximum.reduceat(sep[np.argsort(labels, kind="stable")],
                                          np.r_[0, np.cumsum(np.bincount(labels, minlength=n))[:-1]])
           if n else np.zeros(0),
           "label": labels}
    if wave is not None:
        out["wave"] = np.bincount(labels, w * np.asarray(wave, float), n) / np.bincount(labels, w, n)
    return out


def catalog_rows(tables: dict[str, Any]) -> dict[str, Any]:
    """One product's catalogue entries (``tables`` as ``io.observation_reader.
    read_catalog_tables`` returns them): continuum sources with their synthetic g as a flux
    density (uJy) and the line detections."""
    from remedy_dask.observation.fluxcal import synthetic_gmag

    src = tables["sources"]
    if len(src["ra"]):
        g, gerr = synthetic_gmag(tables["meta"]["wave"], src["spectrum"], src["error"])
    else:
        g, gerr = np.zeros(0), np.zeros(0)
    ujy = 10 ** (-0.4 * (np.asarray(g, float) - AB_ZERO_UJY))
    return {"name": str(tables["meta"]["name"]),
            "continuum": {"ra": src["ra"], "dec": src["dec"], "flux": ujy,
                          "flux_err": ujy * 0.4 * np.log(10) * np.asarray(gerr, float),
                          "gmag_catalog": src["gmag_catalog"]},
            "lines": {k: tables["detections"][k] for k in ("ra", "dec", "wave", "flux",
                                                           "flux_err", "sn", "fwhm")}}


def merge_catalogs(entries: list[dict[str, Any]], radius: float, line_radius: float,
                   wave_tol: float) -> dict[str, np.ndarray]:
    """One row per object of the products' entries (:func:`catalog_rows`): continuum objects
    (within ``radius`` arcsec) first, then emission lines (within ``line_radius`` arcsec and
    ``wave_tol`` A)."""
    names = np.array([e["name"] for e in entries])
    rows: dict[str, list[np.ndarray]] = {}
    for kind, r, tol in (("continuum", radius, None), ("lines", line_radius, wave_tol)):
        cols = {k: np.concatenate([np.asarray(e[kind][k], float) for e in entries])
                for k in entries[0][kind]}
        obs = np.concatenate([np.full(len(e[kind]["ra"]), i) for i, e in enumerate(entries)])
        m = merge_entries(cols["ra"], cols["dec"], cols["flux"], cols["flux_err"], obs, r,
                          cols.get("wave"), tol)
        for k, v in _merged_columns(m, cols, names[obs], kind == "lines").items():
            rows.setdefault(k, []).append(np.asarray(v))
    out = {k: np.concatenate(v) for k, v in rows.items()}
    width = max([1, *map(len, out["observations"])])
    out["observations"] = out["observations"].astype(f"U{width}")
    out["kind"] = out["kind"].astype("U9")
    return out


def _merged_columns(m: dict[str, np.ndarray], cols: dict[str, np.ndarray],
                    entry_names: np.ndarray, line: bool) -> dict[str, np.ndarray]:
    """The output columns of one kind of merged objects (NaN where a column is of the other
    kind)."""
    n = len(m["ra"])
    lab = m["label"]
    members = [",".join(sorted(set(entry_names[lab == g]))) for g in range(n)]
    nan = np.full(n, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        gmag = -2.5 * np.log10(np.where(m["flux"] > 0, m["flux"], np.nan)) + AB_ZERO_UJY
        gmag_catalog = np.bincount(lab, cols["gmag_catalog"], n) / np.bincount(lab, minlength=n) \
            if not line else nan
    return {
        "kind": np.full(n, "line" if line else "continuum"), "ra": m["ra"], "dec": m["dec"],
        "gflux": nan if line else m["flux"], "gflux_err": nan if line else m["flux_err"],
        "gmag": nan if line else gmag, "gmag_catalog": gmag_catalog,
        "wave": m["wave"] if line else nan,
        "line_flux": m["flux"] if line else nan, "line_flux_err": m["flux_err"] if line else nan,
        "sn": m["flux"] / m["flux_err"] if line else nan,
        "n_observations": m["n_observations"], "n_entries": m["n_entries"],
        "max_sep": m["max_sep"], "observations": np.array(members, dtype=object),
    }
