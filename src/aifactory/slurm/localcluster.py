"""A real single-node Slurm cluster on this machine, for the demo and the test suite.

munged, MariaDB, slurmdbd (accounting), slurmctld and slurmd, with fake GPUs (character
devices) of the site's GPU types, the site's partitions, fair-share accounts and QOS, and
the demo unix users. ``start()`` is idempotent; ``stop()`` cancels jobs before stopping
slurmd. Everything is derived from the site file; nothing here is specific to one site.

Needs root. Production clusters are set up by their administrators, not by this module.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from aifactory.security import DEMO_PASSWORDS_FILE, ensure_demo_passwords
from aifactory.site import Node as SiteNode
from aifactory.site import Site
from aifactory.slurm import accounts, netns
from aifactory.slurm.queries import SlurmCommandError, SlurmUnavailable

SLURM_ETC = Path("/etc/slurm")
STATE = Path("/var/lib/slurm")
LOGS = Path("/var/log/slurm")
DB_NAME = "slurm_acct_db"
DB_USER = "slurm"
DB_PASSWORD = "aifactory-local-slurmdbd"
DEBIAN_PACKAGES = [
    "munge", "mariadb-server", "slurmdbd", "slurmctld", "slurmd", "slurm-client", "sudo", "iproute2",
]


class ClusterError(RuntimeError):
    pass


def log(message: str) -> None:
    print(f"[cluster] {message}", flush=True)


def run(cmd: list[str], check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if check and result.returncode != 0:
        raise ClusterError(f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def hostname() -> str:
    return socket.gethostname().split(".")[0]


def is_running(process_name: str) -> bool:
    return run(["pgrep", "-x", process_name], check=False).returncode == 0


def wait_for(what: str, probe, timeout: float = 60, interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return
        time.sleep(interval)
    raise ClusterError(f"timed out after {timeout:.0f} s waiting for {what}")


# ---------------------------------------------------------------- configuration files


@dataclass(frozen=True)
class NodePlan:
    """A node of the local cluster as Slurm sees it: name, address, its GPUs' device minors."""

    name: str
    address: str
    cpus: int
    memory_mb: int
    gpus: dict[str, list[int]]  # GPU type -> minors of /dev/fakegpuN
    namespace: netns.NamespaceNode | None = None

    @property
    def weight(self) -> int:
        # the scheduler fills the machine's own node first; the others take what it cannot
        return 10 if self.namespace else 1


def node_plan(site: Site, host: str, namespaces: bool | None = None) -> list[NodePlan]:
    """The site's nodes; without network namespaces, every node folds into this machine's."""
    namespaces = namespaces_usable(site) if namespaces is None else namespaces
    nodes = list(site.nodes)
    if not namespaces:
        merged: dict[str, int] = {}
        for node in nodes:
            for gpu, count in node.gpus.items():
                merged[gpu] = merged.get(gpu, 0) + count
        local = next(n for n in nodes if n.name == "local")
        nodes = [SiteNode("local", local.cpus, local.memory_mb, merged)]
    plans, minor, index = [], 0, netns.FIRST_INDEX
    for node in nodes:
        gpus = {}
        for gpu in site.gpu_types:  # site order, so minors are stable: h100 -> 0, 1, ...
            count = node.gpus.get(gpu, 0)
            if count:
                gpus[gpu] = list(range(minor, minor + count))
                minor += count
        if node.name == "local" or not node.netns:
            plans.append(NodePlan(host if node.name == "local" else node.name, "", node.cpus, node.memory_mb, gpus))
        else:
            ns = netns.NamespaceNode(node.name, index)
            index += 1
            plans.append(NodePlan(node.name, ns.address, node.cpus, node.memory_mb, gpus, ns))
    # with namespace nodes, the machine's own node is reached at its side of the first veth pair
    # (from every namespace), not at 127.0.0.1 (which is each namespace's own)
    address = controller_address(plans)
    return [p if p.address else NodePlan(p.name, address, p.cpus, p.memory_mb, p.gpus) for p in plans]


def namespaces_usable(site: Site) -> bool:
    if not any(n.netns for n in site.nodes):
        return False
    ok, why = netns.supported()
    if not ok:
        log(f"this machine cannot create network namespaces ({why}): every node of the site file "
            "runs as one node on this machine")
    return ok


def controller_address(plans: list[NodePlan]) -> str:
    """Where slurmctld, the hub and the proxy are reached: 127.0.0.1, or the machine's veth side."""
    return next((p.namespace.machine_address for p in plans if p.namespace), "127.0.0.1")


def hub_address(site: Site) -> str:
    """The address the hub binds and jobs call back: reachable from every node's namespace."""
    for plan in node_plan(site, hostname(), namespaces=True):
        if plan.namespace and netns.exists(plan.namespace):
            return plan.namespace.machine_address
    return "127.0.0.1"


def _device_range(minors: list[int]) -> str:
    return f"/dev/fakegpu[{minors[0]}-{minors[-1]}]" if len(minors) > 1 else f"/dev/fakegpu{minors[0]}"


def render_slurm_conf(site: Site, host: str, plans: list[NodePlan] | None = None) -> str:
    plans = plans if plans is not None else node_plan(site, host, namespaces=False)
    tres = ",".join(["gres/gpu"] + [f"gres/gpu:{name}" for name in site.gpu_types])
    if site.total_gpu_slices:
        tres += ",gres/shard"
    lines = [
        f"ClusterName={site.cluster_name}",
        f"SlurmctldHost={host}({controller_address(plans)})",
        "SlurmUser=slurm",
        "AuthType=auth/munge",
        f"StateSaveLocation={STATE}/slurmctld",
        # one slurmd per node on this machine: %n keeps their files apart
        f"SlurmdSpoolDir={STATE}/slurmd/%n",
        "SlurmctldPidFile=/run/slurmctld.pid",
        "SlurmdPidFile=/run/slurmd-%n.pid",
        f"SlurmctldLogFile={LOGS}/slurmctld.log",
        f"SlurmdLogFile={LOGS}/slurmd-%n.log",
        # no cgroups in a container; these two are known to work here
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/linux",
        "MpiDefault=none",
        "SwitchType=switch/none",
        "ReturnToService=2",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        # the nodes advertise the site's CPUs: over-subscription for the local demo
        "SlurmdParameters=config_overrides",
        f"DefMemPerCPU={site.default_mem_per_cpu_mb}",
        "GresTypes=gpu,shard" if site.total_gpu_slices else "GresTypes=gpu",
        "AccountingStorageType=accounting_storage/slurmdbd",
        "AccountingStorageHost=localhost",
        "AccountingStorageEnforce=associations,limits,qos",
        f"AccountingStorageTRES={tres}",
        "JobCompType=jobcomp/none",
        "PriorityType=priority/multifactor",
        "PriorityWeightFairshare=10000",
        "PriorityWeightQOS=1000",
        "PriorityWeightAge=100",
        "MinJobAge=120",
        "KillWait=5",
        "InactiveLimit=0",
        "Waittime=0",
        "SchedulerParameters=sched_interval=2,bf_interval=5",
    ]
    for plan in plans:
        gres = [f"gpu:{gpu}:{len(minors)}" for gpu, minors in plan.gpus.items()]
        shards = sum(len(minors) * site.gpu_types[gpu].shards for gpu, minors in plan.gpus.items())
        if shards:
            # GPU slices: Slurm's gres/shard, several jobs on one GPU (CUDA_VISIBLE_DEVICES names it)
            gres.append(f"shard:{shards}")
        lines.append(f"NodeName={plan.name} NodeAddr={plan.address} CPUs={plan.cpus} RealMemory={plan.memory_mb} "
                     f"Weight={plan.weight}" + (f" Gres={','.join(gres)}" if gres else "") + " State=UNKNOWN")
    names = ",".join(p.name for p in plans)
    for partition in site.partitions.values():
        default = "YES" if partition.default else "NO"
        lines.append(
            f"PartitionName={partition.name} Nodes={names} Default={default} "
            f"MaxTime={partition.max_hours}:00:00 State=UP"
        )
    return "\n".join(lines) + "\n"


def render_gres_conf(site: Site, host: str, plans: list[NodePlan] | None = None) -> str:
    plans = plans if plans is not None else node_plan(site, host, namespaces=False)
    lines = ["AutoDetect=off"]
    for plan in plans:
        for gpu, minors in plan.gpus.items():
            lines.append(f"NodeName={plan.name} Name=gpu Type={gpu} File={_device_range(minors)}")
        for gpu, minors in plan.gpus.items():
            # one line per GPU: the shards of a GPU share its device file (and take its type)
            for minor in minors if site.gpu_types[gpu].shards else ():
                lines.append(f"NodeName={plan.name} Name=shard Count={site.gpu_types[gpu].shards} "
                             f"File=/dev/fakegpu{minor}")
    return "\n".join(lines) + "\n"


def render_slurmdbd_conf() -> str:
    return "\n".join([
        "AuthType=auth/munge",
        "DbdHost=localhost",
        "SlurmUser=slurm",
        f"LogFile={LOGS}/slurmdbd.log",
        "PidFile=/run/slurmdbd.pid",
        "StorageType=accounting_storage/mysql",
        "StorageHost=localhost",
        f"StorageUser={DB_USER}",
        f"StoragePass={DB_PASSWORD}",
        f"StorageLoc={DB_NAME}",
    ]) + "\n"


def _write_if_changed(path: Path, text: str) -> bool:
    if path.exists() and path.read_text() == text:
        return False
    path.write_text(text)
    return True


def write_configs(site: Site, plans: list[NodePlan]) -> bool:
    """Write the Slurm configuration; True when slurm.conf or gres.conf changed."""
    host = hostname()
    SLURM_ETC.mkdir(parents=True, exist_ok=True)
    changed = _write_if_changed(SLURM_ETC / "slurm.conf", render_slurm_conf(site, host, plans))
    changed |= _write_if_changed(SLURM_ETC / "gres.conf", render_gres_conf(site, host, plans))
    dbd = SLURM_ETC / "slurmdbd.conf"
    dbd.write_text(render_slurmdbd_conf())
    shutil.chown(dbd, "slurm", "slurm")
    dbd.chmod(0o600)
    for directory in (STATE / "slurmctld", STATE / "slurmd", *(STATE / "slurmd" / p.name for p in plans), LOGS):
        directory.mkdir(parents=True, exist_ok=True)
        shutil.chown(directory, "slurm", "slurm")
    return changed


def make_fake_gpus(plans: list[NodePlan]) -> None:
    """Character devices: plain files leave CUDA_VISIBLE_DEVICES empty in jobs."""
    for minors in (m for plan in plans for m in plan.gpus.values()):
        for minor in minors:
            device = Path(f"/dev/fakegpu{minor}")
            if device.exists() and stat.S_ISCHR(device.stat().st_mode):
                continue
            device.unlink(missing_ok=True)
            os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(195, minor))


# ---------------------------------------------------------------- daemons


def install() -> None:
    missing = [p for p in DEBIAN_PACKAGES if run(["dpkg", "-s", p], check=False).returncode != 0]
    if missing:
        log(f"installing Debian packages: {' '.join(missing)}")
        run(["apt-get", "update", "-qq"])
        run(["apt-get", "install", "-y", "-qq", *missing],
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def start_munge() -> None:
    if is_running("munged"):
        return
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        run(["mungekey", "--create", "--keyfile", str(key)])
        shutil.chown(key, "munge", "munge")
        key.chmod(0o400)
    for directory in (Path("/run/munge"), Path("/var/log/munge"), Path("/var/lib/munge")):
        directory.mkdir(parents=True, exist_ok=True)
        shutil.chown(directory, "munge", "munge")
    log("starting munged")
    run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"])
    wait_for("munge", lambda: run(["munge", "-n"], check=False).returncode == 0, 20)


def _mysql(sql: str) -> subprocess.CompletedProcess:
    return run(["mysql", "-u", "root", "-e", sql])


def start_mariadb() -> None:
    if not is_running("mariadbd") and not is_running("mysqld"):
        log("starting MariaDB")
        run(["service", "mariadb", "start"])
    wait_for("MariaDB", lambda: run(["mysqladmin", "ping"], check=False).returncode == 0, 60)
    _mysql(
        f"CREATE DATABASE IF NOT EXISTS {DB_NAME};"
        f"CREATE USER IF NOT EXISTS '{DB_USER}'@'localhost' IDENTIFIED BY '{DB_PASSWORD}';"
        f"GRANT ALL ON {DB_NAME}.* TO '{DB_USER}'@'localhost'; FLUSH PRIVILEGES;"
    )


def _sacctmgr_ok() -> bool:
    return run(["sacctmgr", "-n", "show", "cluster"], check=False, timeout=20).returncode == 0


def start_slurmdbd() -> None:
    if not is_running("slurmdbd"):
        log("starting slurmdbd")
        run(["/usr/sbin/slurmdbd"])
    wait_for("slurmdbd", _sacctmgr_ok, 90, 1)


def sacctmgr(*args: str) -> None:
    """Idempotent sacctmgr: 'already exists' / 'Nothing new added' are fine."""
    result = run(["sacctmgr", "-i", *args], check=False)
    text = (result.stdout + result.stderr).lower()
    if result.returncode != 0 and "nothing new" not in text and "already exists" not in text \
            and "nothing modified" not in text:
        raise ClusterError(f"sacctmgr {' '.join(args)}: {result.stdout.strip()} {result.stderr.strip()}")


def configure_accounting(site: Site) -> None:
    """Accounts, fair-share, QOS and the demo users' associations: ``aifactory accounts apply``."""
    log("configuring accounts, fair-share and QOS")
    try:
        accounts.apply(site, say=lambda change: log(f"  {change}"))
    except (accounts.AccountsError, SlurmCommandError, SlurmUnavailable) as e:
        raise ClusterError(f"accounts: {e}") from e


def node_states() -> dict[str, str]:
    """Each node's state, e.g. {'vm': 'idle', 'aif-node2': 'down*'}."""
    out = run(["sinfo", "-h", "-N", "-o", "%N %T"], check=False).stdout.split("\n")
    return dict(line.split() for line in out if len(line.split()) == 2)


def node_state() -> str:
    """State of this machine's node, e.g. 'idle', 'mixed', 'down*'; '' if unknown."""
    return node_states().get(hostname(), "")


def start_slurmctld(site: Site) -> None:
    # the cluster must be known to slurmdbd first; slurmctld then registers the GPU TRES
    sacctmgr("add", "cluster", site.cluster_name)
    if not is_running("slurmctld"):
        log("starting slurmctld")
        run(["/usr/sbin/slurmctld"])
    wait_for("slurmctld", lambda: run(["scontrol", "ping"], check=False).stdout.count("UP") > 0, 60)
    wait_for("the GPU TRES to be registered",
             lambda: "gres|gpu\n" in run(["sacctmgr", "-n", "-P", "show", "tres", "format=type,name"],
                                       check=False).stdout, 30)


def slurmd_namespaces() -> set[str]:
    """Network namespaces ('' = the machine's own) that a running slurmd is in."""
    pids = run(["pgrep", "-x", "slurmd"], check=False).stdout.split()
    return {netns.namespace_of(int(pid)) for pid in pids}


def start_slurmd(plans: list[NodePlan]) -> None:
    running = slurmd_namespaces()
    for plan in plans:
        if plan.namespace is None and "" not in running:
            log("starting slurmd")
            run(["/usr/sbin/slurmd"])
        elif plan.namespace and plan.namespace.namespace not in running:
            log(f"starting slurmd of node {plan.name} in network namespace {plan.namespace.namespace} "
                f"({plan.address})")
            # nsenter joins the network namespace only (`ip netns exec` would remount /sys, without
            # the cgroup file system slurmd needs); its own UTS namespace gives it its node name
            run(["nsenter", f"--net=/run/netns/{plan.namespace.namespace}", "unshare", "--uts", "--",
                 "sh", "-c", f"hostname {plan.name} && exec /usr/sbin/slurmd"])
    names = [p.name for p in plans]
    wait_for("the nodes to register",
             lambda: all(node_states().get(n, "") not in ("", "unknown", "down*") for n in names), 60)
    for name, state in node_states().items():
        if state.startswith(("down", "drain")):
            run(["scontrol", "update", f"NodeName={name}", "State=RESUME"], check=False)
    wait_for("the nodes to become usable",
             lambda: all(node_states().get(n, "").rstrip("*") in ("idle", "mixed", "allocated") for n in names), 60)


def create_demo_users(site: Site, passwords_file: Path = DEMO_PASSWORDS_FILE) -> None:
    # random passwords in a root-only file (kept across runs), never in the readable site file
    passwords = ensure_demo_passwords(site.demo_users, passwords_file)
    for user in site.demo_users.values():
        if run(["id", "-u", user.name], check=False).returncode != 0:
            log(f"creating unix user {user.name}")
            run(["useradd", "--create-home", "--shell", "/bin/bash", user.name])
        run(["chpasswd"], input=f"{user.name}:{passwords[user.name]}\n")
        # other users must not read session logs and course copies (useradd's default is 0755)
        Path(run(["getent", "passwd", user.name]).stdout.split(":")[5]).chmod(0o700)


def start(site: Site) -> None:
    install()
    create_demo_users(site)
    plans = node_plan(site, hostname())
    for plan in plans:
        if plan.namespace:
            netns.create(plan.namespace)
    changed = write_configs(site, plans)
    make_fake_gpus(plans)
    if changed and (is_running("slurmctld") or is_running("slurmd")):
        # GRES changes need the daemons restarted; running jobs survive a restart
        log("the Slurm configuration changed: restarting slurmctld and slurmd")
        for daemon in ("slurmd", "slurmctld"):
            _stop_daemon(daemon)
    start_munge()
    start_mariadb()
    start_slurmdbd()
    start_slurmctld(site)
    configure_accounting(site)
    start_slurmd(plans)
    nodes = ", ".join(f"{name} ({state})" for name, state in node_states().items())
    log(f"Slurm cluster {site.cluster_name!r} is up: {nodes}")


def _stop_daemon(name: str) -> None:
    if not is_running(name):
        return
    log(f"stopping {name}")
    run(["pkill", "-x", name], check=False)
    wait_for(f"{name} to exit", lambda: not is_running(name), 30)


def stop(everything: bool = False, site: Site | None = None) -> None:
    """Cancel all jobs, then stop slurmd, slurmctld and slurmdbd (and MariaDB, munge)."""
    if is_running("slurmctld"):
        jobs = run(["squeue", "-h", "-o", "%i"], check=False).stdout.split()
        if jobs:
            log(f"cancelling {len(jobs)} job(s)")
            run(["scancel", *jobs], check=False)
            wait_for("jobs to end", lambda: not run(["squeue", "-h", "-t", "R,CG", "-o", "%i"],
                                                    check=False).stdout.strip(), 60)
    for daemon in ("slurmd", "slurmctld", "slurmdbd"):
        _stop_daemon(daemon)
    if everything:
        run(["service", "mariadb", "stop"], check=False)
        _stop_daemon("munged")
        for plan in node_plan(site, hostname(), namespaces=True) if site else ():
            if plan.namespace:
                log(f"removing network namespace {plan.namespace.namespace}")
                netns.delete(plan.namespace)


def status() -> dict[str, bool]:
    return {name: is_running(name) for name in ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd")}
