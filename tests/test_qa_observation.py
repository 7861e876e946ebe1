"""Observation QA page on synthetic products whose truth is known (ObservationWriter layout)."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from remedy_dask import geometry
from remedy_dask.io.products import ObservationWriter
from remedy_dask.qa.observation import observation_report, robust_std

RA0, DEC0, ROT = 150.0, 2.0, 30.0
STAR_SHIFT = (0.4, -0.3)  # arcsec (focal plane): true star position - catalogue position
G_CAT = np.array([16.5, 17.5, 18.5, 20.5])
G_DELTA = np.array([0.03, 0.05, 0.08, 1.0])  # g_cat - g_virus; the last is fainter than 19
SKY_RESIDUAL = (0.0, 0.02)  # fraction of the sky left in the spectrum, per exposure
DET_SN = np.array([7.0, 12.0, 5.5])
DET_WAVE = np.array([4200.0, 5000.0, 3900.0])


def _centre(slot: int) -> tuple[float, float]:
    row, col = geometry.slot_row_col(slot)
    return (col - 5) * 100.0, (row - 5.5) * 100.0


def make_product(path: Path, slots=(47, 58), n_exp: int = 2, sources: bool = True,
                 seed: int = 0) -> Path:
    """Full IFUs (448 fibers) per slot and exposure: unit noise, smooth sky, Gaussian stars."""
    rng = np.random.default_rng(seed)
    wave = geometry.DEF_WAVE
    sky = 5.0 + 2.0 * np.sin(wave / 150.0)
    dar = geometry.dar_offsets(wave)
    xs, ys = geometry.ifu_fiber_layout()
    cat_fx = np.array([_centre(slots[0])[0] - 8.0, _centre(slots[0])[0] + 10.0,
                       _centre(slots[-1])[0] + 3.0, _centre(slots[-1])[0] - 12.0])
    cat_fy = np.array([_centre(slots[0])[1] + 6.0, _centre(slots[0])[1] - 9.0,
                       _centre(slots[-1])[1] + 12.0, _centre(slots[-1])[1] - 10.0])
    sigma = 1.8 / 2.3548
    n = len(slots) * n_exp * geometry.N_FIBERS_IFU
    prov = {"date": "20190822", "obs": 7, "notes": ["guider missing: defaults used"],
            "flags": ["047LU exp02: failed trace"], "astrometry": "",
            "psf": {"fwhm": [1.8] * n_exp, "n_stars": 3, "fitted": True},
            "fluxcal": {"factor": 1.02, "delta_mag": -0.02, "n_stars": 3, "scatter": 0.03},
            "exposure_qa": [{"exp": e + 1, "sky_qa": {"n_sky": 700, "sky_chi_std": 1.02},
                             "error_check": {"overall_std": 1.01}} for e in range(n_exp)]}
    w = ObservationWriter(path, n, prov)
    start = 0
    for slot in slots:
        x0, y0 = _centre(slot)
        for e in range(n_exp):
            dx, dy = geometry.DITHER_PATTERN[e]
            fx, fy = x0 + xs + dx, y0 + ys + dy
            spec = rng.normal(0.0, 1.0, (len(xs), len(wave))) + SKY_RESIDUAL[e % 2] * sky
            if sources:
                for sx, sy in zip(cat_fx[:3] + STAR_SHIFT[0], cat_fy[:3] + STAR_SHIFT[1]):
                    r2 = (fx[:, None] - dar - sx) ** 2 + (fy[:, None] - sy) ** 2
                    spec += 50.0 * np.exp(-r2 / (2 * sigma**2))
            bad = rng.random(spec.shape) < 0.01
            spec[bad] = np.nan
            ra, dec = geometry.focal_to_sky(fx, fy, RA0, DEC0, ROT)
            w.write_fibers(start, {
                "spectrum": spec.astype(np.float32), "error": np.ones(spec.shape, np.float32),
                "sky": np.tile(sky, (len(xs), 1)).astype(np.float32), "mask": bad.astype(np.uint8),
                "ra": ra, "dec": dec, "ifuslot": np.full(len(xs), slot, np.int32),
                "amp": np.array(["LL"] * len(xs)),
                "fiber_id": np.arange(1, len(xs) + 1, dtype=np.int32),
                "exposure": np.full(len(xs), e + 1, np.int32), "ifu_x": xs + dx, "ifu_y": ys + dy,
                "fx": fx, "fy": fy})
            start += len(xs)
    w.write_wave_columns("fibers", {"dar_ra": dar, "dar_dec": 0 * dar})
    w.write_table("exposures", "exposure", {
        "exposure": np.arange(1, n_exp + 1, dtype=np.int32), "exptime": np.full(n_exp, 360.0),
        "transparency": np.full(n_exp, 0.95), "fwhm": np.full(n_exp, 1.8),
        "fwhm_guider": np.full(n_exp, 1.7), "flux_scale": np.full(n_exp, 1.02)})
    m = len(G_CAT) if sources else 0
    ra, dec = geometry.focal_to_sky(cat_fx, cat_fy, RA0, DEC0, ROT)
    w.write_table("sources", "source", {
        "ra": ra[:m], "dec": dec[:m], "gmag_catalog": G_CAT[:m],
        "gmag_virus": (G_CAT - G_DELTA)[:m],
        "ifuslot": np.array([slots[0], slots[0], slots[-1], slots[-1]], np.int32)[:m],
        "spectrum": np.ones((m, len(wave)), np.float32),
        "error": np.ones((m, len(wave)), np.float32)})
    k = len(DET_SN) if sources else 0
    dfx, dfy = _centre(slots[-1])[0] + np.array([15.0, -15.0, 0.0]), _centre(slots[-1])[1] + 15.0
    dra, ddec = geometry.focal_to_sky(dfx, np.full(3, dfy), RA0, DEC0, ROT)
    det_spec = 10.0 * np.exp(-(wave - DET_WAVE[:, None]) ** 2 / (2 * 3.0**2))
    w.write_table("detections", "detection", {
        "ra": dra[:k], "dec": ddec[:k], "wave": DET_WAVE[:k], "wave_err": np.full(k, 0.3),
        "flux": np.full(k, 75.0), "flux_err": np.full(k, 8.0), "sn": DET_SN[:k],
        "fwhm": np.full(k, 7.0), "chi2": np.full(k, 1.1),
        "ifuslot": np.full(k, slots[-1], np.int32),
        "ifu_x": np.zeros(k), "ifu_y": np.zeros(k), "spectrum": det_spec[:k].astype(np.float32),
        "error": np.ones((k, len(wave)), np.float32)})
    return w.close({"astrometry": {"ra": RA0, "dec": DEC0, "rotation": ROT, "n_stars": 3,
                                   "rms": 0.12, "fitted": 1}})


class _Page(HTMLParser):
    """Sections (h2 text) -> table rows (cell texts) and the image sources."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.images: list[str] = []
        self._tag, self._section, self._row = "", "", None

    def handle_starttag(self, tag, attrs):
        self._tag = tag
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        elif tag == "tr":
            self._row = []
        elif tag == "td" and self._row is not None:
            self._row.append("")

    def handle_endtag(self, tag):
        if tag == "tr" and self._row:
            self.tables.setdefault(self._section, []).append(self._row)
        if tag == "tr":
            self._row = None
        self._tag = ""

    def handle_data(self, data):
        if self._tag == "h2":
            self._section = data
        elif self._tag == "td" and self._row is not None:
            self._row[-1] += data


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text())
    for src in page.images:
        assert (path.parent / src).is_file(), src
    return page


def _value(page: _Page, section: str, key: str) -> float:
    return float(dict((r[0], r[1]) for r in page.tables[section])[key])


@pytest.fixture(scope="module")
def product(tmp_path_factory) -> Path:
    return make_product(tmp_path_factory.mktemp("qa") / "20190822_0000007.h5")


def test_page_tables_match_truth(product):
    index = observation_report(product)
    assert index == product.with_name("20190822_0000007_qa") / "index.html"
    page = _parse(index)
    assert sorted(page.images) == sorted(["recon.png", "astrometry.png", "photometry.png",
                                          "sky_residual.png", "noise_distribution.png",
                                          "detections.png"])
    assert _value(page, "Summary", "detections") == 3 and _value(page, "Summary", "sources") == 4
    assert _value(page, "Summary", "fibers (all exposures)") == 4 * 448
    assert _value(page, "Summary", "masked (NaN) pixel fraction") == pytest.approx(0.01, abs=0.001)
    # photometry: g < 19 only -> median 0.05, robust sigma 1.4826 * 0.02
    assert _value(page, "Photometric offsets", "sources with g < 19") == 3
    phot = "Photometric offsets"
    assert _value(page, phot, "median g_cat - g_virus (mag)") == pytest.approx(0.05, abs=1e-4)
    assert _value(page, phot, "robust sigma (mag)") == pytest.approx(robust_std(G_DELTA[:3]),
                                                                     abs=1e-4)
    # detections sorted by S/N
    det = page.tables["Detections"]
    assert len(det) == 3 and [float(r[7]) for r in det] == sorted(DET_SN, reverse=True)
    assert float(det[0][3]) == 5000.0
    # sky residual per exposure: 0 and 2 % of the sky (median of ~2x448 unit-noise fibers)
    ratio = {int(r[0]): float(r[2]) for r in page.tables["Sky residuals"]}
    assert ratio[1] == pytest.approx(100 * SKY_RESIDUAL[0], abs=0.4)
    assert ratio[2] == pytest.approx(100 * SKY_RESIDUAL[1], abs=0.4)
    # unit noise: std of spectrum/error ~ 1 in every range (exposure 2 carries +0.1 sigma)
    for row in page.tables["Spectrum / error of empty fibers"]:
        assert float(row[2]) == pytest.approx(1.0, abs=0.03)
        assert float(row[3]) == pytest.approx(1.0, abs=0.05)
    # fiber-weighted centroids find the stars' known shift (focal plane -> sky)
    ra_t, dec_t = geometry.focal_to_sky(STAR_SHIFT[0], STAR_SHIFT[1], RA0, DEC0, ROT)
    ra_c, dec_c = geometry.focal_to_sky(0.0, 0.0, RA0, DEC0, ROT)
    true_dra = (ra_t - ra_c) * np.cos(np.deg2rad(DEC0)) * 3600
    true_ddec = (dec_t - dec_c) * 3600
    astro = "Astrometry"
    assert _value(page, astro, "measured sources (g < 20)") == 3
    assert _value(page, astro, "median dRA cos(Dec) (arcsec)") == pytest.approx(true_dra, abs=0.03)
    assert _value(page, astro, "median dDec (arcsec)") == pytest.approx(true_ddec, abs=0.03)
    assert _value(page, astro, "robust sigma dRA (arcsec)") < 0.05
    assert _value(page, astro, "rotation") == ROT
    assert len(page.tables["Exposures"]) == 2
    texts = [r[1] for r in page.tables["Flags and notes"]]
    assert "047LU exp02: failed trace" in texts and "guider missing: defaults used" in texts


def test_sampled_chunks_cover_every_exposure(product, tmp_path):
    cat = Table({"raMean": [RA0], "decMean": [DEC0], "gMeanApMag": [17.0]})
    index = observation_report(product, tmp_path / "qa" / "index.html", catalog=cat,
                               max_sample_fibers=2 * 448)
    page = _parse(index)
    assert _value(page, "Summary", "fibers sampled for sky / noise") == 2 * 448
    ratio = {int(r[0]): float(r[2]) for r in page.tables["Sky residuals"]}
    assert sorted(ratio) == [1, 2] and ratio[2] == pytest.approx(2.0, abs=0.6)


def test_empty_sources_and_detections(tmp_path):
    path = make_product(tmp_path / "20190822_0000008.h5", slots=(47,), n_exp=1, sources=False)
    page = _parse(observation_report(path))
    assert sorted(page.images) == ["noise_distribution.png", "recon.png", "sky_residual.png"]
    assert _value(page, "Summary", "detections") == 0 and _value(page, "Summary", "sources") == 0
    assert "Detections" not in page.tables
    assert len(page.tables["Sky residuals"]) == 1


def test_product_without_fibers(tmp_path):
    w = ObservationWriter(tmp_path / "20190822_0000009.h5", 0, {"flags": ["all amps failed"]})
    w.write_table("sources", "source", {"ra": np.zeros(0), "gmag_catalog": np.zeros(0)})
    path = w.close({"astrometry": {"ra": RA0, "dec": DEC0, "rotation": ROT}})
    page = _parse(observation_report(path))
    assert _value(page, "Summary", "fibers (all exposures)") == 0 and page.images == []
    assert page.tables["Flags and notes"] == [["flags", "all amps failed"]]
