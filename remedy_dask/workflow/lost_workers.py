"""The amp chains computed as futures, so that a chain lost with its worker flags only its
amp-exposure.

When a worker process dies (killed for memory, a crash in compiled code), its nanny starts a
new one and the scheduler reruns the tasks that were running on it; once
``distributed.scheduler.allowed-failures`` + 1 workers (4 by default) have died running the
same task, that task errs with ``KilledWorker``, and so does every task that depends on it.
The ends of the amp chains are therefore computed first, each as its own future, and the rest
of the observation's graph is built on their summaries:

* a chain whose own task (or its amp's calibration read) killed the workers is left out, with
  ``worker died: ...`` in the product's flags (exit status 3);
* a chain that failed only because it waited for the other amp of its CCD (the pooled
  wavelength shift) is run again alone (``amp_graph.alone_chain``), under a checkpoint key of
  its own, so that a rerun pools it again;
* any other exception fails its observation, as it would have failed the whole graph.
"""

from __future__ import annotations

import logging
from typing import Any

from remedy_dask.workflow.amp_graph import chain_task_of

log = logging.getLogger(__name__)

Chain = tuple[int, int, str]  # (index of the reduction, exposure, amp key)


def chain_keys(plan: Any, exp: int) -> list[str]:
    """The amps of exposure ``exp`` in the order ``build_amp_graph`` lists their chains."""
    return [k for k in plan.cal_keys if (exp, k) in plan.refs]


def lost_summary(exp: int, key: str, exc: Any) -> dict[str, Any]:
    """The summary of an amp-exposure left out because its worker died (``exc``: the
    ``KilledWorker``)."""
    n = exc.allowed_failures + 1
    reason = (f"worker died: {n} worker process{'es' if n > 1 else ''} died running "
              f"{exc.task} (out of memory, or a crash in compiled code)")
    log.error("amp %s exp%02d left out: %s", key, exp, reason)
    return {"key": key, "exp": exp, "failed": reason, "notes": []}


def compute_chains(client: Any, reductions: list[Any]
                   ) -> list[dict[int, list[dict[str, Any]]] | BaseException]:
    """Run the amp chains of ``reductions`` (``science.Reduction``) on ``client``; per
    reduction, its chains' summaries per exposure in plan order (lost chains flagged), or the
    exception that fails it."""
    done: list[dict[tuple[int, str], dict[str, Any]]] = [{} for _ in reductions]
    errors: dict[int, BaseException] = {}
    jobs: dict[Chain, Any] = {}
    for i, red in enumerate(reductions):
        for exp, items in red.chains.items():
            for key, item in zip(chain_keys(red.plan, exp), items):
                if isinstance(item, dict):  # resumed from its checkpoint
                    done[i][(exp, key)] = item
                else:
                    jobs[(i, exp, key)] = item
    retry = _run(client, jobs, done, errors, reductions, alone=False)
    if retry:
        log.warning("%d amp-exposure(s) lost the other amp of their CCD with its worker: "
                    "measured alone", len(retry))
        _run(client, {c: reductions[c[0]].alone(c[1], c[2]) for c in retry if c[0] not in errors},
             done, errors, reductions, alone=True)
    return [errors[i] if i in errors else
            {exp: [done[i][(exp, k)] for k in chain_keys(red.plan, exp)]
             for exp in red.plan.exposures}
            for i, red in enumerate(reductions)]


def _run(client: Any, jobs: dict[Chain, Any], done: list[dict[tuple[int, str], Any]],
         errors: dict[int, BaseException], reductions: list[Any], alone: bool) -> list[Chain]:
    """Compute ``jobs``, wait for every one, sort the outcomes into ``done`` and ``errors``;
    returns the chains that failed only because their CCD partner's chain was lost."""
    if not jobs:
        return []
    from distributed import wait
    from distributed.scheduler import KilledWorker

    from remedy_dask.workflow.progress import wait_with_progress

    futures = dict(zip(jobs, client.compute(list(jobs.values()))))
    wait_with_progress(list(futures.values()))  # stops at the first failed task
    wait(list(futures.values()))
    retry = []
    for (i, exp, key), future in futures.items():
        if future.status == "finished":
            done[i][(exp, key)] = future.result()
            continue
        exc = future.exception()
        if not isinstance(exc, KilledWorker):
            errors.setdefault(i, exc.with_traceback(future.traceback()))
        elif alone or chain_task_of(exc.task, exp, key, reductions[i].plan.tag):
            done[i][(exp, key)] = lost_summary(exp, key, exc)
        else:
            retry.append((i, exp, key))
    return retry
