"""Session options: the options form, and the single validator for form, REST API and courses.

Nothing a user sends reaches a batch script unless it passed ``validate``: every string is
matched against an allow-list (site partitions, GPU types, the user's own Slurm
associations, reservations that admit the user, course slugs), every number is an integer
inside the site limits. Errors name the field.
"""

from __future__ import annotations

import html
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape

from aifactory.site import Site
from aifactory.slurm.queries import Association, GpuAvailability, Reservation, SliceAvailability
from aifactory.slurm.standing import AccountStanding, ancestors

OPTION_KEYS = ("partition", "account", "qos", "gpu_type", "gpus", "gpu_slices", "cpus", "memory_gb", "hours",
               "reservation", "course")
NUMBER_KEYS = ("gpus", "gpu_slices", "cpus", "memory_gb", "hours")
SAFE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
FORBIDDEN_RE = re.compile(r"[\x00-\x1f\x7f;&|`$<>(){}\[\]\\'\"*?!#~=\s]")
# a 1 MB value must not come back as a 1 MB error page, log line or database row
MAX_KEY_LENGTH = 32
MAX_VALUE_LENGTH = 256
QUOTE_CHARS = 40
PLAIN_KEY_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


def quote_prefix(value, limit: int = QUOTE_CHARS) -> str:
    """``repr`` of at most ``limit`` characters: control characters escaped, size bounded."""
    text = value if isinstance(value, str) else str(value)
    return repr(text[:limit]) + (f"... ({len(text)} characters)" if len(text) > limit else "")


class OptionsError(ValueError):
    """Refused session options; ``field`` names the offending option."""

    def __init__(self, field: str, message: str):
        field = field if PLAIN_KEY_RE.match(str(field)) else quote_prefix(field)
        self.field = field
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True)
class SessionOptions:
    """Validated options: the only values that reach the batch script."""

    partition: str
    account: str
    qos: str
    gpu_type: str  # "any" or a site GPU type
    gpus: int
    cpus: int
    memory_gb: int
    hours: int
    reservation: str = ""
    course: str = ""
    gpu_slices: int = 0  # GPU slices (Slurm gres/shard) instead of whole GPUs
    minutes: int = 0  # a shorter time limit than `hours` (a session inside a workshop window)

    @property
    def gres(self) -> str:
        kind, count = ("shard", self.gpu_slices) if self.gpu_slices else ("gpu", self.gpus)
        if not count:
            return ""
        return f"{kind}:{count}" if self.gpu_type == "any" else f"{kind}:{self.gpu_type}:{count}"

    @property
    def time_limit(self) -> str:
        if self.minutes:
            return f"{self.minutes // 60:02d}:{self.minutes % 60:02d}:00"
        return f"{self.hours:02d}:00:00"

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class UserContext:
    """What a user may use: from their Slurm associations and the cluster state."""

    username: str
    associations: list[Association]
    reservations: dict[str, Reservation] = field(default_factory=dict)
    gpus: dict[str, GpuAvailability] = field(default_factory=dict)
    courses: dict = field(default_factory=dict)  # slug -> courses.Course
    slices: SliceAvailability | None = None
    # course slug -> WorkshopBooking of a workshop the user takes part in (see workshops.store)
    workshops: dict = field(default_factory=dict)
    # account -> shares, fair-share factor, GPU-hours this month (slurm.standing.user_standing)
    standing: dict[str, AccountStanding] = field(default_factory=dict)

    @property
    def accounts(self) -> list[str]:
        return [a.account for a in self.associations]

    def association(self, account: str) -> Association | None:
        return next((a for a in self.associations if a.account == account), None)

    def usable_reservations(self) -> list[Reservation]:
        return [r for r in self.reservations.values() if r.admits(self.username, self.accounts)]


def _string(raw: dict, key: str) -> str:
    """A text option, "" when absent (callers substitute the default)."""
    value = raw.get(key, "")
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise OptionsError(key, f"must be a text value, got {type(value).__name__}")
    if FORBIDDEN_RE.search(value):
        bad = sorted({repr(c) for c in FORBIDDEN_RE.findall(value)})
        raise OptionsError(key, f"contains characters that are not allowed ({', '.join(bad)})")
    if value and not SAFE_NAME_RE.match(value):
        raise OptionsError(key, f"{quote_prefix(value)} is not a valid name")
    return value


def _integer(raw: dict, key: str, default: int) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or value is None:
        raise OptionsError(key, f"must be a whole number, got {value!r}")
    if isinstance(value, str):
        if not re.fullmatch(r"\s*\d{1,6}\s*", value):
            raise OptionsError(key, f"must be a whole number, got {value[:40]!r}")
        value = int(value)
    if not isinstance(value, int):
        raise OptionsError(key, f"must be a whole number, got {type(value).__name__}")
    return value


def _choice(key: str, value: str, allowed, what: str) -> str:
    allowed = list(allowed)
    if value not in allowed:
        raise OptionsError(key, f"{what} {quote_prefix(value)} is not available to you "
                                f"(choose from: {', '.join(allowed) or 'none'})")
    return value


def _in_range(key: str, value: int, low: int, high: int, why: str = "") -> int:
    if not low <= value <= high:
        raise OptionsError(key, f"{value} is outside the allowed range {low}..{high}{why}")
    return value


def check_sizes(raw: dict) -> None:
    """Refuse over-long option names and values before anything stores or echoes them."""
    for key, value in raw.items():
        if len(str(key)) > MAX_KEY_LENGTH:
            raise OptionsError(key, f"option names are at most {MAX_KEY_LENGTH} characters")
        values = value if isinstance(value, list) else [value]
        for item in values:
            if isinstance(item, str | bytes) and len(item) > MAX_VALUE_LENGTH:
                raise OptionsError(key, f"{quote_prefix(item)} is longer than {MAX_VALUE_LENGTH} characters")


def normalise_form(formdata: dict[str, list[str]]) -> dict:
    """Form posts arrive as lists of strings: keep the single value of each field."""
    check_sizes(formdata)
    options = {}
    for key, values in formdata.items():
        if key == "_xsrf":  # JupyterHub's CSRF token travels with the form
            continue
        if not isinstance(values, list) or len(values) != 1:
            raise OptionsError(key, "must be given exactly once")
        options[key] = values[0]
    return options


def validate(raw, site: Site, ctx: UserContext) -> SessionOptions:
    """The one validator: returns SessionOptions or raises OptionsError naming the field."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise OptionsError("options", f"must be a JSON object, got {type(raw).__name__}")
    check_sizes(raw)
    unknown = sorted(str(k) for k in raw if k not in OPTION_KEYS)
    if unknown:
        raise OptionsError(unknown[0], f"unknown option (allowed: {', '.join(OPTION_KEYS)})")
    if not ctx.associations:
        raise OptionsError("account", f"user {ctx.username!r} has no Slurm account; ask the admins to add you")

    course_slug = _string(raw, "course")
    defaults = {}
    booking = None
    if course_slug:
        _choice("course", course_slug, ctx.courses, "course")
        defaults = ctx.courses[course_slug].resources.as_options()
        booking = ctx.workshops.get(course_slug)
        active = booking and booking.reservation in ctx.reservations \
            and ctx.reservations[booking.reservation].state == "ACTIVE"
        if active and _string(raw, "reservation") in ("", booking.reservation):
            # a participant's course start during the workshop lands in its reservation, with
            # the share the workshop was sized for (the reservation holds no more than that)
            workshop = {**booking.resources(), "reservation": booking.reservation}
            defaults = {**defaults, **workshop}
            raw = {**raw, **workshop}
        else:
            booking = None

    limits = site.limits
    # an empty value means "the default", as an untouched form field does
    partition = _choice("partition", _string(raw, "partition") or defaults.get("partition", site.default_partition.name),
                        site.partitions, "partition")
    account = _choice("account", _string(raw, "account") or ctx.accounts[0], ctx.accounts, "account")
    association = ctx.association(account)
    default_qos = association.default_qos if association.default_qos in site.qos else ""
    qos = _string(raw, "qos") or default_qos
    if qos or association.qos:
        qos = _choice("qos", qos, [q for q in association.qos if q in site.qos], f"QOS for account {account!r}:")
    gpu_type = _choice("gpu_type", _string(raw, "gpu_type") or defaults.get("gpu_type", "any"),
                       ["any", *site.gpu_types], "GPU type")

    default_gpus = limits["gpus"].default if site.partitions[partition].gpus else 0
    gpu_slices = _integer(raw, "gpu_slices", defaults.get("gpu_slices", limits["gpu_slices"].default))
    if gpu_slices and "gpus" not in raw:
        default_gpus = 0
    gpus = _integer(raw, "gpus", defaults.get("gpus", default_gpus))
    cpus = _integer(raw, "cpus", defaults.get("cpus", limits["cpus"].default))
    memory_gb = _integer(raw, "memory_gb", defaults.get("memory_gb", limits["memory_gb"].default))
    hours = _integer(raw, "hours", defaults.get("hours", limits["hours"].default))

    _in_range("gpus", gpus, limits["gpus"].min, limits["gpus"].max)
    if gpus and not site.partitions[partition].gpus:
        raise OptionsError("gpus", f"partition {partition!r} has no GPUs; choose 0 GPUs or a GPU partition")
    if qos and gpus > site.qos[qos].max_gpus_per_user:
        raise OptionsError("gpus", f"QOS {qos!r} allows at most {site.qos[qos].max_gpus_per_user} GPU(s) per user")
    if gpus and gpu_type != "any" and gpus > site.gpu_types[gpu_type].count:
        raise OptionsError("gpus", f"the site has only {site.gpu_types[gpu_type].count} {gpu_type} GPU(s)")
    _check_slices(site, partition, qos, gpu_type, gpus, gpu_slices)
    _in_range("cpus", cpus, limits["cpus"].min, limits["cpus"].max)
    _in_range("memory_gb", memory_gb, limits["memory_gb"].min, limits["memory_gb"].max)
    max_hours = min(limits["hours"].max, site.partitions[partition].max_hours,
                    site.qos[qos].max_hours if qos else limits["hours"].max)
    _in_range("hours", hours, limits["hours"].min, max_hours,
              f" (partition {partition!r}{f' and QOS {qos!r}' if qos else ''})")

    reservation = _string(raw, "reservation") or defaults.get("reservation", "")
    if reservation:
        _choice("reservation", reservation, [r.name for r in ctx.usable_reservations()], "reservation")
    minutes = min(hours * 60, booking.minutes_left) if booking else 0
    _check_gpu_hours(site, ctx, account, gpus, minutes or hours * 60)
    return SessionOptions(partition, account, qos, gpu_type, gpus, cpus, memory_gb, hours,
                          reservation, course_slug, gpu_slices, minutes)


def _check_gpu_hours(site: Site, ctx: UserContext, account: str, gpus: int, minutes: int) -> None:
    """used + requested GPUs x hours must stay within the account's (and its parents') monthly GPU-hours."""
    if not gpus:
        return
    requested = gpus * minutes / 60
    for name in ancestors(site, account):
        limit = site.accounts[name].gpu_hours_per_month
        if limit is None:
            continue
        figures = ctx.standing.get(name)
        if figures is None:  # unknown usage: refuse rather than overrun a partner's contingent
            raise OptionsError("account", f"the GPU-hours account {name!r} used this month are not known "
                                          "right now; please try again in a minute")
        used = figures.gpu_hours_used
        if used + requested > limit:
            raise OptionsError("gpus", f"account {name!r} has used {used:.1f} of its {limit} GPU-hours this month "
                                       f"({max(limit - used, 0):.1f} left); {gpus} GPU(s) for {minutes / 60:g} h "
                                       f"need {requested:.1f}. Ask for fewer GPUs or hours, or use another account")


def _check_slices(site: Site, partition: str, qos: str, gpu_type: str, gpus: int, gpu_slices: int) -> None:
    limit = site.limits["gpu_slices"]
    if not gpu_slices:
        return
    if not site.total_gpu_slices:
        raise OptionsError("gpu_slices", "this site has no shared GPUs; ask for whole GPUs")
    _in_range("gpu_slices", gpu_slices, limit.min, limit.max)
    if gpus:
        raise OptionsError("gpu_slices", "ask for whole GPUs or for GPU slices, not both")
    if not site.partitions[partition].gpus:
        raise OptionsError("gpu_slices", f"partition {partition!r} has no GPUs; choose a GPU partition")
    if qos and gpu_slices > site.qos[qos].max_gpu_slices_per_user:
        raise OptionsError("gpu_slices", f"QOS {qos!r} allows at most {site.qos[qos].max_gpu_slices_per_user} "
                                         "GPU slice(s) per user")
    if gpu_type != "any" and not site.gpu_types[gpu_type].shards:
        raise OptionsError("gpu_slices", f"{gpu_type} GPUs are not shared; choose another type or whole GPUs")


# ---------------------------------------------------------------- the form

_templates = Environment(
    loader=FileSystemLoader(Path(__file__).resolve().parents[1] / "templates"),
    autoescape=select_autoescape(["html"]),
)


def render_form(site: Site, ctx: UserContext, previous: dict | None = None) -> str:
    """The options form, from the site file and live cluster data; ``previous`` preselects."""
    previous = previous or {}
    limits = site.limits

    def pick(key, default):
        value = previous.get(key, default)
        return html.escape(str(value)) if value is not None else default

    accounts = []
    for association in ctx.associations:
        accounts.append({
            "name": association.account,
            "description": site.accounts[association.account].description
            if association.account in site.accounts else "",
            "qos": [q for q in association.qos if q in site.qos],
            "default_qos": association.default_qos,
            "standing": ctx.standing.get(association.account),
            "parent": site.accounts[association.account].parent
            if association.account in site.accounts else "",
        })
    gpu_types = []
    for gpu in site.gpu_types.values():
        availability = ctx.gpus.get(gpu.name)
        free = availability.free if availability else None
        gpu_types.append({"name": gpu.name, "description": gpu.description, "free": free, "total": gpu.count,
                          "shards": gpu.shards})
    return _templates.get_template("options_form.html").render(
        site=site,
        limits=limits,
        partitions=list(site.partitions.values()),
        accounts=accounts,
        qos=site.qos,
        gpu_types=gpu_types,
        slices=ctx.slices,
        total_slices=site.total_gpu_slices,
        reservations=ctx.usable_reservations(),
        selected={
            "partition": pick("partition", site.default_partition.name),
            "account": pick("account", ctx.accounts[0] if ctx.accounts else ""),
            "qos": pick("qos", ""),
            "gpu_type": pick("gpu_type", "any"),
            "gpus": pick("gpus", limits["gpus"].default),
            "gpu_slices": pick("gpu_slices", limits["gpu_slices"].default),
            "cpus": pick("cpus", limits["cpus"].default),
            "memory_gb": pick("memory_gb", limits["memory_gb"].default),
            "hours": pick("hours", limits["hours"].default),
            "reservation": pick("reservation", ""),
            "course": pick("course", ""),
        },
    )
