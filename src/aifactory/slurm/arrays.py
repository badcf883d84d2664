"""Batch jobs and job arrays: submit (sbatch), per-task state (squeue -r, sacct), cancel (scancel).

Runs the commands through ``queries.run`` (argument lists, timeouts). The parsers are pure
functions fed with real command output in the unit tests.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from datetime import datetime

from aifactory.slurm.queries import SlurmCommandError, SlurmUnavailable, _slurm_time, run

JOB_ID_RE = re.compile(r"^\d{1,12}$")
# squeue -r: one line per array task; %F array job id, %K task index ("N/A" for a plain job)
ARRAY_QUEUE_FORMAT = "%F|%K|%i|%T|%r|%S|%L|%N"
ARRAY_SACCT_FIELDS = "JobID,State,ExitCode,Elapsed,Start,End,NodeList"


@dataclass(frozen=True)
class QueuedTask:
    """One array task as squeue shows it (pending or running)."""

    array_job_id: str
    index: int
    state: str  # PENDING, RUNNING, COMPLETING, ...
    reason: str  # why it waits ("" when running)
    expected_start: datetime | None
    time_left: str  # D-HH:MM:SS or "" when unknown
    node: str


@dataclass(frozen=True)
class AccountedTask:
    """One array task as accounting (sacct) records it."""

    array_job_id: str
    index: int
    state: str  # COMPLETED, FAILED, CANCELLED, TIMEOUT, OUT_OF_MEMORY, RUNNING, PENDING
    exit_code: str
    elapsed: str
    start: datetime | None
    end: datetime | None
    node: str


def _none(value: str) -> str:
    return "" if value in ("None", "(null)", "N/A", "n/a", "INVALID", "Unknown", "None assigned") else value


def parse_array_queue(squeue_text: str) -> list[QueuedTask]:
    """``squeue -h -r -o ARRAY_QUEUE_FORMAT``: the tasks still pending or running."""
    tasks = []
    for line in squeue_text.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 8 or not JOB_ID_RE.match(parts[0]):
            continue
        array_id, index, _, state, reason, start, left, node = parts
        tasks.append(QueuedTask(array_id, int(index) if index.isdigit() else 0, state, _none(reason),
                                _slurm_time(start), _none(left), _none(node)))
    return tasks


SACCT_ID_RE = re.compile(r"^(?P<job>\d+)(?:_(?P<index>\d+|\[(?P<range>[^\]]*)\]))?$")


def _indexes(spec: str) -> list[int]:
    """Indexes of sacct's ``[0-2,5%4]`` (tasks not started yet are listed as one line)."""
    indexes = []
    for part in spec.split("%")[0].split(","):
        if "-" in part:
            low, high = part.split("-", 1)
            indexes += range(int(low), int(high) + 1)
        elif part.isdigit():
            indexes.append(int(part))
    return indexes


def parse_array_sacct(sacct_text: str) -> list[AccountedTask]:
    """``sacct -X -n -P -o ARRAY_SACCT_FIELDS -j ID``: one record per task (a range line is expanded)."""
    tasks = []
    for line in sacct_text.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 7:
            continue
        match = SACCT_ID_RE.match(parts[0])
        if not match:
            continue
        state = parts[1].split()[0] if parts[1] else ""  # "CANCELLED by 1009"
        indexes = _indexes(match["range"]) if match["range"] is not None else [int(match["index"] or 0)]
        for index in indexes:
            tasks.append(AccountedTask(match["job"], index, state, parts[2], parts[3], _slurm_time(parts[4]),
                                       _slurm_time(parts[5]), _none(parts[6])))
    return tasks


def parse_submitted(sbatch_text: str) -> str:
    """``sbatch --parsable`` prints ``ID`` or ``ID;cluster``."""
    job_id = sbatch_text.strip().split(";")[0]
    if not JOB_ID_RE.match(job_id):
        raise SlurmCommandError(f"sbatch did not print a job id: {sbatch_text.strip()[:200]!r}")
    return job_id


# sbatch could not reach the controller at all: nothing was submitted, trying again is safe
NOT_SUBMITTED_RE = re.compile(r"Unable to contact slurm controller|Connection refused")


async def submit_script(script: str, attempts: int = 4) -> str:
    """Submit a batch script (on stdin) as the calling user; returns the job id.

    A controller that is restarting refuses connections for a few seconds: retried.
    """
    for attempt in range(attempts):
        try:
            return parse_submitted(await run(["sbatch", "--parsable"], input=script))
        except SlurmUnavailable as e:
            if attempt == attempts - 1 or not NOT_SUBMITTED_RE.search(str(e)):
                raise
            await asyncio.sleep(2 + 3 * attempt)
    raise AssertionError("unreachable")


async def queued_tasks(username: str) -> list[QueuedTask]:
    """Every pending or running task of the user (one squeue call for all their runs)."""
    return parse_array_queue(await run(["squeue", "-h", "-r", "-u", username, "-o", ARRAY_QUEUE_FORMAT]))


async def accounted_tasks(job_ids: list[str]) -> list[AccountedTask]:
    """Accounting records of these (array) jobs; with -j, sacct looks back without a time limit."""
    ids = [j for j in job_ids if JOB_ID_RE.match(j)]
    if not ids:
        return []
    return parse_array_sacct(await run(["sacct", "-X", "-n", "-P", "-o", ARRAY_SACCT_FIELDS,
                                        "-j", ",".join(ids)]))


async def cancel(job_id: str) -> None:
    """scancel a job; for an array job id, every task of the array."""
    if not JOB_ID_RE.match(job_id):
        raise ValueError(f"not a job id: {job_id!r}")
    await run(["scancel", job_id])
