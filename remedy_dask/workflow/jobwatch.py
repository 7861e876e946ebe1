"""Watch the batch jobs of a dask-jobqueue cluster until its workers connect: fail at once (one
line naming the job, the reason and the setting to change) when a job cannot start, log the
queue state every minute while it waits for ordinary reasons, and give up after a timeout.
"""

from __future__ import annotations

import logging
import re
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from remedy_dask.errors import RemedyError

log = logging.getLogger(__name__)


class ClusterError(RemedyError):
    """The batch jobs of the cluster cannot start (or did not within the timeout)."""


@dataclass(frozen=True)
class JobState:
    """One batch job as the scheduler reports it; ``verdict`` is running | waiting | fatal | ended."""

    job_id: str
    state: str
    reason: str
    verdict: str
    advice: str = ""

    def line(self) -> str:
        why = f" ({self.reason})" if self.reason and self.reason != "None" else ""
        return f"job {self.job_id} {self.state}{why}"


# SLURM pending reasons that will not resolve by waiting, and the setting to change
_SLURM_FATAL: list[tuple[str, str]] = [
    (r"PartitionConfig", "the request does not fit the partition's nodes: lower cores/processes "
                         "(or memory), or choose another queue"),
    (r"PartitionNodeLimit", "more nodes than the partition allows: fix -N in job_extra_directives "
                            "or choose another queue"),
    (r"PartitionTimeLimit", "walltime exceeds the partition's limit: shorten walltime"),
    (r"ReqNodeNotAvail", "the requested nodes are down, drained or reserved: change queue, "
                         "reservation or the node constraints in job_extra_directives"),
    (r"(QOS|Assoc)Max\w*(WallDuration|PerJob)\w*",
     "exceeds a per-job limit of your QOS/account: lower walltime, cores or nodes"),
    (r"InvalidAccount|AccountNotAllowed", "the account is not valid for this queue: set account"),
    (r"InvalidQOS|QOSNotAllowed", "the QOS is not valid: change --qos in job_extra_directives"),
    (r"BadConstraints", "unsatisfiable constraints: change job_extra_directives"),
    (r"DependencyNeverSatisfied", "its dependency can never be satisfied: change "
                                  "job_extra_directives"),
    (r"JobHeld(Admin|User)|launch failed requeued held",
     "the job is held: release it (scontrol release) or ask the site"),
]
_SLURM_RUNNING = {"RUNNING", "CONFIGURING", "COMPLETING"}
_SLURM_WAITING = {"PENDING", "REQUEUED", "SUSPENDED", "RESIZING", "REQUEUE_HOLD", "REQUEUE_FED"}


def classify_slurm(job_id: str, line: str | None) -> JobState:
    """Classify one ``squeue -j ID -h -o "%T %r"`` line (``None``: the job is gone)."""
    if not line or not line.strip():
        return JobState(job_id, "GONE", "", "ended", "it left the queue")
    state, _, reason = line.strip().partition(" ")
    reason = reason.strip()
    if state in _SLURM_RUNNING:
        return JobState(job_id, state, reason, "running")
    if state in _SLURM_WAITING:
        for pattern, advice in _SLURM_FATAL:
            if re.match(pattern, reason):
                return JobState(job_id, state, reason, "fatal", advice)
        return JobState(job_id, state, reason, "waiting")
    return JobState(job_id, state, reason, "ended",
                    "see its output (log_directory, or slurm-ID.out in the working directory)")


def classify_pbs(job_id: str, text: str | None) -> JobState:
    """Classify the output of ``qstat -f ID`` (``None``: the job is gone)."""
    if not text or "job_state" not in text:
        return JobState(job_id, "GONE", "", "ended", "it left the queue")
    state = re.search(r"job_state\s*=\s*(\S+)", text).group(1)  # type: ignore[union-attr]
    m = re.search(r"comment\s*=\s*(.*)", text)
    comment = m.group(1).strip() if m else ""
    if state in ("R", "E", "B"):
        return JobState(job_id, state, comment, "running")
    if state in ("Q", "W", "T", "S", "H"):
        if re.search(r"never run|exceeds|not allowed|Job held", comment, re.IGNORECASE) or state == "H":
            return JobState(job_id, state, comment, "fatal",
                            "the request exceeds what the queue offers or the job is held: "
                            "change queue, cores, memory or walltime")
        return JobState(job_id, state, comment, "waiting")
    return JobState(job_id, state, comment, "ended", "see its output file")


def query(kind: str, job_id: str, run: Callable[..., subprocess.CompletedProcess] = subprocess.run
          ) -> JobState:
    """Ask SLURM (``squeue``) or PBS (``qstat``) about one job."""
    cmd = (["squeue", "-j", job_id, "-h", "-o", "%T %r"] if kind == "slurm"
           else ["qstat", "-f", job_id])
    try:
        out = run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return JobState(job_id, "UNKNOWN", f"{cmd[0]} failed: {exc}", "waiting")
    text = out.stdout if out.returncode == 0 else None
    return classify_slurm(job_id, text) if kind == "slurm" else classify_pbs(job_id, text)


def rejection_message(exc: BaseException, submit: str) -> str:
    """One line from a failed ``sbatch``/``qsub`` call (dask-jobqueue's RuntimeError)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith((f"{submit}:", "qsub", "allocation failure"))]
    text = re.sub(rf"^{submit}: error: ", "", (errors or lines or [repr(exc)])[-1])
    low = text.lower()
    for words, setting in (("partition", "queue"), ("account", "account"),
                           ("time limit", "walltime"), ("qos", "job_extra_directives (--qos)"),
                           ("node configuration", "cores/processes/memory or queue"),
                           ("memory", "memory or job_directives_skip"),
                           ("reservation", "reservation")):
        if words in low:
            return f"{submit} rejected the job: {text}; change {setting} in the cluster settings"
    return f"{submit} rejected the job: {text}; check the job script (remedy-dask config show)"


def wait_for_workers(
    job_ids: Callable[[], Iterable[str]], n_connected: Callable[[], int], kind: str,
    timeout: float | None = None, poll: float = 5.0, report_every: float = 60.0,
    run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
    clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Block until a worker connects; raise ClusterError when a job cannot start, when every job
    ended without a worker connecting, or after ``timeout`` seconds."""
    t0 = clock()
    last_report = t0 - report_every  # the first state is logged at once
    while True:
        if n_connected() > 0:
            return
        states = [query(kind, j, run) for j in job_ids()]
        for s in states:
            if s.verdict == "fatal":
                raise ClusterError(f"{s.line()} cannot start: {s.advice}")
        if states and all(s.verdict == "ended" for s in states) and n_connected() == 0:
            s = states[0]
            raise ClusterError(f"{s.line()} ended before its workers connected: {s.advice}")
        now = clock()
        if timeout is not None and now - t0 >= timeout:
            summary = ", ".join(s.line() for s in states) or "no job submitted"
            raise ClusterError(f"no worker connected within --worker-timeout {timeout:g} s "
                               f"({summary}); raise --worker-timeout or pick a less busy queue")
        if now - last_report >= report_every:
            last_report = now
            log.info("waiting %.0f s for workers: %s", now - t0,
                     ", ".join(s.line() for s in states) or "no job submitted yet")
        sleep(poll)
