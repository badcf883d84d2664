"""Spawn request -> ready JupyterLab: AIFactorySpawner against stock batchspawner SlurmSpawner.

Both hubs run from the same jupyterhub_config.py on the same local Slurm cluster, in the
same run, one after the other; the stock hub only swaps the spawner class. Prints the
median of N spawns each and the ratio (ours / stock). Our extra work per spawn: the user's
associations, reservations and free GPUs from Slurm, validation, the richer status query.

    /opt/aifactory/venv/bin/python benchmarks/spawn_latency.py --runs 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "src")]

from hubtools import Hub, user_jobs  # noqa: E402

VENV = "/opt/aifactory/venv"
STOCK = [
    "--JupyterHub.spawner_class=batchspawner.SlurmSpawner",
    f"--SlurmSpawner.batchspawner_singleuser_cmd={VENV}/bin/batchspawner-singleuser",
    f"--SlurmSpawner.cmd={VENV}/bin/jupyterhub-singleuser",
    "--SlurmSpawner.req_partition=gpu",
    "--SlurmSpawner.req_memory=1G",
    "--SlurmSpawner.req_nprocs=1",
    "--SlurmSpawner.req_runtime=01:00:00",
    "--SlurmSpawner.req_gres=gpu:1",
    "--SlurmSpawner.startup_poll_interval=0.5",
]
OURS_OPTIONS = {"partition": "gpu", "gpus": 1, "cpus": 1, "memory_gb": 1, "hours": 1}


def measure(hub: Hub, user: str, options: dict, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.monotonic()
        r = hub.spawn(user, options)
        assert r.status_code in (201, 202), r.text
        hub.wait_ready(user, timeout=120)
        times.append(time.monotonic() - start)
        hub.api(user, "DELETE", f"/users/{user}/server")
        hub.wait_stopped(user)
        while user_jobs(user):
            time.sleep(0.2)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--user", default="researcher1")
    args = parser.parse_args()
    site_file = ROOT / "hub_config" / "site.yaml"
    results = {}
    for label, extra, options, port in (("stock SlurmSpawner", STOCK, {}, 19000),
                                        ("AIFactorySpawner", [], OURS_OPTIONS, 19200)):
        with tempfile.TemporaryDirectory() as state:
            hub = Hub(Path(state), site_file, extra_args=extra, port=port)
            hub.start()
            try:
                measure(hub, args.user, options, 1)  # warm-up: imports, first sbatch
                results[label] = measure(hub, args.user, options, args.runs)
            finally:
                hub.stop_all_servers()
                hub.stop()
    print(f"spawn request -> ready lab, {args.runs} runs each (user {args.user}, 1 GPU)")
    for label, times in results.items():
        print(f"  {label:20s} median {statistics.median(times):6.2f} s   "
              f"min {min(times):6.2f} s   max {max(times):6.2f} s")
    ratio = statistics.median(results["AIFactorySpawner"]) / statistics.median(results["stock SlurmSpawner"])
    print(f"  ratio ours/stock: {ratio:.2f}")


if __name__ == "__main__":
    main()
