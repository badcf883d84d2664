"""The reconcile's decisions (unit) and its squeue parsing, with real squeue output."""

from __future__ import annotations

import asyncio
import subprocess
import time

import pytest

from aifactory.services.reconcile import HubServer, Ledger
from aifactory.slurm import queries as slurm

TAG = "aifactory-hub:abc123def456"
# squeue -h -a -o "%i|%u|%T|%k" on the local cluster: a hub job, a job of another hub, a plain job
SQUEUE = (
    "1204|t-student1|RUNNING|aifactory-hub:abc123def456\n"
    "1205|t-student2|PENDING|aifactory-hub:0123456789ab\n"
    "1206|t-partner1|RUNNING|(null)\n"
    "1207|t-researcher1|PENDING|aifactory-hub:abc123def456\n"
)


def job(job_id: str, user: str = "t-student1", state: str = "RUNNING") -> slurm.TaggedJob:
    return slurm.TaggedJob(job_id=job_id, user=user, state=state)


def server(job_id: str, user: str = "t-student1", name: str = "", pending: str = "") -> HubServer:
    return HubServer(user=user, name=name, job_id=job_id, pending=pending, ready=not pending)


def test_only_this_hubs_jobs_are_listed():
    jobs = slurm.parse_tagged_jobs(SQUEUE, TAG)
    assert [(j.job_id, j.user, j.state) for j in jobs] == [
        ("1204", "t-student1", "RUNNING"), ("1207", "t-researcher1", "PENDING")]
    assert slurm.parse_tagged_jobs("garbage\n|||\n", TAG) == []


def test_an_unclaimed_job_is_an_orphan_only_on_the_second_look():
    ledger = Ledger()
    jobs = [job("1"), job("2", "t-student2")]
    first = ledger.decide(jobs, [server("1")])
    assert first.orphans == []
    second = ledger.decide(jobs, [server("1")])
    assert [j.job_id for j in second.orphans] == ["2"]


def test_a_job_claimed_in_between_is_not_an_orphan():
    ledger = Ledger()
    ledger.decide([job("1")], [])
    assert ledger.decide([job("1")], [server("1")]).orphans == []
    # and the claim has to be missing twice again
    assert ledger.decide([job("1")], []).orphans == []


def test_a_spawn_that_has_not_named_its_job_protects_that_users_jobs():
    ledger = Ledger()
    submitting = [server("", pending="spawn")]
    ledger.decide([job("1")], submitting)
    assert ledger.decide([job("1")], submitting).orphans == []
    # another user's unclaimed job is not protected by it
    ledger.decide([job("2", "t-student2")], submitting)
    assert [j.job_id for j in ledger.decide([job("2", "t-student2")], submitting).orphans] == ["2"]


def test_a_server_whose_job_is_gone_is_a_ghost_on_the_second_look():
    ledger = Ledger()
    servers = [server("7"), server("8", "t-student2", pending="stop")]
    assert ledger.decide([], servers).ghosts == []
    ghosts = ledger.decide([], servers).ghosts
    # a server already stopping is not a ghost
    assert [(s.user, s.job_id) for s in ghosts] == [("t-student1", "7")]
    assert ledger.decide([job("7")], servers).ghosts == []


@pytest.mark.slurm
def test_live_squeue_lists_a_tagged_job(slurm_cluster):
    out = subprocess.run(["sudo", "-u", "t-student1", "sbatch", "--parsable", f"--comment={TAG}", "--time=2",
                          "--mem=100M", "--chdir=/tmp", "--output=/dev/null", "--job-name=aifactory-test-tag",
                          "--wrap", "sleep 60"], capture_output=True, text=True, check=True).stdout.strip()
    try:
        deadline = time.monotonic() + 20
        while True:
            jobs = asyncio.run(slurm.tagged_jobs(TAG))
            if any(j.job_id == out for j in jobs):
                break
            assert time.monotonic() < deadline, f"job {out} not listed: {jobs}"
            time.sleep(0.5)
        assert all(j.job_id != out for j in asyncio.run(slurm.tagged_jobs("aifactory-hub:ffffffffffff")))
    finally:
        subprocess.run(["scancel", out], check=False)
