"""The site file: load ``hub_config/site.yaml`` and validate it into plain dataclasses.

Every fact about a site (partitions, GPU types, accounts and shares, limits, courses)
lives in that file. Errors name the offending key (``partitions.gpu.max_hours``) so an
administrator can fix the file without reading code.

This module holds the core sections (cluster, GPU types, partitions, accounts, QOS, limits,
spawn, demo users, ...) and ``load_site``; the feature sections (``workshops``, ``usage``,
``data``, ``runs``) load in ``site_sections``, and both use the helpers in ``site_base``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from aifactory.site_base import NAME_RE as NAME_RE  # re-exported: other modules import it from here
from aifactory.site_base import USERNAME_RE, SiteError, _check_unknown, _get, _name, _positive
from aifactory.site_sections import GROUP_PREFIX_RE as GROUP_PREFIX_RE
from aifactory.site_sections import RUNS_FOLDER_RE as RUNS_FOLDER_RE
from aifactory.site_sections import (
    DataSettings,
    RunSettings,
    UsageSettings,
    WorkshopSettings,
    _load_data,
    _load_runs,
    _load_usage,
    _load_workshops,
)


@dataclass(frozen=True)
class GpuType:
    name: str
    count: int
    description: str = ""
    # GPU slices (Slurm gres/shard) per GPU: 0 = whole GPUs only
    shards: int = 0


@dataclass(frozen=True)
class Node:
    """A compute node of the local demo/CI cluster (``cluster.nodes``)."""

    name: str  # "local": this machine, under its host name
    cpus: int
    memory_mb: int
    gpus: dict[str, int] = field(default_factory=dict)  # GPU type -> count on this node
    # its own network namespace with its own address: the path a real cluster's nodes take
    netns: bool = False


@dataclass(frozen=True)
class Partition:
    name: str
    description: str
    gpus: bool
    max_hours: int
    default: bool = False


@dataclass(frozen=True)
class Account:
    name: str
    shares: int
    description: str = ""
    parent: str = ""
    # GPU-hours the account (with its sub-accounts) may use per month; None = no limit
    gpu_hours_per_month: int | None = None


@dataclass(frozen=True)
class Qos:
    name: str
    description: str
    max_hours: int
    max_gpus_per_user: int
    priority: int = 0
    # GPU slices (shards) a user may hold at once in this QOS; 0 = no slices
    max_gpu_slices_per_user: int = 0


@dataclass(frozen=True)
class Range:
    min: int
    max: int
    default: int


@dataclass(frozen=True)
class DemoUser:
    name: str
    account: str
    qos: tuple[str, ...]
    extra_accounts: tuple[str, ...] = ()


@dataclass(frozen=True)
class Site:
    path: Path
    cluster_name: str
    node_cpus: int
    node_memory_mb: int
    default_mem_per_cpu_mb: int
    gpu_types: dict[str, GpuType]
    partitions: dict[str, Partition]
    accounts: dict[str, Account]
    qos: dict[str, Qos]
    limits: dict[str, Range]
    max_queue_wait_seconds: int
    startup_seconds: int
    groups: dict[str, tuple[str, ...]]
    demo_users: dict[str, DemoUser]
    authentication: dict
    culler_timeout_seconds: int
    culler_every_seconds: int
    courses_dir: Path
    workshops: WorkshopSettings = field(default_factory=WorkshopSettings)
    nodes: tuple[Node, ...] = ()
    reconcile_seconds: int = 60
    # starts the hub handles at once (pending in the queue included); more are told to retry
    concurrent_spawn_limit: int = 200
    usage: UsageSettings = field(default_factory=UsageSettings)
    data: DataSettings = field(default_factory=DataSettings)
    runs: RunSettings = field(default_factory=RunSettings)
    # minutes before a session's time limit at which open notebooks are saved and the user is
    # warned (Slurm's --signal); 0 = no warning
    walltime_warning_minutes: int = 5
    raw: dict = field(repr=False, compare=False, default_factory=dict)

    @property
    def default_partition(self) -> Partition:
        for partition in self.partitions.values():
            if partition.default:
                return partition
        return next(iter(self.partitions.values()))

    @property
    def total_gpus(self) -> int:
        return sum(g.count for g in self.gpu_types.values())

    @property
    def total_cpus(self) -> int:
        return sum(n.cpus for n in self.nodes) or self.node_cpus

    @property
    def total_memory_mb(self) -> int:
        return sum(n.memory_mb for n in self.nodes) or self.node_memory_mb

    @property
    def total_gpu_slices(self) -> int:
        return sum(g.count * g.shards for g in self.gpu_types.values())

    @property
    def shared_gpu_types(self) -> list[str]:
        return [g.name for g in self.gpu_types.values() if g.shards]


def _load_gpu_types(raw: dict) -> dict[str, GpuType]:
    types = {}
    for name, spec in _get(raw, "gpu_types", "site", dict).items():
        where = f"gpu_types.{name}"
        _name(name, where)
        _check_unknown(spec, {"count", "description", "shards"}, where)
        types[name] = GpuType(
            name,
            _positive(_get(spec, "count", where, int), f"{where}.count"),
            _get(spec, "description", where, str, ""),
            _positive(_get(spec, "shards", where, int, 0), f"{where}.shards"),
        )
    return types


def _load_partitions(raw: dict) -> dict[str, Partition]:
    partitions = {}
    for name, spec in _get(raw, "partitions", "site", dict).items():
        where = f"partitions.{name}"
        _name(name, where)
        _check_unknown(spec, {"description", "gpus", "max_hours", "default"}, where)
        partitions[name] = Partition(
            name=name,
            description=_get(spec, "description", where, str, ""),
            gpus=_get(spec, "gpus", where, bool),
            max_hours=_positive(_get(spec, "max_hours", where, int), f"{where}.max_hours"),
            default=_get(spec, "default", where, bool, False),
        )
    if not partitions:
        raise SiteError("partitions: at least one partition is needed")
    return partitions


def _gpu_hours(spec: dict, where: str) -> int | None:
    if "gpu_hours_per_month" not in spec:
        return None
    return _positive(_get(spec, "gpu_hours_per_month", where, int), f"{where}.gpu_hours_per_month")


def _account_name(name: str, where: str) -> str:
    _name(name, where)
    if name == "root":
        raise SiteError(f"{where}: 'root' is Slurm's own top account; choose another name")
    return name


def _load_accounts(raw: dict) -> dict[str, Account]:
    accounts = {}
    for name, spec in _get(raw, "accounts", "site", dict).items():
        where = f"accounts.{name}"
        _account_name(name, where)
        _check_unknown(spec, {"shares", "description", "subaccounts", "gpu_hours_per_month"}, where)
        if name in accounts:
            raise SiteError(f"{where}: account {name!r} is defined twice")
        accounts[name] = Account(
            name, _positive(_get(spec, "shares", where, int), f"{where}.shares"),
            _get(spec, "description", where, str, ""), gpu_hours_per_month=_gpu_hours(spec, where),
        )
        for sub, subspec in _get(spec, "subaccounts", where, dict, {}).items():
            subwhere = f"{where}.subaccounts.{sub}"
            _account_name(sub, subwhere)
            if sub in accounts or sub in raw["accounts"]:
                raise SiteError(f"{subwhere}: account {sub!r} is defined twice")
            _check_unknown(subspec, {"shares", "description", "gpu_hours_per_month"}, subwhere)
            accounts[sub] = Account(
                sub,
                _positive(_get(subspec, "shares", subwhere, int), f"{subwhere}.shares"),
                _get(subspec, "description", subwhere, str, ""),
                parent=name,
                gpu_hours_per_month=_gpu_hours(subspec, subwhere),
            )
    return accounts


def _load_qos(raw: dict) -> dict[str, Qos]:
    qos = {}
    for name, spec in _get(raw, "qos", "site", dict).items():
        where = f"qos.{name}"
        _name(name, where)
        _check_unknown(spec, {"description", "max_hours", "max_gpus_per_user", "max_gpu_slices_per_user",
                              "priority"}, where)
        qos[name] = Qos(
            name,
            _get(spec, "description", where, str, ""),
            _get(spec, "max_hours", where, int),
            _get(spec, "max_gpus_per_user", where, int),
            _get(spec, "priority", where, int, 0),
            _positive(_get(spec, "max_gpu_slices_per_user", where, int, 0), f"{where}.max_gpu_slices_per_user"),
        )
    return qos


def _load_limits(raw: dict) -> dict[str, Range]:
    limits = {}
    spec = _get(raw, "limits", "site", dict)
    _check_unknown(spec, {"cpus", "memory_gb", "hours", "gpus", "gpu_slices"}, "limits")
    for key in ("cpus", "memory_gb", "hours", "gpus", "gpu_slices"):
        where = f"limits.{key}"
        # GPU slices are optional: a site without shared GPUs offers none
        item = _get(spec, key, "limits", dict, {"min": 0, "max": 0, "default": 0} if key == "gpu_slices" else ...)
        rng = Range(
            _get(item, "min", where, int), _get(item, "max", where, int), _get(item, "default", where, int)
        )
        if not rng.min <= rng.default <= rng.max:
            raise SiteError(f"{where}: need min <= default <= max, got {rng}")
        limits[key] = rng
    return limits


def _load_demo_users(raw: dict, accounts: dict, qos: dict) -> dict[str, DemoUser]:
    users = {}
    for name, spec in _get(raw, "demo_users", "site", dict, {}).items():
        where = f"demo_users.{name}"
        _name(name, where, USERNAME_RE)
        if isinstance(spec, dict) and "password" in spec:
            # the site file is readable by every local user: it holds facts, never secrets
            raise SiteError(f"{where}.password: passwords do not belong in the site file; the local "
                            "cluster generates them into a root-only file (see README)")
        _check_unknown(spec, {"account", "qos", "extra_accounts"}, where)
        account = _get(spec, "account", where, str)
        extra = tuple(_get(spec, "extra_accounts", where, list, []))
        for acc in (account, *extra):
            if acc not in accounts:
                raise SiteError(f"{where}: unknown account {acc!r} (known: {', '.join(accounts)})")
        user_qos = tuple(_get(spec, "qos", where, list))
        for q in user_qos:
            if q not in qos:
                raise SiteError(f"{where}.qos: unknown QOS {q!r} (known: {', '.join(qos)})")
        users[name] = DemoUser(name, account, user_qos, extra)
    return users


def _load_nodes(cluster: dict, gpu_types: dict[str, GpuType]) -> tuple[Node, ...]:
    """``cluster.nodes``, or one node with every GPU (``cluster.node_cpus`` / ``node_memory_mb``)."""
    if "nodes" not in cluster:
        return (Node("local", _get(cluster, "node_cpus", "cluster", int),
                     _get(cluster, "node_memory_mb", "cluster", int),
                     {g.name: g.count for g in gpu_types.values() if g.count}),)
    nodes = []
    counted = dict.fromkeys(gpu_types, 0)
    for name, spec in _get(cluster, "nodes", "cluster", dict).items():
        where = f"cluster.nodes.{name}"
        _name(name, where)
        _check_unknown(spec, {"cpus", "memory_mb", "gpus", "netns"}, where)
        gpus = _get(spec, "gpus", where, dict, {})
        for gpu, count in gpus.items():
            if gpu not in gpu_types:
                raise SiteError(f"{where}.gpus: unknown GPU type {gpu!r} (known: {', '.join(gpu_types)})")
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise SiteError(f"{where}.gpus.{gpu}: expected a count, got {count!r}")
            counted[gpu] += count
        nodes.append(Node(name, _positive(_get(spec, "cpus", where, int), f"{where}.cpus"),
                          _positive(_get(spec, "memory_mb", where, int), f"{where}.memory_mb"),
                          dict(gpus), _get(spec, "netns", where, bool, False)))
    if [n.name for n in nodes].count("local") != 1:
        raise SiteError("cluster.nodes: exactly one node must be 'local' (this machine)")
    for gpu, count in counted.items():
        if count != gpu_types[gpu].count:
            raise SiteError(f"cluster.nodes: the nodes hold {count} {gpu} GPU(s) but gpu_types.{gpu}.count "
                            f"is {gpu_types[gpu].count}")
    return tuple(nodes)


# Slurm's --signal takes at most 65535 s before the end; an hour is more than any session needs
MAX_WALLTIME_WARNING_MINUTES = 60


def _walltime_warning(spawn: dict) -> int:
    minutes = _get(spawn, "walltime_warning_minutes", "spawn", int, 5)
    if not 0 <= minutes <= MAX_WALLTIME_WARNING_MINUTES:
        raise SiteError(f"spawn.walltime_warning_minutes: must be 0 (no warning) to "
                        f"{MAX_WALLTIME_WARNING_MINUTES}, got {minutes}")
    return minutes


def load_site(path: str | Path) -> Site:
    """Read and validate a site file. Raises SiteError naming the bad key."""
    path = Path(path).resolve()
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SiteError(f"site file {path} not found") from None
    except yaml.YAMLError as e:
        raise SiteError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise SiteError(f"{path}: expected a mapping at the top level")
    _check_unknown(
        raw,
        {"cluster", "gpu_types", "partitions", "accounts", "qos", "limits", "spawn", "groups",
         "demo_users", "authentication", "culler", "courses_dir", "workshops", "usage", "data", "runs"},
        "site",
    )
    cluster = _get(raw, "cluster", "site", dict)
    accounts = _load_accounts(raw)
    qos = _load_qos(raw)
    spawn = _get(raw, "spawn", "site", dict)
    culler = _get(raw, "culler", "site", dict, {})
    auth = _get(raw, "authentication", "site", dict, {"method": "pam"})
    if auth.get("method", "pam") not in ("pam", "oidc"):
        raise SiteError(f"authentication.method: must be pam or oidc, got {auth.get('method')!r}")
    groups = {
        _name(group, f"groups.{group}"): tuple(members)
        for group, members in _get(raw, "groups", "site", dict, {}).items()
    }
    partitions = _load_partitions(raw)
    gpu_types = _load_gpu_types(raw)
    nodes = _load_nodes(cluster, gpu_types)
    local = next(n for n in nodes if n.name == "local")
    site = Site(
        path=path,
        cluster_name=_name(_get(cluster, "name", "cluster", str), "cluster.name"),
        node_cpus=local.cpus,
        node_memory_mb=local.memory_mb,
        default_mem_per_cpu_mb=_get(cluster, "default_mem_per_cpu_mb", "cluster", int),
        gpu_types=gpu_types,
        partitions=partitions,
        accounts=accounts,
        qos=qos,
        limits=_load_limits(raw),
        max_queue_wait_seconds=_get(spawn, "max_queue_wait_seconds", "spawn", int),
        startup_seconds=_get(spawn, "startup_seconds", "spawn", int),
        reconcile_seconds=_positive(_get(spawn, "reconcile_seconds", "spawn", int, 60), "spawn.reconcile_seconds"),
        concurrent_spawn_limit=_positive(_get(spawn, "concurrent_spawn_limit", "spawn", int, 200),
                                         "spawn.concurrent_spawn_limit"),
        groups=groups,
        demo_users=_load_demo_users(raw, accounts, qos),
        authentication=auth,
        culler_timeout_seconds=_get(culler, "timeout_seconds", "culler", int, 3600),
        culler_every_seconds=_get(culler, "every_seconds", "culler", int, 300),
        courses_dir=(path.parent / _get(raw, "courses_dir", "site", str, "../courses")).resolve(),
        workshops=_load_workshops(raw, accounts, qos, partitions),
        nodes=nodes,
        usage=_load_usage(raw, accounts),
        data=_load_data(raw, path.parent),
        runs=_load_runs(raw),
        walltime_warning_minutes=_walltime_warning(spawn),
        raw=raw,
    )
    return site
