"""Scheduler load: Slurm command invocations per minute with 10, 50 and 200 open sessions.

For each spawner (ours, then stock batchspawner ``SlurmSpawner``) on the same cluster in the same
run: sessions (stand-in servers, JupyterHub's default 30 s poll) are opened 10, then 50, then 200;
after each step, every Slurm command the hub runs - its own and those run as the users through
sudo - is counted for a window by wrappers in front of the commands. Ours runs one ``squeue`` per
interval for all sessions; stock runs one per session per poll.

    /opt/aifactory/venv/bin/python benchmarks/scheduler_load.py --window 60
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from benchtools import (
    CPU_SESSION,
    SITE_FILE,
    CallCounter,
    Hub,
    make_users,
    ours_args,
    register,
    remove_users,
    stock_args,
    stop_all,
    storm,
    summary,
)

REAL_SETTINGS = ["--Spawner.poll_interval=30", "--AIFactorySpawner.slurm_poll_idle=10",
                 "--JupyterHub.concurrent_spawn_limit=250"]


def measure(label: str, extra: list[str], counter: CallCounter, users: list[str], steps: list[int],
            window: float, state: Path, port: int) -> dict[int, dict[str, int]]:
    os.environ["PATH"] = counter.env["PATH"]
    hub = Hub(state, SITE_FILE, extra_args=[*extra, *REAL_SETTINGS], port=port)
    state.mkdir(mode=0o700)
    hub.start(timeout=120)
    results = {}
    try:
        register(hub, users)
        open_now = 0
        for n in steps:
            batch = users[open_now:n]
            result = storm(hub, batch, {} if "stock" in label else CPU_SESSION, timeout=600)
            print(summary(f"{label}: +{len(batch)} sessions", result), flush=True)
            open_now = n
            counter.reset()
            time.sleep(window)
            counts = counter.counts()
            results[n] = {k: round(v * 60 / window) for k, v in counts.items()}
            print(f"{label:10s} {n:>4} open sessions: Slurm calls per minute {results[n]}", flush=True)
        stop_all(hub, users[:open_now])
    finally:
        hub.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, nargs="+", default=[10, 50, 200])
    parser.add_argument("--window", type=float, default=60, help="seconds counted at each step")
    parser.add_argument("--skip-stock", action="store_true")
    args = parser.parse_args()
    steps = sorted(args.sessions)
    path = os.environ["PATH"]
    users = make_users(steps[-1], "load")
    try:
        with tempfile.TemporaryDirectory(prefix="aif-load-") as tmp:
            counter = CallCounter(Path(tmp) / "count")
            ours = measure("ours", ours_args("standin", counter.prefix), counter, users, steps, args.window,
                           Path(tmp) / "ours", 19000)
            os.environ["PATH"] = path
            stock = {} if args.skip_stock else measure(
                "stock", stock_args("/opt/aifactory/venv/bin/aifactory-standin", counter.prefix), counter,
                users, steps, args.window, Path(tmp) / "stock", 19500)
    finally:
        os.environ["PATH"] = path
        remove_users(users)
    print("\nSlurm invocations per minute (all commands; squeue in brackets)")
    print(f"{'sessions':>8}  {'ours':>14}  {'stock':>14}  ratio stock/ours")
    for n in steps:
        o, s = ours.get(n, {}), stock.get(n, {})
        total_o, total_s = sum(o.values()), sum(s.values())
        ratio = f"{total_s / total_o:.1f}x" if total_o and s else "-"
        print(f"{n:>8}  {total_o:>6} [{o.get('squeue', 0):>4}]  {total_s:>6} [{s.get('squeue', 0):>4}]  {ratio}")


if __name__ == "__main__":
    main()
