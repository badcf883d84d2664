"""Spawn request -> ready session: AIFactorySpawner against stock batchspawner SlurmSpawner.

Both hubs run from the same jupyterhub_config.py on the same local Slurm cluster, in the same run,
one after the other; the stock hub only swaps the spawner class (configured as batchspawner's
documentation says). N sequential spawns each (1 CPU, no GPU), with real JupyterLab unless
``--standin``. Prints p50/p95 time-to-ready and where the time goes, phase by phase, from wall-clock
timestamps of this machine: the request (this script), ``sbatch`` returning (the hub's log line
"Job submitted"), the job starting (the batch script's start line), the server listening
(JupyterLab's "is running at" or the stand-in's line) and the server seen ready (this script,
polling every 50 ms). The **hub-added overhead** is what the hub itself adds: request -> sbatch
returned, plus listening -> ready; Slurm's scheduling and the server's own start are not the hub's.

    /opt/aifactory/venv/bin/python benchmarks/spawn_latency.py --runs 20
"""

from __future__ import annotations

import argparse
import pwd
import re
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path

import requests
from benchtools import SITE_FILE, Hub, ours_args, percentile, standin, stock_args
from hubtools import user_jobs

OURS_OPTIONS = {"partition": "cpu", "gpus": 0, "cpus": 1, "memory_gb": 1, "hours": 1}
STARTED_RE = re.compile(r"started (\d+\.\d+)")
LAB_RE = re.compile(r"\[I (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) ServerApp\].*is running at")
STANDIN_RE = re.compile(r"standin listening (\d+\.\d+)")
SUBMITTED_RE = r"\[I (\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) JupyterHub batchspawner:\d+\] Job submitted\. output: {job_id}\b"
PHASES = ("hub: request -> sbatch returned", "Slurm: sbatch -> job started", "job: started -> server listening",
          "hub: listening -> ready seen")


def job_times(user: str, job_id: str) -> tuple[float, float] | None:
    """(job started, server listening) as unix times, from the job's log."""
    home = Path(pwd.getpwnam(user).pw_dir)
    for pattern in (f".aifactory-session-{job_id}.log", f"jupyterhub_slurmspawner_{job_id}.log",
                    f".jupyterhub_slurmspawner_{job_id}.log"):
        log = home / pattern
        if log.exists():
            text = log.read_text(errors="replace")
            started = STARTED_RE.search(text)
            lab = LAB_RE.search(text)
            listening = float(STANDIN_RE.search(text).group(1)) if STANDIN_RE.search(text) else (
                datetime.strptime(lab.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp() if lab else None)
            if started and listening:
                return float(started.group(1)), listening
    return None


def wait_ready(hub: Hub, user: str, timeout: float = 180) -> None:
    """The server is ready, seen within 50 ms (hubtools' 0.5 s polls would blur the figures)."""
    headers = {"Authorization": f"token {hub.token(user)}"}
    deadline = time.monotonic() + timeout
    with requests.Session() as session:
        while time.monotonic() < deadline:
            server = session.get(f"{hub.url}/hub/api/users/{user}", headers=headers, timeout=30).json()[
                "servers"].get("")
            if server and server.get("ready"):
                return
            time.sleep(0.05)
    raise AssertionError(f"{user}'s server not ready after {timeout} s")


def submitted_at(hub: Hub, job_id: str) -> float | None:
    match = re.search(SUBMITTED_RE.format(job_id=job_id), hub.log_tail(100000))
    return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp() if match else None


def measure(hub: Hub, user: str, options: dict, runs: int) -> tuple[list[float], list[dict[str, float]]]:
    ready_times, phases = [], []
    for _ in range(runs):
        start = time.monotonic()
        requested = time.time()
        r = hub.spawn(user, options)
        assert r.status_code in (201, 202), r.text
        wait_ready(hub, user)
        elapsed = time.monotonic() - start
        ready_times.append(elapsed)
        job_id = max((j["job_id"] for j in user_jobs(user)), key=int)  # the newest: this spawn's
        hub.api(user, "DELETE", f"/users/{user}/server")
        hub.wait_stopped(user)
        while any(j["job_id"] == job_id for j in user_jobs(user)):
            time.sleep(0.2)
        times, submitted = job_times(user, job_id), submitted_at(hub, job_id)
        if times and submitted and times[0] >= requested - 1:
            started, listening = times
            phases.append(dict(zip(PHASES, (submitted - requested, started - submitted, listening - started,
                                            requested + elapsed - listening), strict=True)))
    return ready_times, phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--user", default="researcher1")
    parser.add_argument("--standin", action="store_true", help="stand-in servers instead of JupyterLab")
    args = parser.parse_args()
    kind = "standin" if args.standin else "lab"
    results = {}
    for label, extra, options, port in (("stock SlurmSpawner", stock_args(standin(kind)), {}, 19000),
                                        ("AIFactorySpawner", ours_args(kind), OURS_OPTIONS, 19200)):
        with tempfile.TemporaryDirectory() as state:
            hub = Hub(Path(state), SITE_FILE, extra_args=extra, port=port)
            hub.start()
            try:
                measure(hub, args.user, options, 1)  # warm-up: imports, first sbatch
                results[label] = measure(hub, args.user, options, args.runs)
            finally:
                hub.stop_all_servers()
                hub.stop()
    print(f"spawn request -> ready {kind}, {args.runs} sequential runs each (user {args.user}, 1 CPU)")
    for label, (times, phases) in results.items():
        overheads = [p[PHASES[0]] + p[PHASES[3]] for p in phases]
        print(f"  {label:20s} time-to-ready p50 {statistics.median(times):6.2f} s  p95 {percentile(times, 0.95):6.2f} s"
              f"   hub-added overhead p50 {statistics.median(overheads) * 1000 if overheads else float('nan'):6.0f} ms"
              f"  p95 {percentile(overheads, 0.95) * 1000:6.0f} ms  ({len(overheads)} with all timestamps)")
    print("  phase medians (ms):")
    for name in PHASES:
        cells = "".join(f"  {label.split()[0]} {statistics.median(p[name] for p in phases) * 1000:6.0f}"
                        for label, (_, phases) in results.items() if phases)
        print(f"    {name:36s}{cells}")
    ours, stock = results["AIFactorySpawner"][0], results["stock SlurmSpawner"][0]
    print(f"  ratio ours/stock (p50 time-to-ready): {statistics.median(ours) / statistics.median(stock):.2f}")


if __name__ == "__main__":
    main()
