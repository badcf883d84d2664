"""Batch runs on the real cluster: `aifactory submit` / `aifactory runs` as a researcher.

The command runs as t-researcher1 (sudo -E -u, PYTHONPATH pointing at this tree so the jobs use
it too), on the CPU partition with one CPU; the example notebook takes about a second.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest
from conftest import HUB_SITE_FILE, ROOT

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

USER = "t-researcher1"
EXAMPLE = ROOT / "tests" / "data" / "sweep-example.ipynb"
SMALL = ["--partition", "cpu", "--cpus", "1", "--memory-gb", "1", "--hours", "1"]
RUN_ID_RE = re.compile(r"Submitted run (\S+): job array (\d+)")


@pytest.fixture
def aifactory(slurm_cluster):
    """Run the command line as the researcher; afterwards cancel its jobs and remove its run folders."""
    submitted: list[tuple[str, str]] = []

    def command(*args, check_rc: int | None = 0) -> subprocess.CompletedProcess:
        result = subprocess.run(
            ["sudo", "-E", "-u", USER, "env", f"PYTHONPATH={ROOT / 'src'}", "/opt/aifactory/venv/bin/python",
             "-m", "aifactory.cli", "--site", str(HUB_SITE_FILE), *args],
            capture_output=True, text=True, cwd="/tmp", timeout=240)
        submitted.extend(RUN_ID_RE.findall(result.stdout))
        if check_rc is not None:
            assert result.returncode == check_rc, f"rc {result.returncode}\n{result.stdout}\n{result.stderr}"
        return result

    command.submitted = submitted
    yield command
    for run_id, job_id in submitted:
        subprocess.run(["scancel", job_id], check=False)
        shutil.rmtree(runs_folder() / run_id, ignore_errors=True)


def runs_folder() -> Path:
    return Path(os.path.expanduser(f"~{USER}")) / "aifactory-runs"


def sacct_states(job_id: str) -> dict[str, str]:
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-j", job_id, "-o", "JobID,State"],
                         capture_output=True, text=True, check=True).stdout
    return dict(line.split("|", 1) for line in out.splitlines() if "|" in line)


def accounted_states(job_id: str, tasks: int) -> dict[str, str]:
    """sacct's states once accounting holds every task (slurmdbd records job ends a little later)."""
    deadline = time.monotonic() + 60
    while True:
        states = sacct_states(job_id)
        ended = len(states) >= tasks and not any(s in ("PENDING", "RUNNING", "COMPLETING") for s in states.values())
        if ended or time.monotonic() > deadline:
            return states
        time.sleep(1)


def our_jobs_since(start: str) -> list[str]:
    """Jobs of the researcher submitted by `aifactory submit` since ``start`` (queued or accounted)."""
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-u", USER, "-S", start, "-o", "JobID,JobName,Submit"],
                         capture_output=True, text=True, check=True).stdout
    queued = subprocess.run(["squeue", "-h", "-u", USER, "-o", "%i|%j|%V"], capture_output=True, text=True).stdout
    return [line for line in (out + queued).splitlines()
            if "|aifactory-run-" in line and line.rsplit("|", 1)[-1] >= start]


def test_a_sweep_runs_three_notebooks_and_collects_their_results(aifactory, tmp_path):
    result = aifactory("submit", str(EXAMPLE), "--sweep", "LR=0.05,0.2,0.5", "-p", "EPOCHS", "10", *SMALL,
                       "--wait")
    assert "3 completed" in result.stdout, result.stdout
    (run_id, job_id), = aifactory.submitted
    folder = runs_folder() / run_id
    assert os.stat(folder).st_mode & 0o777 == 0o700 and os.stat(folder.parent).st_mode & 0o777 == 0o700

    records = [json.loads((folder / f"task-{i}.json").read_text()) for i in range(3)]
    assert [r["parameters"] for r in records] == [{"EPOCHS": 10, "LR": lr} for lr in (0.05, 0.2, 0.5)]
    assert all(r["state"] == "COMPLETED" and r["job_id"] == job_id and r["exit_code"] == 0 for r in records)
    assert [r["array_index"] for r in records] == [0, 1, 2]
    assert all(r["node"] and r["start"] <= r["end"] for r in records)
    losses = [r["results"]["loss"] for r in records]
    assert losses[0] > losses[1] > losses[2], "a larger learning rate should fit better in 10 epochs"
    for i, lr in enumerate((0.05, 0.2, 0.5)):
        executed = json.loads((folder / f"task-{i}.ipynb").read_text())
        injected = next(c for c in executed["cells"] if "injected-parameters" in c["metadata"].get("tags", []))
        assert f"LR = {lr}" in "".join(injected["source"])
        assert os.stat(folder / f"task-{i}.ipynb").st_mode & 0o777 == 0o600
    states = accounted_states(job_id, 3)
    assert set(states.values()) == {"COMPLETED"} and len(states) == 3, states

    csv_file = f"/tmp/aifactory-runs-test-{os.getpid()}.csv"
    table = aifactory("runs", "collect", run_id, "--csv", csv_file).stdout.splitlines()
    assert table[0].split()[:4] == ["task", "state", "EPOCHS", "LR"] and "loss" in table[0]
    assert len([line for line in table[1:] if "COMPLETED" in line]) == 3
    csv_rows = Path(csv_file).read_text().splitlines()
    Path(csv_file).unlink()
    assert len(csv_rows) == 4 and f"{losses[1]}" in csv_rows[2]

    listing = aifactory("runs").stdout
    assert re.search(rf"{run_id}\s+{job_id}\s+3 COMPLETED", listing), listing
    # the Python API (what the lab panel uses), as the user
    api = subprocess.run(
        ["sudo", "-E", "-u", USER, "env", f"PYTHONPATH={ROOT / 'src'}", f"AIFACTORY_SITE={HUB_SITE_FILE}",
         "/opt/aifactory/venv/bin/python", "-c",
         f"import json; from aifactory import runs; print(json.dumps(runs.collect({run_id!r})))"],
        capture_output=True, text=True, cwd="/tmp", check=True).stdout
    assert [row["loss"] for row in json.loads(api)] == losses


def test_a_failing_notebook_names_its_cell(aifactory):
    result = aifactory("submit", str(EXAMPLE), "-p", "FAIL_AT_EPOCH", "2", *SMALL, "--wait", check_rc=1)
    (run_id, job_id), = aifactory.submitted
    assert "failed in cell 3 ('for epoch in range(EPOCHS):'): RuntimeError: training diverged at epoch 2" \
        in result.stdout, result.stdout
    record = json.loads((runs_folder() / run_id / "task-0.json").read_text())
    assert record["state"] == "FAILED" and record["failed_cell"]["index"] == 3 and record["results"] is None
    executed = json.loads((runs_folder() / run_id / "task-0.ipynb").read_text())
    errors = [c for c in executed["cells"] if any(o.get("output_type") == "error" for o in c.get("outputs", []))]
    assert len(errors) == 1 and "training diverged" in json.dumps(errors[0]["outputs"])
    assert accounted_states(job_id, 1) == {f"{job_id}_0": "FAILED"}
    assert "FAILED" in aifactory("runs").stdout


def test_cancel_removes_the_whole_array(aifactory):
    aifactory("submit", str(EXAMPLE), "-p", "SLEEP_SECONDS", "300", "--sweep", "SEED=0,1,2,3,4,5", *SMALL)
    (run_id, job_id), = aifactory.submitted
    queued = subprocess.run(["squeue", "-h", "-r", "-j", job_id, "-o", "%i"], capture_output=True, text=True)
    assert len(queued.stdout.split()) == 6, queued.stdout
    shown = aifactory("runs", "show", run_id).stdout
    assert "PENDING" in shown or "RUNNING" in shown
    # six tasks, throttle 4: at most four run at once, the rest wait (and say why)
    assert shown.count(" RUNNING ") <= 4 and "waiting: " in shown, shown

    assert f"cancelled run {run_id} (job array {job_id})" in aifactory("runs", "cancel", run_id).stdout
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        left = subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True).stdout.strip()
        states = sacct_states(job_id)
        if not left and states and all(s.startswith("CANCELLED") for s in states.values()):
            break
        time.sleep(1)
    assert not left, f"still queued after scancel: {left}"
    assert states and all(s.startswith("CANCELLED") for s in states.values()), states
    assert "CANCELLED" in aifactory("runs", "show", run_id).stdout


def test_bad_input_is_refused_before_anything_is_submitted(aifactory, tmp_path):
    start = datetime.now().strftime("%Y-%m-%dT%H:%M:%S")
    before = sorted(p.name for p in runs_folder().glob("*")) if runs_folder().exists() else []
    unreadable = Path("/tmp/aifactory-runs-test-private.ipynb")
    shutil.copy(EXAMPLE, unreadable)
    unreadable.chmod(0o600)
    nb = str(EXAMPLE)
    cases = [
        (["/tmp/does-not-exist.ipynb"], "notebook /tmp/does-not-exist.ipynb: does not exist"),
        ([str(unreadable)], "is not readable by you"),
        ([str(ROOT / "tests/data/no-parameters.ipynb"), "-p", "EPOCHS", "2"], "has no cell tagged 'parameters'"),
        ([nb, "-p", "BATCH_SIZE", "2"], "parameter BATCH_SIZE: is not assigned in the notebook's parameters"),
        ([nb, "-p", "LR", "0.1 0.2"], "parameter LR: '0.1 0.2' is not a Python literal"),
        ([nb, "--sweep", "LR="], "--sweep LR: has no values"),
        ([nb, "--sweep", "LR=1,2", "--sweep", "LR=3"], "--sweep LR: is given twice"),
        ([nb, "--sweep", "SEED=0,1,2,3,4,5,6", "--sweep", "LR=1,2,3"], "21 combinations are more than the site"),
        ([nb, "--partition", "nope"], "partition 'nope' is not available to you"),
        ([nb, "--account", "regional-energy"], "account 'regional-energy' is not available to you"),
        ([nb, "--partition", "cpu", "--cpus", "99"], "cpus: 99 is outside the allowed range"),
        ([nb, "--partition", "cpu", "--gpus", "1"], "partition 'cpu' has no GPUs"),
        ([nb, "--gpus", "h100;1"], "--gpus: 'h100;1': expected N or TYPE:N"),
    ]
    try:
        for args, says in cases:
            result = aifactory("submit", *args, check_rc=2)
            assert says in result.stderr and "nothing was submitted" in result.stderr, (args, result.stderr)
    finally:
        unreadable.unlink()
    assert aifactory.submitted == []
    assert our_jobs_since(start) == []
    after = sorted(p.name for p in runs_folder().glob("*")) if runs_folder().exists() else []
    assert after == before
