"""One Slurm state poller for every session of the hub.

Stock batchspawner runs one ``squeue`` per session per poll (and two a second for each session
that is starting), so the scheduler's load grows with every open session. Here the hub runs one
``squeue -j <all watched jobs>`` per interval, parses it once and answers every spawner's
``query_job_status`` from that: 200 sessions cost one ``squeue`` per interval.

- The interval is short (``busy_interval``) while any watched job has not been seen running,
  long (``idle_interval``) once all run.
- A spawner that asks about a job no poll has seen yet waits for the next poll: a fresh job is
  never reported "gone" from a result older than its submission.
- Controller trouble (timeouts, connection errors) makes every state UNKNOWN - never "stopped" -
  and the poller backs off (doubling up to ``max_backoff``), for everybody at once.
- A malformed answer (lines that do not parse) makes the jobs it does not list UNKNOWN for that
  poll rather than gone; the well-formed lines still count. One bad answer stops nobody.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aifactory.slurm import queries as slurm

log = logging.getLogger("aifactory.slurm.poller")
POLL_FORMAT = "%i|%T|%r|%S|%B"  # job id, then slurm.JOB_QUERY_FORMAT


@dataclass(frozen=True)
class PollResult:
    """What the last poll said of one job: ``line`` in JOB_QUERY_FORMAT, None when Slurm no longer
    lists it; ``error`` set when the state is unknown (controller trouble, malformed answer)."""

    line: str | None
    error: str = ""
    generation: int = 0  # the number of the poll, counted when it started


def parse_poll(text: str) -> tuple[dict[str, str], int]:
    """``squeue -h -o POLL_FORMAT`` -> ({job id: state line}, number of malformed lines)."""
    lines: dict[str, str] = {}
    malformed = 0
    for raw in text.splitlines():
        if not raw.strip():
            continue
        job_id, sep, rest = raw.strip().partition("|")
        if not sep or not job_id.isdigit() or rest.count("|") != 3 or slurm.parse_job_state(rest) is None:
            malformed += 1
            continue
        lines[job_id] = rest
    return lines, malformed


class JobPoller:
    def __init__(self, *, busy_interval: float = 0.5, idle_interval: float = 10.0, timeout: float = 15.0,
                 max_backoff: float = 60.0,
                 runner: Callable[..., Awaitable[str]] | None = None):
        self.busy_interval = busy_interval
        self.idle_interval = idle_interval
        self.timeout = timeout
        self.max_backoff = max_backoff
        self.runner = runner  # None: slurm.run, looked up at each call
        self.results: dict[str, PollResult] = {}
        self.watched: dict[str, int] = {}  # job id -> polls started when it was first watched
        self.generation = 0  # polls started
        self.calls = 0  # squeue invocations (benchmarks count them)
        self.failures = 0  # consecutive failed polls
        self._polled = asyncio.Condition()
        self._wake = asyncio.Event()
        self._poked = False
        self._records_wanted: dict[str, list[asyncio.Future]] = {}
        self._records_task: asyncio.Task | None = None
        self.sacct_calls = 0  # accounting look-ups (benchmarks count them)
        self._task: asyncio.Task | None = None

    # ------------------------------------------------------------ what spawners call

    def watch(self, job_id: str) -> None:
        if job_id not in self.watched:
            self.watched[job_id] = self.generation
            self._wake.set()  # a new job: poll soon, not at the end of a long idle interval
        self._ensure_running()

    def poke(self) -> None:
        """Poll now: something happened (a server called back) that the next poll should see."""
        if self.watched:
            self._poked = True
            self._wake.set()

    def forget(self, job_id: str) -> None:
        self.watched.pop(job_id, None)
        self.results.pop(job_id, None)

    async def state(self, job_id: str, fresh: bool = False) -> PollResult:
        """The job's state from a poll that started after it was watched (or after now: ``fresh``).

        A poll under way when the job was watched (or when a fresh answer was asked for, e.g.
        just after ``scancel``) does not count: it asked Slurm before."""
        self.watch(job_id)
        needed = (self.generation if fresh else self.watched[job_id]) + 1
        if fresh:
            self._wake.set()
        def answered() -> bool:
            result = self.results.get(job_id)
            return result is not None and result.generation >= needed

        try:
            async with self._polled:
                await asyncio.wait_for(self._polled.wait_for(answered), self.timeout + self.max_backoff + 5)
        except TimeoutError:
            return PollResult(None, "no Slurm poll finished in time", self.generation)
        return self.results.get(job_id) or PollResult(None, generation=self.generation)

    async def record(self, job_id: str, settled: bool = True, attempts: int = 10) -> slurm.JobRecord | None:
        """Accounting's record of a job that left the queue: the spawners that ask within a moment
        share one ``sacct``. ``settled``: wait (up to ``attempts`` looks, a second apart) until it
        records the end: accounting lags the queue by a moment. None when it does not answer."""
        record = None
        for _ in range(attempts):
            future = asyncio.get_running_loop().create_future()
            self._records_wanted.setdefault(job_id, []).append(future)
            if self._records_task is None or self._records_task.done():
                self._records_task = asyncio.ensure_future(self._look_up_records())
            try:
                record = await future
            except (slurm.SlurmUnavailable, slurm.SlurmCommandError):
                record = None
            if not settled or (record and record.state not in ("RUNNING", "PENDING", "COMPLETING")):
                return record
            await asyncio.sleep(1)
        return record

    async def _look_up_records(self) -> None:
        await asyncio.sleep(0.2)  # let the others that ask now join this sacct
        wanted, self._records_wanted = self._records_wanted, {}
        try:
            records = await slurm.job_records(sorted(wanted, key=int), timeout=self.timeout)
            self.sacct_calls += 1
        except Exception as e:  # every waiter gets the answer, good or bad
            for futures in wanted.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(e)
            return
        for job_id, futures in wanted.items():
            for future in futures:
                if not future.done():
                    future.set_result(records.get(job_id))

    # ------------------------------------------------------------ the loop

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._loop())

    def _interval(self) -> float:
        if self.failures:
            return min(self.busy_interval * 2 ** self.failures, self.max_backoff)
        starting = any(r is None or r.error or r.line is None or not r.line.startswith(("RUNNING", "COMPLETING"))
                       for r in (self.results.get(j) for j in self.watched))
        return self.busy_interval if starting else self.idle_interval

    async def _loop(self) -> None:
        while self.watched:
            self._wake.clear()
            await self.poll_once()
            try:
                await asyncio.wait_for(self._wake.wait(), self._interval())
                if not self._poked:
                    # several spawners ask at once: let them all join this poll
                    await asyncio.sleep(min(0.2, self.busy_interval))
            except TimeoutError:
                pass
            self._poked = False

    async def poll_once(self) -> None:
        jobs = sorted(self.watched, key=int)
        if not jobs:
            return
        self.calls += 1
        self.generation += 1
        generation = self.generation
        started = time.monotonic()
        try:
            text = await (self.runner or slurm.run)(["squeue", "-h", "-j", ",".join(jobs), "-o", POLL_FORMAT],
                                     timeout=self.timeout)
            error = ""
        except slurm.SlurmCommandError as e:
            # all of the listed jobs are gone: squeue says so instead of printing nothing
            text, error = ("", "") if slurm.INVALID_JOB_RE.search(str(e)) else ("", f"squeue failed: {e}")
        except slurm.SlurmUnavailable as e:
            text, error = "", str(e)
        except Exception as e:  # whatever went wrong, the waiting spawners get an answer
            log.exception("Slurm poll broke")
            text, error = "", f"poll failed: {e}"
        results: dict[str, PollResult] = {}
        if error:
            self.failures += 1
            log.warning("Slurm poll failed (%d in a row, next in %.0f s): %s", self.failures,
                        min(self.busy_interval * 2 ** self.failures, self.max_backoff), error)
            for job in jobs:
                results[job] = PollResult(None, error, generation)
        else:
            if self.failures:
                log.info("Slurm answers again after %d failed poll(s)", self.failures)
            self.failures = 0
            lines, malformed = parse_poll(text)
            if malformed:
                log.warning("squeue gave %d malformed line(s); unlisted jobs are unknown this time", malformed)
            for job in jobs:
                if job in lines:
                    results[job] = PollResult(lines[job], "", generation)
                elif malformed:
                    results[job] = PollResult(None, "squeue's answer was malformed", generation)
                else:
                    results[job] = PollResult(None, "", generation)
        log.debug("polled %d job(s) in %.2f s", len(jobs), time.monotonic() - started)
        async with self._polled:  # waiters see a poll's answers all at once
            self.results.update({job: r for job, r in results.items() if job in self.watched})
            self._polled.notify_all()


_pollers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, JobPoller] = weakref.WeakKeyDictionary()


def shared_poller(**settings) -> JobPoller:
    """The hub's poller (one per event loop); the first caller's settings apply."""
    loop = asyncio.get_running_loop()
    poller = _pollers.get(loop)
    if poller is None:
        poller = _pollers[loop] = JobPoller(**settings)
    return poller
