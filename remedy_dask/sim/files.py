"""Writers of the simulated night's files in the documented formats: raw amp FITS, observation
tars, guider tars, fplane, IFUcen, fiber-location files, throughput curve, Pan-STARRS-like
catalogue.  (The simulator writes independently of remedy_dask.io on purpose.)"""

from __future__ import annotations

import datetime as dt
import io
import shutil
import tarfile
from pathlib import Path

import numpy as np
from astropy.io import fits

from remedy_dask.sim import instrument, spectra
from remedy_dask.sim.amp import AmpModel
from remedy_dask.sim.config import rng_for
from remedy_dask.sim.scene import NightPlan

TAR_MTIME = 1_500_000_000  # fixed member time: identical bytes for identical input


def fits_bytes(raw: np.ndarray, header: dict[str, tuple[object, str]]) -> bytes:
    """Primary-HDU FITS bytes of a uint16 image (BITPIX 16, BZERO 32768)."""
    hdr = fits.Header()
    for key, (value, comment) in header.items():
        hdr[key] = (value, comment)
    hdu = fits.PrimaryHDU(data=np.ascontiguousarray(raw, dtype=np.uint16), header=hdr)
    buf = io.BytesIO()
    hdu.writeto(buf, output_verify="exception")
    return buf.getvalue()


def write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    tmp.replace(path)


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = TAR_MTIME
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def tar_observations(virus_dir: Path, observations: list[int] | None = None) -> list[Path]:
    """Replace the ``virusNNNNNNN`` folders of ``observations`` (default: every one) under
    ``virus_dir`` by ``virusNNNNNNN.tar`` with members ``virusNNNNNNN/expNN/virus/FILE.fits``
    in sorted order; returns the tars."""
    tars = []
    wanted = None if observations is None else {f"virus{o:07d}" for o in observations}
    for obs_dir in sorted(p for p in virus_dir.glob("virus*") if p.is_dir()
                          and (wanted is None or p.name in wanted)):
        tar_path = obs_dir.with_suffix(".tar")
        tmp = tar_path.with_name(tar_path.name + ".part")
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for f in sorted(obs_dir.rglob("*.fits")):
                arc = f.relative_to(virus_dir).as_posix()
                with open(f, "rb") as fh:
                    tar.addfile(_tarinfo(arc, f.stat().st_size), fh)
        tmp.replace(tar_path)
        shutil.rmtree(obs_dir)
        tars.append(tar_path)
    return tars


def guider_values(plan: NightPlan, sci: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Guider frame times (s after the exposure start), TRANSPAR and IQ of science exposure
    ``sci``: every 30 s, truth + N(0, 0.01) and N(0, 0.05") measurement noise."""
    rng = rng_for(plan.seed, "guider", sci)
    times = np.arange(0.0, plan.config.exptime["sci"] + 1.0, 30.0)
    transpar = np.round(plan.transparency[sci] + rng.normal(0.0, 0.01, times.size), 4)
    iq = np.round(plan.seeing[sci] + rng.normal(0.0, 0.05, times.size), 3)
    return times, transpar, iq


def write_guider(plan: NightPlan, raw_root: Path) -> list[Path]:
    """One gc1 tar per science exposure: a small FITS frame every 30 s with TRANSPAR, IQ and
    PUPILLUM headers (guider measurements = truth + small noise, kept in the truth file)."""
    out = []
    for frame in plan.frames:
        if frame.sci_index is None:
            continue
        times, transpar, iq = guider_values(plan, frame.sci_index)
        illumination = float(plan.illumination[frame.sci_index]) if plan.illumination.size \
            else 1.0  # the exposure's true mirror illumination
        gdir = raw_root / plan.date / "gc1"
        gdir.mkdir(parents=True, exist_ok=True)
        path = gdir / f"{frame.prefix}_gc1.tar"
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
            for t, tr, q in zip(times, transpar, iq):
                start = frame.start + dt.timedelta(seconds=float(t))
                stamp = start.strftime("%Y%m%dT%H%M%S") + f".{start.microsecond // 100000}"
                header = {
                    "OBJECT": ("guider", ""), "DATE": (start.isoformat()[:21], "UT"),
                    "EXPTIME": (5.0, "s"),
                    "TRANSPAR": (float(tr), "transparency"),
                    "IQ": (float(q), "image quality FWHM arcsec"),
                    "PUPILLUM": (illumination, "illuminated pupil fraction"),
                }
                img = np.full((16, 16), 1000, np.uint16)
                data = fits_bytes(img, header)
                tar.addfile(_tarinfo(f"{stamp}_gc1_sci.fits", len(data)), io.BytesIO(data))
        out.append(path)
    return out


def write_fplane(plan: NightPlan, path: Path) -> None:
    lines = ["# IFUSLOT X_FP Y_FP SPECID SPECSLOT IFUID IFUROT PLATESC",
             "# simulated by remedy-dask; X_FP, Y_FP arcsec"]
    for s in sorted(plan.ifuslots):
        x_fp, y_fp = plan.fplane[s]
        specid, ifuid, _ = plan.ids[s]
        lines.append(f"{s:03d} {x_fp:8.2f} {y_fp:8.2f} {specid:03d} {specid:03d} {ifuid:03d} "
                     "0.0 1.00")
    path.write_text("\n".join(lines) + "\n")


def write_ifucen(path: Path) -> None:
    """IFUcen file: 30 header lines, then ID x y L/R fibnum throughput."""
    x, y = instrument.ifu_layout()
    head = ["# IFUcen_HETDEX.txt: standard VIRUS IFU fiber map (simulated night)",
            "# columns: fiber ID, x [arcsec], y [arcsec], unit L/R, fiber number in unit 1-224,",
            "#          relative throughput"]
    head += ["#"] * (30 - len(head))
    rows = []
    for i in range(instrument.N_FIBERS_IFU):
        fid = i + 1
        unit, num = ("L", fid) if fid <= 224 else ("R", fid - 224)
        rows.append(f"{fid:3d} {x[i]:8.3f} {y[i]:8.3f} {unit} {num:3d} 1.000")
    path.write_text("\n".join(head + rows) + "\n")


def write_fiber_loc(model: AmpModel, folder: Path) -> Path:
    """Reference y (px) per fiber and dead flag; LL and RL files carry the optional first line."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (f"fiber_loc_{model.specid:03d}_{model.ifuslot:03d}_{model.ifuid:03d}_"
                     f"{model.amp}.txt")
    lines = ["# 0.470"] if model.amp in ("LL", "RL") else []
    lines += [f"{y:9.3f} {int(d)}" for y, d in zip(model.fiber_loc_ref, model.dead)]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_throughput(path: Path) -> None:
    wave = instrument.WAVE
    lines = ["# wavelength throughput", "# A dimensionless (simulated HETDEX end-to-end curve)"]
    lines += [f"{w:7.1f} {t:.6f}" for w, t in zip(wave, spectra.throughput(wave))]
    path.write_text("\n".join(lines) + "\n")


def write_catalog(plan: NightPlan, path: Path) -> None:
    """Pan-STARRS-like CSV: raMean, decMean, g..y MeanApMag, objID (catalogue values)."""
    st = plan.stars
    lines = ["raMean,decMean,gMeanApMag,rMeanApMag,iMeanApMag,zMeanApMag,yMeanApMag,objID"]
    for i in np.argsort(st["cat_ra"], kind="stable"):
        m = st["cat_grizy"][i]
        lines.append(f"{st['cat_ra'][i]:.8f},{st['cat_dec'][i]:.8f},{m[0]:.4f},{m[1]:.4f},"
                     f"{m[2]:.4f},{m[3]:.4f},{m[4]:.4f},{st['obj_id'][i]}")
    path.write_text("\n".join(lines) + "\n")
