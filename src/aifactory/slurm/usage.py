"""Usage of the cluster from Slurm accounting: GPU-hours and CPU-hours per account, partition and week.

One ``sacct`` call per range, parsed once into ``JobUsage`` records. The rules:

- **In range only.** A range is ``[start, end)`` in the controller's local time. A job that
  runs across a boundary counts only the part inside the range (its start and end are clipped);
  a job still running counts up to the range's end or now, whichever is earlier.
- **GPU-hours** = seconds x GPUs / 3600. Whole GPUs come from ``gres/gpu`` of the job's
  allocation. A GPU slice (``gres/shard``) counts ``1/shards`` of a GPU, ``shards`` being the
  site file's ``gpu_types.<type>.shards`` of the GPU type of the node the job ran on; where that
  is unknown (a node outside the site file), the finest slicing of the site, so slices are
  never over-counted. **CPU-hours** = seconds x allocated CPUs / 3600.
- **Weeks** are ISO weeks (``2026-W48``); a job running across a week boundary is split.
- **Kinds**: ``workshop`` (in a ``ws-*`` reservation or by a walk-in ``wk-*`` user), ``session``
  (the spawner's ``jupyter`` / ``jupyter-<name>`` jobs), ``run`` (batch runs, job names starting
  ``aifactory-run``), ``other``.
"""

from __future__ import annotations

import re
import socket
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from aifactory.site import Site
from aifactory.slurm.queries import run

# the spawner's job names (hub/spawner.py): "jupyter" and "jupyter-<server name>"
SESSION_JOB_RE = re.compile(r"^jupyter(-.*)?$")
RUN_JOB_PREFIX = "aifactory-run"  # batch runs of notebooks
WORKSHOP_RESERVATION_PREFIX = "ws-"  # workshops/plan.py RESERVATION_PREFIX
WALKIN_USER_PREFIX = "wk-"  # workshops/plan.py WALKIN_PREFIX
KINDS = ("session", "run", "workshop", "other")

# JobName last: it is the only free-text field and may itself hold the separator
SACCT_FIELDS = ("JobID", "User", "Account", "Partition", "AllocTRES", "Start", "End", "Elapsed", "State",
                "Reservation", "NodeList", "JobName")
MAX_RANGE_DAYS = 3 * 366
DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
MONTH_RE = re.compile(r"^(\d{4})-(\d{2})$")


class UsageRangeError(ValueError):
    """A requested date range or month is not acceptable; the message says why."""


@dataclass(frozen=True)
class JobUsage:
    """One job's allocation, as accounting recorded it (not yet clipped to a range)."""

    job_id: str
    user: str
    account: str
    partition: str
    cpus: int
    gpus: int  # whole GPUs
    gpu_slices: int  # gres/shard
    start: datetime
    end: datetime | None  # None: still running
    elapsed_seconds: int
    state: str
    reservation: str
    nodes: str
    name: str

    @property
    def kind(self) -> str:
        if self.reservation.startswith(WORKSHOP_RESERVATION_PREFIX) or self.user.startswith(WALKIN_USER_PREFIX):
            return "workshop"
        if SESSION_JOB_RE.match(self.name):
            return "session"
        if self.name.startswith(RUN_JOB_PREFIX):
            return "run"
        return "other"


@dataclass(frozen=True)
class UsageRow:
    """A job's use inside one ISO week of the range."""

    job_id: str
    user: str
    account: str
    parent: str  # the top-level account of the site file's tree
    partition: str
    kind: str
    week: str
    seconds: int
    cpus: int
    gpus: float  # whole GPUs + slices as fractions of a GPU

    @property
    def cpu_hours(self) -> float:
        return self.seconds * self.cpus / 3600

    @property
    def gpu_hours(self) -> float:
        return self.seconds * self.gpus / 3600


# ---------------------------------------------------------------- parsing


def _elapsed_seconds(text: str) -> int:
    """``[D-]HH:MM:SS`` (or ``MM:SS``) as seconds."""
    days, _, clock = text.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    return int(days or 0) * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]


def _tres(text: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in text.split(",") if "=" in item)


def parse_sacct(text: str) -> list[JobUsage]:
    """``sacct -X -P -n -o <SACCT_FIELDS>``: jobs that ran (never-started ones are skipped)."""
    jobs = []
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.split("|", len(SACCT_FIELDS) - 1)
        if len(fields) != len(SACCT_FIELDS):
            continue
        job_id, user, account, partition, alloc, start, end, elapsed, state, reservation, nodes, name = fields
        if start in ("", "None", "Unknown") or not alloc:
            continue
        tres = _tres(alloc)
        jobs.append(JobUsage(
            job_id=job_id, user=user, account=account, partition=partition,
            cpus=int(tres.get("cpu", 0)), gpus=int(tres.get("gres/gpu", 0)),
            gpu_slices=int(tres.get("gres/shard", 0)),
            start=datetime.fromisoformat(start),
            end=None if end in ("", "None", "Unknown") else datetime.fromisoformat(end),
            elapsed_seconds=_elapsed_seconds(elapsed), state=state.split()[0] if state else "",
            reservation=reservation, nodes=nodes, name=name,
        ))
    return jobs


def sacct_argv(start: datetime, end: datetime) -> list[str]:
    return ["sacct", "-a", "-X", "-P", "-n", "--starttime", start.strftime("%Y-%m-%dT%H:%M:%S"),
            "--endtime", end.strftime("%Y-%m-%dT%H:%M:%S"), "-o", ",".join(SACCT_FIELDS)]


async def query_jobs(start: datetime, end: datetime) -> list[JobUsage]:
    """Every job that ran some time in ``[start, end)``, from accounting."""
    return parse_sacct(await run(sacct_argv(start, end), timeout=60))


# ---------------------------------------------------------------- GPUs, clipping, grouping


def shards_per_gpu(site: Site) -> dict[str, int]:
    """Node name -> GPU slices per GPU on it; key "" holds the site's finest slicing (the fallback)."""
    by_node = {"": max((g.shards for g in site.gpu_types.values()), default=0)}
    for node in site.nodes:
        sliced = {site.gpu_types[t].shards for t in node.gpus if site.gpu_types[t].shards}
        if len(sliced) == 1:
            # "local" is this machine, under its host name (the demo/CI cluster's convention)
            by_node[socket.gethostname().split(".")[0] if node.name == "local" else node.name] = sliced.pop()
    return by_node


def job_gpus(job: JobUsage, slicing: dict[str, int]) -> float:
    if not job.gpu_slices:
        return float(job.gpus)
    shards = slicing.get(job.nodes, slicing[""]) or 1
    return job.gpus + job.gpu_slices / shards


def parent_account(site: Site, account: str) -> str:
    known = site.accounts.get(account)
    return known.parent or account if known else account


def _week_starts(start: datetime, end: datetime):
    """Boundaries of the ISO weeks that ``[start, end)`` touches."""
    monday = datetime.combine(start.date() - timedelta(days=start.weekday()), datetime.min.time())
    while monday < end:
        yield monday
        monday += timedelta(days=7)


def usage_rows(site: Site, jobs: list[JobUsage], start: datetime, end: datetime,
               now: datetime | None = None) -> list[UsageRow]:
    """Each job's use inside ``[start, end)``, split by ISO week."""
    now = now or datetime.now()
    slicing = shards_per_gpu(site)
    rows = []
    for job in jobs:
        job_end = job.end or now
        first, last = max(job.start, start), min(job_end, end)
        if last <= first:
            continue
        gpus = job_gpus(job, slicing)
        for monday in _week_starts(first, last):
            a, b = max(first, monday), min(last, monday + timedelta(days=7))
            if b <= a:
                continue
            year, week, _ = monday.isocalendar()
            rows.append(UsageRow(job.job_id, job.user, job.account, parent_account(site, job.account),
                                 job.partition, job.kind, f"{year}-W{week:02d}", int((b - a).total_seconds()),
                                 job.cpus, gpus))
    return rows


def totals(rows: list[UsageRow], key: str) -> dict[str, tuple[float, float]]:
    """``{value of key: (gpu_hours, cpu_hours)}``, sorted by key (account, parent, partition, week, kind)."""
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for row in rows:
        sums[getattr(row, key)][0] += row.gpu_hours
        sums[getattr(row, key)][1] += row.cpu_hours
    return {k: (v[0], v[1]) for k, v in sorted(sums.items())}


def partner_target(site: Site) -> tuple[str, float]:
    """The partners' top-level account and its fair-share target: its shares / all top-level shares."""
    top = {a.name: a.shares for a in site.accounts.values() if not a.parent}
    total = sum(top.values())
    account = site.usage.partner_account
    return account, (top.get(account, 0) / total if total else 0.0)


def partner_share_by_week(site: Site, rows: list[UsageRow]) -> dict[str, float | None]:
    """Week -> the partners' fraction of that week's GPU-hours (None: no GPU use that week)."""
    account, _ = partner_target(site)
    share = {}
    for week, (gpu_hours, _) in totals(rows, "week").items():
        partner = sum(r.gpu_hours for r in rows if r.week == week and r.parent == account)
        share[week] = partner / gpu_hours if gpu_hours else None
    return share


def visible_accounts(site: Site, username: str, is_admin: bool) -> set[str] | None:
    """The accounts a user may see the usage of: None = all (admins); empty = none."""
    if is_admin:
        return None
    managed = set(site.usage.managers.get(username, ()))
    return managed | {a.name for a in site.accounts.values() if a.parent in managed}


# ---------------------------------------------------------------- ranges


def parse_range(start: str, end: str, today: date | None = None) -> tuple[date, date]:
    """Validate ``YYYY-MM-DD`` start and end dates (both included)."""
    today = today or date.today()
    days = []
    for label, text in (("start", start), ("end", end)):
        if not DATE_RE.match(text or ""):
            raise UsageRangeError(f"{label}: {text!r} is not a date of the form YYYY-MM-DD")
        try:
            days.append(date.fromisoformat(text))
        except ValueError:
            raise UsageRangeError(f"{label}: {text!r} is not a valid date") from None
    first, last = days
    if last < first:
        raise UsageRangeError(f"the range is reversed: end {last} is before start {first}")
    if last > today:
        raise UsageRangeError(f"end: {last} is in the future (today is {today})")
    if (last - first).days + 1 > MAX_RANGE_DAYS:
        raise UsageRangeError(f"the range spans {(last - first).days + 1} days; at most 3 years "
                              f"({MAX_RANGE_DAYS} days) at a time")
    return first, last


def parse_month(text: str, today: date | None = None) -> tuple[date, date]:
    """``YYYY-MM`` -> its first and last day; a month that has not begun is refused."""
    today = today or date.today()
    match = MONTH_RE.match(text or "")
    if not match or not 1 <= int(match.group(2)) <= 12 or int(match.group(1)) < 1970:
        raise UsageRangeError(f"month: {text!r} is not a month of the form YYYY-MM (e.g. 2026-11)")
    first = date(int(match.group(1)), int(match.group(2)), 1)
    if first > today:
        raise UsageRangeError(f"month: {text} has not begun yet (today is {today})")
    following = date(first.year + first.month // 12, first.month % 12 + 1, 1)
    return first, following - timedelta(days=1)


def range_datetimes(first: date, last: date, now: datetime | None = None) -> tuple[datetime, datetime]:
    """Dates (both included) -> ``[start, end)``, the end no later than now."""
    now = now or datetime.now()
    end = datetime.combine(last + timedelta(days=1), datetime.min.time())
    return datetime.combine(first, datetime.min.time()), min(end, now.replace(microsecond=0))
