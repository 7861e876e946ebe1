"""The amp-exposure chains of one observation's graph (``workflow.amp_chain`` wired as tasks).

Per (exposure, amp): ``ccd`` -> ``trace-shift`` -> ``scattered-light`` -> ``extract`` ->
``wave-shift`` (measure) -> ``ccd-shift`` (pooled with the other amp of the CCD) -> ``mask`` ->
``rectify`` (checkpoint); ``load-cal`` is shared by the exposures of an amp.  Every task is
named ``{step}-{IFUSLOT}{AMP}-expNN-{DATE}_{OBS}`` (``load-cal-{IFUSLOT}{AMP}-{DATE}_{OBS}``).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from remedy_dask import geometry
from remedy_dask.config import PipelineConfig
from remedy_dask.io import store
from remedy_dask.workflow import amp_chain
from remedy_dask.workflow.keys import CheckpointKeys
from remedy_dask.workflow.nodes import constant, impure

ALONE = "alone"  # task-name mark of a chain rerun without the other amp of its CCD
RETRY = "retry"  # task-name mark of the second attempt at chains lost with a worker


def build_amp_graph(plan: Any, cal_path: Path, work_root: Path, config: PipelineConfig,
                    keys: CheckpointKeys, attempt: str = "") -> tuple[dict[int, list[Any]], int]:
    """Delayed chains per exposure; returns ({exp: [summaries]}, number of chains skipped).

    Each chain measures its wavelength shift (``wave-shift``, a small result) and applies it
    pooled with the other amp of its CCD (``ccd-shift``); a partner already checkpointed
    contributes its stored measurement.  Each exposure lists its amps in the plan's order,
    resumed or not (the exposure fan-in concatenates them in that order).  ``attempt`` marks
    the task names of a second attempt in the same cluster (:func:`chain_tag`)."""
    tag = chain_tag(plan, attempt)
    rc = constant(config.reduction, f"reduction-config-{tag}")
    chains: dict[tuple[int, str], Any] = {}  # in plan order: a summary (resumed) or a delayed one
    pending: dict[tuple[int, str], tuple[Any, Any, Any, str]] = {}  # (ax, shift, cal, ikey)
    resumed: set[tuple[int, str]] = set()
    for key in plan.cal_keys:
        cal = None
        for exp in plan.exposures:
            ref = plan.refs.get((exp, key))
            if ref is None:
                continue
            ikey = keys.amp(plan, exp, key)
            if store.is_complete(work_root, exp, key, ikey):
                resumed.add((exp, key))
                chains[(exp, key)] = {"key": key, "exp": exp, "failed": None, "resumed": True}
                continue
            if cal is None:
                cal = _load_cal(cal_path, key, tag)
            ax, measured = _chain_head(ref, cal, exp, rc, _chain_node(key, exp, tag))
            pending[(exp, key)] = (ax, measured, cal, ikey)
            chains[(exp, key)] = None  # its place; built below, once every shift is known
    for (exp, key), (ax, measured, cal, ikey) in pending.items():
        partner = partner_key(plan, key)
        other = None
        if partner and (exp, partner) in pending:
            other = pending[(exp, partner)][1]
        elif partner and (exp, partner) in resumed:
            other = amp_chain.stored_shift(work_root, exp, partner)
        chains[(exp, key)] = _chain_tail(ax, measured, other, cal, rc, work_root, ikey,
                                         _chain_node(key, exp, tag))
    summaries: dict[int, list[Any]] = defaultdict(list)
    for (exp, _), chain in chains.items():
        summaries[exp].append(chain)
    return summaries, len(resumed)


def alone_chain(plan: Any, cal_path: Path, work_root: Path, config: PipelineConfig,
                keys: CheckpointKeys, exp: int, key: str) -> Any:
    """The chain of (``exp``, ``key``) with its wavelength shift measured on the amp alone,
    for an amp whose CCD partner's chain was lost with its worker: task names of its own
    (``...-alone-...``), and a checkpoint key of its own (``CheckpointKeys.amp_alone``), so
    that a rerun recomputes it pooled with the partner, as a clean run does."""
    tag = chain_tag(plan, ALONE)
    cal = _load_cal(cal_path, key, tag)
    rc = constant(config.reduction, f"reduction-config-{key}-exp{exp:02d}-{tag}")
    ax, measured = _chain_head(plan.refs[(exp, key)], cal, exp, rc, _chain_node(key, exp, tag))
    return _chain_tail(ax, measured, None, cal, rc, work_root, keys.amp_alone(plan, exp, key),
                       _chain_node(key, exp, tag))


def chain_tag(plan: Any, attempt: str = "") -> str:
    """The tag ending the chains' task names: the observation's, after ``attempt`` if any."""
    return f"{attempt}-{plan.tag}" if attempt else plan.tag


def chain_task_of(task: str, exp: int, key: str, tag: str) -> bool:
    """Whether the task named ``task`` belongs to the chain of (``exp``, ``key``) of the
    observation ``tag``: one of its own steps or its amp's calibration read."""
    return task == f"load-cal-{key}-{tag}" or task.endswith(f"-{key}-exp{exp:02d}-{tag}")


def _load_cal(cal_path: Path, key: str, tag: str) -> Any:
    return impure(amp_chain.load_calibration)(str(cal_path), key,
                                              dask_key_name=f"load-cal-{key}-{tag}")


def _chain_head(ref: Any, cal: Any, exp: int, rc: Any, node: Any) -> tuple[Any, Any]:
    """``ccd`` to ``extract``, and the amp's own ``wave-shift`` measurement."""
    ax = node(amp_chain.ccd, ref, cal, exp, step="ccd")
    ax = node(amp_chain.trace_shift, ax, rc, step="trace-shift")
    ax = node(amp_chain.scattered, ax, rc, step="scattered-light")
    ax = node(amp_chain.extract, ax, cal, rc, step="extract")
    return ax, node(amp_chain.wave_shift, ax, rc, step="wave-shift")


def _chain_tail(ax: Any, measured: Any, other: Any, cal: Any, rc: Any, work_root: Path,
                ikey: str, node: Any) -> Any:
    """``ccd-shift`` (pooled with ``other``, the partner's measurement) to the checkpoint."""
    ax = node(amp_chain.apply_wave_shift, ax, measured, other, rc, step="ccd-shift")
    ax = node(amp_chain.mask_spectra, ax, cal, rc, step="mask")
    return node(amp_chain.rectify_and_store, ax, str(work_root), ikey, step="rectify")


def _chain_node(key: str, exp: int, tag: str) -> Any:
    """``node(func, *args, step=...)``: a delayed task of the chain of (``key``, ``exp``), named
    ``{step}-{key}-expNN-{tag}`` (the dashboard and the benchmarks group by ``step``)."""
    def node(func: Any, *args: Any, step: str) -> Any:
        return impure(func)(*args, dask_key_name=f"{step}-{key}-exp{exp:02d}-{tag}")
    return node


def partner_key(plan: Any, key: str) -> str | None:
    """The other amp of the CCD, if it is reduced in this run."""
    partner = key[:3] + geometry.ccd_partner(key[3:])
    return partner if partner in plan.cal_keys else None
