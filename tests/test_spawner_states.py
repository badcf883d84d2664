"""AIFactorySpawner's view of job states, fed with faked squeue answers.

In addition to the end-to-end tests on the real cluster (test_spawn.py): these cover the
answers that are hard to provoke on demand (timeouts, odd errors).
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from batchspawner import JobStatus
from conftest import SITE_FILE
from tornado import web

from aifactory.hub.spawner import AIFactorySpawner
from aifactory.slurm import queries as slurm


@pytest.fixture
def spawner():
    user = SimpleNamespace(name="student1", url="/user/student1/", escaped_name="student1", id=1)
    spawner = AIFactorySpawner(user=user, site_file=str(SITE_FILE), max_queue_wait=60)
    spawner.job_id = "42"
    spawner.cancelled = []

    async def cancel():
        spawner.cancelled.append(spawner.job_id)

    spawner.cancel_batch_job = cancel
    return spawner


def answering(monkeypatch, answer):
    calls = []

    async def fake_run(argv, timeout=None, input=None):
        calls.append(argv)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(slurm, "run", fake_run)
    return calls


def status(spawner):
    return asyncio.run(spawner.query_job_status())


def test_query_asks_the_shared_poller(spawner, monkeypatch):
    calls = answering(monkeypatch, "42|RUNNING|None|2026-11-26T23:26:54|vm\n")
    assert status(spawner) == JobStatus.RUNNING
    assert calls == [["squeue", "-h", "-j", "42", "-o", "%i|%T|%r|%S|%B"]]
    assert spawner.state_gethost() == "vm"


def test_sessions_share_one_squeue(monkeypatch):
    calls = answering(monkeypatch, "42|RUNNING|None|N/A|vm\n43|PENDING|Resources|N/A|n/a\n")

    async def both():
        spawners = []
        for job_id, name in (("42", "student1"), ("43", "student2")):
            user = SimpleNamespace(name=name, url=f"/user/{name}/", escaped_name=name, id=1)
            s = AIFactorySpawner(user=user, site_file=str(SITE_FILE))
            s.job_id = job_id
            spawners.append(s)
        return await asyncio.gather(*(s.query_job_status() for s in spawners))

    assert asyncio.run(both()) == [JobStatus.RUNNING, JobStatus.PENDING]
    assert len(calls) == 1 and calls[0][3] == "42,43"


@pytest.mark.parametrize(
    "error",
    [
        slurm.SlurmUnavailable("slurm_load_jobs error: Socket timed out on send/recv operation"),
        slurm.SlurmUnavailable("squeue did not answer within 15 s"),
        slurm.SlurmCommandError("squeue: error: Zero Bytes were transmitted or received"),
    ],
)
def test_controller_trouble_is_unknown(spawner, monkeypatch, error):
    answering(monkeypatch, error)
    assert status(spawner) == JobStatus.UNKNOWN
    assert asyncio.run(spawner.poll()) is None  # still running as far as the hub knows
    assert spawner.job_id == "42"


def test_gone_jobs_are_stopped(spawner, monkeypatch):
    answering(monkeypatch, slurm.SlurmCommandError("slurm_load_jobs error: Invalid job id specified"))
    assert status(spawner) == JobStatus.NOTFOUND
    answering(monkeypatch, "")
    assert asyncio.run(spawner.poll()) == 1
    assert spawner.job_id == ""


def test_pending_past_the_queue_wait_is_cancelled_with_the_reason(spawner, monkeypatch):
    answering(monkeypatch, "42|PENDING|QOSMaxGRESPerUser|N/A|n/a\n")
    assert status(spawner) == JobStatus.PENDING
    spawner._pending_since -= 61
    with pytest.raises(web.HTTPError) as error:
        status(spawner)
    assert spawner.cancelled == ["42"]
    message = error.value.log_message
    assert "QOSMaxGRESPerUser" in message and "waited 1 min" in message and "GPUs" in message


def test_progress_explains_the_wait(spawner, monkeypatch):
    answering(monkeypatch, "42|PENDING|Priority|2099-01-01T10:00:00|n/a\n")
    status(spawner)

    async def first_event():
        async for event in spawner.progress():
            return event

    message = asyncio.run(first_event())["message"]
    assert "job 42" in message and "Priority" in message and "expected start 10:00" in message


def test_start_timeout_leaves_room_for_the_queue_wait(spawner):
    assert spawner.start_timeout >= spawner.max_queue_wait + spawner.startup_timeout
