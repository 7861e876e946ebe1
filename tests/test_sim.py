"""Tests of the virtual instrument (remedy_dask.sim): layout, headers, orientation, physics
bookkeeping, determinism and truth.  Readers here are written from the raw layout (docs/design.md) directly
(the test re-implements the documented rules rather than calling the simulator's helpers)."""

from __future__ import annotations

import copy
import dataclasses
import re
import tarfile

import h5py
import numpy as np
import pytest
from astropy.io import fits

from remedy_dask import geometry
from remedy_dask.errors import ConfigError
from remedy_dask.sim import SimConfig, render_amp_electrons, simulate_night, spectra
from remedy_dask.sim.amp import make_amp_model
from remedy_dask.sim.files import tar_observations
from remedy_dask.sim.inmemory import find_frame
from remedy_dask.sim.light import fiber_light
from remedy_dask.sim.light import science_conversion, sky_flam
from remedy_dask.sim.render import AmpCache, dark_image, render_amp_frame, upsample_scattered
from remedy_dask.sim.scene import make_plan

SMALL = SimConfig(n_zro=1, n_drk=1, n_flt=1, n_cmp_hg=1, n_cmp_cd=1, n_twi=1, n_sci=3)
NAME_RE = re.compile(r"^(\d{8}T\d{6}\.\d)_(\d{3})(LL|LU|RL|RU)_(zro|drk|flt|cmp|twi|sci)\.fits$")
KEYWORDS = ("GAIN", "RDNOISE", "CCDPOS", "CCDHALF", "AMPNAME", "SPECID", "IFUID", "IFUSLOT",
            "CONTID", "OBJECT", "EXPTIME", "DARKTIME", "DATE", "DATE-OBS", "UT", "TRAJRA",
            "TRAJDEC", "TRAJCRA", "TRAJCDEC", "PARANGLE", "AMBTEMP", "QPROG")


@pytest.fixture(scope="module")
def night(tmp_path_factory) -> tuple:
    """A small untarred night (1 IFU, 1 frame per calibration kind, 3 science exposures)."""
    out = tmp_path_factory.mktemp("night")
    return out, simulate_night(out, ifuslots=(47,), seed=3, config=SMALL)


@pytest.fixture(scope="module")
def tar_night(tmp_path_factory) -> tuple:
    """The science observation of the same night, written tarred by two worker processes."""
    out = tmp_path_factory.mktemp("tarnight")
    return out, simulate_night(out, ifuslots=(47,), seed=3, config=SMALL, tar=True, n_workers=2,
                               science_only=True)


@pytest.fixture(scope="module")
def plan():
    return make_plan("20190822", (47, 48), 5, 7, SimConfig(), geometry.FRAME_KINDS)


def orient(raw: np.ndarray, header) -> np.ndarray:
    """The documented reader rule, written independently of the simulator."""
    ncols = raw.shape[1]
    data = raw[:, : ncols - int(32 * ncols / 1064)].astype(float)
    amp = (str(header["CCDPOS"]) + str(header["CCDHALF"])).replace(" ", "")
    if amp in ("LU", "RL"):
        data = data[::-1, ::-1]
    if header.get("AMPNAME") in ("LR", "UL"):
        data = data[:, ::-1]
    return data


def overscan_level(raw: np.ndarray) -> float:
    return float(np.median(raw[:, -30:]))


# --- layout ---------------------------------------------------------------------------------
def test_untarred_layout_and_names(night):
    out, res = night
    files = sorted((out / "raw/20190822/virus").rglob("*.fits"))
    assert len(files) == 9 * 4 == len(res.raw_files)
    prefixes: dict[tuple[int, int], set[str]] = {}
    for f in files:
        rel = f.relative_to(out / "raw")
        parts = rel.parts
        assert parts[0] == "20190822" and parts[1] == "virus" and parts[4] == "virus"
        assert re.fullmatch(r"virus\d{7}", parts[2]) and re.fullmatch(r"exp\d{2}", parts[3])
        m = NAME_RE.match(f.name)
        assert m, f.name
        key = (int(parts[2][5:]), int(parts[3][3:]))
        prefixes.setdefault(key, set()).add(m.group(1))
    assert all(len(p) == 1 for p in prefixes.values())  # one timestamp per exposure
    assert len({next(iter(p)) for p in prefixes.values()}) == len(prefixes)
    assert sorted(prefixes) == sorted(res.exposures)
    kinds = {f.name.split("_")[-1][:3] for f in (out / "raw/20190822/virus/virus0000007").rglob("*")
             if f.is_file()}
    assert kinds == {"sci"} and {k[1] for k in prefixes if k[0] == 7} == {1, 2, 3}
    for name in ("fplane.txt", "IFUcen_HETDEX.txt", "throughput.txt", "ps1_catalog.csv",
                 "truth/truth.h5", "truth/README.md"):
        assert (out / name).is_file(), name
    assert len(list((out / "fiber_loc").glob("fiber_loc_*_047_*_*.txt"))) == 4
    assert len(res.guider_files) == 3


def test_tar_layout_and_identical_bytes_across_runs_and_workers(night, tar_night):
    out, _ = night
    tout, tres = tar_night
    virus = tout / "raw/20190822/virus"
    assert not [p for p in virus.iterdir() if p.is_dir()]
    tars = sorted(virus.glob("virus*.tar"))
    assert [t.name for t in tars] == ["virus0000007.tar"] == [t.name for t in tres.raw_files]
    n = 0
    for t in tars:
        with tarfile.open(t) as tf:
            for member in tf.getmembers():
                assert re.fullmatch(rf"{t.stem}/exp\d\d/virus/[^/]+\.fits", member.name)
                data = tf.extractfile(member).read()
                assert data == (out / "raw/20190822/virus" / member.name).read_bytes()
                n += 1
    assert n == 12 and tres.exposures == [(7, 1), (7, 2), (7, 3)]
    # the truth does not depend on the worker count either
    with h5py.File(out / "truth/truth.h5") as a, h5py.File(tout / "truth/truth.h5") as b:
        for key in ("trace", "wavelength", "expected_sci", "cosmic_mask_sci"):
            np.testing.assert_array_equal(a["047RU"][key][()], b["047RU"][key][()])


def test_tar_writer_is_deterministic(night, tmp_path):
    out, _ = night
    digests = []
    for i in range(2):
        dst = tmp_path / f"copy{i}"
        src = out / "raw/20190822/virus/virus0000007"
        for f in src.rglob("*.fits"):
            target = dst / f.relative_to(out / "raw/20190822/virus")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(f.read_bytes())
        (tar,) = tar_observations(dst)
        digests.append(tar.read_bytes())
    assert digests[0] == digests[1]


# --- headers and file format ------------------------------------------------------------------
def test_headers_and_fits_format(night):
    out, _ = night
    with h5py.File(out / "truth/truth.h5") as h5:
        truth = {k: (h5[k].attrs["gain"], h5[k].attrs["read_noise"], h5[k].attrs["ampname"])
                 for k in ("047LL", "047LU", "047RL", "047RU")}
    ampnames = set()
    for f in sorted((out / "raw/20190822/virus").rglob("*.fits")):
        with fits.open(f, do_not_scale_image_data=True, memmap=False) as hdul:
            h = hdul[0].header
            assert h["BITPIX"] == 16 and h["BZERO"] == 32768 and h["NAXIS1"] == 1064
            assert h["NAXIS2"] == 1032
            for key in KEYWORDS:
                assert key in h, (f.name, key)
            amp = h["CCDPOS"] + h["CCDHALF"]
            assert f.name.split("_")[1] == f"{h['IFUSLOT']:03d}{amp}"
            gain, rn, ampname = truth[f"047{amp}"]
            assert h["GAIN"] == pytest.approx(gain) and h["RDNOISE"] == pytest.approx(rn)
            assert h["AMPNAME"] == ampname
            ampnames.add(h["AMPNAME"])
            assert f.name.startswith(h["DATE"].replace("-", "").replace(":", "")[:17])
            if f.name.endswith("cmp.fits"):
                assert h["OBJECT"] in ("Hg", "Cd-A")
            assert abs(h["TRAJRA"] - h["TRAJCRA"]) * 15 * 3600 < 25
    assert ampnames & {"LR", "UL"}, "the AMPNAME column flip must be exercised"
    arcs = {fits.getheader(f)["OBJECT"] for f in (out / "raw").rglob("*_cmp.fits")}
    assert arcs == {"Hg", "Cd-A"}


# --- orientation and detector -----------------------------------------------------------------
@pytest.mark.parametrize("amp", ["LL", "LU", "RL", "RU"])
def test_orientation_inverse(plan, amp):
    electrons, raw, header, model, _ = render_amp_electrons(47, amp, "flt", plan=plan)
    assert raw.dtype == np.uint16 and raw.shape == (1032, 1064)
    level = overscan_level(raw)
    measured = (orient(raw, header) - level - model.bias_image()) * header["GAIN"]
    resid = (measured - electrons) / np.sqrt(np.maximum(electrons, 0) + model.read_noise**2)
    good = np.ones_like(resid, bool)
    good[:, model.trap_col] = False
    assert abs(np.median(resid[good])) < 0.05
    assert 0.9 < np.std(resid[good]) < 1.1
    # a wrong orientation fails loudly
    flipped = measured[:, ::-1]
    assert np.std(((flipped - electrons) / np.sqrt(electrons + 10))[good]) > 5


def test_zero_frame_noise_bias_and_overscan(plan):
    electrons, raw, header, model, rendered = render_amp_electrons(48, "RU", "zro", plan=plan)
    assert not electrons.any()
    sigma_adu = model.read_noise / model.gain
    over = raw[:, -30:].astype(float)
    assert over.mean() == pytest.approx(rendered.bias_level, abs=0.05)
    assert over.std() == pytest.approx(sigma_adu, rel=0.05)
    data = orient(raw, header) - rendered.bias_level - model.bias_image()
    assert abs(data.mean()) < 0.05 and data.std() == pytest.approx(sigma_adu, rel=0.05)
    assert header["EXPTIME"] == 0


def test_dark_defects_in_the_right_place(plan):
    electrons, raw, header, model, rendered = render_amp_electrons(47, "LU", "drk", plan=plan)
    dark = (orient(raw, header) - overscan_level(raw) - model.bias_image()) * model.gain
    hot = np.zeros(dark.size, bool)
    hot[model.hot_index] = True
    hot = hot.reshape(dark.shape)
    cosmic = rendered.cosmic_mask
    assert cosmic is not None and cosmic.sum() > 0
    assert np.median(dark[hot & ~cosmic]) > 100
    assert np.median(dark[~hot & ~cosmic]) == pytest.approx(
        model.dark_current * header["DARKTIME"], abs=0.5)
    assert dark[model.trap_row, model.trap_col] > 300  # trap glow
    assert dark[model.trap_row - 1, model.trap_col] > 150
    cosmic[:, model.trap_col] = False
    assert np.all(dark[cosmic] > np.median(dark) + 50)


def test_flat_bad_column_and_charge_trap(plan):
    electrons, *_, model, rendered = render_amp_electrons(47, "RL", "flt", plan=plan)
    ratio = electrons[:, model.bad_column] / electrons[:, model.bad_column + 1]
    lit = electrons[:, model.bad_column + 1] > 1000
    assert np.median(ratio[lit]) == pytest.approx(SimConfig().bad_column_response, rel=0.1)
    col = electrons[model.trap_row + 1:, model.trap_col]
    ref = electrons[model.trap_row + 1:, model.trap_col - 1]
    bright = ref > 2000
    assert np.median((ref - col)[bright]) == pytest.approx(SimConfig().trap_capacity_e, rel=0.2)


# --- light bookkeeping ------------------------------------------------------------------------
def test_arc_line_counts_and_positions(plan):
    cfg = SimConfig(scattered_fraction=0.0, trap_capacity_e=0.0, bad_column_response=1.0)
    p = make_plan("20190822", (47,), 5, 7, cfg, geometry.FRAME_KINDS)
    electrons, *_, model, rendered = render_amp_electrons(47, "LL", "cmp", lamp="Cd-A", plan=p)
    light = electrons - dark_image(model, cfg, rendered.header["DARKTIME"][0])
    lam = model.wavelength()
    factor = model.fiber_throughput * model.flat_illum
    for line in geometry.ARC_LINES["Cd-A"]:
        total = cfg.arc_line_e[line]
        x0 = np.array([np.interp(line, lam[k], np.arange(1032)) for k in range(112)])
        i = int(round(np.median(x0)))
        box = slice(i - 20, i + 21)
        # all light of the line, summed over the whole image: sum_k total * factor_k
        assert light[:, box].sum() == pytest.approx(total * factor.sum(), rel=2e-3)
        # each fiber's line centroid sits where the true wavelength solution puts the line
        counts = rendered.light.counts[:, box]
        xc = (counts * np.arange(1032)[box]).sum(1) / np.maximum(counts.sum(1), 1e-9)
        live = ~model.dead
        np.testing.assert_allclose(xc[live], x0[live], atol=0.003)


def test_flat_column_sums_match_fiber_counts(plan):
    electrons, *_, model, rendered = render_amp_electrons(48, "LU", "flt", plan=plan)
    counts = rendered.light.counts
    scat = upsample_scattered(rendered.scattered_coarse)
    direct = electrons - scat - dark_image(model, plan.config, rendered.header["DARKTIME"][0])
    cols = np.setdiff1d(np.arange(20, 1000, 37), [model.bad_column, model.trap_col])
    # profile weights conserve each fiber's counts (edge fibers lose < 1e-4 off the chip)
    np.testing.assert_allclose(direct[:, cols].sum(0), counts[:, cols].sum(0), rtol=2e-4)
    # scattered light is ~3 % of the direct light (some falls off the chip)
    frac = scat.sum() / direct.sum()
    assert 0.02 < frac < 0.031
    # pixel counts = expected density x dispersion, to first order
    dw = np.gradient(model.wavelength(), axis=1)
    dens = counts / dw
    k = 60
    ref = np.interp(model.wavelength()[k, 100:900], geometry.DEF_WAVE,
                    rendered.light.expected[k])
    np.testing.assert_allclose(dens[k, 100:900], ref, rtol=0.02)


def test_science_star_and_line_flux(plan):
    """Light of a star and of an emission line summed over the fibers of the IFU and the three
    dithers = flux x conversion formula x IFU fill factor (fiber area / sky area per fiber)."""
    p = copy.copy(plan)
    p.dead_fiber = {47: 0, 48: 0}  # light falling on a dead fiber would be lost
    x_fp, y_fp = plan.fplane[47]
    fx, fy = np.array([y_fp - 6.0, y_fp + 7.0]), np.array([x_fp + 4.0, x_fp - 5.0])
    ra, dec = geometry.focal_to_sky(fx, fy, plan.ra0, plan.dec0, plan.rotation)
    scale, mags = spectra.star_norm_and_colors(np.array([6000.0]), np.array([17.0]))
    p.stars = {"ra": ra[:1], "dec": dec[:1], "teff": np.array([6000.0]), "flam_scale": scale}
    p.lines = {"ra": ra[1:], "dec": dec[1:], "wave": np.array([5250.0]),
               "flux": np.array([50.0]), "fwhm": np.array([3.0])}
    wave = geometry.DEF_WAVE
    band = (wave > 4400) & (wave < 5000)
    line_win = np.abs(wave - 5250.0) < 16
    side = (np.abs(wave - 5250.0) > 20) & (np.abs(wave - 5250.0) < 40)
    star = scale[0] * spectra.blackbody_flam(wave, 6000.0)
    star_meas = star_true = line_meas = line_true = fill_sum = 0.0
    ifu_x, ifu_y = geometry.ifu_fiber_layout()
    for sci in range(3):
        frame = find_frame(p, "sci", sci + 1)
        conv = science_conversion(p, sci, wave)
        sky_e = spectra.lsf_convolve(sky_flam(p, sci, spectra.FINE_WAVE) * science_conversion(
            p, sci, spectra.FINE_WAVE), p.config.lsf_fwhm)
        sky_e = spectra.interp_fine(sky_e, wave) * spectra.FIBER_AREA_ARCSEC2
        for amp in geometry.AMPS:
            model = make_amp_model(p, 47, amp)
            light = fiber_light(p, model, frame)
            obj = light.expected / model.fiber_throughput[:, None] - sky_e[None, :]
            star_meas += obj[:, band].sum()
            cont = np.array([np.polyval(np.polyfit(wave[side], o[side], 1), wave[line_win])
                             for o in obj])
            near = np.hypot(model.ifu_x + p.dither(sci)[0] - 7.0,
                            model.ifu_y + p.dither(sci)[1] + 5.0) < 8.0
            line_meas += (obj[near][:, line_win] - cont[near]).sum() * geometry.WAVE_STEP
        # independent expectation: IFU layout + dither - DAR, Moffat fiber fractions
        r_tab, f_tab = spectra.moffat_fiber_fraction(float(p.seeing[sci]), 3.5)
        dx, dy = p.dither(sci)

        def captured(src: int, lam: np.ndarray, radius: float = 99.0) -> np.ndarray:
            xs = (ifu_x + dx)[:, None] - geometry.dar_offsets(lam)[None, :]
            d = np.hypot(xs - (fx[src] - y_fp), (ifu_y + dy - (fy[src] - x_fp))[:, None])
            sel = np.hypot(ifu_x + dx - (fx[src] - y_fp), ifu_y + dy - (fy[src] - x_fp)) < radius
            return np.interp(d[sel], r_tab, f_tab).sum(0)

        star_true += (star * conv * captured(0, wave))[band].sum()
        line_true += (50e-17 * science_conversion(p, sci, np.array([5250.0]))[0]
                      * captured(1, np.array([5250.0]), 8.0)[0])
        fill_sum += captured(0, np.array([4700.0]))[0]
    assert star_meas == pytest.approx(star_true, rel=0.005)
    assert line_meas == pytest.approx(line_true, rel=0.005)
    fill = spectra.FIBER_AREA_ARCSEC2 / (geometry.IFU_FIBER_PITCH * geometry.IFU_ROW_PITCH)
    assert fill_sum / 3 == pytest.approx(fill, rel=0.05)  # 3 dithers ~ uniform coverage


def test_drifts_are_shared_by_the_two_amps_of_a_ccd(plan):
    """The spectrum moves on the detector: both halves of a CCD share its drift up to the small
    differential (rotation); the two CCDs and the two IFUs drift independently."""
    from remedy_dask.sim.amp import ccd_drifts

    tau = plan.config.drift_half_differential_px
    for slot in (47, 48):
        d = {amp: ccd_drifts(plan, slot, amp) for amp in geometry.AMPS}
        for ccd in "LR":
            for t in (0, 1):  # trace, wavelength
                diff = d[ccd + "U"][t] - d[ccd + "L"][t]
                assert np.all(np.abs(diff) < 5 * tau) and np.any(diff != 0)
        assert not np.allclose(d["LL"][1], d["RL"][1], atol=0.01)
    assert not np.allclose(ccd_drifts(plan, 47, "LL")[1], ccd_drifts(plan, 48, "LL")[1], atol=0.01)
    np.testing.assert_array_equal(make_amp_model(plan, 47, "LU").wave_shift,
                                  ccd_drifts(plan, 47, "LU")[1])


def test_science_drift_sign_convention(plan):
    """Science features sit at trace + trace_shift rows and at columns x_cal + wavelength_shift
    (geometry's convention: wavelength_sci(x) = wavelength_cal(x - shift))."""
    model = make_amp_model(plan, 48, "RU")
    frame = find_frame(plan, "sci", 2)
    still = dataclasses.replace(model, wave_shift=np.zeros(3), trace_shift=np.zeros(3))
    moved = fiber_light(plan, model, frame).counts
    ref = fiber_light(plan, still, frame).counts
    dx = model.wave_shift[1]
    assert abs(dx) > 0.04
    x = np.arange(1032.0)

    def centroid(counts: np.ndarray, i: int) -> float:
        win = slice(i - 6, i + 7)
        cont = np.interp(x[win], [i - 6, i + 6], counts[[i - 6, i + 6]])
        line = counts[win] - cont
        return float((line * x[win]).sum() / line.sum())

    lam = still.wavelength()
    for k in (5, 50, 100):
        for line in (4358.335, 5460.750):  # sky lines
            i = int(round(np.interp(line, lam[k], x)))
            assert centroid(moved[k], i) - centroid(ref[k], i) == pytest.approx(dx, abs=0.01)
        # smooth continuum: the shifted spectrum is the reference moved right by dx
        back = np.interp(x[600:700] - dx, x, ref[k])
        np.testing.assert_allclose(moved[k, 600:700], back, rtol=1e-3)
    dy = model.trace_shift[1]
    cache = AmpCache()
    render_amp_frame(plan, model, frame, cache)
    index, weights = cache.profiles[1]  # profile of science exposure 2
    rows = index // 1032
    centre = (weights * rows).sum(1) / weights.sum(1)  # (112, 1032)
    assert abs(dy) > 0.04
    np.testing.assert_allclose(centre[1:-1], (model.trace + dy)[1:-1], atol=1e-4)
    np.testing.assert_allclose(weights.sum(1), 1.0, atol=1e-6)


# --- auxiliary files and truth -----------------------------------------------------------------
def test_auxiliary_files(night):
    out, _ = night
    fp = [l.split() for l in (out / "fplane.txt").read_text().splitlines() if not l.startswith("#")]
    assert len(fp) == 1 and fp[0][0] == "047" and len(fp[0]) == 8
    lines = (out / "IFUcen_HETDEX.txt").read_text().splitlines()
    body = np.array([l.split() for l in lines[30:]])
    assert body.shape == (448, 6)
    x, y = geometry.ifu_fiber_layout()
    np.testing.assert_allclose(body[:, 1].astype(float), x, atol=1e-3)
    assert set(body[:224, 3]) == {"L"} and body[224, 4] == "1"
    thr = np.loadtxt(out / "throughput.txt")
    assert thr.shape == (1036, 2)
    assert thr[0, 1] == pytest.approx(0.0246, abs=1e-4) and thr[-1, 1] == pytest.approx(0.128)
    assert thr[np.argmax(thr[:, 1]), 0] == 4640.0 and thr[:, 1].max() == pytest.approx(0.161)
    cat = np.genfromtxt(out / "ps1_catalog.csv", delimiter=",", names=True)
    assert {"raMean", "decMean", "gMeanApMag", "yMeanApMag", "objID"} <= set(cat.dtype.names)
    with h5py.File(out / "truth/truth.h5") as h5:
        assert len(cat) == h5["stars/ra"].size > 5
        dead_id = h5["ifus/dead_fiber_id"][0]
        n_dead = 0
        for amp in geometry.AMPS:
            g = h5[f"047{amp}"]
            f = next((out / "fiber_loc").glob(f"fiber_loc_*_047_*_{amp}.txt"))
            loc = np.loadtxt(f, comments="#")
            assert loc.shape == (112, 2)
            np.testing.assert_array_equal(loc[:, 1].astype(bool), g["dead"][()])
            assert np.all(np.abs(loc[:, 0] - g["trace"][:, 515]) < 0.5)
            n_dead += int(loc[:, 1].sum())
            assert (dead_id in g["fiber_id"][()]) == bool(g["dead"][()].any())
        assert n_dead == 1


def test_truth_contents(night):
    out, res = night
    with h5py.File(res.truth_file) as h5:
        assert set(h5.keys()) >= {"047LL", "047LU", "047RL", "047RU", "astrometry", "exposures",
                                  "sky", "stars", "line_sources", "throughput", "flux_to_counts",
                                  "psf", "frames", "ifus", "dar"}
        g = h5["047RL"]
        assert g["trace"].shape == g["wavelength"].shape == (112, 1032)
        assert g["trace_shift"].shape == g["wavelength_shift"].shape == (3,)
        shifts = np.abs(np.r_[g["trace_shift"][()], g["wavelength_shift"][()]])
        assert np.all((shifts > 0.0) & (shifts < 0.35))
        assert g["expected_sci"].shape == (3, 112, 1036)
        assert g["cosmic_mask_sci"].shape == (3, 1032, 1032) and g["cosmic_mask_sci"][()].any()
        assert g["hot_pixel_mask"][()].sum() == g["hot_pixel_index"].size > 500
        assert g["frame_bias_level"].size == 9
        lam = g["wavelength"][()]
        assert lam[:, 0].max() < 3460 and lam[:, -1].min() > 5550
        assert 1.9 < np.median(np.diff(lam, axis=1)) < 2.1
        tr = g["trace"][()]
        assert 20 < tr[0].mean() < 30 and 1000 < tr[-1].mean() < 1015
        pitch = np.diff(tr[:, 516])
        assert np.sum(pitch > 14) == 2 and np.median(pitch) == pytest.approx(8.72, abs=0.1)
        for key in ("gain", "read_noise", "bias_level", "dark_current", "bad_column",
                    "charge_trap_col", "scattered_light_fraction", "profile_wing_fraction"):
            assert key in g.attrs
        a = h5["astrometry"].attrs
        off = np.hypot(a["header_offset_east_arcsec"], a["header_offset_north_arcsec"])
        assert 1.0 < off < 6.0
        assert 0.005 < abs(a["rotation"] - a["rotation_from_parangle"]) < 0.05
        e = h5["exposures"]
        assert np.all((e["transparency"][()] >= 0.85) & (e["transparency"][()] <= 1.0))
        assert np.all((e["seeing_fwhm"][()] >= 1.4) & (e["seeing_fwhm"][()] <= 2.2))
        cont, conv = h5["sky/continuum"][()], h5["sky/flam_convolved"][()]
        np.testing.assert_allclose(conv[:, 600], cont[:, 600], rtol=2e-3)  # 4670 A: no line
        g_flux = 10 ** (-0.4 * (22.0 + 48.6)) * 2.99792458e18 / 4670.0**2 / 1e-17
        assert np.median(cont[:, 600] / h5["exposures/sky_scale"][()]) == pytest.approx(
            g_flux, rel=0.15)  # ~22 mag/arcsec^2 in g
        sky = h5["sky/e_per_A_fiber"][()]
        assert sky.shape == (3, 1036) and 30 < np.median(sky) < 200
        # expected science light = throughput x sky (+ sources) on average
        exp0 = g["expected_sci"][0] / np.where(g["dead"][()], np.nan, g["fiber_throughput"][()])[:, None]
        assert np.nanmedian(exp0[:, 600] / sky[0, 600]) == pytest.approx(1.0, abs=0.02)
        ls = h5["line_sources"]
        assert ls["flux"].size == SMALL.line_sources_per_ifu and ls["flux"][()].max() > 20
        assert h5["stars/spectrum"].shape == (h5["stars/ra"].size, 1036)
        # fiber sky positions follow the true astrometry (geometry.focal_to_sky)
        ra, dec = geometry.focal_to_sky(np.array([0.0]), np.array([0.0]), a["ra"], a["dec"],
                                        a["rotation"])
        assert ra[0] == pytest.approx(a["ra"]) and dec[0] == pytest.approx(a["dec"])
    assert "trace_shift" in (res.truth_dir / "README.md").read_text()


def test_bad_inputs_raise():
    with pytest.raises(ConfigError):
        simulate_night("/nonexistent/never", science_obs=3)
    with pytest.raises(ConfigError):
        simulate_night("/nonexistent/never", ifuslots=(47, 47))
    with pytest.raises(ConfigError):
        simulate_night("/nonexistent/never", ifuslots=(40,))
    with pytest.raises(ValueError):
        SimConfig(n_sci=4)
