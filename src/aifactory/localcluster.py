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
from pathlib import Path

from .security import DEMO_PASSWORDS_FILE, ensure_demo_passwords
from .site import Site

SLURM_ETC = Path("/etc/slurm")
STATE = Path("/var/lib/slurm")
LOGS = Path("/var/log/slurm")
DB_NAME = "slurm_acct_db"
DB_USER = "slurm"
DB_PASSWORD = "aifactory-local-slurmdbd"
DEBIAN_PACKAGES = [
    "munge", "mariadb-server", "slurmdbd", "slurmctld", "slurmd", "slurm-client", "sudo",
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


def gpu_devices(site: Site) -> list[tuple[str, list[int]]]:
    """(gpu type, minor numbers) in site order: h100 -> [0, 1], a100 -> [2, 3]."""
    devices, minor = [], 0
    for gpu in site.gpu_types.values():
        devices.append((gpu.name, list(range(minor, minor + gpu.count))))
        minor += gpu.count
    return devices


def _device_range(minors: list[int]) -> str:
    return f"/dev/fakegpu[{minors[0]}-{minors[-1]}]" if len(minors) > 1 else f"/dev/fakegpu{minors[0]}"


def render_slurm_conf(site: Site, host: str) -> str:
    gres = ",".join(f"gpu:{g.name}:{g.count}" for g in site.gpu_types.values() if g.count)
    tres = ",".join(["gres/gpu"] + [f"gres/gpu:{name}" for name in site.gpu_types])
    if site.total_gpu_slices:
        # GPU slices: Slurm's gres/shard, several jobs on one GPU (CUDA_VISIBLE_DEVICES names it)
        gres += f",shard:{site.total_gpu_slices}"
        tres += ",gres/shard"
    lines = [
        f"ClusterName={site.cluster_name}",
        f"SlurmctldHost={host}(127.0.0.1)",
        "SlurmUser=slurm",
        "AuthType=auth/munge",
        f"StateSaveLocation={STATE}/slurmctld",
        f"SlurmdSpoolDir={STATE}/slurmd",
        "SlurmctldPidFile=/run/slurmctld.pid",
        "SlurmdPidFile=/run/slurmd.pid",
        f"SlurmctldLogFile={LOGS}/slurmctld.log",
        f"SlurmdLogFile={LOGS}/slurmd.log",
        # no cgroups in a container; these two are known to work here
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/linux",
        "MpiDefault=none",
        "SwitchType=switch/none",
        "ReturnToService=2",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        # the node advertises site.node_cpus CPUs: over-subscription for the local demo
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
        f"NodeName={host} NodeAddr=127.0.0.1 CPUs={site.node_cpus} "
        f"RealMemory={site.node_memory_mb} Gres={gres} State=UNKNOWN",
    ]
    for partition in site.partitions.values():
        default = "YES" if partition.default else "NO"
        lines.append(
            f"PartitionName={partition.name} Nodes={host} Default={default} "
            f"MaxTime={partition.max_hours}:00:00 State=UP"
        )
    return "\n".join(lines) + "\n"


def render_gres_conf(site: Site, host: str) -> str:
    lines = ["AutoDetect=off"]
    for name, minors in gpu_devices(site):
        if minors:
            lines.append(f"NodeName={host} Name=gpu Type={name} File={_device_range(minors)}")
    for gpu, (_, minors) in zip(site.gpu_types.values(), gpu_devices(site), strict=True):
        # one line per GPU: the shards of a GPU share its device file (and take its type)
        for minor in minors if gpu.shards else ():
            lines.append(f"NodeName={host} Name=shard Count={gpu.shards} File=/dev/fakegpu{minor}")
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


def write_configs(site: Site) -> bool:
    """Write the Slurm configuration; True when slurm.conf or gres.conf changed."""
    host = hostname()
    SLURM_ETC.mkdir(parents=True, exist_ok=True)
    changed = _write_if_changed(SLURM_ETC / "slurm.conf", render_slurm_conf(site, host))
    changed |= _write_if_changed(SLURM_ETC / "gres.conf", render_gres_conf(site, host))
    dbd = SLURM_ETC / "slurmdbd.conf"
    dbd.write_text(render_slurmdbd_conf())
    shutil.chown(dbd, "slurm", "slurm")
    dbd.chmod(0o600)
    for directory in (STATE / "slurmctld", STATE / "slurmd", LOGS):
        directory.mkdir(parents=True, exist_ok=True)
        shutil.chown(directory, "slurm", "slurm")
    return changed


def make_fake_gpus(site: Site) -> None:
    """Character devices: plain files leave CUDA_VISIBLE_DEVICES empty in jobs."""
    for _, minors in gpu_devices(site):
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
    log("configuring accounts, fair-share and QOS")
    for qos in site.qos.values():
        sacctmgr("add", "qos", qos.name)
        per_user = f"gres/gpu={qos.max_gpus_per_user}"
        if site.total_gpu_slices:
            per_user += f",gres/shard={qos.max_gpu_slices_per_user}"
        sacctmgr("modify", "qos", qos.name, "set",
                 f"MaxWall={qos.max_hours}:00:00",
                 f"MaxTRESPerUser={per_user}",
                 f"Priority={qos.priority}")
    for account in site.accounts.values():
        args = ["add", "account", account.name, f"Cluster={site.cluster_name}",
                f"Description={account.description or account.name}", f"Fairshare={account.shares}"]
        if account.parent:
            args.append(f"Parent={account.parent}")
        sacctmgr(*args)
        sacctmgr("modify", "account", account.name, "set", f"Fairshare={account.shares}")
    for user in site.demo_users.values():
        for account in (user.account, *user.extra_accounts):
            sacctmgr("add", "user", user.name, f"Account={account}", f"Cluster={site.cluster_name}")
        sacctmgr("modify", "user", user.name, "set", f"DefaultAccount={user.account}")
        sacctmgr("modify", "user", user.name, "set", f"QOS={','.join(user.qos)}",
                 f"DefaultQOS={user.qos[0]}")


def node_state() -> str:
    """State of the (single) node, e.g. 'idle', 'mixed', 'down*'; '' if unknown."""
    lines = run(["sinfo", "-h", "-N", "-o", "%T"], check=False).stdout.split()
    return lines[0] if lines else ""


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


def start_slurmd(site: Site) -> None:
    if not is_running("slurmd"):
        log("starting slurmd")
        run(["/usr/sbin/slurmd"])
    wait_for("the node to register", lambda: node_state() not in ("", "unknown", "down*"), 60)
    state = node_state()
    if state.startswith(("down", "drain")):
        run(["scontrol", "update", f"NodeName={hostname()}", "State=RESUME"], check=False)
    wait_for("the node to become usable",
             lambda: node_state().rstrip("*") in ("idle", "mixed", "allocated"), 60)


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
    changed = write_configs(site)
    make_fake_gpus(site)
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
    start_slurmd(site)
    log(f"Slurm cluster {site.cluster_name!r} is up: {node_state()} node {hostname()}")


def _stop_daemon(name: str) -> None:
    if not is_running(name):
        return
    log(f"stopping {name}")
    run(["pkill", "-x", name], check=False)
    wait_for(f"{name} to exit", lambda: not is_running(name), 30)


def stop(everything: bool = False) -> None:
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


def status() -> dict[str, bool]:
    return {name: is_running(name) for name in ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd")}
