"""The amp chains computed as futures, so that a chain lost with its worker flags only its
amp-exposure.

When a worker process dies (killed for memory, a crash in compiled code), its nanny starts a
new one and the scheduler reruns the tasks that were assigned to it; once
``distributed.scheduler.allowed-failures`` + 1 workers (4 by default) have died while a task
was assigned to them, that task errs with ``KilledWorker``, and so does every task that
depends on it.  A task merely queued on the dying workers beside the culprit counts too.  The
ends of the amp chains are therefore computed first, each as its own future, and the rest of
the observation's graph is built on their summaries:

1. every chain;
2. the chains lost in 1 (their own task or their amp's calibration read) or waiting for a lost
   one (the other amp of their CCD: the pooled wavelength shift), rebuilt as a rerun would
   build them (``build_amp_graph``: partners finished in 1 give their stored shift), under
   fresh task names: fewer tasks run at once, so a chain lost to memory pressure or queued
   beside the culprit usually succeeds, with the clean run's result;
3. the chains whose CCD partner was lost again, alone (``amp_graph.alone_chain``: unpooled,
   under a checkpoint key of their own, so that a rerun pools them).

A chain lost in 2 or 3 is left out with ``worker died: ...`` in the product's flags (exit
status 3); any other exception fails its observation, as it would have failed the whole graph.
"""

from __future__ import annotations

import logging
from typing import Any

from remedy_dask.workflow.amp_graph import ALONE, RETRY, chain_tag, chain_task_of

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
    jobs = _jobs([red.chains for red in reductions], reductions, done, None)
    lost, waiting = _run(client, jobs, done, errors, reductions, "")
    if lost or waiting:
        log.warning("%d amp-exposure chain(s) lost with their workers, %d waiting for them: "
                    "tried again", len(lost), len(waiting))
        again = {c for c, _ in lost if c[0] not in errors} | {c for c in waiting
                                                               if c[0] not in errors}
        rebuilt = [red.rebuild(RETRY) if any(c[0] == i for c in again) else {}
                   for i, red in enumerate(reductions)]
        lost, waiting = _run(client, _jobs(rebuilt, reductions, done, again), done, errors,
                             reductions, RETRY)
        _flag(lost, done)
    if waiting:
        log.warning("%d amp-exposure(s) lost the other amp of their CCD: measured alone",
                    len(waiting))
        alone = {c: reductions[c[0]].alone(c[1], c[2]) for c in waiting if c[0] not in errors}
        lost, _ = _run(client, alone, done, errors, reductions, ALONE)
        _flag(lost, done)
    return [errors[i] if i in errors else
            {exp: [done[i][(exp, k)] for k in chain_keys(red.plan, exp)]
             for exp in red.plan.exposures}
            for i, red in enumerate(reductions)]


def _jobs(chains: list[dict[int, list[Any]]], reductions: list[Any],
          done: list[dict[tuple[int, str], Any]], only: set[Chain] | None) -> dict[Chain, Any]:
    """The delayed chains to run (those of ``only``, if given); summaries of chains resumed
    from their checkpoints go straight into ``done``."""
    jobs = {}
    for i, (red, per_exp) in enumerate(zip(reductions, chains)):
        for exp, items in per_exp.items():
            for key, item in zip(chain_keys(red.plan, exp), items):
                if only is not None and (i, exp, key) not in only:
                    continue
                if isinstance(item, dict):
                    done[i][(exp, key)] = item
                else:
                    jobs[(i, exp, key)] = item
    return jobs


def _flag(lost: list[tuple[Chain, Any]], done: list[dict[tuple[int, str], Any]]) -> None:
    for (i, exp, key), exc in lost:
        done[i][(exp, key)] = lost_summary(exp, key, exc)


def _run(client: Any, jobs: dict[Chain, Any], done: list[dict[tuple[int, str], Any]],
         errors: dict[int, BaseException], reductions: list[Any], attempt: str
         ) -> tuple[list[tuple[Chain, Any]], list[Chain]]:
    """Compute ``jobs`` (task names marked ``attempt``), wait for every one, put results in
    ``done`` and other exceptions in ``errors``; returns the chains lost by their own task
    (with the ``KilledWorker``) and those lost only with their CCD partner's."""
    if not jobs:
        return [], []
    from distributed import wait
    from distributed.scheduler import KilledWorker

    from remedy_dask.workflow.progress import wait_with_progress

    futures = dict(zip(jobs, client.compute(list(jobs.values()))))
    wait_with_progress(list(futures.values()))  # stops at the first failed task
    wait(list(futures.values()))
    lost, waiting = [], []
    finished = [c for c, future in futures.items() if future.status == "finished"]
    # one gather: a result() per future is a round trip each (~2.5 ms, 2.3 s for 936 chains)
    for (i, exp, key), summary in zip(finished, client.gather([futures[c] for c in finished])):
        done[i][(exp, key)] = summary
    for (i, exp, key), future in futures.items():
        if future.status == "finished":
            continue
        exc = future.exception()
        if not isinstance(exc, KilledWorker):
            errors.setdefault(i, exc.with_traceback(future.traceback()))
        elif attempt == ALONE or chain_task_of(exc.task, exp, key,
                                               chain_tag(reductions[i].plan, attempt)):
            lost.append(((i, exp, key), exc))
        else:
            waiting.append((i, exp, key))
    return lost, waiting
