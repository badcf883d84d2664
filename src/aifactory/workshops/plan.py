"""A workshop request, validated: the one validator for the page, the JSON API and the CLI.

``plan_workshop`` is a pure function of the request, the site, the courses, the users that
exist and the workshops already booked in the window. It returns a ``WorkshopPlan`` (what to
create: reservation, hub group, walk-in accounts) or raises ``WorkshopError`` naming the field.
Nothing is created here.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from aifactory.site import USERNAME_RE, Site

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{2,19}$")
# letters (any language), digits, spaces and plain punctuation: no HTML or shell metacharacters
TITLE_RE = re.compile(r"^[\w .,:()/+-]{1,120}$")
TIME_FORMATS = ("%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M")
REQUEST_KEYS = ("name", "title", "course", "start", "end", "participants", "walkins",
                "gpus", "gpu_slices", "cpus", "memory_gb")
WALKIN_PREFIX = "wk-"
RESERVATION_PREFIX = "ws-"
GROUP_PREFIX = "workshop-"
# a workshop may be created to start "now": allow a few minutes of form-filling
START_GRACE = timedelta(minutes=10)
MAX_EXTEND_MINUTES = 240


class WorkshopError(ValueError):
    """A refused workshop request or action; ``field`` names what is wrong."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True)
class WorkshopPlan:
    name: str
    title: str
    course: str
    start: datetime
    end: datetime
    gpus: int
    gpu_slices: int
    cpus: int
    memory_gb: int
    participants: tuple[str, ...]  # existing users
    walkins: tuple[str, ...] = field(default=())  # generated user names

    @property
    def reservation(self) -> str:
        return RESERVATION_PREFIX + self.name

    @property
    def group(self) -> str:
        return GROUP_PREFIX + self.name

    @property
    def size(self) -> int:
        return len(self.participants) + len(self.walkins)

    @property
    def cores(self) -> int:
        return self.size * self.cpus

    @property
    def users(self) -> tuple[str, ...]:
        return (*self.participants, *self.walkins)


def walkin_names(name: str, count: int) -> tuple[str, ...]:
    return tuple(f"{WALKIN_PREFIX}{name}-{i:02d}" for i in range(1, count + 1))


def parse_time(value, key: str) -> datetime:
    if isinstance(value, datetime):
        return value.replace(second=0, microsecond=0)
    if not isinstance(value, str) or len(value) > 25:
        raise WorkshopError(key, "expected a date and time like 2026-11-28T09:00")
    for fmt in TIME_FORMATS:
        try:
            return datetime.strptime(value.strip(), fmt)
        except ValueError:
            continue
    raise WorkshopError(key, f"{value[:25]!r} is not a date and time like 2026-11-28T09:00")


def _int(raw: dict, key: str, default: int, low: int, high: int) -> int:
    value = raw.get(key, default)
    if value in ("", None):
        value = default
    if isinstance(value, str) and re.fullmatch(r"\s*\d{1,4}\s*", value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise WorkshopError(key, f"must be a whole number, got {str(value)[:20]!r}")
    if not low <= value <= high:
        raise WorkshopError(key, f"{value} is outside the allowed range {low}..{high}")
    return value


def parse_users(value) -> list[str]:
    """A list of user names, or one string of names separated by commas, spaces or lines."""
    if value in (None, ""):
        return []
    if isinstance(value, str):
        names = [n for n in re.split(r"[\s,]+", value) if n]
    elif isinstance(value, list) and all(isinstance(n, str) for n in value):
        names = value
    else:
        raise WorkshopError("participants", "must be a list of user names")
    for name in names:
        if not USERNAME_RE.match(name):
            raise WorkshopError("participants", f"{name[:32]!r} is not a valid user name")
    if len(set(names)) != len(names):
        duplicates = sorted({n for n in names if names.count(n) > 1})
        raise WorkshopError("participants", f"listed twice: {', '.join(duplicates)}")
    return names


def plan_workshop(raw, site: Site, courses: dict, known_users: set[str], booked: list,
                  now: datetime | None = None) -> WorkshopPlan:
    """Validate a request; ``booked`` are the other workshops overlapping (or near) the window."""
    now = now or datetime.now()
    if not isinstance(raw, dict):
        raise WorkshopError("request", "must be a JSON object")
    unknown = sorted(str(k) for k in raw if k not in REQUEST_KEYS and k != "_xsrf")
    if unknown:
        raise WorkshopError(unknown[0][:40], f"unknown field (allowed: {', '.join(REQUEST_KEYS)})")

    name = raw.get("name", "")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise WorkshopError("name", "3 to 20 characters: lower-case letters, digits and - (e.g. dl-nov28)")
    title = raw.get("title", "")
    if not isinstance(title, str) or not TITLE_RE.match(title.strip() or "-") or not title.strip():
        raise WorkshopError("title", "1 to 120 characters: letters, digits, spaces and . , : ( ) / + - "
                                     "(no HTML or shell characters)")
    course = raw.get("course", "")
    if not isinstance(course, str) or course not in courses:
        raise WorkshopError("course", f"unknown course {str(course)[:48]!r} "
                                      f"(courses: {', '.join(courses) or 'none'})")
    resources = courses[course].resources

    start = parse_time(raw.get("start"), "start")
    end = parse_time(raw.get("end"), "end")
    if end <= start:
        raise WorkshopError("end", "the workshop must end after it starts")
    if end <= now:
        raise WorkshopError("end", "this window is in the past")
    if start < now - START_GRACE:
        raise WorkshopError("start", "the start is in the past (use the current time to start now)")
    if end - start > timedelta(hours=site.workshops.max_hours):
        raise WorkshopError("end", f"a workshop lasts at most {site.workshops.max_hours} hours")
    if start < now:
        start = now.replace(second=0, microsecond=0)

    limits = site.limits
    qos = site.qos[site.workshops.qos]
    gpu_slices = _int(raw, "gpu_slices", resources.gpu_slices if "gpus" not in raw else 0,
                      0, min(limits["gpu_slices"].max, qos.max_gpu_slices_per_user))
    gpus = _int(raw, "gpus", resources.gpus if "gpu_slices" not in raw else 0,
                0, min(limits["gpus"].max, qos.max_gpus_per_user))
    if gpus and gpu_slices:
        raise WorkshopError("gpu_slices", "give participants whole GPUs or GPU slices, not both")
    if gpu_slices and not site.total_gpu_slices:
        raise WorkshopError("gpu_slices", "this site has no shared GPUs")
    cpus = _int(raw, "cpus", min(resources.cpus, limits["cpus"].max), limits["cpus"].min, limits["cpus"].max)
    memory_gb = _int(raw, "memory_gb", min(resources.memory_gb, limits["memory_gb"].max),
                     limits["memory_gb"].min, limits["memory_gb"].max)

    participants = parse_users(raw.get("participants"))
    missing = [u for u in participants if u not in known_users]
    if missing:
        raise WorkshopError("participants", f"unknown user(s): {', '.join(missing[:10])}")
    walkins = _int(raw, "walkins", 0, 0, site.workshops.max_participants)
    size = len(participants) + walkins
    if size == 0:
        raise WorkshopError("participants", "add participants or generated walk-in accounts")
    if size > site.workshops.max_participants:
        raise WorkshopError("participants", f"{size} participants; a workshop holds at most "
                                            f"{site.workshops.max_participants}")

    _check_capacity(site, size, gpus, gpu_slices, cpus, memory_gb, booked, start, end)
    return WorkshopPlan(name, title.strip(), course, start, end, gpus, gpu_slices, cpus, memory_gb,
                        tuple(participants), walkin_names(name, walkins))


def _check_capacity(site: Site, size: int, gpus: int, gpu_slices: int, cpus: int, memory_gb: int,
                    booked: list, start: datetime, end: datetime) -> None:
    """Refuse what the cluster cannot hold, counting workshops booked in the same window."""
    others = [w for w in booked if w.start < end and w.end > start and w.state != "ended"]
    taken_gpus = sum(len(w.participants) * w.gpus for w in others)
    taken_slices = sum(len(w.participants) * w.gpu_slices for w in others)
    taken_cores = sum(len(w.participants) * w.cpus for w in others)
    # whole GPUs and slices come from the same devices
    per_gpu = max((g.shards for g in site.gpu_types.values()), default=0)
    slice_gpus = math.ceil((taken_slices + size * gpu_slices) / per_gpu) if per_gpu else 0
    names = ", ".join(repr(w.name) for w in others)
    if gpus and taken_gpus + size * gpus + slice_gpus > site.total_gpus:
        raise WorkshopError("participants", f"{size} participants x {gpus} GPU = {size * gpus} GPUs, but the "
                                            f"site has {site.total_gpus}"
                                            + (f" and {taken_gpus} are booked by {names}" if others else ""))
    if gpu_slices and taken_slices + size * gpu_slices + taken_gpus * per_gpu > site.total_gpu_slices:
        raise WorkshopError("participants", f"{size} participants x {gpu_slices} GPU slice = "
                                            f"{size * gpu_slices} slices, but the site has {site.total_gpu_slices}"
                                            + (f" and {taken_slices} are booked by {names}" if others else ""))
    # Slurm refuses what the nodes cannot hold; this says so with the figures first
    if site.workshops.reserve == "cores" and taken_cores + size * cpus > site.total_cpus:
        raise WorkshopError("cpus", f"{size} participants x {cpus} CPU cores do not fit the cluster "
                                    f"in that window{f' (booked by {names})' if others else ''}")
    if size * memory_gb * 1024 > site.total_memory_mb:
        raise WorkshopError("memory_gb", f"{size} participants x {memory_gb} GB do not fit the cluster")


def check_extend(minutes, workshop, now: datetime | None = None) -> int:
    """Minutes to extend a workshop by: a whole number in 1..MAX_EXTEND_MINUTES, before it ended."""
    now = now or datetime.now()
    value = _int({"minutes": minutes}, "minutes", 0, 1, MAX_EXTEND_MINUTES)
    if workshop.state == "ended":
        raise WorkshopError("workshop", f"workshop {workshop.name!r} has ended")
    return value
