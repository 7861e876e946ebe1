"""Fail-fast classification of batch jobs, from literal squeue / qstat / sbatch outputs."""

from __future__ import annotations

import logging
import subprocess

import pytest

from remedy_dask.workflow.jobwatch import (
    ClusterError,
    classify_pbs,
    classify_slurm,
    rejection_message,
    wait_for_workers,
)


@pytest.mark.parametrize("line, verdict, advice", [
    ("PENDING PartitionConfig", "fatal", "cores/processes"),
    ("PENDING PartitionTimeLimit", "fatal", "walltime"),
    ("PENDING PartitionNodeLimit", "fatal", "-N"),
    ("PENDING ReqNodeNotAvail, UnavailableNodes:c401-[001-002]", "fatal", "reservation"),
    ("PENDING QOSMaxWallDurationPerJobLimit", "fatal", "walltime"),
    ("PENDING QOSMaxCpuPerJobLimit", "fatal", "cores"),
    ("PENDING AssocMaxNodesPerJobLimit", "fatal", "nodes"),
    ("PENDING InvalidAccount", "fatal", "account"),
    ("PENDING launch failed requeued held", "fatal", "held"),
    ("PENDING JobHeldAdmin", "fatal", "held"),
    ("PENDING Priority", "waiting", ""),
    ("PENDING Resources", "waiting", ""),
    ("PENDING QOSMaxJobsPerUserLimit", "waiting", ""),  # clears when your other jobs end
    ("PENDING AssocGrpCPUMinutesLimit", "waiting", ""),
    ("PENDING BeginTime", "waiting", ""),
    ("CONFIGURING None", "running", ""),
    ("RUNNING None", "running", ""),
    ("FAILED NonZeroExitCode", "ended", "output"),
    ("CANCELLED None", "ended", "output"),
    ("", "ended", "left the queue"),
])
def test_squeue_reasons(line, verdict, advice):
    state = classify_slurm("4242", line + "\n")
    assert state.verdict == verdict
    assert advice in state.advice


def test_state_line():
    assert classify_slurm("9", "PENDING ReqNodeNotAvail, UnavailableNodes:c1").line() == \
        "job 9 PENDING (ReqNodeNotAvail, UnavailableNodes:c1)"
    assert classify_slurm("9", "RUNNING None").line() == "job 9 RUNNING"


QSTAT_QUEUED = """Job Id: 1234.pbs01
    Job_Name = remedy-dask
    job_state = Q
    queue = workq
    comment = Not Running: Insufficient amount of resource: ncpus
"""
QSTAT_NEVER = QSTAT_QUEUED.replace(
    "Not Running: Insufficient amount of resource: ncpus",
    "Can Never Run: Insufficient amount of queue resource: ncpus (R: 64 A: 32 T: 32)")


def test_qstat_states():
    assert classify_pbs("1234", QSTAT_QUEUED).verdict == "waiting"
    never = classify_pbs("1234", QSTAT_NEVER)
    assert never.verdict == "fatal" and "Can Never Run" in never.line()
    assert classify_pbs("1234", QSTAT_QUEUED.replace("job_state = Q", "job_state = R")).verdict \
        == "running"
    assert classify_pbs("1234", None).verdict == "ended"


def test_rejection_names_the_setting():
    exc = RuntimeError(
        "Command exited with non-zero exit code.\nExit code: 1\nCommand:\nsbatch /tmp/tmpx.sh\n"
        "stdout:\n\nstderr:\nsbatch: error: invalid partition specified: nosuch\n"
        "sbatch: error: Batch job submission failed: Invalid partition name specified\n\n")
    assert rejection_message(exc, "sbatch") == (
        "sbatch rejected the job: Batch job submission failed: Invalid partition name specified; "
        "change queue in the cluster settings")
    exc = RuntimeError("stderr:\nsbatch: error: Batch job submission failed: Requested node "
                       "configuration is not available\n")
    assert "change cores/processes/memory or queue" in rejection_message(exc, "sbatch")


class FakeQueue:
    """squeue answering from a script of lines; a clock that advances by each sleep."""

    def __init__(self, lines, connect_after=None):
        self.lines, self.calls, self.now, self.connect_after = list(lines), 0, 0.0, connect_after

    def run(self, cmd, **kw):
        assert cmd[:3] == ["squeue", "-j", "77"] and cmd[-2:] == ["-o", "%T %r"]
        line = self.lines[min(self.calls, len(self.lines) - 1)]
        self.calls += 1
        return subprocess.CompletedProcess(cmd, 0, stdout=line + "\n", stderr="")

    def connected(self):
        return int(self.connect_after is not None and self.now >= self.connect_after)

    def wait(self, timeout=None):
        wait_for_workers(lambda: ["77"], self.connected, "slurm", timeout=timeout, poll=5,
                         report_every=60, run=self.run, clock=lambda: self.now,
                         sleep=lambda s: setattr(self, "now", self.now + s))


def test_unstartable_job_fails_at_first_poll():
    q = FakeQueue(["PENDING PartitionConfig"])
    with pytest.raises(ClusterError, match=r"^job 77 PENDING \(PartitionConfig\) cannot start: "
                                           r"the request does not fit.*cores/processes"):
        q.wait()
    assert q.calls == 1


def test_ordinary_wait_is_logged_every_minute(caplog):
    q = FakeQueue(["PENDING Priority"] * 40 + ["RUNNING None"], connect_after=200)
    with caplog.at_level(logging.INFO, logger="remedy_dask.workflow.jobwatch"):
        q.wait()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["waiting 0 s for workers: job 77 PENDING (Priority)",
                     "waiting 60 s for workers: job 77 PENDING (Priority)",
                     "waiting 120 s for workers: job 77 PENDING (Priority)",
                     "waiting 180 s for workers: job 77 PENDING (Priority)"]


def test_worker_timeout_bounds_the_wait():
    q = FakeQueue(["PENDING Resources"])
    with pytest.raises(ClusterError, match=r"no worker connected within --worker-timeout 30 s "
                                           r"\(job 77 PENDING \(Resources\)\)"):
        q.wait(timeout=30)
    assert q.now == 30


def test_job_that_ends_before_connecting():
    q = FakeQueue(["RUNNING None", "FAILED NonZeroExitCode"])
    with pytest.raises(ClusterError, match=r"job 77 FAILED \(NonZeroExitCode\) ended before its "
                                           r"workers connected"):
        q.wait()
