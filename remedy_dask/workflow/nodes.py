"""Small helpers for building Dask graphs efficiently.

Passing a Python list or dict of ``Delayed`` objects into ``dask.delayed`` makes dask optimise
and cull the whole merged graph on every call (quadratic in the graph size for fan-ins).  Gather
them once into a single node with :func:`gather` / :func:`gather_dict` and pass that node.
``dask.delayed`` also walks every argument that is a dataclass, field by field, at every call
(a configuration: ~40 fields), and tokenizes the function each time it is wrapped: pass a
configuration used by many nodes as one :func:`constant` node, and wrap functions once
(:func:`impure`).  Each ``dask.delayed`` call copies the layers of every ancestor of its
inputs: a node that hundreds of others take (a field solution after a fan-in) is passed as
:func:`flat`, its ancestry in one layer.
:func:`flag_failures` turns an exception in one unit's chain into a flagged failure of that unit.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable, TypeVar

import dask

log = logging.getLogger(__name__)
S = TypeVar("S")


@functools.cache
def impure(func: Callable[..., Any]) -> Any:
    """``dask.delayed(func, pure=False)``, wrapped once per function (call it with
    ``dask_key_name``)."""
    return dask.delayed(func, pure=False)


VALUE_PREFIX = "value-"  # task names of the nodes that only hold an input (no computation)


def constant(value: Any, name: str) -> Any:
    """A node ``value-{name}`` holding ``value`` (not traversed by the nodes that use it)."""
    return dask.delayed(value, name=VALUE_PREFIX + name, traverse=False)


def flat(node: Any) -> Any:
    """``node`` over its whole graph as one layer (for a node that many others take)."""
    from dask.delayed import Delayed

    return Delayed(node.key, dict(node.__dask_graph__()))


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


def flag_failures(fail: Callable[[S, str], S], *, prepare: Callable[[S], S] | None = None,
                  expected: tuple[type[Exception], ...] = (), internal: str = "",
                  label: Callable[[S], str] = lambda state: str(state.key)
                  ) -> Callable[[Callable[..., S]], Callable[..., S]]:
    """Decorator of a step ``func(state, *args)`` of a per-unit chain (an amp, an amp-exposure).

    A state whose ``failed`` is set passes through untouched.  Otherwise the step runs on
    ``prepare(state)`` (a copy, so no task mutates its input); an exception becomes
    ``fail(state, reason)``: the failure of this unit only, flagged in the products, never
    turned into zeros.  ``reason`` is ``"step: message"`` for the ``expected`` exceptions (logged
    in one line) and ``"step: {internal}Type: message"`` for any other (logged with traceback);
    ``step`` is the function name without a ``cal_`` prefix.
    """

    def decorate(func: Callable[..., S]) -> Callable[..., S]:
        step = func.__name__.removeprefix("cal_")

        @functools.wraps(func)
        def wrapper(state: S, *args: Any, **kwargs: Any) -> S:
            if state.failed:  # type: ignore[attr-defined]
                return state
            if prepare is not None:
                state = prepare(state)
            try:
                return func(state, *args, **kwargs)
            except expected as exc:
                reason = f"{step}: {exc}"
                log.error("%s failed: %s", label(state), reason)
            except Exception as exc:  # a bug must not cost the other units; flagged, not hidden
                reason = f"{step}: {internal}{type(exc).__name__}: {exc}"
                log.exception("%s failed in %s", label(state), step)
            return fail(state, reason)

        return wrapper

    return decorate
