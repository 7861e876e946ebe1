"""Exit statuses of the commands and what a finished run left out.

====  ===========================================================================
0     everything was reduced
1     an unexpected internal error (a bug: rerun with ``--debug`` and report it)
2     bad input or arguments: nothing was written (or another run holds OUTDIR),
      or an output could not be written (a full disk: the line names the path;
      finished checkpoints are kept and a rerun resumes)
3     products were written but something was left out (amps, exposures,
      observations, amp-exposures whose worker died); the reasons are printed and
      recorded in the products' flags
====  ===========================================================================
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_PARTIAL = 3


def product_flags(product: str | Path) -> list[str]:
    """The ``flags`` provenance attribute of an observation product (what was left out)."""
    import h5py

    with h5py.File(product, "r") as h5:
        value: Any = h5.attrs.get("flags", "[]")
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            value = [value] if value else []
    return [v.decode() if isinstance(v, bytes) else str(v) for v in list(value)]


def product_status(product: str | Path) -> int:
    """EXIT_PARTIAL if the product records anything left out, else EXIT_OK."""
    return EXIT_PARTIAL if product_flags(product) else EXIT_OK


def night_status(results: dict[int, dict[str, Any]]) -> int:
    """The status of ``reduce-night`` from its per-observation results."""
    written = [r for r in results.values() if r.get("product")]
    if not written:
        return EXIT_BAD_INPUT if all(r.get("bad_input") for r in results.values()) \
            else EXIT_INTERNAL
    if len(written) < len(results) or any(r.get("flags") for r in written):
        return EXIT_PARTIAL
    return EXIT_OK


def range_status(rows: list[dict[str, Any]]) -> int:
    """The status of ``reduce-range`` from its summary rows."""
    if all(r["status"] == "ok" for r in rows):
        return EXIT_OK
    return EXIT_PARTIAL if any(str(r["status"]).startswith("ok") for r in rows) else EXIT_BAD_INPUT
