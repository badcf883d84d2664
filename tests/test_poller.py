"""The shared Slurm poller, fed with squeue output captured from Slurm 22.05 (and faults)."""

from __future__ import annotations

import asyncio
import subprocess
import time

import pytest

from aifactory.slurm import queries as slurm
from aifactory.slurm.poller import JobPoller, parse_poll

# `squeue -h -j 186,187,188 -o '%i|%T|%r|%S|%B'` on the demo node
SQUEUE = ("186|RUNNING|None|2026-11-28T00:05:12|vm\n"
          "187|PENDING|Resources|2026-11-28T01:05:12|n/a\n"
          "188|PENDING|QOSMaxGRESPerUser|N/A|n/a\n")


class FakeSlurm:
    """Answers squeue from a script of answers (text or exceptions), recording each call."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls: list[list[str]] = []

    async def __call__(self, argv, timeout=None, input=None):
        self.calls.append(argv)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def run(coro):
    return asyncio.run(coro)


def test_parse_poll_keeps_good_lines_and_counts_bad_ones():
    lines, malformed = parse_poll(SQUEUE + "garbage\n189|RUNNING|None\n\n")
    assert set(lines) == {"186", "187", "188"}
    assert lines["187"] == "PENDING|Resources|2026-11-28T01:05:12|n/a"
    assert malformed == 2


def test_one_squeue_answers_every_session():
    fake = FakeSlurm(SQUEUE)

    async def scenario():
        poller = JobPoller(busy_interval=0.05, runner=fake)
        return await asyncio.gather(*(poller.state(j) for j in ("186", "187", "188", "190")))

    results = run(scenario())
    assert [r.line.split("|")[0] if r.line else None for r in results] == ["RUNNING", "PENDING", "PENDING", None]
    assert all(not r.error for r in results)
    assert len(fake.calls) == 1
    assert fake.calls[0][:4] == ["squeue", "-h", "-j", "186,187,188,190"]


def test_two_hundred_sessions_cost_one_squeue_per_interval():
    jobs = [str(1000 + i) for i in range(200)]
    fake = FakeSlurm("".join(f"{j}|RUNNING|None|N/A|vm\n" for j in jobs))

    async def scenario():
        poller = JobPoller(busy_interval=0.05, idle_interval=0.2, runner=fake)
        await asyncio.gather(*(poller.state(j) for j in jobs))
        for _ in range(3):  # every session asks again, as JupyterHub's poll does
            await asyncio.gather(*(poller.state(j) for j in jobs))
            await asyncio.sleep(0.25)
        return poller

    started = time.monotonic()
    poller = run(scenario())
    elapsed = time.monotonic() - started
    # all running: one call per idle interval, not one per session
    assert poller.calls == len(fake.calls) <= elapsed / 0.2 + 2
    assert all(len(call[3].split(",")) == 200 for call in fake.calls)


def test_controller_trouble_is_unknown_for_everybody_and_backs_off():
    fake = FakeSlurm(slurm.SlurmUnavailable("slurm_load_jobs error: Unable to contact slurm controller"),
                     slurm.SlurmUnavailable("squeue did not answer within 15 s"), SQUEUE)

    async def scenario():
        poller = JobPoller(busy_interval=0.05, runner=fake)
        first = await asyncio.gather(poller.state("186"), poller.state("187"))
        intervals = [poller._interval()]
        second = await poller.state("186", fresh=True)
        intervals.append(poller._interval())
        third = await poller.state("186", fresh=True)
        return first, second, third, intervals, poller

    first, second, third, intervals, poller = run(scenario())
    assert all(r.error and r.line is None for r in first)
    assert "Unable to contact" in first[0].error
    assert second.error
    assert intervals[1] > intervals[0] > 0.05  # backing off, doubling
    assert third.line.startswith("RUNNING") and not third.error and poller.failures == 0


def test_a_malformed_answer_makes_unlisted_jobs_unknown_not_gone():
    fake = FakeSlurm("186|RUNNING|None|N/A|vm\n\x00\x01garbage from a broken squeue\n")

    async def scenario():
        poller = JobPoller(busy_interval=0.05, runner=fake)
        return await asyncio.gather(poller.state("186"), poller.state("187"))

    listed, unlisted = run(scenario())
    assert listed.line.startswith("RUNNING") and not listed.error
    assert unlisted.line is None and "malformed" in unlisted.error


def test_a_job_that_vanishes_between_polls_is_gone_and_the_others_are_not():
    fake = FakeSlurm(SQUEUE, SQUEUE.replace("187|PENDING|Resources|2026-11-28T01:05:12|n/a\n", ""))

    async def scenario():
        poller = JobPoller(busy_interval=0.05, runner=fake)
        before = await poller.state("187")
        after = await poller.state("187", fresh=True)
        other = await poller.state("186")
        return before, after, other

    before, after, other = run(scenario())
    assert before.line.startswith("PENDING")
    assert after.line is None and not after.error  # gone: the spawner reports it stopped
    assert other.line.startswith("RUNNING")


def test_a_new_job_is_not_judged_by_a_poll_from_before_it_was_submitted():
    fake = FakeSlurm("186|RUNNING|None|N/A|vm\n", "186|RUNNING|None|N/A|vm\n200|PENDING|None|N/A|n/a\n")

    async def scenario():
        poller = JobPoller(busy_interval=0.05, idle_interval=30, runner=fake)
        await poller.state("186")  # one poll done, all running: the poller goes idle
        started = time.monotonic()
        new = await poller.state("200")  # watched now: wakes the poller, waits for a fresh poll
        return new, time.monotonic() - started

    new, waited = run(scenario())
    assert new.line.startswith("PENDING")
    assert waited < 5  # not the 30 s idle interval


def test_a_job_watched_during_a_poll_is_not_judged_by_that_poll():
    """The poll under way when a job is submitted did not ask about it: it is not "gone"."""
    asked = []
    first_poll_started = None
    release = None

    async def slow_slurm(argv, timeout=None, input=None):
        asked.append(argv[3])
        if len(asked) == 1:
            first_poll_started.set()
            await release.wait()  # the first poll is still under way...
            return "186|RUNNING|None|N/A|vm\n"
        return "186|RUNNING|None|N/A|vm\n300|PENDING|Priority|N/A|n/a\n"

    async def scenario():
        nonlocal first_poll_started, release
        first_poll_started, release = asyncio.Event(), asyncio.Event()
        poller = JobPoller(busy_interval=0.05, runner=slow_slurm)
        old = asyncio.ensure_future(poller.state("186"))
        await first_poll_started.wait()
        new = asyncio.ensure_future(poller.state("300"))  # ...when job 300 is submitted
        await asyncio.sleep(0.01)
        release.set()
        return await old, await new

    old, new = run(scenario())
    assert old.line.startswith("RUNNING")
    assert new.line is not None and new.line.startswith("PENDING"), new
    assert asked == ["186", "186,300"]


def test_all_jobs_gone_is_an_answer_not_an_error():
    fake = FakeSlurm(slurm.SlurmCommandError("slurm_load_jobs error: Invalid job id specified"))
    result = run(JobPoller(busy_interval=0.05, runner=fake).state("99999"))
    assert result.line is None and not result.error


@pytest.mark.slurm
def test_live_squeue_through_the_poller(slurm_cluster):
    job = subprocess.run(["sudo", "-u", "t-student1", "sbatch", "--parsable", "--qos=interactive", "--mem=128M",
                          "--time=2", "--chdir=/tmp", "--output=/dev/null", "--job-name=aifactory-test-poller",
                          "--wrap", "sleep 60"], capture_output=True, text=True, check=True).stdout.strip()
    try:
        async def scenario():
            poller = JobPoller(busy_interval=0.2)
            deadline = time.monotonic() + 20
            result = await poller.state(job)
            while result.line and not result.line.startswith("RUNNING") and time.monotonic() < deadline:
                result = await poller.state(job, fresh=True)
            subprocess.run(["scancel", job], check=True)
            gone = await poller.state(job, fresh=True)
            while gone.line and time.monotonic() < deadline + 20:
                gone = await poller.state(job, fresh=True)
            return result, gone

        running, gone = run(scenario())
        assert running.line.startswith("RUNNING") and running.line.endswith("|" + slurm_host())
        assert gone.line is None and not gone.error
    finally:
        subprocess.run(["scancel", job])


def slurm_host() -> str:
    return subprocess.run(["hostname", "-s"], capture_output=True, text=True).stdout.strip()


# `sacct -X -n -P -j 1253,1255,1256 -o JobID,State,ExitCode,Elapsed` on the demo cluster
SACCT = "1253|NODE_FAIL|0:0|00:00:03\n1255|TIMEOUT|0:0|00:01:07\n1256|RUNNING|0:0|00:00:09\n"


def test_jobs_that_left_the_queue_share_one_sacct(monkeypatch):
    fake = FakeSlurm(SACCT)
    monkeypatch.setattr(slurm, "run", fake)

    async def scenario():
        poller = JobPoller(busy_interval=0.05)
        return await asyncio.gather(poller.record("1253"), poller.record("1255"), poller.record("9999", attempts=1),
                                    poller.record("1256", settled=False))

    records = run(scenario())
    assert [r.state if r else None for r in records] == ["NODE_FAIL", "TIMEOUT", None, "RUNNING"]
    assert len(fake.calls) == 1
    assert fake.calls[0][:6] == ["sacct", "-X", "-n", "-P", "-j", "1253,1255,1256,9999"]


def test_a_record_waits_until_accounting_has_the_end(monkeypatch):
    fake = FakeSlurm("1256|RUNNING|0:0|00:00:09\n", "1256|COMPLETED|0:0|00:00:10\n")
    monkeypatch.setattr(slurm, "run", fake)
    record = run(JobPoller().record("1256"))
    assert record.state == "COMPLETED" and len(fake.calls) == 2


def test_accounting_trouble_is_no_record_not_a_crash(monkeypatch):
    monkeypatch.setattr(slurm, "run", FakeSlurm(slurm.SlurmUnavailable("slurmdbd down")))
    assert run(JobPoller().record("1256", attempts=2)) is None
