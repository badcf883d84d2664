"""Storm: 100 users start within 5 s (stand-in servers), then 10 users with real JupyterLab.

For ours and for stock batchspawner ``SlurmSpawner`` on the same hub configuration, cluster and
users, in the same run: ready count, p50/p95/max time-to-ready, failures and the hub's CPU
seconds; then the ratios. JupyterHub's ``concurrent_spawn_limit`` is the default (100).

    /opt/aifactory/venv/bin/python benchmarks/storm.py --users 100 --real 10
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from benchtools import (
    CPU_SESSION,
    SITE_FILE,
    Hub,
    make_users,
    ours_args,
    register,
    remove_users,
    standin,
    stock_args,
    stop_all,
    storm,
    summary,
)

SETTINGS = ["--Spawner.poll_interval=30", "--AIFactorySpawner.slurm_poll_idle=10"]


def run_storm(label: str, extra: list[str], users: list[str], options: dict, state: Path, port: int,
              timeout: float) -> dict:
    state.mkdir(mode=0o700)
    hub = Hub(state, SITE_FILE, extra_args=[*extra, *SETTINGS], port=port)
    hub.start(timeout=120)
    try:
        register(hub, users)
        result = storm(hub, users, options, timeout)
        print(summary(label, result), flush=True)
        for user, why in list(result["failed"].items())[:3]:
            print(f"    failed {user}: {why}")
        stop_all(hub, users)
        return result
    finally:
        hub.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--real", type=int, default=10, help="users with real JupyterLab (0: skip)")
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    users = make_users(max(args.users, args.real), "storm")
    results = {}
    try:
        with tempfile.TemporaryDirectory(prefix="aif-storm-") as tmp:
            for kind, n in (("standin", args.users), ("lab", args.real)):
                if not n:
                    continue
                for label, extra, options, port in (
                        ("ours", ours_args(kind), CPU_SESSION, 19000),
                        ("stock", stock_args(standin(kind)), {}, 19500)):
                    results[(kind, label)] = run_storm(f"{label}, {n} x {kind}", extra, users[:n], options,
                                                       Path(tmp) / f"{label}-{kind}", port, args.timeout)
    finally:
        remove_users(users)
    print("\nratios ours / stock")
    for kind in ("standin", "lab"):
        ours, stock = results.get((kind, "ours")), results.get((kind, "stock"))
        if not ours or not stock or not ours["ready"] or not stock["ready"]:
            continue
        p50 = statistics.median(ours["ready"].values()) / statistics.median(stock["ready"].values())
        print(f"  {kind:8s} ready {len(ours['ready'])}/{len(stock['ready'])}  p50 time-to-ready {p50:.2f}  "
              f"hub CPU {ours['hub_cpu'] / max(stock['hub_cpu'], 0.01):.2f}")


if __name__ == "__main__":
    main()
