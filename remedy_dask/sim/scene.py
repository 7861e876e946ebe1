"""The night plan: frames and their times, the IFU assignment and focal plane, the true and header
astrometry, the observing conditions per science exposure, and the sky scene (stars, emission-line
sources, sky).  Built once in the parent process; workers receive it whole (it is small)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np

from remedy_dask.sim import instrument, spectra
from remedy_dask.sim.config import SimConfig, rng_for

CAL_SEQUENCE = (("zro", None), ("drk", None), ("flt", None), ("cmp", "Hg"), ("cmp", "Cd-A"),
                ("twi", None))
OBJECT_NAMES = {"zro": "bias", "drk": "dark", "flt": "ldls_long", "twi": "skyflat"}


@dataclass(frozen=True)
class Frame:
    """One exposure (all amps of all IFUs share it)."""

    obs: int
    exp: int
    kind: str
    lamp: str | None
    exptime: float
    darktime: float
    start: dt.datetime
    sci_index: int | None  # 0-based science exposure index, None for calibrations
    object_name: str
    pointing: int = 0  # index into NightPlan.pointings (0 for calibrations)

    @property
    def prefix(self) -> str:
        """File-name timestamp prefix ``YYYYMMDDThhmmss.s``."""
        return self.start.strftime("%Y%m%dT%H%M%S") + f".{self.start.microsecond // 100000}"

    @property
    def date_str(self) -> str:
        return self.start.strftime("%Y-%m-%dT%H:%M:%S") + f".{self.start.microsecond // 100000}"

    def file_name(self, ifuslot: int, amp: str) -> str:
        return f"{self.prefix}_{ifuslot:03d}{amp}_{self.kind}.fits"

    def rel_dir(self, date: str) -> str:
        """Folder of the frame relative to the raw root."""
        return f"{date}/virus/virus{self.obs:07d}/exp{self.exp:02d}/virus"


@dataclass
class NightPlan:
    """Everything shared by all amps of the simulated night."""

    date: str
    seed: int
    config: SimConfig
    ifuslots: tuple[int, ...]
    science_obs: int
    frames: tuple[Frame, ...]
    ids: dict[int, tuple[int, int, str]]  # ifuslot -> (specid, ifuid, contid)
    fplane: dict[int, tuple[float, float]]  # ifuslot -> (X_FP, Y_FP) arcsec
    dead_fiber: dict[int, int]  # ifuslot -> dead IFU fiber id (1..448), 0 if none
    ra0: float  # true sky position of the focal-plane origin, deg
    dec0: float
    rotation: float  # true rotation, deg
    parangle: float  # header PARANGLE
    header_ra: float  # TRAJCRA as deg
    header_dec: float
    trajra: float  # TRAJRA as deg
    trajdec: float
    transparency: np.ndarray  # (n_sci,) over all science observations
    seeing: np.ndarray  # (n_sci,) FWHM arcsec
    sky_scale: np.ndarray  # (n_sci,) sky level relative to the nominal sky
    psf_r: np.ndarray  # radius grid of the fiber-integrated PSF tables
    psf_frac: np.ndarray  # (n_sci, len(psf_r))
    stars: dict[str, np.ndarray] = field(default_factory=dict)
    lines: dict[str, np.ndarray] = field(default_factory=dict)
    illumination: np.ndarray = field(default_factory=lambda: np.ones(0))  # (n_sci,) mirror
    moffat_beta: np.ndarray = field(default_factory=lambda: np.ones(0))  # (n_sci,)
    pointings: tuple[Pointing, ...] = ()  # [0] = the fields above; [1] the second pointing

    @property
    def n_sci(self) -> int:
        return int(self.transparency.size)

    def dither(self, sci_index: int) -> tuple[float, float]:
        return self.config.dither_pattern[sci_index % self.config.n_sci]

    def pointing_of(self, sci_index: int) -> Pointing:
        """True and header astrometry of science exposure ``sci_index``."""
        return self.pointings[sci_index // self.config.n_sci]


@dataclass(frozen=True)
class Pointing:
    """True field centre and rotation of one science observation, and its header values."""

    obs: int
    ra0: float
    dec0: float
    rotation: float
    parangle: float
    header_ra: float
    header_dec: float
    trajra: float
    trajdec: float


def _schedule(date: str, cfg: SimConfig, science_obs: int, kinds: tuple[str, ...]
              ) -> tuple[Frame, ...]:
    counts = {("zro", None): cfg.n_zro, ("drk", None): cfg.n_drk, ("flt", None): cfg.n_flt,
              ("cmp", "Hg"): cfg.n_cmp_hg, ("cmp", "Cd-A"): cfg.n_cmp_cd, ("twi", None): cfg.n_twi}
    day = dt.datetime.strptime(date, "%Y%m%d")
    frames: list[Frame] = []
    t = day + dt.timedelta(minutes=20, seconds=3.2)
    obs = 0
    for kind, lamp in CAL_SEQUENCE:
        obs += 1
        n = counts[(kind, lamp)]
        if n == 0 or kind not in kinds:
            continue
        if kind == "twi":  # evening twilight, after the afternoon calibrations
            t = max(t, day + dt.timedelta(hours=1, minutes=32, seconds=11.7))
        for e in range(n):
            exptime = cfg.exptime[kind]
            darktime = 0.0 if kind == "zro" else exptime + 1.3
            frames.append(Frame(obs, e + 1, kind, lamp, exptime, darktime, t, None,
                                lamp or OBJECT_NAMES[kind]))
            t += dt.timedelta(seconds=exptime + cfg.readout_s)
    if "sci" in kinds:
        if not 0 < science_obs < 10_000_000:
            raise ValueError(f"science_obs={science_obs} is not a 7-digit observation number")
        if science_obs in {f.obs for f in frames}:
            raise ValueError(f"science_obs={science_obs} collides with a calibration folder")
        t = day + dt.timedelta(hours=3, minutes=15, seconds=12.3)
        n_obs = 1 if cfg.second_pointing_arcsec is None else 2
        for p in range(n_obs):
            for e in range(cfg.n_sci):
                exptime = cfg.exptime["sci"]
                frames.append(Frame(science_obs + p, e + 1, "sci", None, exptime, exptime + 1.3,
                                    t, p * cfg.n_sci + e, "HETDEX_SIM", p))
                t += dt.timedelta(seconds=exptime + cfg.readout_s + 31.0)
            t += dt.timedelta(seconds=240.0)  # slew and setup
        if n_obs == 2 and science_obs + 1 in {f.obs for f in frames if f.kind != "sci"}:
            raise ValueError(f"science_obs+1={science_obs + 1} collides with a calibration folder")
    return tuple(frames)


def _offset_sky(ra: float, dec: float, d_east: float, d_north: float) -> tuple[float, float]:
    """Shift (ra, dec) deg by arcsec east/north on the tangent plane."""
    return instrument.offset_radec(ra, dec, d_east, d_north)


def fiber_focal_positions(plan: NightPlan, ifuslot: int, fiber_ids: np.ndarray
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Focal-plane (fx, fy) arcsec of IFU fibers without dither (Remedy's X_FP/Y_FP swap)."""
    x, y = instrument.ifu_layout()
    x_fp, y_fp = plan.fplane[ifuslot]
    return instrument.fiber_focal_xy(x_fp, y_fp, x[fiber_ids - 1], y[fiber_ids - 1])


def make_plan(date: str, ifuslots: tuple[int, ...], seed: int, science_obs: int,
              cfg: SimConfig, kinds: tuple[str, ...]) -> NightPlan:
    """Draw everything global of the night from ``seed`` (deterministic)."""
    frames = _schedule(date, cfg, science_obs, kinds)
    rng = rng_for(seed, "ids")
    specids = rng.choice(np.arange(11, 100), size=len(ifuslots), replace=False)
    ifuids = rng.choice(np.arange(1, 200), size=len(ifuslots), replace=False)
    ids = {s: (int(a), int(b), f"{300 + int(a):03d}") for s, a, b in zip(ifuslots, specids, ifuids)}
    fplane, dead = {}, {}
    for s in ifuslots:
        r = rng_for(seed, "fplane", s)
        row, col = instrument.ihmp_row_col(s)
        jit = r.normal(0.0, cfg.ifu_position_jitter_arcsec, 2)
        fplane[s] = (round((row - 5.5) * cfg.ifu_pitch_arcsec + jit[0], 2),
                     round((col - 5.0) * cfg.ifu_pitch_arcsec + jit[1], 2))
        # dead fiber: never the first or last fiber of an amp
        k = r.integers(1, instrument.N_FIBERS_AMP - 1)
        amp = instrument.AMPS[r.integers(0, 4)]
        dead[s] = int(instrument.amp_fiber_ids(amp)[k]) if cfg.dead_fibers_per_ifu else 0

    rng = rng_for(seed, "pointing")
    ra0 = float(rng.uniform(0.0, 360.0))
    dec0 = float(rng.uniform(-5.0, 70.0))
    parangle = float(np.round(rng.uniform(-60.0, 60.0), 4))
    rot_off = cfg.rotation_offset_deg * rng.choice([-1.0, 1.0]) * rng.uniform(0.6, 1.0)
    rotation = (instrument.parangle_rotation(parangle) + rot_off) % 360.0
    ang = rng.uniform(0, 2 * np.pi, 2)
    header_ra, header_dec = _offset_sky(ra0, dec0, *(cfg.pointing_offset_arcsec
                                                     * np.array([np.cos(ang[0]), np.sin(ang[0])])))
    trajra, trajdec = _offset_sky(header_ra, header_dec, *(cfg.trajra_offset_arcsec
                                                           * np.array([np.cos(ang[1]),
                                                                       np.sin(ang[1])])))
    pointings = [Pointing(science_obs, ra0, dec0, rotation, parangle, header_ra, header_dec,
                          trajra, trajdec)]
    if cfg.second_pointing_arcsec is not None:
        pointings.append(_second_pointing(seed, cfg, pointings[0]))
    n_sci = cfg.n_sci * len(pointings)
    rng = rng_for(seed, "conditions")
    transparency = np.round(rng.uniform(*cfg.transparency_range, n_sci), 4)
    seeing = np.round(rng.uniform(*cfg.seeing_range, n_sci), 3)
    sky_scale = 1.0 + rng.normal(0.0, cfg.sky_exposure_rms, n_sci)
    rng = rng_for(seed, "illumination-psf")
    illumination = np.round(rng.uniform(*cfg.illumination_range, n_sci), 4)
    beta = (np.round(rng.uniform(*cfg.moffat_beta_range, n_sci), 3)
            if cfg.moffat_beta_range is not None else np.full(n_sci, cfg.moffat_beta))
    tables = [spectra.moffat_fiber_fraction(f, b) for f, b in zip(seeing, beta)]
    psf_r = tables[0][0] if tables else np.zeros(1)
    psf_frac = np.array([t[1] for t in tables]).reshape(n_sci, psf_r.size)

    plan = NightPlan(date, seed, cfg, tuple(ifuslots), science_obs, frames, ids, fplane, dead,
                     ra0, dec0, rotation, parangle, header_ra, header_dec, trajra, trajdec,
                     transparency, seeing, sky_scale, psf_r, psf_frac,
                     illumination=illumination, moffat_beta=beta, pointings=tuple(pointings))
    plan.stars = _make_stars(plan)
    plan.lines = _make_line_sources(plan)
    return plan


def _second_pointing(seed: int, cfg: SimConfig, first: Pointing) -> Pointing:
    """The overlapping second science observation: the field centre moved by
    ``second_pointing_arcsec`` (east, north), PARANGLE 0.8 deg larger, its own header error."""
    rng = rng_for(seed, "pointing-2")
    east, north = cfg.second_pointing_arcsec or (0.0, 0.0)
    ra0, dec0 = _offset_sky(first.ra0, first.dec0, east, north)
    parangle = round(first.parangle + 0.8, 4)
    rot_off = cfg.rotation_offset_deg * rng.choice([-1.0, 1.0]) * rng.uniform(0.6, 1.0)
    rotation = (instrument.parangle_rotation(parangle) + rot_off) % 360.0
    ang = rng.uniform(0, 2 * np.pi, 2)
    hra, hdec = _offset_sky(ra0, dec0, *(cfg.pointing_offset_arcsec
                                         * np.array([np.cos(ang[0]), np.sin(ang[0])])))
    tra, tdec = _offset_sky(hra, hdec, *(cfg.trajra_offset_arcsec
                                         * np.array([np.cos(ang[1]), np.sin(ang[1])])))
    return Pointing(first.obs + 1, ra0, dec0, rotation, parangle, hra, hdec, tra, tdec)


def _focal_bbox(plan: NightPlan, margin: float) -> tuple[float, float, float, float]:
    fx = np.array([plan.fplane[s][1] for s in plan.ifuslots])
    fy = np.array([plan.fplane[s][0] for s in plan.ifuslots])
    half = 25.0 + margin
    return fx.min() - half, fx.max() + half, fy.min() - half, fy.max() + half


def _make_stars(plan: NightPlan) -> dict[str, np.ndarray]:
    """Stars inside every IFU footprint plus a uniform background over the catalogue area."""
    cfg = plan.config
    rng = rng_for(plan.seed, "stars")
    fxs, fys = [], []
    for s in plan.ifuslots:
        x_fp, y_fp = plan.fplane[s]
        fxs.append(y_fp + rng.uniform(-22.0, 22.0, cfg.stars_per_ifu))
        fys.append(x_fp + rng.uniform(-22.0, 22.0, cfg.stars_per_ifu))
    x0, x1, y0, y1 = _focal_bbox(plan, cfg.catalog_margin_arcsec)
    area_deg2 = (x1 - x0) * (y1 - y0) / 3600.0**2
    n_bg = rng.poisson(cfg.star_density_per_deg2 * area_deg2)
    fxs.append(rng.uniform(x0, x1, n_bg))
    fys.append(rng.uniform(y0, y1, n_bg))
    fx, fy = np.concatenate(fxs), np.concatenate(fys)
    n = fx.size
    # magnitudes: counts rising by 0.25 dex/mag (truncated exponential in g)
    g_lo, g_hi = cfg.star_g_range
    k = 0.25 * np.log(10.0)
    u = rng.uniform(0.0, 1.0, n)
    g = g_lo + np.log1p(u * np.expm1(k * (g_hi - g_lo))) / k
    nb = min(cfg.bright_stars_per_ifu, cfg.stars_per_ifu)
    bright = (np.arange(n) < len(plan.ifuslots) * cfg.stars_per_ifu) & (
        np.arange(n) % max(cfg.stars_per_ifu, 1) < nb)
    g[bright] = rng.uniform(*cfg.bright_star_g_range, int(bright.sum()))
    teff = rng.uniform(*cfg.star_teff_range, n)
    kind = np.zeros(n, int)
    extra = _special_stars(plan)
    if extra[0].size:
        fx, fy, g, teff, kind = (np.concatenate([a, b]) for a, b in
                                 zip((fx, fy, g, teff, kind), extra))
        n = fx.size
    ra, dec = instrument.focal_to_radec(fx, fy, plan.ra0, plan.dec0, plan.rotation)
    scale, mags = spectra.star_norm_and_colors(teff, g) if n else (np.zeros(0), np.zeros((0, 5)))
    cat_mags = mags + rng.normal(0.0, cfg.catalog_mag_noise, mags.shape)
    g_filter = mags[:, 0].copy()
    if n and (cfg.catalog_g_shift_A or cfg.catalog_g_tilt):
        g_filter = spectra.modified_g_magnitudes(scale, teff, cfg.catalog_g_shift_A,
                                                 cfg.catalog_g_tilt)
        cat_mags[:, 0] += g_filter - mags[:, 0]
    dpos = rng.normal(0.0, cfg.catalog_pos_noise_arcsec, (2, n))
    cat_dec = dec + dpos[1] / 3600.0
    cat_ra = ra + dpos[0] / 3600.0 / np.cos(np.deg2rad(dec))
    return {"ra": ra, "dec": dec, "fx": fx, "fy": fy, "g": g, "teff": teff, "flam_scale": scale,
            "grizy": mags, "cat_ra": cat_ra, "cat_dec": cat_dec, "cat_grizy": cat_mags,
            "g_catalog_filter": g_filter, "kind": kind,
            "obj_id": 100000000000000000 + np.arange(n, dtype=np.int64) * 7919 + plan.seed}


STAR_KINDS = ("field", "edge", "pair_primary", "pair_companion", "saturated")


def _special_stars(plan: NightPlan) -> tuple[np.ndarray, ...]:
    """Harsh-night stars (fx, fy, g, teff, kind): near IFU edges, close pairs, saturated."""
    cfg = plan.config
    rng = rng_for(plan.seed, "special-stars")
    rows: list[tuple[float, float, float, float, int]] = []
    for i, s in enumerate(plan.ifuslots):
        x_fp, y_fp = plan.fplane[s]
        for _ in range(cfg.edge_stars_per_ifu):
            along, across = rng.uniform(-20.0, 20.0), rng.uniform(20.0, 25.0) * rng.choice([-1, 1])
            dx, dy = (along, across) if rng.uniform() < 0.5 else (across, along)
            rows.append((y_fp + dx, x_fp + dy, rng.uniform(*cfg.bright_star_g_range),
                         rng.uniform(*cfg.star_teff_range), 1))
        for _ in range(cfg.close_pairs_per_ifu):
            dx, dy = rng.uniform(-15.0, 15.0, 2)
            g1 = rng.uniform(16.5, 18.5)
            sep, ang = rng.uniform(1.5, 3.0), rng.uniform(0, 2 * np.pi)
            rows.append((y_fp + dx, x_fp + dy, g1, rng.uniform(*cfg.star_teff_range), 2))
            rows.append((y_fp + dx + sep * np.cos(ang), x_fp + dy + sep * np.sin(ang),
                         g1 + rng.uniform(0.0, 1.5), rng.uniform(*cfg.star_teff_range), 3))
        if i < cfg.saturated_stars:
            dx, dy = rng.uniform(-10.0, 10.0, 2)
            rows.append((y_fp + dx, x_fp + dy, cfg.saturated_star_g,
                         rng.uniform(*cfg.star_teff_range), 4))
    arr = np.array(rows, float).reshape(-1, 5)
    return arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3], arr[:, 4].astype(int)


def _make_line_sources(plan: NightPlan) -> dict[str, np.ndarray]:
    """Point-like emission-line sources: several per IFU, some brighter than 1e-16."""
    cfg = plan.config
    rng = rng_for(plan.seed, "line_sources")
    rows = []
    lo, hi = np.log10(cfg.line_flux_range[0]), np.log10(cfg.line_flux_range[1])
    for s in plan.ifuslots:
        x_fp, y_fp = plan.fplane[s]
        n = cfg.line_sources_per_ifu
        flux = 10 ** rng.uniform(lo, hi, n)
        nb = min(cfg.bright_line_sources_per_ifu, n)
        flux[:nb] = 10 ** rng.uniform(max(lo, np.log10(20.0)), hi, nb)
        rows.append(np.column_stack([
            y_fp + rng.uniform(-20.0, 20.0, n), x_fp + rng.uniform(-20.0, 20.0, n),
            rng.uniform(*cfg.line_wave_range, n), flux, rng.uniform(*cfg.line_fwhm_range, n),
            np.full(n, s),
        ]))
    arr = np.vstack(rows) if rows else np.zeros((0, 6))
    fx, fy = arr[:, 0], arr[:, 1]
    ra, dec = instrument.focal_to_radec(fx, fy, plan.ra0, plan.dec0, plan.rotation)
    fwhm_obs = np.sqrt(arr[:, 4] ** 2 + cfg.lsf_fwhm**2)
    return {"ra": ra, "dec": dec, "fx": fx, "fy": fy, "wave": arr[:, 2], "flux": arr[:, 3],
            "fwhm": arr[:, 4], "fwhm_observed": fwhm_obs, "ifuslot": arr[:, 5].astype(int)}
