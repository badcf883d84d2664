"""The language-model course's DDP script on the real local Slurm cluster: two tasks, then a resume.

The job runs as t-researcher1 from a fresh directory under /tmp that holds a world-readable copy of the
course's script files; the run directory (checkpoint, logs) belongs to t-researcher1.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COURSE = ROOT / "courses" / "llm-on-the-ai-factory"
USER = "t-researcher1"

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture
def job_dir(slurm_cluster):
    if subprocess.run(["sinfo", "-h"], capture_output=True).returncode != 0:
        pytest.fail("sinfo does not answer: start the local cluster (make cluster)")
    folder = Path(tempfile.mkdtemp(prefix="llm-ddp-", dir="/tmp"))
    for name in ("train_ddp.py", "tinygpt.py", "train_ddp.sbatch"):
        shutil.copy2(COURSE / name, folder / name)
        (folder / name).chmod(0o644)
    folder.chmod(0o755)
    shutil.chown(folder, user=USER)           # the job writes its checkpoint and log here
    yield folder
    subprocess.run(["scancel", "--user", USER, "--name", "tiny-gpt-ddp-test"], check=False)
    shutil.rmtree(folder, ignore_errors=True)


def submit(folder: Path, steps: int, *extra: str) -> str:
    """Submit the sbatch example with two tasks on the cpu partition as t-researcher1; the job id."""
    return subprocess.run(
        ["sudo", "-u", USER, "sbatch", "--parsable", "--job-name=tiny-gpt-ddp-test", "--partition=cpu",
         "--nodes=1", "--ntasks=2", "--cpus-per-task=1", "--mem-per-cpu=1G", "--time=00:05:00",
         f"--chdir={folder}", f"--output={folder}/job-%j.log", "--no-requeue",
         str(folder / "train_ddp.sbatch"), "--steps", str(steps), "--log-every", "10",
         "--run-dir", str(folder / "run"), *extra],
        capture_output=True, text=True, check=True,
    ).stdout.strip().split(";")[0]


def wait_for_log(folder: Path, job: str, pattern: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    log = folder / f"job-{job}.log"
    while time.monotonic() < deadline:
        if log.exists() and re.search(pattern, log.read_text()):
            return
        time.sleep(0.5)
    pytest.fail(f"job {job}: no {pattern!r} in its log after {timeout} s")


def finish(folder: Path, job: str, timeout: float = 90) -> str:
    """Wait until the job has left the queue; check it did not fail; return its log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True).stdout.strip():
            break
        time.sleep(1)
    else:
        subprocess.run(["scancel", job], check=False)
        pytest.fail(f"job {job} did not finish in {timeout} s")
    log = (folder / f"job-{job}.log").read_text()
    state = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job, "-o", "State"],
                           capture_output=True, text=True).stdout.strip()
    assert "FAILED" not in state and "CANCELLED" not in state, f"job {job}: {state}\n{log}"
    return log


def run_job(folder: Path, steps: int) -> str:
    return finish(folder, submit(folder, steps))


def test_two_ranks_train_and_a_second_job_resumes(job_dir):
    first = run_job(job_dir, steps=20)
    for rank in (0, 1):
        assert re.search(rf"rank {rank}/2 on \S+ \(gloo, cpu\): starting from scratch", first), first
        assert f"rank {rank}/2 step 20 loss" in first, first
        assert f"rank {rank}/2: done at step 20" in first, first
    # The two ranks see different data, so their local losses differ (DDP averages the gradients).
    losses = {r: float(re.search(rf"rank {r}/2 step 10 loss ([\d.]+)", first).group(1)) for r in (0, 1)}
    assert losses[0] != losses[1], first
    assert (job_dir / "run" / "checkpoint.pt").stat().st_size > 0

    second = run_job(job_dir, steps=30)
    for rank in (0, 1):
        assert re.search(rf"rank {rank}/2 on \S+ \(gloo, cpu\): resumed from step 20", second), second
        assert f"rank {rank}/2 step 30 loss" in second and f"rank {rank}/2 step 10 loss" not in second, second
        assert f"rank {rank}/2: done at step 30" in second, second


def test_usr1_before_the_time_limit_stops_both_ranks_at_one_step_with_a_checkpoint(job_dir):
    # What --signal=USR1@120 does near the time limit, sent now with scancel; a long run that
    # would take minutes without the signal.
    job = submit(job_dir, 100_000, "--step-delay", "0.05")
    wait_for_log(job_dir, job, r"rank 1/2 step 20 loss")
    subprocess.run(["scancel", "--signal=USR1", job], check=True)
    log = finish(job_dir, job)
    stops = re.findall(r"rank (\d)/2: stopping at step (\d+) on USR1; checkpoint saved", log)
    assert sorted(rank for rank, _ in stops) == ["0", "1"] and stops[0][1] == stops[1][1], log
    assert f"not requeueing Slurm job {job}" in log, log       # submitted with --no-requeue
    stopped_at = int(stops[0][1])

    resumed = run_job(job_dir, steps=stopped_at + 10)
    for rank in (0, 1):
        assert re.search(rf"rank {rank}/2 on \S+ \(gloo, cpu\): resumed from step {stopped_at}\n", resumed), resumed
        assert f"rank {rank}/2: done at step {stopped_at + 10}" in resumed, resumed
