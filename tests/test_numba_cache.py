"""numba's cache folder is named after the kernels' sources: an edit of a function that a
cached kernel calls from another module (which numba's own invalidation misses) starts a fresh
cache instead of running stale machine code."""

import os
import subprocess
import sys
from pathlib import Path

from remedy_dask.numba_cache import kernel_sources_digest


def _package_copy(tmp_path: Path) -> Path:
    root = tmp_path / "pkg"
    (root / "amp").mkdir(parents=True)
    (root / "amp" / "kernel.py").write_text("from numba import njit\nfrom .callee import f\n")
    (root / "amp" / "callee.py").write_text("from numba import njit\n@njit\ndef f(x):\n    return x\n")
    (root / "cli.py").write_text("print('no kernels here')\n")
    (root / "geometry.py").write_text("N = 112\n")
    return root


def test_digest_follows_kernel_modules_and_geometry_only(tmp_path):
    root = _package_copy(tmp_path)
    first = kernel_sources_digest(root)
    assert len(first) == 16 and first == kernel_sources_digest(root)
    (root / "cli.py").write_text("print('edited, still no kernels')\n")
    assert kernel_sources_digest(root) == first
    (root / "amp" / "callee.py").write_text("from numba import njit\n@njit\ndef f(x):\n    return 2 * x\n")
    second = kernel_sources_digest(root)
    assert second != first
    (root / "geometry.py").write_text("N = 113\n")
    assert kernel_sources_digest(root) not in (first, second)


def _cache_dir_of_a_fresh_process(env: dict) -> str:
    code = "import remedy_dask, os, numba.core.config as c; print(os.environ['NUMBA_CACHE_DIR'], c.CACHE_DIR)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[0] == out[1]  # numba reads the folder remedy_dask set
    return out[0]


def test_the_folder_is_set_before_numba_and_a_given_one_is_kept(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    assert _cache_dir_of_a_fresh_process(env) == str(
        tmp_path / "xdg" / "remedy-dask" / "numba" / kernel_sources_digest())
    env["NUMBA_CACHE_DIR"] = str(tmp_path / "mine")
    assert _cache_dir_of_a_fresh_process(env) == str(tmp_path / "mine")
