"""Parsers of Slurm output, fed with output captured from Slurm 22.05 on this cluster."""

from __future__ import annotations

import asyncio
from datetime import datetime

import pytest

from aifactory.slurm import queries as slurm

# `scontrol show node -o -d` with one whole h100 in use (before GPU slices were configured)
NODES = (
    "NodeName=vm Arch=x86_64 CoresPerSocket=1  CPUAlloc=1 CPUEfctv=16 CPUTot=16 CPULoad=0.53 "
    "Gres=gpu:h100:2,gpu:a100:2 GresDrain=N/A GresUsed=gpu:h100:1(IDX:0),gpu:a100:0(IDX:N/A) "
    "NodeAddr=127.0.0.1 NodeHostName=vm State=MIXED Partitions=gpu,cpu "
    "CfgTRES=cpu=16,mem=20000M,billing=16,gres/gpu=4 AllocTRES=cpu=1,mem=512M,gres/gpu=1\n"
)
NODES_TWO_ONE_DOWN = (
    "NodeName=n1 Gres=gpu:h100:4 GresUsed=gpu:h100:4(IDX:0-3) State=ALLOCATED AllocTRES=cpu=4,gres/gpu=4\n"
    "NodeName=n2 Gres=gpu:h100:4,gpu:a100:2 GresUsed=gpu:h100:0(IDX:N/A),gpu:a100:0(IDX:N/A) "
    "State=DOWN+NOT_RESPONDING AllocTRES=\n"
)
# Captured with three 1-slice jobs on h100 #0 and one whole a100: GresUsed counts the GPUs that
# host slices (shard:h100:1), AllocTRES the slices (gres/shard=3)
NODES_SHARDS = (
    "NodeName=vm Arch=x86_64 CoresPerSocket=1  CPUAlloc=4 CPUEfctv=64 CPUTot=64 CPULoad=0.53 "
    "Gres=gpu:h100:2,gpu:a100:2,shard:h100:16,shard:a100:16 GresDrain=N/A "
    "GresUsed=gpu:h100:0(IDX:N/A),gpu:a100:1(IDX:2),shard:h100:1(IDX:0),shard:a100:0(IDX:N/A) "
    "NodeAddr=127.0.0.1 NodeHostName=vm Version=22.05.8 RealMemory=96000 AllocMem=1024 State=MIXED "
    "CfgTRES=cpu=64,mem=96000M,billing=64,gres/gpu=4,gres/gpu:a100=2,gres/gpu:h100=2,gres/shard=32 "
    "AllocTRES=cpu=4,mem=1G,gres/gpu=1,gres/gpu:a100=1,gres/shard=3 CapWatts=n/a\n"
)
ASSOC = "uni-research|interactive,workshop|interactive\nregional-health|interactive,workshop|interactive\n"
SCONTROL_RES = (
    "ReservationName=ml-workshop StartTime=2026-11-27T09:00:00 EndTime=2026-11-27T17:00:00 "
    "Duration=08:00:00 Nodes=vm NodeCnt=1 CoreCnt=16 Features=(null) PartitionName=gpu Flags= "
    "TRES=cpu=16 Users=(null) Groups=(null) Accounts=uni-teaching Licenses=(null) State=INACTIVE "
    "BurstBuffer=(null) Watts=n/a MaxStartDelay=(null)\n"
)


def test_gpu_availability_of_whole_gpus():
    gpus, slices = slurm.parse_gpu_availability(NODES)
    assert (gpus["h100"].total, gpus["h100"].used, gpus["h100"].free) == (2, 1, 1)
    assert gpus["a100"].free == 2
    assert slices.total == 0 and slices.free == 0


def test_down_nodes_have_no_free_gpus():
    gpus, _ = slurm.parse_gpu_availability(NODES_TWO_ONE_DOWN)
    assert gpus["h100"].total == 8 and gpus["h100"].free == 0
    assert gpus["a100"].free == 0


def test_nodes_and_what_they_hold():
    two = (NODES_SHARDS.replace("NodeName=vm", "NodeName=vm Partitions=gpu,cpu")
           + "NodeName=node2 CPUTot=32 Gres=gpu:a100:2,shard:a100:16 State=IDLE Partitions=gpu,cpu\n"
           + "NodeName=node3 CPUTot=32 Gres=gpu:a100:2 State=DOWN+NOT_RESPONDING Partitions=gpu\n")
    nodes = slurm.parse_nodes(two)
    assert [(n.name, n.cpus, n.gpus, n.slices, n.partitions) for n in nodes] == [
        ("vm", 64, 4, 32, ("gpu", "cpu")), ("node2", 32, 2, 16, ("gpu", "cpu"))]  # node3 is down


def test_gpu_slices_and_the_gpus_that_host_them():
    gpus, slices = slurm.parse_gpu_availability(NODES_SHARDS)
    # h100 #0 hosts three slices: one h100 is left whole; one a100 is allocated whole
    assert (gpus["h100"].free, gpus["a100"].free) == (1, 1)
    assert (slices.total, slices.used, slices.blocked, slices.free) == (32, 3, 8, 21)


def test_associations_default_account_first():
    associations = slurm.parse_associations(ASSOC, default_account="uni-research")
    assert [a.account for a in associations] == ["uni-research", "regional-health"]
    assert associations[0].qos == ("interactive", "workshop")
    assert associations[0].default_qos == "interactive"


def test_associations_with_the_default_account_in_one_call():
    # sacctmgr -n -P show user t-admin1 withassoc format=defaultaccount,account,qos,defaultqos
    text = ("uni-research|regional-health|interactive,workshop|interactive\n"
            "uni-research|uni-research|interactive,workshop|interactive\n")
    associations = slurm.parse_user_with_associations(text)
    assert [(a.account, a.is_default_account) for a in associations] == [
        ("uni-research", True), ("regional-health", False)]
    assert associations[1].qos == ("interactive", "workshop")
    assert slurm.parse_user_with_associations("") == []


def test_reservations():
    reservation = slurm.parse_reservations(SCONTROL_RES)["ml-workshop"]
    assert reservation.accounts == ("uni-teaching",) and reservation.users == ()
    assert reservation.admits("student9", ["uni-teaching"])
    assert not reservation.admits("partner1", ["regional-energy"])


@pytest.mark.parametrize(
    "line,state,reason,start,host",
    [
        ("RUNNING|None|2026-11-26T23:26:54|vm", "RUNNING", "", datetime(2026, 11, 26, 23, 26, 54), "vm"),
        ("PENDING|Resources|2026-11-27T01:00:00|n/a", "PENDING", "Resources", datetime(2026, 11, 27, 1), ""),
        ("PENDING|QOSMaxGRESPerUser|N/A|n/a", "PENDING", "QOSMaxGRESPerUser", None, ""),
    ],
)
def test_job_state(line, state, reason, start, host):
    job = slurm.parse_job_state(line + "\n")
    assert (job.state, job.reason, job.expected_start, job.host) == (state, reason, start, host)


def test_job_not_listed():
    assert slurm.parse_job_state("") is None


def test_sacct_record():
    record = slurm.parse_sacct_records("2|CANCELLED by 1001|0:0|00:00:00\n")["2"]
    assert record.state == "CANCELLED by 1001" and record.exit_code == "0:0"


def test_reasons_are_explained():
    assert "GPUs" in slurm.explain_reason("QOSMaxGRESPerUser")
    assert slurm.explain_reason("SomethingNew") == ""


def test_controller_trouble_is_unavailable_not_an_error(tmp_path):
    fake = tmp_path / "squeue"
    fake.write_text("#!/bin/sh\necho 'slurm_load_jobs error: Unable to contact slurm controller (connect failure)' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(slurm.SlurmUnavailable):
        asyncio.run(slurm.run([str(fake)]))
    gone = tmp_path / "gone"
    gone.write_text("#!/bin/sh\necho 'slurm_load_jobs error: Invalid job id specified' >&2\nexit 1\n")
    gone.chmod(0o755)
    with pytest.raises(slurm.SlurmCommandError):
        asyncio.run(slurm.run([str(gone)]))


def test_hanging_command_times_out_as_unavailable(tmp_path):
    with pytest.raises(slurm.SlurmUnavailable, match="did not answer"):
        asyncio.run(slurm.run(["sleep", "5"], timeout=0.3))


@pytest.mark.slurm
def test_live_sinfo_matches_the_site(slurm_cluster):
    gpus, slices = asyncio.run(slurm.gpu_availability())
    assert {name: g.total for name, g in gpus.items()} == {
        name: g.count for name, g in slurm_cluster.gpu_types.items()}
    assert slices.total == slurm_cluster.total_gpu_slices


@pytest.mark.slurm
def test_live_associations_of_a_demo_user(slurm_cluster):
    associations = asyncio.run(slurm.user_associations("instructor1"))
    assert associations[0].account == "uni-teaching"  # the default account comes first
    assert {a.account for a in associations} == {"uni-teaching", "uni-research"}
