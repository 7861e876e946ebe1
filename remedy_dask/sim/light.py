"""Light reaching each fiber of an amp in one frame: per-fiber counts per pixel (fiber space) and
the matching expected spectra on DEF_WAVE (the truth a perfect extraction recovers).

Units: every component is built as an LSF-convolved photo-electron density (e-/A) on the fine
grid, or as Gaussian lines (total e-), then integrated over the pixel edges of each fiber.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from remedy_dask.sim import instrument, spectra
from remedy_dask.sim.amp import AmpModel
from remedy_dask.sim.scene import Frame, NightPlan

DAR_NODES = np.linspace(3300.0, 5700.0, 121)  # 20 A spacing for the PSF x DAR factor
_NODE_I = np.minimum(np.searchsorted(DAR_NODES, spectra.FINE_WAVE, side="right") - 1,
                     DAR_NODES.size - 2)
_NODE_T = (spectra.FINE_WAVE - DAR_NODES[_NODE_I]) / (DAR_NODES[1] - DAR_NODES[0])


@dataclass
class FiberLight:
    """Light of one frame in fiber space."""

    counts: np.ndarray  # (112, 1032) e- per pixel column, before the cross-dispersion profile
    expected: np.ndarray  # (112, 1036) e-/A on DEF_WAVE (LSF-convolved), what fibers receive


@dataclass
class _Scene:
    common: list[tuple[np.ndarray, np.ndarray]]  # (fine density e-/A, per-fiber factor (112,))
    extra: np.ndarray | None  # (112, n_fine) per-fiber fine densities, or None
    line_centres: np.ndarray
    line_sigmas: np.ndarray
    line_totals: np.ndarray  # (112, L) e-


def fiber_light(plan: NightPlan, model: AmpModel, frame: Frame) -> FiberLight:
    """Counts per pixel and expected spectra of every fiber of ``model`` in ``frame``."""
    cfg = plan.config
    sci = frame.sci_index
    shift = 0.0 if sci is None else float(model.wave_shift[sci])
    scene = _scene(plan, model, frame)
    edges = model.pixel_edges(shift)
    n = instrument.N_FIBERS_AMP
    counts = np.zeros((n, instrument.N_COLS))
    expected = np.zeros((n, instrument.N_WAVE))
    for density, factor in scene.common:
        conv = spectra.lsf_convolve(density, cfg.lsf_fwhm)
        cum = spectra.interp_fine(spectra.cumulative(conv), edges)
        counts += factor[:, None] * np.diff(cum, axis=1)
        expected += factor[:, None] * spectra.interp_fine(conv, instrument.WAVE)[None, :]
    if scene.extra is not None:
        conv = spectra.lsf_convolve(scene.extra, cfg.lsf_fwhm)
        counts += np.diff(spectra.interp_fine(spectra.cumulative(conv), edges), axis=1)
        expected += spectra.interp_fine(conv, np.broadcast_to(instrument.WAVE,
                                                              (n, instrument.N_WAVE)))
    if scene.line_centres.size:
        counts += spectra.line_pixel_counts(edges, scene.line_centres, scene.line_sigmas,
                                            scene.line_totals)
        expected += spectra.line_density(instrument.WAVE, scene.line_centres,
                                         scene.line_sigmas, scene.line_totals)
    return FiberLight(counts, expected)


def _empty_lines() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.zeros(0), np.zeros(0), np.zeros((instrument.N_FIBERS_AMP, 0))


def _scene(plan: NightPlan, model: AmpModel, frame: Frame) -> _Scene:
    cfg = plan.config
    w = spectra.FINE_WAVE
    thr = model.fiber_throughput
    lsf_sigma = cfg.lsf_fwhm * spectra.FWHM_TO_SIGMA
    if frame.kind in ("zro", "drk"):
        return _Scene([], None, *_empty_lines())
    if frame.kind == "flt":
        base = cfg.flat_peak_e_per_A * spectra.ldls_shape(w)
        amp_thr = thr * model.flat_illum
        color = base * (w - 4500.0) / 1000.0
        return _Scene([(base, amp_thr), (color, amp_thr * model.flat_color)], None,
                      *_empty_lines())
    if frame.kind == "twi":
        base = cfg.twilight_peak_e_per_A * spectra.solar_shape(w)
        return _Scene([(base, thr * model.twi_illum)], None, *_empty_lines())
    if frame.kind == "cmp":
        waves = np.array(instrument.ARC_LINES[frame.lamp])
        totals = np.array([cfg.arc_line_e[x] for x in waves])
        per_fiber = (thr * model.flat_illum)[:, None] * totals[None, :]
        return _Scene([], None, waves, np.full(waves.size, lsf_sigma), per_fiber)
    if frame.kind == "sci":
        return _science_scene(plan, model, frame)
    raise ValueError(f"unknown frame kind {frame.kind!r}")


def science_conversion(plan: NightPlan, sci: int, wave: np.ndarray) -> np.ndarray:
    """e-/A per (erg/s/cm^2/A) for science exposure ``sci`` (fiber throughput 1, all light in
    the fiber): lambda/(hc) * area * transparency * EXPTIME * throughput(lambda), times the
    exposure's mirror illumination when it is not 1."""
    cfg = plan.config
    conv = spectra.flux_to_counts(wave, cfg.exptime["sci"], float(plan.transparency[sci]),
                                  cfg.area_cm2)
    illumination = float(plan.illumination[sci]) if plan.illumination.size else 1.0
    return conv if illumination == 1.0 else conv * illumination


def sky_flam(plan: NightPlan, sci: int, wave: np.ndarray) -> np.ndarray:
    """Sky continuum of exposure ``sci``, erg/s/cm^2/A/arcsec^2 (lines separate)."""
    return plan.sky_scale[sci] * spectra.sky_continuum(wave, plan.config.sky_g_mag_arcsec2)


def fiber_sky_positions(plan: NightPlan, model: AmpModel, sci: int, dar_x: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray]:
    """RA, Dec (deg) of the fibers' effective positions (112, len(dar_x)) with the true
    astrometry: focal position + dither - DAR(lambda) along focal-plane x."""
    ddx, ddy = plan.dither(sci)
    fx = (model.focal_x + ddx)[:, None] - np.asarray(dar_x)[None, :]
    fy = np.broadcast_to((model.focal_y + ddy)[:, None], fx.shape)
    p = plan.pointing_of(sci)
    return instrument.focal_to_radec(fx, fy, p.ra0, p.dec0, p.rotation)


def _psf_fraction(plan: NightPlan, sci: int, ra: np.ndarray, dec: np.ndarray,
                  src_ra: float, src_dec: float) -> np.ndarray:
    """Fiber-integrated PSF fraction of a point source for fibers at (ra, dec)."""
    r = instrument.separation_arcsec(ra, dec, src_ra, src_dec)
    return np.interp(r, plan.psf_r, plan.psf_frac[sci], right=0.0)


def _science_scene(plan: NightPlan, model: AmpModel, frame: Frame) -> _Scene:
    cfg = plan.config
    sci = frame.sci_index
    w = spectra.FINE_WAVE
    lsf_sigma = cfg.lsf_fwhm * spectra.FWHM_TO_SIGMA
    conv = science_conversion(plan, sci, w)
    thr = model.fiber_throughput
    area = spectra.FIBER_AREA_ARCSEC2
    common = [(sky_flam(plan, sci, w) * conv * area, thr)]

    # sky emission lines (uniform over the fiber)
    sky_lines = np.array(cfg.sky_lines).reshape(-1, 2)
    lw = sky_lines[:, 0]
    sky_tot = (plan.sky_scale[sci] * sky_lines[:, 1] * 1e-17 * area
               * science_conversion(plan, sci, lw))
    centres, sigmas = [lw], [np.full(lw.size, lsf_sigma)]
    totals = [thr[:, None] * sky_tot[None, :]]

    # stars near this amp's fibers (distance computed on the sky, DAR per wavelength node)
    dar = instrument.dar_offset(DAR_NODES)
    ra_f, dec_f = fiber_sky_positions(plan, model, sci, dar)
    ra_c, dec_c = ra_f.mean(), dec_f.mean()
    st = plan.stars
    extra = None
    if st and st["ra"].size:
        sep = _sep_arcsec(st["ra"], st["dec"], ra_c, dec_c)
        near = np.flatnonzero(sep < 60.0 + plan.psf_r[-1])
        if near.size:
            extra = np.zeros((instrument.N_FIBERS_AMP, w.size))
            for i in near:
                frac_nodes = _psf_fraction(plan, sci, ra_f, dec_f, st["ra"][i], st["dec"][i])
                if not np.any(frac_nodes > 0):
                    continue
                frac = (frac_nodes[:, _NODE_I] * (1.0 - _NODE_T)
                        + frac_nodes[:, _NODE_I + 1] * _NODE_T)
                flam = st["flam_scale"][i] * spectra.blackbody_flam(w, float(st["teff"][i]))
                extra += (thr[:, None] * frac) * (flam * conv)[None, :]

    # emission-line sources (point sources; PSF fraction at the line's wavelength)
    ls = plan.lines
    if ls and ls["ra"].size:
        sep = _sep_arcsec(ls["ra"], ls["dec"], ra_c, dec_c)
        for i in np.flatnonzero(sep < 60.0 + plan.psf_r[-1]):
            lam = ls["wave"][i]
            ra_l, dec_l = fiber_sky_positions(plan, model, sci, instrument.dar_offset([lam]))
            frac = _psf_fraction(plan, sci, ra_l[:, 0], dec_l[:, 0], ls["ra"][i], ls["dec"][i])
            tot = ls["flux"][i] * 1e-17 * science_conversion(plan, sci, np.array([lam]))[0]
            centres.append(np.array([lam]))
            sig = np.hypot(ls["fwhm"][i] * spectra.FWHM_TO_SIGMA, lsf_sigma)
            sigmas.append(np.array([sig]))
            totals.append((thr * frac * tot)[:, None])
    return _Scene(common, extra, np.concatenate(centres), np.concatenate(sigmas),
                  np.concatenate(totals, axis=1))


def _sep_arcsec(ra: np.ndarray, dec: np.ndarray, ra0: float, dec0: float) -> np.ndarray:
    r1, d1, r0, d0 = map(np.deg2rad, (ra, dec, ra0, dec0))
    c = np.sin(d1) * np.sin(d0) + np.cos(d1) * np.cos(d0) * np.cos(r1 - r0)
    return np.rad2deg(np.arccos(np.clip(c, -1.0, 1.0))) * 3600.0
