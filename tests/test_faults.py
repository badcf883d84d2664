"""Faults, phase by phase, on the real cluster: after each, no orphaned job and no ghost server.

Phases: *pending* (the job waits in the queue), *starting* (the job runs, the single-user server
has not called back yet: a wrapper holds it back for a few seconds), *running* (the lab is up).
An orphan is a Slurm job with this hub's tag that no server claims; a ghost is a server the hub
counts as started whose job Slurm no longer lists. The hub here reconciles every 3 seconds.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import HUB_SITE_FILE
from hubtools import Hub, user_jobs

from aifactory.hub.hubconfig import hub_tag
from aifactory.slurm import queries as slurm

pytestmark = [pytest.mark.slurm, pytest.mark.hub, pytest.mark.slow]

FAULTS = Path("/tmp/aifactory-tests/faults")
DELAY = FAULTS / "delay"  # what the wrapper does: seconds to hold the server back, or "never"
CPU_SESSION = {"gpus": 0, "cpus": 1, "memory_gb": 1}
A100_SESSION = {"gpu_type": "a100", "gpus": 1, "cpus": 1, "memory_gb": 1}
HOLD_BACK = 12


def wrapper() -> Path:
    FAULTS.mkdir(parents=True, exist_ok=True)
    FAULTS.chmod(0o755)
    script = FAULTS / "singleuser"
    script.write_text(
        "#!/bin/sh\n"
        f'delay=$(cat {DELAY} 2>/dev/null || echo 0)\n'
        'if [ "$delay" = never ]; then exec sleep 3600; fi\n'
        'sleep "$delay"\n'
        'exec /opt/aifactory/venv/bin/aifactory-singleuser "$@"\n')
    script.chmod(0o755)
    DELAY.write_text("0")
    DELAY.chmod(0o644)
    return script


@pytest.fixture(scope="module")
def fault_hub(slurm_cluster, tmp_path_factory):
    raw = yaml.safe_load(HUB_SITE_FILE.read_text())
    raw["spawn"]["reconcile_seconds"] = 3
    site_file = HUB_SITE_FILE.with_name("site-faults.yaml")
    site_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    hub = Hub(tmp_path_factory.mktemp("faults"), site_file, port=18200, extra_args=[
        f"--AIFactorySpawner.batchspawner_singleuser_cmd={wrapper()}",
        "--AIFactorySpawner.startup_timeout=25",
        "--AIFactorySpawner.max_queue_wait=120",
        "--AIFactorySpawner.stop_confirm_seconds=4",
        "--AIFactorySpawner.cancel_retry_seconds=3",
    ])
    hub.start()
    hub.tag = hub_tag(str(hub.state))
    yield hub
    hub.stop_all_servers()
    hub.stop()


@pytest.fixture
def hub(fault_hub):
    DELAY.write_text("0")
    yield fault_hub
    DELAY.write_text("0")
    ensure_controller()
    fault_hub.stop_all_servers()
    subprocess.run(["scancel", "--name=aifactory-test-blocker"], check=False)


# ---------------------------------------------------------------- helpers


def stop_controller() -> None:
    subprocess.run(["pkill", "-x", "slurmctld"], check=True)
    deadline = time.monotonic() + 15
    while subprocess.run(["pgrep", "-x", "slurmctld"], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, "slurmctld did not stop"
        time.sleep(0.2)


def ensure_controller() -> None:
    if subprocess.run(["pgrep", "-x", "slurmctld"], capture_output=True).returncode != 0:
        subprocess.run(["/usr/sbin/slurmctld"], check=True)
    deadline = time.monotonic() + 30
    while "UP" not in subprocess.run(["scontrol", "ping"], capture_output=True, text=True).stdout:
        assert time.monotonic() < deadline, "slurmctld did not come back"
        time.sleep(0.5)


def resume(node: str) -> None:
    """Back to service; a node that came back by itself (ReturnToService) refuses RESUME: fine."""
    subprocess.run(["scontrol", "update", f"NodeName={node}", "State=RESUME"], capture_output=True)
    deadline = time.monotonic() + 30
    while True:
        state = subprocess.run(["sinfo", "-h", "-n", node, "-o", "%T"], capture_output=True, text=True).stdout
        if not any(bad in state for bad in ("down", "drain", "not_responding")):
            return
        assert time.monotonic() < deadline, f"{node} did not return to service: {state}"
        time.sleep(0.5)


def wait_job(user: str, state: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while True:
        jobs = [j for j in user_jobs(user) if j["state"] == state]
        if jobs:
            return jobs[0]["job_id"]
        assert time.monotonic() < deadline, f"no {state} job of {user}: {user_jobs(user)}"
        time.sleep(0.3)


def hub_servers(hub: Hub) -> list[dict]:
    users = hub.api("t-admin1", "GET", "/users", params={"state": "active"}).json()
    return [dict(user=u["name"], name=name, job_id=str((s.get("state") or {}).get("job_id") or ""),
                 pending=s.get("pending"), ready=s.get("ready"))
            for u in users for name, s in (u.get("servers") or {}).items()]


def assert_consistent(hub: Hub, timeout: float = 30) -> None:
    """Within the reconcile's reach: every job of the hub is claimed, every server has its job."""
    deadline = time.monotonic() + timeout
    while True:
        jobs = {j.job_id: j for j in asyncio.run(slurm.tagged_jobs(hub.tag))}
        servers = hub_servers(hub)
        claimed = {s["job_id"] for s in servers}
        orphans = [j for job_id, j in jobs.items() if job_id not in claimed]
        ghosts = [s for s in servers if not s["pending"] and s["job_id"] not in jobs]
        if not orphans and not ghosts:
            return
        assert time.monotonic() < deadline, f"orphaned jobs {orphans}, ghost servers {ghosts}\n{hub.log_tail()}"
        time.sleep(1)


def final_message(hub: Hub, user: str, name: str = "") -> dict:
    return list(hub.progress_events(user, name))[-1]


def free_a100s() -> int:
    return asyncio.run(slurm.gpu_availability())[0]["a100"].free


def need_an_a100() -> None:
    """These tests end with a session on an A100: a demo beside them may hold both."""
    if free_a100s() < 1:
        pytest.skip("no free A100 on node2 (a demo's sessions hold them)")


# ---------------------------------------------------------------- the controller stops and comes back


def test_controller_outage_while_pending(hub, blocker):
    need_an_a100()
    blocker("t-student2", "gpu:a100:2")
    assert hub.spawn("t-student1", A100_SESSION).status_code in (201, 202)
    wait_job("t-student1", "PENDING")
    stop_controller()
    try:
        time.sleep(hub.poll_interval * 2)
        server = hub.server("t-student1")
        assert server and server["pending"] == "spawn", f"the pending session was given up: {server}"
    finally:
        ensure_controller()
    subprocess.run(["scancel", "--name=aifactory-test-blocker"], check=True)
    hub.wait_ready("t-student1", timeout=60)
    assert_consistent(hub)


def test_controller_outage_while_starting(hub):
    DELAY.write_text(str(HOLD_BACK))
    assert hub.spawn("t-student1", CPU_SESSION).status_code in (201, 202)
    wait_job("t-student1", "RUNNING")
    stop_controller()
    try:
        time.sleep(hub.poll_interval * 2)
        assert hub.server("t-student1"), "the starting session was given up while slurmctld was down"
    finally:
        ensure_controller()
    hub.wait_ready("t-student1", timeout=60)
    assert_consistent(hub)


def test_controller_outage_while_running(hub):
    assert hub.spawn("t-partner1", CPU_SESSION).status_code in (201, 202)
    hub.wait_ready("t-partner1")
    stop_controller()
    try:
        time.sleep(hub.poll_interval * 3)
        server = hub.server("t-partner1")
        assert server and server["ready"], "the hub stopped a session because slurmctld was down"
    finally:
        ensure_controller()
    time.sleep(hub.poll_interval + 1)
    assert hub.server("t-partner1")["ready"]
    assert len(user_jobs("t-partner1")) == 1
    assert_consistent(hub)


def test_a_stop_during_an_outage_cancels_the_job_once_the_controller_is_back(hub):
    assert hub.spawn("t-researcher1", CPU_SESSION).status_code in (201, 202)
    hub.wait_ready("t-researcher1")
    job_id = user_jobs("t-researcher1")[0]["job_id"]
    stop_controller()
    try:
        assert hub.api("t-researcher1", "DELETE", "/users/t-researcher1/server").status_code in (202, 204)
        # the hub gives up waiting for Slurm's confirmation (4 s here) and lets the server go
        hub.wait_stopped("t-researcher1", timeout=60)
    finally:
        ensure_controller()
    deadline = time.monotonic() + 30
    while any(j["job_id"] == job_id for j in user_jobs("t-researcher1")):
        assert time.monotonic() < deadline, f"job {job_id} still runs after the stop:\n{hub.log_tail()}"
        time.sleep(0.5)
    assert_consistent(hub)


# ---------------------------------------------------------------- the job ends outside the hub


def test_job_cancelled_outside_the_hub_while_starting(hub):
    DELAY.write_text(str(HOLD_BACK))
    assert hub.spawn("t-student2", CPU_SESSION).status_code in (201, 202)
    job_id = wait_job("t-student2", "RUNNING")
    subprocess.run(["scancel", job_id], check=True)
    final = final_message(hub, "t-student2")
    assert final.get("failed") and "ended before JupyterLab was ready" in final["message"], final
    assert "CANCELLED" in final["message"], final
    assert hub.server("t-student2") is None
    assert_consistent(hub)


def test_wall_time_reached_while_running(hub):
    assert hub.spawn("t-student1", CPU_SESSION).status_code in (201, 202)
    hub.wait_ready("t-student1")
    job_id = user_jobs("t-student1")[0]["job_id"]
    # the time limit runs out now (Slurm enforces it on its next time check)
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "TimeLimit=0:01"], check=True)
    hub.wait_stopped("t-student1", timeout=90)
    record = asyncio.run(slurm.job_records([job_id])).get(job_id)
    assert record and record.state == "TIMEOUT", record
    # the hub logs sacct's verdict once accounting has it (a moment after the server stopped)
    deadline = time.monotonic() + 20
    while f"Job {job_id} of t-student1 ended: TIMEOUT" not in hub.log_tail(300):
        assert time.monotonic() < deadline, hub.log_tail(40)
        time.sleep(0.5)
    assert_consistent(hub)


def test_drained_node_keeps_a_session_pending_with_the_reason(hub):
    need_an_a100()
    node2 = "node2"
    subprocess.run(["scontrol", "update", f"NodeName={node2}", "State=DRAIN", "Reason=aifactory-test"],
                   check=True)
    try:
        assert hub.spawn("t-student1", A100_SESSION).status_code in (201, 202)
        wait_job("t-student1", "PENDING")
        deadline = time.monotonic() + 20
        for event in hub.progress_events("t-student1", timeout=30):
            message = event.get("message", "")
            if "Waiting in the Slurm queue" in message and "reason:" in message:
                break
            assert time.monotonic() < deadline, message
        assert hub.server("t-student1")["pending"] == "spawn"
    finally:
        resume(node2)
    hub.wait_ready("t-student1", timeout=60)
    assert_consistent(hub)


def test_node_down_while_running(hub):
    others = [line for line in subprocess.run(["squeue", "-h", "-w", "node2", "-o", "%u"], capture_output=True,
                                              text=True).stdout.split() if not line.startswith("t-")]
    if others:
        pytest.skip(f"node2 runs jobs of {sorted(set(others))}: setting it DOWN would end them")
    need_an_a100()
    assert hub.spawn("t-student2", A100_SESSION).status_code in (201, 202)
    hub.wait_ready("t-student2")
    job_id = user_jobs("t-student2")[0]["job_id"]
    subprocess.run(["scontrol", "update", "NodeName=node2", "State=DOWN", "Reason=aifactory-test"], check=True)
    try:
        hub.wait_stopped("t-student2", timeout=60)
        assert not any(j["job_id"] == job_id for j in user_jobs("t-student2"))
    finally:
        resume("node2")
    assert_consistent(hub)


# ---------------------------------------------------------------- the hub restarts


def test_hub_restart_while_pending(hub, blocker):
    need_an_a100()
    blocker("t-student2", "gpu:a100:2")
    assert hub.spawn("t-student1", A100_SESSION).status_code in (201, 202)
    wait_job("t-student1", "PENDING")
    hub.restart()
    # the spawn was lost with the hub: its job is cancelled, not left to take a GPU later
    assert_consistent(hub)
    assert user_jobs("t-student1") == []
    assert hub.server("t-student1") is None or hub.server("t-student1")["ready"]


def test_hub_restart_while_starting(hub):
    DELAY.write_text(str(HOLD_BACK))
    assert hub.spawn("t-student1", CPU_SESSION).status_code in (201, 202)
    wait_job("t-student1", "RUNNING")
    hub.restart()
    assert_consistent(hub, timeout=HOLD_BACK + 30)
    server = hub.server("t-student1")
    assert server is None or server["ready"], server
    # the user can start again
    DELAY.write_text("0")
    if server is None:
        assert hub.spawn("t-student1", CPU_SESSION).status_code in (201, 202)
    hub.wait_ready("t-student1")
    assert_consistent(hub)


def test_hub_restart_with_several_running_sessions(hub):
    for user in ("t-student1", "t-student2", "t-partner1"):
        assert hub.spawn(user, CPU_SESSION).status_code in (201, 202)
    for user in ("t-student1", "t-student2", "t-partner1"):
        hub.wait_ready(user)
    jobs = {user: user_jobs(user)[0]["job_id"] for user in ("t-student1", "t-student2", "t-partner1")}
    hub.restart()
    for user, job_id in jobs.items():
        assert hub.server(user)["ready"]
        assert [j["job_id"] for j in user_jobs(user)] == [job_id]
    assert_consistent(hub)


# ---------------------------------------------------------------- the server inside the job


def test_single_user_server_killed_inside_a_live_job(hub):
    assert hub.spawn("t-partner1", CPU_SESSION).status_code in (201, 202)
    hub.wait_ready("t-partner1")
    job_id = user_jobs("t-partner1")[0]["job_id"]
    subprocess.run(["pkill", "-KILL", "-u", "t-partner1", "-f", "jupyterhub-singleuser"], check=True)
    hub.wait_stopped("t-partner1", timeout=60)
    deadline = time.monotonic() + 30
    while any(j["job_id"] == job_id for j in user_jobs("t-partner1")):
        assert time.monotonic() < deadline, "the job outlived its server"
        time.sleep(0.5)
    assert_consistent(hub)


def test_a_job_that_never_calls_back(hub):
    DELAY.write_text("never")
    assert hub.spawn("t-researcher1", CPU_SESSION).status_code in (201, 202)
    wait_job("t-researcher1", "RUNNING")
    final = final_message(hub, "t-researcher1")
    assert final.get("failed"), final
    assert "JupyterLab did not start" in final["message"], final
    assert hub.server("t-researcher1") is None
    deadline = time.monotonic() + 30
    while user_jobs("t-researcher1"):
        assert time.monotonic() < deadline, f"the job that never called back still runs:\n{hub.log_tail()}"
        time.sleep(0.5)
    assert_consistent(hub)
