"""A second compute node in its own network namespace: the path a real cluster's nodes take."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest
import requests
from hubtools import user_jobs

from aifactory.slurm import localcluster, netns

NODE2 = "node2"


def test_the_configuration_of_two_nodes(site):
    plans = localcluster.node_plan(site, "vm", namespaces=True)
    conf = localcluster.render_slurm_conf(site, "vm", plans)
    # the controller and the machine's node are reached at the machine's side of the veth pair
    assert "SlurmctldHost=vm(10.77.7.1)" in conf
    assert "NodeName=vm NodeAddr=10.77.7.1 CPUs=128 RealMemory=160000 Weight=1 Gres=gpu:h100:2,shard:16" in conf
    assert "NodeName=node2 NodeAddr=10.77.7.2 CPUs=96 RealMemory=96000 Weight=10 Gres=gpu:a100:2,shard:16" in conf
    assert "PartitionName=gpu Nodes=vm,node2 Default=YES" in conf
    gres = localcluster.render_gres_conf(site, "vm", plans)
    assert "NodeName=node2 Name=gpu Type=a100 File=/dev/fakegpu[2-3]" in gres
    assert "NodeName=node2 Name=shard Count=8 File=/dev/fakegpu3" in gres


def test_without_namespaces_every_gpu_is_on_one_node(site):
    conf = localcluster.render_slurm_conf(site, "vm", localcluster.node_plan(site, "vm", namespaces=False))
    assert "SlurmctldHost=vm(127.0.0.1)" in conf
    assert re.search(r"^NodeName=vm NodeAddr=127.0.0.1 .*Gres=gpu:h100:2,gpu:a100:2,shard:32", conf, re.M)
    assert "node2" not in conf


def namespaces_or_skip():
    ok, why = netns.supported()
    if not ok:
        pytest.skip(f"this machine cannot create network namespaces ({why}); the cluster runs as one node")


@pytest.mark.slurm
def test_both_nodes_run_and_node2_has_its_own_address(slurm_cluster):
    namespaces_or_skip()
    states = localcluster.node_states()
    assert set(states) == {localcluster.hostname(), NODE2}, states
    assert all(s.rstrip("*") in ("idle", "mixed", "allocated") for s in states.values()), states
    node = subprocess.run(["scontrol", "show", "node", NODE2, "-o"], capture_output=True, text=True).stdout
    assert "NodeAddr=10.77.7.2" in node
    # its slurmd lives in the namespace
    assert "aif-node2" in localcluster.slurmd_namespaces()


@pytest.mark.slurm
def test_a_job_on_two_nodes(slurm_cluster, tmp_path):
    namespaces_or_skip()
    out = Path("/tmp") / f"aif-two-nodes-{time.time_ns()}.out"
    job = subprocess.run(
        ["sudo", "-u", "t-student2", "sbatch", "--parsable", "--partition=cpu", "--nodes=2", "--ntasks-per-node=1",
         "--qos=interactive", "--mem=128M", "--time=2", "--chdir=/tmp", f"--output={out}",
         "--wrap", "srun hostname"], capture_output=True, text=True, check=True).stdout.strip()
    deadline = time.monotonic() + 60
    while subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True).stdout.strip() \
            and time.monotonic() < deadline:
        time.sleep(0.5)
    # slurmdbd records the end a moment after squeue stops listing the job
    while time.monotonic() < deadline + 30:
        state = subprocess.run(["sacct", "-X", "-n", "-P", "-j", job, "-o", "State,NodeList"],
                               capture_output=True, text=True).stdout.strip()
        if not state.startswith(("PENDING", "RUNNING", "COMPLETING")):
            break
        time.sleep(0.5)
    text = out.read_text() if out.exists() else ""
    out.unlink(missing_ok=True)
    assert state.startswith("COMPLETED"), (state, text)
    assert sorted(text.split()) == sorted([localcluster.hostname(), NODE2])


@pytest.mark.hub
@pytest.mark.slurm
@pytest.mark.slow
def test_sessions_on_both_nodes_survive_a_hub_restart(clean_hub):
    namespaces_or_skip()
    hub = clean_hub
    # h100s are on this machine's node, a100s on node2
    assert hub.spawn("t-student1", {"gpu_type": "h100", "gpus": 1, "cpus": 1, "memory_gb": 1}).status_code in (201, 202)
    assert hub.spawn("t-student2", {"gpu_type": "a100", "gpus": 1, "cpus": 1, "memory_gb": 1}).status_code in (201, 202)
    hub.wait_ready("t-student1")
    server = hub.wait_ready("t-student2")
    nodes = {u: subprocess.run(["squeue", "-h", "-u", u, "-o", "%N"], capture_output=True, text=True).stdout.strip()
             for u in ("t-student1", "t-student2")}
    assert nodes == {"t-student1": localcluster.hostname(), "t-student2": NODE2}
    # the proxy routes to the node's own address; the lab answers through it
    routes = requests.get(f"http://127.0.0.1:{hub.proxy_api_port}/api/routes", timeout=10,
                          headers={"Authorization": f"token {proxy_token(hub)}"}).json()
    assert routes["/user/t-student2"]["target"].startswith(f"http://{NODE2}:"), routes["/user/t-student2"]
    assert server["url"] == "/user/t-student2/"

    def lab(user):
        return requests.get(f"{hub.url}/user/{user}/api/status", timeout=30,
                            headers={"Authorization": f"token {hub.token(user)}"})

    assert lab("t-student1").status_code == 200 and lab("t-student2").status_code == 200
    hub.restart()
    for user in ("t-student1", "t-student2"):
        assert hub.server(user) and hub.server(user)["ready"], hub.log_tail()
        assert lab(user).status_code == 200
    # stop cancels the job on node2
    job = user_jobs("t-student2")[0]["job_id"]
    assert hub.api("t-student2", "DELETE", "/users/t-student2/server").status_code in (202, 204)
    hub.wait_stopped("t-student2")
    deadline = time.monotonic() + 30
    while subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True).stdout.strip() \
            and time.monotonic() < deadline:
        time.sleep(0.5)
    assert user_jobs("t-student2") == []


def proxy_token(hub) -> str:
    # the test hub's proxy token: configurable-http-proxy's auth token from the hub's environment
    pid = subprocess.run(["pgrep", "-f", f"configurable-http-proxy.*--port {hub.port}"], capture_output=True,
                         text=True).stdout.split()[0]
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return next(v.split(b"=", 1)[1].decode() for v in environ if v.startswith(b"CONFIGPROXY_AUTH_TOKEN="))
