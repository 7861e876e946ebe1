"""The simulator's truth: one HDF5 file with everything that went into the night, documented in
``truth/README.md`` (written next to it from :data:`README`)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Iterable

import h5py
import numpy as np

from remedy_dask.sim import instrument, spectra
from remedy_dask.sim.amp import AmpModel
from remedy_dask.sim.files import guider_values
from remedy_dask.sim.light import science_conversion, sky_flam
from remedy_dask.sim.render import RenderedFrame
from remedy_dask.sim.scene import STAR_KINDS, Frame, NightPlan

TRUTH_FILE = "truth.h5"
_GZIP = {"compression": "gzip", "compression_opts": 4, "shuffle": True}


def amp_record(plan: NightPlan, model: AmpModel,
               rendered: Iterable[tuple[Frame, RenderedFrame]]) -> dict:
    """Truth of one amp as a picklable dict {name, attrs, data, masks} (built in the worker)."""
    n_sci = plan.n_sci
    attrs = {
        "ifuslot": model.ifuslot, "amp": model.amp, "specid": model.specid,
        "ifuid": model.ifuid, "contid": model.contid, "ampname": model.ampname,
        "gain": model.gain, "read_noise": model.read_noise, "bias_level": model.bias_level,
        "bias_grad_row": model.bias_grad_row, "bias_grad_col": model.bias_grad_col,
        "dark_current": model.dark_current, "bad_column": model.bad_column,
        "bad_column_response": plan.config.bad_column_response,
        "charge_trap_row": model.trap_row, "charge_trap_col": model.trap_col,
        "charge_trap_capacity": plan.config.trap_capacity_e,
        "charge_trap_glow": np.array(plan.config.trap_glow_e_per_s),
        "profile_wing_fraction": model.wing_fraction, "profile_sigma_wing": model.sigma_wing,
        "profile_halo_fraction": plan.config.profile_halo_fraction,
        "profile_halo_scale_px": plan.config.profile_halo_scale_px,
        "scattered_light_fraction": plan.config.scattered_fraction,
        "scattered_r0_px": plan.config.scattered_r0_px,
        "scattered_power": plan.config.scattered_power,
        "scattered_block": plan.config.scattered_block,
    }
    hot = np.zeros(instrument.N_ROWS * instrument.N_COLS, bool)
    hot[model.hot_index] = True
    data = {
        "trace": model.trace, "wavelength": model.wavelength(), "wave_coeff": model.wave_coeff,
        "trace_shift": model.trace_shift, "wavelength_shift": model.wave_shift,
        "fiber_id": model.fiber_ids, "ifu_x": model.ifu_x, "ifu_y": model.ifu_y,
        "fiber_throughput": model.fiber_throughput, "dead": model.dead,
        "flat_illumination": model.flat_illum, "flat_color": model.flat_color,
        "twilight_illumination": model.twi_illum,
        "profile_sigma_core": model.sigma_core.astype(np.float32),
        "bias_column_pattern": model.bias_columns, "hot_pixel_index": model.hot_index,
        "hot_pixel_rate": model.hot_rate, "fiber_loc_ref": model.fiber_loc_ref,
    }
    masks = {"hot_pixel_mask": hot.reshape(instrument.N_ROWS, instrument.N_COLS)}
    obs, exp, level = [], [], []
    cosmic: dict[str, list[np.ndarray]] = {}
    sci_expected = np.zeros((n_sci, instrument.N_FIBERS_AMP, instrument.N_WAVE), np.float32)
    nb = instrument.N_ROWS // plan.config.scattered_block
    sci_scat = np.zeros((n_sci, nb, nb), np.float32)
    sci_seen: set[int] = set()
    for frame, r in rendered:
        obs.append(frame.obs)
        exp.append(frame.exp)
        level.append(r.bias_level)
        if r.cosmic_mask is not None:
            cosmic.setdefault(frame.kind, []).append(r.cosmic_mask)
        if r.light is None:
            continue
        if frame.sci_index is not None:
            sci_seen.add(frame.sci_index)
            sci_expected[frame.sci_index] = r.light.expected
            sci_scat[frame.sci_index] = r.scattered_coarse
        else:
            name = frame.kind if frame.lamp is None else f"{frame.kind}_{frame.lamp}"
            if f"expected_{name}" not in data:
                data[f"expected_{name}"] = r.light.expected.astype(np.float32)
                data[f"scattered_coarse_{name}"] = r.scattered_coarse.astype(np.float32)
    data["frame_obs"] = np.array(obs, int)
    data["frame_exp"] = np.array(exp, int)
    data["frame_bias_level"] = np.array(level)
    if sci_seen:
        data["expected_sci"] = sci_expected
        data["scattered_coarse_sci"] = sci_scat
    if not plan.config.truth_spectra:
        data = {k: v for k, v in data.items() if not k.startswith("expected_")}
    for kind, lst in cosmic.items():
        masks[f"cosmic_mask_{kind}"] = np.array(lst)
    ra, dec = [], []
    for i in range(n_sci):
        dx, dy = plan.dither(i)
        p = plan.pointing_of(i)
        r_, d_ = instrument.focal_to_radec(model.focal_x + dx, model.focal_y + dy, p.ra0,
                                           p.dec0, p.rotation)
        ra.append(r_)
        dec.append(d_)
    data["fiber_ra"] = np.array(ra).reshape(n_sci, -1)
    data["fiber_dec"] = np.array(dec).reshape(n_sci, -1)
    return {"name": f"{model.ifuslot:03d}{model.amp}", "attrs": attrs, "data": data,
            "masks": masks}


def write_amp(h5: h5py.File, record: dict) -> None:
    grp = h5.create_group(record["name"])
    for key, value in record["attrs"].items():
        grp.attrs[key] = value
    for key, value in record["data"].items():
        grp.create_dataset(key, data=value)
    for key, value in record["masks"].items():
        grp.create_dataset(key, data=value, **_GZIP)


def write_global(h5: h5py.File, plan: NightPlan, frames_written: list[Frame]) -> None:
    """Night-level truth: astrometry, exposures, sky, stars, line sources, conversions."""
    cfg = plan.config
    h5.attrs["date"] = plan.date
    h5.attrs["seed"] = plan.seed
    h5.attrs["ifuslots"] = np.array(plan.ifuslots)
    h5.attrs["science_obs"] = plan.science_obs
    h5.attrs["config_json"] = json.dumps(dataclasses.asdict(cfg), default=str)

    _write_astrometry(h5, plan)
    _write_exposures(h5, plan)
    conv = _write_sky(h5, plan)
    _write_instrument(h5, plan, conv)
    _write_sources(h5, plan)
    _write_ifus_and_frames(h5, plan, frames_written)


def _write_astrometry(h5: h5py.File, plan: NightPlan) -> None:
    g = h5.create_group("astrometry")
    for key, val in {"ra": plan.ra0, "dec": plan.dec0, "rotation": plan.rotation,
                     "parangle": plan.parangle,
                     "rotation_from_parangle": instrument.parangle_rotation(plan.parangle),
                     "header_ra": plan.header_ra, "header_dec": plan.header_dec,
                     "trajra": plan.trajra, "trajdec": plan.trajdec}.items():
        g.attrs[key] = val
    east, north = instrument.tangent_offset(plan.header_ra, plan.header_dec, plan.ra0, plan.dec0)
    g.attrs["header_offset_east_arcsec"] = east
    g.attrs["header_offset_north_arcsec"] = north


def _write_exposures(h5: h5py.File, plan: NightPlan) -> None:
    cfg = plan.config
    n = plan.n_sci
    g = h5.create_group("exposures")
    sci_frames = [f for f in plan.frames if f.sci_index is not None]
    g["obs"] = np.array([f.obs for f in sci_frames], int)
    g["exp"] = np.array([f.exp for f in sci_frames], int)
    pnts = [plan.pointing_of(i) for i in range(n)]
    g["ra0"] = np.array([p.ra0 for p in pnts])
    g["dec0"] = np.array([p.dec0 for p in pnts])
    g["rotation"] = np.array([p.rotation for p in pnts])
    g["transparency"] = plan.transparency
    g["illumination"] = plan.illumination
    g["moffat_beta"] = plan.moffat_beta
    g["seeing_fwhm"] = plan.seeing
    g["sky_scale"] = plan.sky_scale
    g["exptime"] = np.full(n, cfg.exptime["sci"])
    g["dither_x"] = np.array([plan.dither(i)[0] for i in range(n)])
    g["dither_y"] = np.array([plan.dither(i)[1] for i in range(n)])
    g["start"] = np.array([f.date_str for f in sci_frames], dtype="S")
    gv = [guider_values(plan, i) for i in range(n)]
    g.attrs["guider_frames_written"] = bool(cfg.write_guider)
    g["guider_transparency"] = np.array([v[1] for v in gv]).reshape(n, -1)
    g["guider_iq"] = np.array([v[2] for v in gv]).reshape(n, -1)
    g["area_cm2"] = np.full(n, cfg.area_cm2)


def _write_sky(h5: h5py.File, plan: NightPlan) -> np.ndarray:
    """The sky truth; returns the (n_sci, n_wave) e-/A per 1e-17 flux conversion."""
    cfg, n = plan.config, plan.n_sci
    wave = instrument.WAVE
    g = h5.create_group("sky")
    g["wave"] = wave
    g["continuum"] = np.array([sky_flam(plan, i, wave) / 1e-17 for i in range(n)]).reshape(n, -1)
    lines = np.array(cfg.sky_lines).reshape(-1, 2)
    g["line_wave"] = lines[:, 0]
    g["line_flux"] = lines[:, 1]
    conv = np.array([science_conversion(plan, i, wave) for i in range(n)]).reshape(n, -1)
    sigma = cfg.lsf_fwhm * spectra.FWHM_TO_SIGMA
    e_fiber = []
    for i in range(n):
        cont = spectra.lsf_convolve(sky_flam(plan, i, spectra.FINE_WAVE)
                                    * science_conversion(plan, i, spectra.FINE_WAVE), cfg.lsf_fwhm)
        dens = spectra.interp_fine(cont, wave) * spectra.FIBER_AREA_ARCSEC2
        tot = (plan.sky_scale[i] * lines[:, 1] * 1e-17 * spectra.FIBER_AREA_ARCSEC2
               * science_conversion(plan, i, lines[:, 0]))
        dens += spectra.line_density(wave, lines[:, 0], np.full(len(lines), sigma),
                                     tot[None, :])[0]
        e_fiber.append(dens)
    g["e_per_A_fiber"] = np.array(e_fiber).reshape(n, -1)
    g["flam_convolved"] = (g["e_per_A_fiber"][()] / conv / spectra.FIBER_AREA_ARCSEC2 / 1e-17
                           if n else np.zeros((0, wave.size)))
    return conv


def _write_instrument(h5: h5py.File, plan: NightPlan, conv: np.ndarray) -> None:
    cfg, wave = plan.config, instrument.WAVE
    g = h5.create_group("flux_to_counts")
    g["wave"] = wave
    g["e_per_A_per_flam17"] = conv * 1e-17
    g.attrs["formula"] = ("e-/A = F_lambda[erg/s/cm^2/A] * lambda/(h c) * area_cm2 * "
                          "transparency * EXPTIME * throughput(lambda) * fiber_throughput * "
                          "fiber_fraction(PSF, DAR); sky: F per arcsec^2 * fiber area "
                          f"{spectra.FIBER_AREA_ARCSEC2:.6f} arcsec^2")
    g = h5.create_group("throughput")
    g["wave"] = wave
    g["throughput"] = spectra.throughput(wave)
    g = h5.create_group("psf")
    g["r"] = plan.psf_r
    g["fiber_fraction"] = plan.psf_frac
    g.attrs["moffat_beta"] = cfg.moffat_beta  # the kind night's; per exposure: exposures/
    g["moffat_beta"] = plan.moffat_beta
    g = h5.create_group("dar")
    g["wave"] = wave
    g["offset_x"] = instrument.dar_offset(wave)


def _write_sources(h5: h5py.File, plan: NightPlan) -> None:
    cfg, wave = plan.config, instrument.WAVE
    st = plan.stars
    g = h5.create_group("stars")
    for key in ("ra", "dec", "fx", "fy", "g", "teff", "flam_scale", "grizy", "cat_ra",
                "cat_dec", "cat_grizy", "obj_id", "g_catalog_filter", "kind"):
        g[key] = st[key]
    g.attrs["kind_names"] = ",".join(STAR_KINDS)
    g.attrs["catalog_g_shift_A"] = cfg.catalog_g_shift_A
    g.attrs["catalog_g_tilt"] = cfg.catalog_g_tilt
    g["spectrum"] = (st["flam_scale"][:, None]
                     * spectra.blackbody_flam(wave, st["teff"]).reshape(-1, wave.size) / 1e-17)
    g = h5.create_group("line_sources")
    for key, val in plan.lines.items():
        g[key] = val


def _write_ifus_and_frames(h5: h5py.File, plan: NightPlan, frames_written: list[Frame]) -> None:
    g = h5.create_group("ifus")
    slots = sorted(plan.ifuslots)
    g["ifuslot"] = np.array(slots)
    g["specid"] = np.array([plan.ids[s][0] for s in slots])
    g["ifuid"] = np.array([plan.ids[s][1] for s in slots])
    g["contid"] = np.array([plan.ids[s][2] for s in slots], dtype="S")
    g["x_fp"] = np.array([plan.fplane[s][0] for s in slots])
    g["y_fp"] = np.array([plan.fplane[s][1] for s in slots])
    g["dead_fiber_id"] = np.array([plan.dead_fiber[s] for s in slots])

    g = h5.create_group("frames")
    g["obs"] = np.array([f.obs for f in frames_written], int)
    g["exp"] = np.array([f.exp for f in frames_written], int)
    g["kind"] = np.array([f.kind for f in frames_written], dtype="S")
    g["lamp"] = np.array([f.lamp or "" for f in frames_written], dtype="S")
    g["exptime"] = np.array([f.exptime for f in frames_written])
    g["darktime"] = np.array([f.darktime for f in frames_written])
    g["prefix"] = np.array([f.prefix for f in frames_written], dtype="S")


def write_readme(folder: Path) -> Path:
    path = folder / "README.md"
    path.write_text(README)
    return path


README = """# Truth of the simulated VIRUS night (`truth.h5`)

Everything the remedy-dask virtual instrument put into the raw frames.  Conventions as in
`remedy_dask/sim/instrument.py` (written from virus-raw-format.md): oriented amp images (rows = fibers, columns = wavelength, blue left),
fiber k = 0..111 by increasing row, pixel centres at integer coordinates.  Wavelengths in A (air),
fluxes in 1e-17 erg/s/cm^2/A unless stated.  See docs/simulator.md for the physics.

## File attributes
`date`, `seed`, `ifuslots`, `science_obs`, `config_json` (the full SimConfig).

## Per amp: group `{IFUSLOT:03d}{AMP}` (e.g. `047LL`)
Attributes: `ifuslot specid ifuid contid amp ampname`; `gain` (e-/ADU, = header GAIN);
`read_noise` (e-, = header RDNOISE); `bias_level` (ADU, mean overscan level; the per-frame level is
`frame_bias_level`); `bias_grad_row`, `bias_grad_col` (ADU, full-range linear gradients);
`dark_current` (e-/s/px); `bad_column` (oriented column) with `bad_column_response` (relative QE,
all rows); `charge_trap_row`, `charge_trap_col`: every pixel with row > charge_trap_row in that
column loses min(value, `charge_trap_capacity`) e-; the trap pixel and the 2 rows below it glow
with `charge_trap_glow` e-/s; `profile_wing_fraction`, `profile_sigma_wing` (px),
`profile_halo_fraction`, `profile_halo_scale_px` (exponential wings, 0 on the kind night);
`scattered_light_fraction`, `scattered_r0_px`, `scattered_power`, `scattered_block`.

| dataset | shape | unit | meaning |
|---|---|---|---|
| `trace` | (112,1032) | px | row of the fiber centre in the calibration frames |
| `trace_shift` | (n_sci,) | px | science trace = trace + shift (CCD drift + the amp's own share on harsh nights) |
| `wavelength` | (112,1032) | A | wavelength of each column in the calibration frames |
| `wave_coeff` | (112,4) | A | wavelength = sum c_i u^i, u = (x - 515.5)/515.5 |
| `wavelength_shift` | (n_sci,) | px | science wavelength(x) = wavelength_cal(x - shift) |
| `fiber_id` | (112,) | | IFU fiber ID of fiber k |
| `ifu_x`, `ifu_y` | (112,) | arcsec | fiber position in the IFU frame |
| `fiber_ra`, `fiber_dec` | (n_sci,112) | deg | true sky position (dither included, no DAR) |
| `fiber_throughput` | (112,) | | relative throughput (0 = dead fiber) |
| `dead` | (112,) | bool | dead fiber (also flagged in fiber_loc) |
| `flat_illumination`, `flat_color` | (112,) | | LDLS factor = flat_illumination * (1 + flat_color * (lambda-4500)/1000), times fiber_throughput |
| `twilight_illumination` | (112,) | | twilight factor (x fiber_throughput) |
| `profile_sigma_core` | (112,1032) | px | profile = (1-f-h) N(0, sigma_core) + f N(0, sigma_wing) + h Laplace(0, halo_scale), integrated over pixels, cut at +-`profile_half_window` rows |
| `bias_column_pattern` | (1032,) | ADU | fixed column pattern (oriented columns); bias structure = grad_row*(r/1031-0.5) + grad_col*(c/1031-0.5) + pattern[c] |
| `hot_pixel_mask` | (1032,1032) | bool | hot pixels (oriented) |
| `hot_pixel_index`, `hot_pixel_rate` | (n,) | -, e-/s | flat index row*1032+col and rate |
| `fiber_loc_ref` | (112,) | px | reference y written to fiber_loc |
| `frame_obs`, `frame_exp`, `frame_bias_level` | (n_frames,) | -, -, ADU | overscan level of every written frame |
| `cosmic_mask_{kind}` | (n, 1032,1032) | bool | cosmic-ray pixels per exposure of that kind (in exposure order) |
| `expected_{flt,twi,cmp_Hg,cmp_Cd-A}` | (112,1036) | e-/A | LSF-convolved light entering fiber k per frame, on DEF_WAVE (direct light, before scattered light and detector) |
| `expected_sci` | (n_sci,112,1036) | e-/A | same per science exposure (sky + stars + line sources) |
| `scattered_coarse_{kind}`, `scattered_coarse_sci` | (129,129) | e- | scattered light per 8x8 block; full image = `remedy_dask.sim.render.upsample_scattered` |

Pixel values of a fiber are the integral of its expected density over the pixel's wavelength
edges (wavelength at x-0.5 .. x+0.5, shifted for science) spread over rows by the profile.

## Global groups
- `astrometry` attrs: `ra`, `dec` (true sky position of the focal-plane origin, deg), `rotation`
  (true, deg, for `instrument.focal_to_radec`), `parangle` (header), `rotation_from_parangle`,
  `header_ra`/`header_dec` (TRAJCRA/TRAJCDEC in deg), `trajra`/`trajdec`,
  `header_offset_east_arcsec`/`_north_` (header minus truth).  These are the first science
  observation's; every science exposure's own true centre and rotation are in `exposures`.
- `exposures` (one row per science exposure of every science observation, in time order;
  `n_sci` = 3, or 6 with a second pointing): `obs`, `exp`, `ra0`, `dec0`, `rotation` (true
  astrometry of the exposure's pointing), `transparency`, `illumination` (mirror illumination
  factor, 1 on the kind night; both multiply the source and sky light), `seeing_fwhm` (arcsec),
  `moffat_beta` (per exposure; 3.5 on the kind night), `sky_scale`, `exptime`, `dither_x`,
  `dither_y` (arcsec, IFU frame), `start`, `area_cm2`, `guider_transparency`, `guider_iq` (the
  values in the gc1 guider frames, every 30 s; attribute `guider_frames_written` says whether
  the frames exist - a harsh night has none).
- `sky`: `wave` (DEF_WAVE); `continuum` (n_sci,1036) 1e-17 erg/s/cm^2/A/arcsec^2 (intrinsic);
  `line_wave`, `line_flux` (1e-17 erg/s/cm^2/arcsec^2, multiply by `exposures/sky_scale`);
  `e_per_A_fiber` (n_sci,1036) expected e-/A in a fiber of throughput 1 (LSF-convolved, lines in);
  `flam_convolved` (n_sci,1036) the same in 1e-17 erg/s/cm^2/A/arcsec^2 (LSF-convolved sky).
- `flux_to_counts`: `e_per_A_per_flam17` (n_sci,1036): e-/A per 1e-17 erg/s/cm^2/A for a source
  entirely in a fiber of throughput 1; attribute `formula`.
- `throughput`: `wave`, `throughput` (the curve written to throughput.txt).
- `psf`: `r` (arcsec), `fiber_fraction` (n_sci, len r): fraction of a point source in a 1.5"
  fiber whose centre is r from it (Moffat of `exposures/moffat_beta`).  `dar`: `wave`, `offset_x` (arcsec along focal-plane x;
  fiber effective position = nominal - offset).
- `stars`: `ra`, `dec` (true), `fx`, `fy` (focal plane), `g` (true AB), `grizy`, `teff`,
  `flam_scale`, `spectrum` (N,1036) 1e-17 erg/s/cm^2/A, `cat_ra`, `cat_dec`, `cat_grizy`,
  `obj_id` (the catalogue values in ps1_catalog.csv: true + noise of `catalog_mag_noise` mag
  and `catalog_pos_noise_arcsec`, see `config_json`); `g_catalog_filter`: the noiseless g of the
  catalogue's band - equal to `g` unless attributes `catalog_g_shift_A`/`catalog_g_tilt` are set,
  in which case the catalogue g is measured through panstarrs-g shifted by that many A and
  multiplied by 1 + tilt (lambda-4800)/1000 (zero point: a 6500 K star is unchanged), a colour
  term the pipeline's synthetic panstarrs-g does not know; `kind` (index into attribute
  `kind_names`: field, edge (20-25" from an IFU centre), pair_primary, pair_companion (1.5-3"
  apart), saturated).
- `line_sources`: `ra`, `dec`, `fx`, `fy`, `wave` (A), `flux` (integrated, 1e-17 erg/s/cm^2),
  `fwhm` (intrinsic A), `fwhm_observed` (with the 5.6 A LSF), `ifuslot`.
- `ifus`: `ifuslot`, `specid`, `ifuid`, `contid`, `x_fp`, `y_fp`, `dead_fiber_id`.
- `frames`: `obs`, `exp`, `kind`, `lamp`, `exptime`, `darktime`, `prefix` of every written
  exposure.
"""
