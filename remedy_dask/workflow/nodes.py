"""Small helpers for building Dask graphs efficiently.

Passing a Python list or dict of ``Delayed`` objects into ``dask.delayed`` makes dask optimise
and cull the whole merged graph on every call (quadratic in the graph size for fan-ins).  Gather
them once into a single node with :func:`gather` / :func:`gather_dict` and pass that node.
"""

from __future__ import annotations

from typing import Any

import dask


def _as_list(*items: Any) -> list[Any]:
    return list(items)


def _as_dict(keys: list[Any], *values: Any) -> dict[Any, Any]:
    return dict(zip(keys, values))


def gather(items: list[Any], name: str) -> Any:
    """One node whose value is the list of the values of ``items``."""
    return dask.delayed(_as_list, pure=False)(*items, dask_key_name=name)


def gather_dict(items: dict[Any, Any], name: str) -> Any:
    """One node whose value is ``{key: value of items[key]}``."""
    keys = list(items)
    return dask.delayed(_as_dict, pure=False)(keys, *items.values(), dask_key_name=name)
