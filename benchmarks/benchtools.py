"""Shared parts of the scale benchmarks: users, hubs (ours and stock), storms, call counting.

Everything runs on this machine's local cluster and loopback; every benchmark removes what it
made. Stock means batchspawner's ``SlurmSpawner`` configured as its documentation says, on the
same hub configuration, cluster and users, in the same run.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "src")]

from hubtools import Hub  # noqa: E402

VENV = "/opt/aifactory/venv"
SITE_FILE = ROOT / "hub_config" / "site.yaml"
PRIVILEGED = [sys.executable, "-m", "aifactory.workshops.privileged"]
SLURM_COMMANDS = ("squeue", "sacct", "scontrol", "sbatch", "scancel", "sinfo", "sacctmgr")
CPU_SESSION = {"partition": "cpu", "gpus": 0, "cpus": 1, "memory_gb": 1, "hours": 1}


def stock_args(cmd: str, prefix: str = "sudo -E -u {username}") -> list[str]:
    return [
        "--JupyterHub.spawner_class=batchspawner.SlurmSpawner",
        f"--SlurmSpawner.batchspawner_singleuser_cmd={VENV}/bin/batchspawner-singleuser",
        f"--SlurmSpawner.cmd={cmd}",
        f"--SlurmSpawner.exec_prefix={prefix}",
        "--SlurmSpawner.req_partition=cpu",
        "--SlurmSpawner.req_memory=1G",
        "--SlurmSpawner.req_nprocs=1",
        "--SlurmSpawner.req_runtime=01:00:00",
        "--SlurmSpawner.startup_poll_interval=0.5",
        # the job's start time, for the hub-overhead figure (ours prints it in its own script)
        "--SlurmSpawner.req_prologue=echo \"AI factory session: started $(date +%s.%N)\"",
    ]


def standin(kind: str) -> str:
    return f"{VENV}/bin/aifactory-standin" if kind == "standin" else f"{VENV}/bin/jupyterhub-singleuser"


def ours_args(kind: str, prefix: str = "") -> list[str]:
    # the hub's own defaults, not the test suite's (which caches nothing)
    args = [f"--AIFactorySpawner.cmd={standin(kind)}", "--AIFactorySpawner.context_cache_seconds=30"]
    if prefix:
        args.append(f"--AIFactorySpawner.exec_prefix={prefix}")
    return args


# ---------------------------------------------------------------- users


def make_users(count: int, tag: str) -> list[str]:
    """Unix users with a Slurm association (made like workshop walk-ins), in batches of 99."""
    users = []
    for batch in range((count + 98) // 99):
        name = f"{tag}{batch}"
        n = min(99, count - 99 * batch)
        out = subprocess.run([*PRIVILEGED, "walkin-create", "--workshop", name, "--count", str(n),
                              "--account", "uni-teaching", "--qos", "interactive", "--expires", "2099-01-01"],
                             capture_output=True, text=True)
        if out.returncode != 0:
            remove_users(users)
            sys.exit(f"could not create benchmark users: {out.stderr.strip()}")
        users += [f"wk-{name}-{i:02d}" for i in range(1, n + 1)]
    return users


def remove_users(users: list[str]) -> None:
    if users:
        cancel_jobs_of(users)
        subprocess.run([*PRIVILEGED, "walkin-remove", "--users", ",".join(users)], capture_output=True)


def cancel_jobs_of(users: list[str]) -> None:
    """scancel takes one user; squeue takes a list: cancel by job id."""
    jobs = subprocess.run(["squeue", "-h", "-u", ",".join(users), "-o", "%i"], capture_output=True,
                          text=True).stdout.split()
    if jobs:
        subprocess.run(["scancel", *jobs], capture_output=True)


def register(hub: Hub, users: list[str]) -> None:
    """The hub's admin creates them in the hub (they never log in: the admin starts their servers)."""
    for i in range(0, len(users), 100):
        r = hub.api("admin1", "POST", "/users", json={"usernames": users[i:i + 100]})
        assert r.status_code in (201, 409), r.text


def wait_no_jobs(users: list[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not subprocess.run(["squeue", "-h", "-u", ",".join(users)], capture_output=True, text=True).stdout.strip():
            return
        time.sleep(1)


# ---------------------------------------------------------------- counting Slurm calls


class CallCounter:
    """Wrappers in front of the Slurm commands that log each call, for the hub and for sudo'd calls."""

    def __init__(self, root: Path):
        self.bin = root / "bin"
        self.log = root / "calls.log"
        self.bin.mkdir(parents=True)
        # the users' sudo'd calls must reach the wrappers and the log: every folder above them
        for folder in (root, *root.parents):
            if folder.stat().st_mode & 0o011 != 0o011 and str(folder).startswith("/tmp/"):
                folder.chmod(folder.stat().st_mode | 0o011)
        root.chmod(0o755)
        self.log.touch()
        self.log.chmod(0o666)  # the users' sudo'd calls log here too
        for command in SLURM_COMMANDS:
            wrapper = self.bin / command
            wrapper.write_text(f"#!/bin/sh\necho {command} >> {self.log}\nexec /usr/bin/{command} \"$@\"\n")
            wrapper.chmod(0o755)

    @property
    def env(self) -> dict:
        return {"PATH": f"{self.bin}:{os.environ.get('PATH', '/usr/bin:/bin')}"}

    @property
    def prefix(self) -> str:
        return f"sudo -E -u {{username}} env PATH={self.bin}:/usr/bin:/bin"

    def reset(self) -> None:
        self.log.write_text("")

    def counts(self) -> dict[str, int]:
        lines = self.log.read_text().split()
        return {c: lines.count(c) for c in SLURM_COMMANDS if lines.count(c)}


# ---------------------------------------------------------------- storms


def storm(hub: Hub, users: list[str], options: dict, timeout: float, name: str = "") -> dict:
    """Start every user's server at once (admin API); one poller records when each is ready."""
    headers = {"Authorization": f"token {hub.token('admin1')}"}
    started: dict[str, float] = {}
    ready: dict[str, float] = {}
    failed: dict[str, str] = {}
    polls: list[float] = []

    def start(user: str) -> None:
        path = f"/users/{user}/servers/{name}" if name else f"/users/{user}/server"
        started[user] = time.monotonic()
        try:
            r = requests.post(f"{hub.url}/hub/api{path}", json=options, headers=headers, timeout=300)
        except requests.RequestException as e:
            failed[user] = str(e)[:120]
            return
        if r.status_code not in (201, 202):
            failed[user] = f"{r.status_code} {r.text[:120]}"

    def poll() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(ready) + len(failed) < len(users):
            asked = time.monotonic()
            try:
                answer = all_users(hub, headers)
            except requests.RequestException:
                continue
            polls.append(time.monotonic() - asked)
            now = time.monotonic()
            for user in answer:
                server = (user.get("servers") or {}).get(name)
                if user["name"] in started and user["name"] not in ready and server and server.get("ready"):
                    ready[user["name"]] = now - started[user["name"]]
            time.sleep(0.25)

    cpu_before = hub_cpu_seconds(hub)
    t0 = time.monotonic()
    poller = threading.Thread(target=poll)
    with ThreadPoolExecutor(min(len(users), 100)) as pool:
        futures = [pool.submit(start, u) for u in users]
        poller.start()
        for f in futures:
            f.result()
    spread = max(started.values()) - t0
    poller.join()
    return {"ready": ready, "failed": failed, "submit_spread": spread, "polls": polls,
            "hub_cpu": hub_cpu_seconds(hub) - cpu_before, "users": len(users)}


def all_users(hub: Hub, headers: dict) -> list[dict]:
    """Every user with their servers: the hub answers at most 200 a page."""
    users, offset = [], 0
    while True:
        page = requests.get(f"{hub.url}/hub/api/users", params={"offset": offset}, timeout=60,
                            headers={**headers, "Accept": "application/jupyterhub-pagination+json"}).json()
        users += page["items"]
        following = (page.get("_pagination") or {}).get("next")
        if not following:
            return users
        offset = following["offset"]


def hub_cpu_seconds(hub: Hub) -> float:
    fields = Path(f"/proc/{hub.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


def summary(label: str, result: dict) -> str:
    times = list(result["ready"].values())
    median = statistics.median(times) if times else float("nan")
    return (f"{label:34s} ready {len(times):>3}/{result['users']:<3}  p50 {median:5.1f} s  "
            f"p95 {percentile(times, 0.95):5.1f} s  max {max(times, default=float('nan')):5.1f} s  "
            f"failed {len(result['failed']):>3}  hub CPU {result['hub_cpu']:5.1f} s  "
            f"(requests sent within {result['submit_spread']:.1f} s)")


def stop_all(hub: Hub, users: list[str], name: str = "") -> None:
    headers = {"Authorization": f"token {hub.token('admin1')}"}

    def stop(user):
        path = f"/users/{user}/servers/{name}" if name else f"/users/{user}/server"
        try:
            requests.delete(f"{hub.url}/hub/api{path}", headers=headers, timeout=120)
        except requests.RequestException:
            pass

    with ThreadPoolExecutor(20) as pool:
        list(pool.map(stop, users))
    cancel_jobs_of(users)
    wait_no_jobs(users)
