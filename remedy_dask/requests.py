"""Typed requests: what one command asks the workflow to do, validated once.

The command line (``cli.py``) and the demo build these; the workflow takes nothing else.  Every
path that must exist is checked here, so a typo ends with one line naming the file before any
cluster starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from remedy_dask.config import PipelineConfig
from remedy_dask.errors import ConfigError, InputFileError

CUBE_CHOICES = ("target", "all", "none")
# frame kinds ``reduce --kind`` accepts: those that carry light through the fibers
REDUCE_KINDS = ("sci", "twi", "flt", "cmp")


def check_date(date: str) -> str:
    """``YYYYMMDD`` or a ConfigError."""
    if len(date) != 8 or not date.isdigit():
        raise ConfigError(f"expected a date YYYYMMDD, got {date!r}")
    return date


def _existing(path: Path | None, what: str, directory: bool = False) -> Path | None:
    if path is None:
        return None
    path = Path(path)
    if directory and not path.is_dir():
        raise InputFileError(str(path), f"{what}: no such directory")
    if not directory and not path.is_file():
        raise InputFileError(str(path), f"{what}: no such file")
    return path


@dataclass(frozen=True)
class ClusterRequest:
    """Where the graph runs: ``local`` (LocalCluster), ``slurm``, ``pbs``, ``sync`` or a
    scheduler address, with ``workers`` processes, the cluster settings (``site`` preset,
    ``config_file``), the dashboard address, a bound on the wait for batch workers and the
    user's TLS certificates for a ``tls://`` scheduler."""

    address: str = "local"
    workers: int | None = None
    config_file: Path | None = None
    site: str | None = None
    dashboard_address: str | None = None
    worker_timeout: float | None = None
    tls_ca_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    quiet: bool = False

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {self.workers}")
        if self.worker_timeout is not None and self.worker_timeout <= 0:
            raise ConfigError(f"--worker-timeout must be positive, got {self.worker_timeout}")
        _existing(self.config_file, "cluster settings")

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``workflow.cluster.open_client``."""
        kwargs = {f.name: getattr(self, f.name) for f in fields(self)}
        kwargs["cluster"] = kwargs.pop("address")
        kwargs["cluster_config"] = kwargs.pop("config_file")
        return kwargs


@dataclass(frozen=True)
class InjectionRequest:
    """A point source added to the target IFU before detection: spectrum file (wavelength A,
    F_lambda), IFU-frame position (arcsec) and an optional FWHM (arcsec; default fitted PSF)."""

    spectrum_file: Path
    x: float
    y: float
    seeing: float | None = None

    def __post_init__(self) -> None:
        _existing(self.spectrum_file, "source spectrum")
        if self.seeing is not None and not 0.1 <= self.seeing <= 10.0:
            raise ConfigError(f"--source-seeing must be 0.1-10 arcsec, got {self.seeing}")


@dataclass(frozen=True)
class CalibrateRequest:
    """``remedy-dask calibrate``: one calibration file from the nights ``date`` .. ``date + days - 1``."""

    rootdir: Path
    date: str
    out: Path
    days: int = 1
    fplane: Path | None = None
    ifucen: Path | None = None
    fiber_locations: Path | None = None
    ifuslots: tuple[int, ...] | None = None
    config: PipelineConfig = field(default_factory=PipelineConfig)
    cluster: ClusterRequest = field(default_factory=ClusterRequest)

    def __post_init__(self) -> None:
        check_date(self.date)
        _existing(self.rootdir, "raw data root", directory=True)
        if not 1 <= self.days <= 366:
            raise ConfigError(f"--days must be 1-366, got {self.days}")
        _existing(self.fplane, "fplane")
        _existing(self.ifucen, "IFUcen")
        _existing(self.fiber_locations, "fiber locations", directory=True)


def _check_observation_inputs(req: ReduceRequest | NightRequest | RangeRequest) -> None:
    """Dates, ``--cubes`` and the input files shared by the reduction requests."""
    for date in (req.start, req.end) if isinstance(req, RangeRequest) else (req.date,):
        check_date(date)
    if req.cubes not in CUBE_CHOICES:
        raise ConfigError(f"--cubes must be one of {', '.join(CUBE_CHOICES)}, got {req.cubes!r}")
    _existing(req.rootdir, "raw data root", directory=True)
    for path, what in ((getattr(req, "calfile", None), "calibration file"),
                       (req.fplane, "fplane"), (req.catalog, "catalog"),
                       (req.throughput, "throughput"), (req.ifucen, "IFUcen")):
        _existing(path, what)


@dataclass(frozen=True)
class ReduceRequest:
    """``remedy-dask reduce``: observation ``obs`` of ``date``, the IFU ``ifuslot`` and its
    neighbours within ``neighbor_dist`` slots (every IFU with ``all_ifus``)."""

    date: str
    obs: int
    ifuslot: int
    calfile: Path
    rootdir: Path
    fplane: Path
    out: Path
    catalog: Path | None = None
    throughput: Path | None = None
    ifucen: Path | None = None
    neighbor_dist: int = 1
    all_ifus: bool = False
    cubes: str = "target"
    native_spectra: bool = False
    kind: str = "sci"
    performance_report: bool = False
    injection: InjectionRequest | None = None
    config: PipelineConfig = field(default_factory=PipelineConfig)
    config_file: Path | None = None  # where ``config`` came from (for messages)
    cluster: ClusterRequest = field(default_factory=ClusterRequest)

    def __post_init__(self) -> None:
        if not 0 < self.obs < 10_000_000:
            raise ConfigError(f"observation number must be 1-9999999, got {self.obs}")
        if not 0 <= self.ifuslot <= 999:
            raise ConfigError(f"IFU slot must be 0-999, got {self.ifuslot}")
        if self.neighbor_dist < 0:
            raise ConfigError(f"--neighbor-dist must be >= 0, got {self.neighbor_dist}")
        if self.kind not in REDUCE_KINDS:
            raise ConfigError(f"--kind must be one of {', '.join(REDUCE_KINDS)}, got {self.kind!r}")
        if self.kind != "sci" and self.injection is not None:
            raise ConfigError("--source-file needs --kind sci (sources are injected into "
                              "flux-calibrated science fibers)")
        _check_observation_inputs(self)


@dataclass(frozen=True)
class NightRequest:
    """``remedy-dask reduce-night``: every science observation of ``date`` (or only
    ``observations``), every IFU, in one cluster."""

    rootdir: Path
    date: str
    calfile: Path
    fplane: Path
    out: Path
    observations: tuple[int, ...] | None = None
    catalog: Path | None = None
    throughput: Path | None = None
    ifucen: Path | None = None
    cubes: str = "none"
    native_spectra: bool = False
    config: PipelineConfig = field(default_factory=PipelineConfig)
    config_file: Path | None = None
    cluster: ClusterRequest = field(default_factory=ClusterRequest)

    def __post_init__(self) -> None:
        _check_observation_inputs(self)

    def observation(self, obs: int, ifuslot: int) -> ReduceRequest:
        """The request of one observation of the night (all IFUs; ``ifuslot`` is its target)."""
        return ReduceRequest(
            date=self.date, obs=obs, ifuslot=ifuslot, calfile=self.calfile, rootdir=self.rootdir,
            fplane=self.fplane, out=self.out, catalog=self.catalog, throughput=self.throughput,
            ifucen=self.ifucen, neighbor_dist=0, all_ifus=True, cubes=self.cubes,
            native_spectra=self.native_spectra, config=self.config, config_file=self.config_file, cluster=self.cluster)


@dataclass(frozen=True)
class RangeRequest:
    """``remedy-dask reduce-range``: every science observation of the nights ``start`` ..
    ``end`` (inclusive; only program ``program`` if given), one calibration file per
    ``cal_window`` days, all in one cluster."""

    rootdir: Path
    start: str
    end: str
    out: Path
    fplane: Path
    cal_window: int = 7
    program: str | None = None
    ifucen: Path | None = None
    fiber_locations: Path | None = None
    catalog: Path | None = None
    throughput: Path | None = None
    cubes: str = "none"
    native_spectra: bool = False
    config: PipelineConfig = field(default_factory=PipelineConfig)
    config_file: Path | None = None
    cluster: ClusterRequest = field(default_factory=ClusterRequest)

    def __post_init__(self) -> None:
        _check_observation_inputs(self)
        if self.end < self.start:
            raise ConfigError(f"--end {self.end} is before --start {self.start}")
        if not 1 <= self.cal_window <= 366:
            raise ConfigError(f"--cal-window must be 1-366 days, got {self.cal_window}")
        _existing(self.fiber_locations, "fiber locations", directory=True)

    def calibration(self, window_start: str, out: Path) -> CalibrateRequest:
        """The calibration of the window starting at ``window_start``."""
        return CalibrateRequest(
            rootdir=self.rootdir, date=window_start, out=out, days=self.cal_window,
            fplane=self.fplane, ifucen=self.ifucen, fiber_locations=self.fiber_locations,
            config=self.config, cluster=self.cluster)

    def night(self, date: str, calfile: Path, observations: tuple[int, ...]) -> NightRequest:
        """The reduction of one night's ``observations`` with ``calfile``."""
        return NightRequest(
            rootdir=self.rootdir, date=date, calfile=calfile, fplane=self.fplane,
            out=self.out / "reduced", observations=observations, catalog=self.catalog,
            throughput=self.throughput, ifucen=self.ifucen, cubes=self.cubes,
            native_spectra=self.native_spectra, config=self.config,
            config_file=self.config_file, cluster=self.cluster)


def _products(paths: tuple[Path, ...]) -> None:
    if not paths:
        raise ConfigError("give at least one observation product (DATE_OBS.h5)")
    for path in paths:
        _existing(path, "observation product")


@dataclass(frozen=True)
class ExtractRequest:
    """``remedy-dask extract``: spectra at one position (``ra``, ``dec``, degrees) or at the
    positions of a CSV (``coords``) from ``products``, fibers within ``radius`` arcsec."""

    products: tuple[Path, ...]
    out: Path
    ra: float | None = None
    dec: float | None = None
    coords: Path | None = None
    radius: float = 5.0
    cluster: ClusterRequest = field(default_factory=ClusterRequest)

    def __post_init__(self) -> None:
        _products(self.products)
        if self.coords is not None:
            if self.ra is not None or self.dec is not None:
                raise ConfigError("give either --ra/--dec or --coords, not both")
            _existing(self.coords, "positions")
        elif self.ra is None or self.dec is None:
            raise ConfigError("give a position (--ra RA --dec DEC, degrees) or --coords F.csv")
        elif not -90.0 <= self.dec <= 90.0:
            raise ConfigError(f"--dec {self.dec} is outside -90..90 deg")
        if not self.radius > 0:
            raise ConfigError(f"--radius must be positive, got {self.radius}")


@dataclass(frozen=True)
class MosaicRequest:
    """``remedy-dask mosaic``: one cube of ``products`` on ``pixscale`` arcsec pixels, the
    wavelengths ``wave`` (A1, A2) or all, in chunks of about ``chunk_mb`` MB per task."""

    products: tuple[Path, ...]
    out: Path
    pixscale: float = 0.5
    wave: tuple[float, float] | None = None
    chunk_mb: int = 256
    cluster: ClusterRequest = field(default_factory=ClusterRequest)

    def __post_init__(self) -> None:
        _products(self.products)
        if not self.pixscale > 0:
            raise ConfigError(f"--pixscale must be positive, got {self.pixscale}")
        if not self.chunk_mb > 0:
            raise ConfigError(f"--chunk-mb must be positive, got {self.chunk_mb}")


@dataclass(frozen=True)
class CatalogRequest:
    """``remedy-dask catalog``: the merged catalogue of ``products``: continuum sources within
    ``radius`` arcsec, lines within ``line_radius`` arcsec and ``wave_tol`` A are one object."""

    products: tuple[Path, ...]
    out: Path
    radius: float = 1.0
    line_radius: float = 1.5
    wave_tol: float = 4.0
    cluster: ClusterRequest = field(default_factory=ClusterRequest)

    def __post_init__(self) -> None:
        _products(self.products)
        for name in ("radius", "line_radius", "wave_tol"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive")
