"""Workshop rehearsal: thirty participants start the course within five seconds, on the demo's 4 GPUs.

Runs on the local Slurm cluster, in one run:

1. our hub (AIFactorySpawner): an instructor creates a workshop of N generated walk-in
   participants for the deep-learning course (one GPU slice each); all N course sessions are
   started within five seconds; prints how many became ready, p50/p95/max time-to-ready, how many
   ran in the reservation and how many GPUs and slices they used;
2. stock batchspawner ``SlurmSpawner`` on the same cluster with the same participants, each
   session booking what a course start books without slices: one whole GPU;

and the ratio of ready sessions. Sessions are stand-in servers (``aifactory-standin``: the job,
sbatch, scheduling, the port callback and the proxy route are real; JupyterLab is not started)
unless ``--real-labs`` is given. Loopback only; the workshop and its accounts are removed at the end.

    /opt/aifactory/venv/bin/python benchmarks/workshop_rehearsal.py --participants 30
"""

from __future__ import annotations

import argparse
import pwd
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "src")]

from benchtools import percentile, storm, wait_no_jobs  # noqa: E402
from hubtools import Hub  # noqa: E402

VENV = "/opt/aifactory/venv"
COURSE = "deep-learning-pytorch"
STANDIN = f"--AIFactorySpawner.cmd={VENV}/bin/aifactory-standin"
STOCK = [
    "--JupyterHub.spawner_class=batchspawner.SlurmSpawner",
    f"--SlurmSpawner.batchspawner_singleuser_cmd={VENV}/bin/batchspawner-singleuser",
    "--SlurmSpawner.req_partition=gpu",
    "--SlurmSpawner.req_memory=1G",
    "--SlurmSpawner.req_nprocs=1",
    "--SlurmSpawner.req_runtime=01:00:00",
    "--SlurmSpawner.req_qos=workshop",
    "--SlurmSpawner.req_gres=gpu:1",
    "--SlurmSpawner.startup_poll_interval=0.5",
    # the stock script prints no GPUs: add the line ours prints
    "--SlurmSpawner.req_prologue=echo \"AI factory session: GPUs: ${CUDA_VISIBLE_DEVICES:-none}\"",
]


def session_gpus(users: list[str], name: str) -> tuple[int, int, set[str], int]:
    """Running jobs of these users: how many in a reservation, slices, distinct GPUs, whole GPUs."""
    out = subprocess.run(["squeue", "-h", "-t", "R", "-u", ",".join(users), "-o", "%i|%u|%v|%b|%j|%N"],
                         capture_output=True, text=True).stdout
    in_reservation = slices = whole = 0
    devices = set()
    for line in out.splitlines():
        job, user, reservation, gres, job_name, node = line.split("|")
        # ours names jobs after the server; stock batchspawner calls every job "spawner-jupyterhub"
        if job_name not in ((f"jupyter-{name}",) if name else ("jupyter", "spawner-jupyterhub")):
            continue
        in_reservation += reservation.startswith("ws-")
        slices += int(gres.rsplit(":", 1)[-1]) if "shard" in gres else 0
        whole += int(gres.rsplit(":", 1)[-1]) if "gpu" in gres else 0
        log = Path(pwd.getpwnam(user).pw_dir, f".aifactory-session-{job}.log")
        match = re.search(r"GPUs: (\S+)", log.read_text()) if log.exists() else None
        if match:  # CUDA_VISIBLE_DEVICES counts from 0 on each node
            devices.update((node, index) for index in match.group(1).split(",") if index != "none")
    return in_reservation, slices, devices, whole


def report(label: str, result: dict, n: int, gpus: tuple) -> None:
    times = list(result["ready"].values())
    in_reservation, slices, devices, whole = gpus
    line = f"{label:28s} ready {len(times):>3}/{n}"
    if times:
        line += (f"   p50 {statistics.median(times):5.1f} s   p95 {percentile(times, 0.95):5.1f} s"
                 f"   max {max(times):5.1f} s")
    line += f"   slowest hub answer {max(result['polls'], default=0):4.1f} s   hub CPU {result['hub_cpu']:4.1f} s"
    line += (f"   failed {len(result['failed'])}   in reservation {in_reservation}   "
             f"GPU slices {slices}   whole GPUs {whole}   distinct GPUs {len(devices)}")
    print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--participants", type=int, default=30)
    parser.add_argument("--timeout", type=float, default=120, help="seconds to wait for sessions")
    parser.add_argument("--stock-timeout", type=float, default=60)
    parser.add_argument("--real-labs", action="store_true", help="start JupyterLab, not stand-ins")
    parser.add_argument("--skip-stock", action="store_true")
    args = parser.parse_args()
    site_file = ROOT / "hub_config" / "site.yaml"
    extra = [] if args.real_labs else [STANDIN]
    n = args.participants

    with tempfile.TemporaryDirectory(prefix="aif-rehearsal-") as tmp:
        ours = Hub(Path(tmp) / "ours", site_file, extra_args=extra, port=19000)
        (Path(tmp) / "ours").mkdir(mode=0o700)
        ours.start()
        headers = {"Authorization": f"token {ours.token('instructor1')}"}
        api = f"{ours.url}/services/workshops/api/workshops"
        start = datetime.now() - timedelta(minutes=1)
        body = {"name": "rehearsal", "title": "Workshop rehearsal", "course": COURSE, "walkins": n,
                "gpu_slices": 1, "cpus": 1, "memory_gb": 1, "start": start.strftime("%Y-%m-%dT%H:%M"),
                "end": (start + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M")}
        t = time.monotonic()
        r = requests.post(api, json=body, headers=headers, timeout=300)
        if r.status_code != 201:
            ours.stop()
            sys.exit(f"could not create the workshop: {r.text[:300]}")
        workshop = r.json()["workshop"]
        users = workshop["walkins"]
        print(f"workshop {workshop['name']}: {n} walk-in participants, reservation {workshop['reservation']}, "
              f"created in {time.monotonic() - t:.1f} s", flush=True)
        try:
            result = storm(ours, users, {"course": COURSE}, args.timeout, name=COURSE)
            print(f"all {n} start requests sent within {result['submit_spread']:.1f} s")
            report("AIFactorySpawner (slices)", result, n, session_gpus(users, COURSE))
            for user, why in list(result["failed"].items())[:3]:
                print(f"   failed {user}: {why}")
            requests.post(f"{api}/{workshop['id']}/stop", json={}, headers=headers, timeout=300)
            wait_no_jobs(users)
            ours_ready = len(result["ready"])

            if not args.skip_stock:
                stock = Hub(Path(tmp) / "stock", site_file, port=19500,
                            extra_args=[*STOCK, f"--SlurmSpawner.cmd={VENV}/bin/aifactory-standin"
                                        if not args.real_labs else f"--SlurmSpawner.cmd={VENV}/bin/jupyterhub-singleuser"])
                (Path(tmp) / "stock").mkdir(mode=0o700)
                stock.start()
                try:
                    # the walk-ins are new to this hub: the admin creates them there
                    stock.api("admin1", "POST", "/users", json={"usernames": users})
                    result = storm(stock, users, {}, args.stock_timeout)
                    report("stock SlurmSpawner (1 GPU)", result, n, session_gpus(users, ""))
                    stock_ready = len(result["ready"])
                finally:
                    for user in users:
                        stock.api("admin1", "DELETE", f"/users/{user}/server")
                    subprocess.run(["scancel", "-u", ",".join(users)], capture_output=True)
                    wait_no_jobs(users)
                    stock.stop()
                print(f"ready sessions, ours / stock: {ours_ready}/{stock_ready} = "
                      f"{ours_ready / max(stock_ready, 1):.1f}x (stock measured for {args.stock_timeout:.0f} s)")
        finally:
            requests.post(f"{api}/{workshop['id']}/end", json={}, headers=headers, timeout=300)
            ours.stop()
            subprocess.run([f"{VENV}/bin/aifactory-privileged", "walkin-remove", "--users", ",".join(users)],
                           capture_output=True)


if __name__ == "__main__":
    main()
