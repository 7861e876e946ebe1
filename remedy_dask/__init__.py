"""remedy-dask: the VIRUS fiber-IFU reduction pipeline (a re-creation of Remedy) on Dask."""

from importlib.metadata import PackageNotFoundError, version

from remedy_dask.numba_cache import set_numba_cache_dir

try:
    __version__ = version("remedy-dask")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

set_numba_cache_dir()  # before any kernel module imports numba
