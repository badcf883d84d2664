"""Slurm queries: the one place that runs sinfo / squeue / sacct / sacctmgr / scontrol.

Commands run without a shell (argument lists) and with a timeout. Parsing is done by pure
functions (``parse_*``) that the unit tests feed with real command output.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from datetime import datetime

DEFAULT_TIMEOUT = 15.0

# squeue/scontrol errors that mean "the controller did not answer", not "the job is gone"
CONTROLLER_TROUBLE_RE = re.compile(
    r"slurm_load_jobs error: (?!Invalid job id)|Socket timed out|Unable to contact slurm controller"
    r"|Connection refused|Zero Bytes were transmitted|Transport endpoint|slurm_receive_msg"
)
INVALID_JOB_RE = re.compile(r"Invalid job id specified")


class SlurmUnavailable(RuntimeError):
    """The controller (or database) did not answer: state is unknown, retry later."""


class SlurmCommandError(RuntimeError):
    """A Slurm command answered with an error."""


async def run(argv: list[str], *, timeout: float = DEFAULT_TIMEOUT, input: str | None = None) -> str:
    """Run a command, return stdout. Timeouts and controller trouble raise SlurmUnavailable."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as e:
        raise SlurmUnavailable(f"cannot run {argv[0]}: {e}") from e
    try:
        out, err = await asyncio.wait_for(
            proc.communicate(input.encode() if input is not None else None), timeout
        )
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise SlurmUnavailable(f"{' '.join(argv)} did not answer within {timeout:.0f} s") from None
    stderr = err.decode(errors="replace").strip()
    if proc.returncode != 0:
        if CONTROLLER_TROUBLE_RE.search(stderr):
            raise SlurmUnavailable(stderr)
        raise SlurmCommandError(stderr or f"{argv[0]} exited with {proc.returncode}")
    return out.decode(errors="replace")


# ---------------------------------------------------------------- associations (sacctmgr)


@dataclass(frozen=True)
class Association:
    account: str
    qos: tuple[str, ...]
    default_qos: str
    is_default_account: bool = False


ASSOC_FORMAT = "account,qos,defaultqos"


def parse_associations(assoc_text: str, default_account: str = "") -> list[Association]:
    """``sacctmgr -n -P show assoc user=U format=account,qos,defaultqos``."""
    associations = {}
    for line in assoc_text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 3 or not parts[0]:
            continue
        account, qos, default_qos = parts[0], parts[1], parts[2]
        qos_list = tuple(q for q in qos.split(",") if q)
        associations[account] = Association(
            account, qos_list, default_qos or (qos_list[0] if qos_list else ""),
            account == default_account,
        )
    return sorted(associations.values(), key=lambda a: (not a.is_default_account, a.account))


def parse_user_with_associations(text: str) -> list[Association]:
    """``sacctmgr -n -P show user U withassoc format=defaultaccount,account,qos,defaultqos``: the
    default account leads every line."""
    rows = [line.strip().split("|", 1) for line in text.splitlines() if line.count("|") >= 3]
    default_account = rows[0][0] if rows else ""
    return parse_associations("\n".join(rest for _, rest in rows), default_account)


async def user_associations(username: str) -> list[Association]:
    """The user's associations and default account: one sacctmgr call (a slurmdbd round trip)."""
    return parse_user_with_associations(await run(
        ["sacctmgr", "-n", "-P", "show", "user", username, "withassoc", f"format=defaultaccount,{ASSOC_FORMAT}"]))


def parse_account_users(assoc_text: str) -> dict[str, set[str]]:
    """``sacctmgr -n -P show assoc format=account,user``: account -> its users."""
    members: dict[str, set[str]] = {}
    for line in assoc_text.splitlines():
        account, _, user = line.strip().partition("|")
        if account:
            members.setdefault(account, set())
            if user:
                members[account].add(user)
    return members


async def account_users() -> dict[str, set[str]]:
    """Every account's users, as the accounting database has them."""
    return parse_account_users(await run(["sacctmgr", "-n", "-P", "show", "assoc", "format=account,user"]))


# ---------------------------------------------------------------- GPUs (sinfo)


@dataclass(frozen=True)
class GpuAvailability:
    gpu_type: str
    total: int
    used: int  # allocated whole
    hosting_slices: int = 0  # GPUs that host at least one slice (not available whole)
    slices_total: int = 0

    @property
    def free(self) -> int:
        """Whole GPUs free: neither allocated whole nor hosting slices."""
        return max(self.total - self.used - self.hosting_slices, 0)


@dataclass(frozen=True)
class SliceAvailability:
    """GPU slices (gres/shard) of the whole cluster: Slurm reports their use untyped."""

    total: int
    used: int
    blocked: int  # slices of GPUs that are allocated whole

    @property
    def free(self) -> int:
        return max(self.total - self.used - self.blocked, 0)


GRES_ITEM_RE = re.compile(r"(?<![\w])gpu:(?P<type>[\w.-]+):(?P<count>\d+)")
SHARD_ITEM_RE = re.compile(r"(?<![\w])shard:(?P<type>[\w.-]+):(?P<count>\d+)")
ALLOC_SHARDS_RE = re.compile(r"gres/shard=(\d+)")
UNUSABLE_STATES = ("DOWN", "DRAIN", "FAIL", "NOT_RESPONDING", "POWERED_DOWN")


def parse_gpu_availability(scontrol_text: str) -> tuple[dict[str, GpuAvailability], SliceAvailability]:
    """``scontrol show node -o -d``: one line of key=value pairs per node.

    Down/drained nodes contribute no free GPUs or slices. For shards, Slurm 22.05's GresUsed
    counts the GPUs hosting shards (``shard:h100:1(IDX:0)`` with three shards on GPU 0), and
    AllocTRES the shards themselves (``gres/shard=3``): both are used for what they mean.
    """
    total: dict[str, int] = {}
    used: dict[str, int] = {}
    hosting: dict[str, int] = {}
    slices_total: dict[str, int] = {}
    all_slices = slices_used = slices_blocked = 0
    for line in scontrol_text.splitlines():
        pairs = dict(re.findall(r"(\w+)=(\S*)", line))
        if "NodeName" not in pairs:
            continue
        unusable = any(flag in pairs.get("State", "").upper() for flag in UNUSABLE_STATES)
        node_total = {m["type"]: int(m["count"]) for m in GRES_ITEM_RE.finditer(pairs.get("Gres", ""))}
        node_used = {m["type"]: int(m["count"]) for m in GRES_ITEM_RE.finditer(pairs.get("GresUsed", ""))}
        node_shards = {m["type"]: int(m["count"]) for m in SHARD_ITEM_RE.finditer(pairs.get("Gres", ""))}
        node_hosting = {m["type"]: int(m["count"]) for m in SHARD_ITEM_RE.finditer(pairs.get("GresUsed", ""))}
        alloc = ALLOC_SHARDS_RE.search(pairs.get("AllocTRES", ""))
        for gpu_type, count in node_total.items():
            whole = count if unusable else node_used.get(gpu_type, 0)
            total[gpu_type] = total.get(gpu_type, 0) + count
            used[gpu_type] = used.get(gpu_type, 0) + whole
            hosting[gpu_type] = hosting.get(gpu_type, 0) + (0 if unusable else node_hosting.get(gpu_type, 0))
            shards = node_shards.get(gpu_type, 0)
            slices_total[gpu_type] = slices_total.get(gpu_type, 0) + shards
            all_slices += shards
            if shards:
                slices_blocked += shards if unusable else whole * (shards // count)
        slices_used += int(alloc.group(1)) if alloc and not unusable else 0
    gpus = {t: GpuAvailability(t, total[t], used[t], hosting[t], slices_total[t]) for t in total}
    return gpus, SliceAvailability(all_slices, slices_used, slices_blocked)


@dataclass(frozen=True)
class NodeCapacity:
    name: str
    partitions: tuple[str, ...]
    cpus: int
    gpus: int  # whole GPUs, any type
    slices: int  # GPU slices (shards)


def parse_nodes(scontrol_text: str) -> list[NodeCapacity]:
    """``scontrol show node -o``: what each usable node holds, in Slurm's order."""
    nodes = []
    for line in scontrol_text.splitlines():
        pairs = dict(re.findall(r"(\w+)=(\S*)", line))
        if "NodeName" not in pairs or any(f in pairs.get("State", "").upper() for f in UNUSABLE_STATES):
            continue
        gres = pairs.get("Gres", "")
        nodes.append(NodeCapacity(
            pairs["NodeName"], tuple(p for p in pairs.get("Partitions", "").split(",") if p),
            int(pairs.get("CPUTot", "0") or 0),
            sum(int(m["count"]) for m in GRES_ITEM_RE.finditer(gres)),
            sum(int(m["count"]) for m in SHARD_ITEM_RE.finditer(gres)) or sum(
                int(c) for c in re.findall(r"(?<![\w])shard:(\d+)", gres))))
    return nodes


async def nodes() -> list[NodeCapacity]:
    return parse_nodes(await run(["scontrol", "show", "node", "-o"]))


async def gpu_availability() -> tuple[dict[str, GpuAvailability], SliceAvailability]:
    return parse_gpu_availability(await run(["scontrol", "show", "node", "-o", "-d"]))


# ---------------------------------------------------------------- reservations (scontrol)


@dataclass(frozen=True)
class Reservation:
    name: str
    state: str
    start: str
    end: str
    users: tuple[str, ...]
    accounts: tuple[str, ...]
    partition: str

    def admits(self, username: str, accounts: list[str]) -> bool:
        if self.users and username in self.users:
            return True
        return bool(self.accounts and set(self.accounts) & set(accounts))


def parse_reservations(scontrol_text: str) -> dict[str, Reservation]:
    """``scontrol show reservation -o``: one line of key=value pairs per reservation."""
    reservations = {}
    for line in scontrol_text.splitlines():
        pairs = dict(re.findall(r"(\w+)=(\S*)", line))
        if "ReservationName" not in pairs:
            continue

        def names(key, pairs=pairs):
            return tuple(v for v in pairs.get(key, "").split(",") if v and v != "(null)")

        reservations[pairs["ReservationName"]] = Reservation(
            pairs["ReservationName"], pairs.get("State", ""), pairs.get("StartTime", ""),
            pairs.get("EndTime", ""), names("Users"), names("Accounts"),
            pairs.get("PartitionName", "") if pairs.get("PartitionName") != "(null)" else "",
        )
    return reservations


async def reservations() -> dict[str, Reservation]:
    text = await run(["scontrol", "show", "reservation", "-o"])
    if "No reservations in the system" in text:
        return {}
    return parse_reservations(text)


# ---------------------------------------------------------------- jobs (squeue, sacct)

# what the spawner asks squeue for; '|' separated, the execution host last
JOB_QUERY_FORMAT = "%T|%r|%S|%B"


@dataclass(frozen=True)
class JobState:
    state: str  # PENDING, RUNNING, COMPLETING, ...
    reason: str
    expected_start: datetime | None
    host: str

    @property
    def pending(self) -> bool:
        return self.state in ("PENDING", "CONFIGURING")

    @property
    def running(self) -> bool:
        return self.state in ("RUNNING", "COMPLETING")


def _slurm_time(value: str) -> datetime | None:
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return None


def parse_job_state(squeue_text: str) -> JobState | None:
    """One line of ``squeue -h -j ID -o '%T|%r|%S|%B'``; None when the job is not listed."""
    lines = [line for line in squeue_text.splitlines() if line.strip()]
    if not lines:
        return None
    parts = lines[-1].strip().split("|")
    if len(parts) != 4:
        return None
    state, reason, start, host = parts
    return JobState(state, "" if reason in ("None", "(null)") else reason, _slurm_time(start),
                    "" if host in ("n/a", "(null)") else host)


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    state: str  # COMPLETED, CANCELLED by 1001, FAILED, TIMEOUT, OUT_OF_MEMORY, ...
    exit_code: str
    elapsed: str


def parse_sacct_records(sacct_text: str) -> dict[str, JobRecord]:
    """``sacct -X -n -P -j ID,ID,... -o JobID,State,ExitCode,Elapsed``: the records by job id."""
    records = {}
    for line in sacct_text.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 4 and parts[0].isdigit():
            records[parts[0]] = JobRecord(*parts)
    return records


async def job_records(job_ids: list[str], timeout: float = DEFAULT_TIMEOUT) -> dict[str, JobRecord]:
    """Accounting's records of several jobs, one ``sacct`` call."""
    ids = [j for j in job_ids if j.isdigit()]
    if not ids:
        return {}
    return parse_sacct_records(await run(["sacct", "-X", "-n", "-P", "-j", ",".join(ids),
                                          "-o", "JobID,State,ExitCode,Elapsed"], timeout=timeout))


async def user_jobs(usernames: list[str]) -> list[dict]:
    """The queue of these users, one squeue call (for the workshop overview)."""
    if not usernames:
        return []
    return parse_squeue_overview(await run(["squeue", "-h", "-u", ",".join(usernames), "-o", OVERVIEW_FORMAT]))


TAGGED_FORMAT = "%i|%u|%T|%k"


@dataclass(frozen=True)
class TaggedJob:
    job_id: str
    user: str
    state: str


def parse_tagged_jobs(squeue_text: str, tag: str) -> list[TaggedJob]:
    """``squeue -h -o TAGGED_FORMAT`` lines whose comment is exactly ``tag`` (the hub's jobs)."""
    jobs = []
    for line in squeue_text.splitlines():
        parts = line.strip().split("|", 3)
        if len(parts) == 4 and parts[3] == tag and parts[0].isdigit():
            jobs.append(TaggedJob(job_id=parts[0], user=parts[1], state=parts[2]))
    return jobs


async def tagged_jobs(tag: str, timeout: float = DEFAULT_TIMEOUT) -> list[TaggedJob]:
    """Every queued or running job that carries the hub's tag in its comment: one squeue call."""
    return parse_tagged_jobs(await run(["squeue", "-h", "-a", "-o", TAGGED_FORMAT], timeout=timeout), tag)


OVERVIEW_FORMAT = "%i|%u|%a|%P|%T|%M|%l|%b|%j|%r|%L|%v"


def parse_squeue_overview(squeue_text: str) -> list[dict]:
    """``squeue -h -o OVERVIEW_FORMAT`` into dicts (for the instructors' overviews)."""
    keys = ("job_id", "user", "account", "partition", "state", "elapsed", "time_limit", "gres", "name",
            "reason", "time_left", "reservation")
    rows = []
    for line in squeue_text.splitlines():
        parts = line.strip().split("|")
        if len(parts) == len(keys):
            rows.append(dict(zip(keys, parts, strict=True)))
    return rows


# Why a job waits, in words a student understands.
PENDING_REASONS = {
    "Resources": "the resources you asked for are busy; it starts when they are free",
    "Priority": "jobs with higher priority (fair-share) are ahead of yours",
    "QOSMaxGRESPerUser": "you already use the most GPUs your QOS allows at once; stop another session",
    "QOSMaxGRESPerUserLimit": "you already use the most GPUs your QOS allows at once; stop another session",
    "AssocGrpGRES": "your account's GPU quota is in use",
    "AssocGrpGRESMinutes": "your account has used up its GPU-hours (GrpTRESMins); ask its manager",
    "AssocMaxJobsLimit": "you have reached the maximum number of jobs of your account",
    "QOSMaxWallDurationPerJobLimit": "the wall time is longer than your QOS allows",
    "PartitionTimeLimit": "the wall time is longer than the partition allows",
    "ReqNodeNotAvail": "the nodes are reserved or in maintenance",
    "Reservation": "waiting for the reservation to start",
    "BeginTime": "the job is scheduled to start later",
    "Dependency": "waiting for another job to finish",
    "JobHeldUser": "the job is held",
    "JobHeldAdmin": "the job is held by an administrator",
    "JobArrayTaskLimit": "the run's other tasks fill its limit of tasks at once; it starts when one ends",
}


def explain_reason(reason: str) -> str:
    base = reason.split(",")[0].strip()
    return PENDING_REASONS.get(base, "")


# ---------------------------------------------------------------- one session's own job (inside the job)

SESSION_JOB_FORMAT = "%i|%P|%a|%q|%N|%b|%l|%e|%L|%T"


@dataclass(frozen=True)
class SessionJob:
    """What a session shows its user about its own job (the lab's panel and wall-time notice)."""

    job_id: str
    partition: str
    account: str
    qos: str
    nodes: str
    gres: str  # "gres:gpu:h100:1", "" without GRES
    time_limit: str  # Slurm's [D-]HH:MM:SS
    end_time: datetime | None
    time_left: str
    state: str


def parse_session_job(squeue_text: str) -> SessionJob | None:
    """``squeue -h -j ID -o SESSION_JOB_FORMAT``; None when the job is not listed."""
    for line in squeue_text.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 10:
            continue
        job_id, partition, account, qos, nodes, gres, limit, end, left, state = parts
        return SessionJob(job_id, partition, account, "" if qos == "(null)" else qos, nodes,
                          "" if gres in ("N/A", "(null)") else gres, limit, _slurm_time(end), left, state)
    return None


async def session_job(job_id: str) -> SessionJob | None:
    if not re.fullmatch(r"[0-9]+", job_id):
        raise ValueError(f"job id {job_id!r} is not a number")
    return parse_session_job(await run(["squeue", "-h", "-j", job_id, "-o", SESSION_JOB_FORMAT]))
