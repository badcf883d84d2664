"""The session panel (aifactory.widgets): unit tests, and the panel built inside a real Slurm job
compared with what squeue and scontrol say about that job."""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import subprocess
import time
import uuid
from datetime import datetime
from pathlib import Path

import pytest

from aifactory.slurm.queries import parse_session_job
from aifactory.widgets import (
    NO_NVIDIA_SMI,
    SessionPanel,
    describe_gres,
    format_time_left,
    parse_nvidia_smi,
)

ROOT = Path(__file__).resolve().parents[1]
USER = "t-researcher1"

# ---------------------------------------------------------------- unit tests

SQUEUE_LINE = "1206|gpu|uni-research|interactive|vm|gres:gpu:h100:1|3:00|2026-11-28T03:02:21|2:57|RUNNING\n"


def test_parse_session_job_from_real_squeue_output():
    job = parse_session_job(SQUEUE_LINE)
    assert (job.job_id, job.partition, job.account, job.qos, job.nodes, job.gres) == (
        "1206", "gpu", "uni-research", "interactive", "vm", "gres:gpu:h100:1")
    assert job.end_time == datetime(2026, 11, 28, 3, 2, 21) and job.time_left == "2:57"
    assert parse_session_job("") is None
    assert parse_session_job("1207|cpu|uni-research|(null)|vm|N/A|1:00:00|Unknown|1:00:00|PENDING").gres == ""


def test_nvidia_smi_figures_and_gres_in_words():
    gpus = parse_nvidia_smi("0, NVIDIA H100 80GB HBM3, 1024, 81559, 37\n1, NVIDIA H100 80GB HBM3, [N/A], 81559, 0\n")
    assert gpus[0].name == "NVIDIA H100 80GB HBM3" and gpus[0].memory_used_mib == 1024 and gpus[0].utilization_percent == 37
    assert gpus[1].memory_used_mib == -1
    assert describe_gres("gres:gpu:h100:1", "0") == "1 × h100 (CUDA_VISIBLE_DEVICES=0)"
    assert describe_gres("gres:gpu:2", "0,1") == "2 × any type (CUDA_VISIBLE_DEVICES=0,1)"
    assert describe_gres("gres:shard:a100:2", "1") == "2 GPU slice(s) of a100 (CUDA_VISIBLE_DEVICES=1)"
    assert describe_gres("", "") == "none"
    assert format_time_left(3 * 3600 + 62) == "3:01:02" and format_time_left(-5) == "0:00:00"
    assert format_time_left(86400 + 59) == "1-0:00:59"


class NoRuns:
    """The panel's batch-runs plug-in with nothing in it (the section's own tests: test_panel_runs.py)."""

    def runs(self):
        return []


def test_outside_a_job_the_panel_says_so():
    from conftest import HUB_SITE_FILE

    from aifactory.site import load_site

    panel = SessionPanel(batch_runs=NoRuns(), environ={}, tick_seconds=3600, site=load_site(HUB_SITE_FILE))
    assert "does not run in a Slurm job" in panel.message.value
    assert panel.values()["job_id"] == ""
    # no session, but batch runs still work where Slurm answers: the form is there, defaults from the site
    panel.runs.refresh()
    assert panel.runs.partition.value == "gpu" and panel.runs.notebook_path.value == ""
    assert [w.value for w in panel.runs.table.children] == ["No batch runs yet."]
    assert panel.runs.widget in panel.widget.children
    panel.close()


# ---------------------------------------------------------------- inside a real Slurm job

DUMP = r'''
import asyncio, json, os, sys, time
from datetime import datetime
from aifactory.widgets import panel

async def in_a_kernel():
    # a notebook cell runs inside the kernel's event loop: build the panel the same way
    return panel()

session = asyncio.run(in_a_kernel())
dumped_at = datetime.now()
first = {name: w.get_state()["value"] for name, w in session.fields.items()}
time.sleep(2.5)
later = {name: w.get_state()["value"] for name, w in session.fields.items()}

def tree(widget):
    yield widget
    for child in getattr(widget, "children", ()):
        yield from tree(child)

shown = {id(w) for w in tree(session.widget)}
result = {"dumped_at": dumped_at.isoformat(), "first": first, "later": later, "message": session.message.value,
          "all_shown": all(id(w) in shown for w in session.fields.values())}
with open(sys.argv[1] + ".part", "w") as f:
    json.dump(result, f)
os.rename(sys.argv[1] + ".part", sys.argv[1])
'''


@pytest.fixture
def job_dir():
    user = pwd.getpwnam(USER)
    path = Path("/tmp/aifactory-tests") / f"panel-{uuid.uuid4().hex[:8]}"
    path.mkdir(mode=0o700, parents=True)
    os.chown(path, user.pw_uid, user.pw_gid)
    jobs: list[str] = []
    yield path, jobs
    if jobs:
        subprocess.run(["scancel", *jobs], check=False)
    shutil.rmtree(path, ignore_errors=True)


def _seconds(text: str) -> int:
    days, _, clock = text.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    return int(days or 0) * 86400 + sum(p * 60**i for i, p in enumerate(reversed(parts)))


@pytest.mark.slurm
def test_panel_inside_a_gpu_job_shows_that_jobs_values(slurm_cluster, job_dir):
    path, jobs = job_dir
    script = path / "dump.py"
    script.write_text(DUMP)
    os.chown(script, pwd.getpwnam(USER).pw_uid, -1)
    out = path / "panel.json"
    # sudo drops PYTHONPATH (even with -E): the job sets it to import this checkout
    command = f"PYTHONPATH={ROOT / 'src'} /opt/aifactory/venv/bin/python {script} {out}; sleep 300"
    job_id = subprocess.run(
        ["sudo", "-u", USER, "sbatch", "--parsable", "--job-name=aifactory-test-panel", "--partition=gpu",
         "--account=uni-research", "--qos=interactive", "--gres=gpu:h100:1", "--time=00:10:00", "--mem=512M",
         f"--chdir={path}", f"--output={path}/job.log", "--wrap", command],
        capture_output=True, text=True, check=True).stdout.strip()
    jobs.append(job_id)
    deadline = time.monotonic() + 120
    while not out.exists():
        assert time.monotonic() < deadline, f"the panel was not dumped: {(path / 'job.log').read_text(errors='replace')}"
        time.sleep(1)
    dump = json.loads(out.read_text())
    first = dump["first"]

    squeue = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%i|%P|%a|%q|%N|%b|%e"], capture_output=True,
                            text=True, check=True).stdout.strip().split("|")
    job_id_, partition, account, qos, node, gres, end = squeue
    detail = subprocess.run(["scontrol", "show", "job", "-d", job_id], capture_output=True, text=True,
                            check=True).stdout
    gpu_index = re.search(r"GRES=gpu:h100:1\(IDX:(\d+)\)", detail).group(1)
    assert dump["message"] == "" and dump["all_shown"]
    assert (first["job_id"], first["partition"], first["account"], first["qos"], first["nodes"]) == (
        job_id, partition, account, qos, node) == (job_id, "gpu", "uni-research", "interactive", node)
    assert gres == "gres:gpu:h100:1"
    assert first["gpus"] == f"1 × h100 (CUDA_VISIBLE_DEVICES={gpu_index})"
    assert first["end_time"] == end.replace("T", " ")
    expected_left = (datetime.fromisoformat(end) - datetime.fromisoformat(dump["dumped_at"])).total_seconds()
    assert abs(_seconds(first["time_left"]) - expected_left) <= 1
    # the clock ticks by itself
    assert _seconds(dump["later"]["time_left"]) < _seconds(first["time_left"])
    if shutil.which("nvidia-smi") is None:
        assert first["gpu_figures"] == NO_NVIDIA_SMI
    # where the account stands, as sshare says (the spawn form shows the same)
    rows = [line.split("|") for line in subprocess.run(
        ["sshare", "-P", "-n", "-A", "uni-research", "-u", USER, "-o", "Account,User,RawShares,FairShare"],
        capture_output=True, text=True, check=True).stdout.split()]
    shares = next(r[2] for r in rows if r[0].strip() == "uni-research" and not r[1])
    factor = next(float(r[3]) for r in rows if r[1] == USER)
    assert first["standing"].startswith(f"uni-research: {shares} shares"), first["standing"]
    assert f"your fair-share factor {factor:.2f}" in first["standing"], first["standing"]
    assert "GPU-hours this month" in first["standing"]


@pytest.mark.slurm
@pytest.mark.browser
@pytest.mark.slow
def test_panel_ticks_in_jupyterlab_inside_a_job(slurm_cluster, job_dir):
    """The panel in a real lab page: a kernel of a lab server that runs as a Slurm job."""
    import secrets

    import nbformat
    from conftest import chromium_path
    from playwright.sync_api import sync_playwright

    path, jobs = job_dir
    notebook = path / "panel.ipynb"
    nbformat.write(nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell("from aifactory.widgets import panel\npanel()")],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}), notebook)
    os.chown(notebook, pwd.getpwnam(USER).pw_uid, -1)
    token, port = secrets.token_hex(16), 21520
    command = (f"PYTHONPATH={ROOT / 'src'} /opt/aifactory/venv/bin/jupyter lab --no-browser --ip=127.0.0.1 "
               f"--port={port} --IdentityProvider.token={token}")
    job_id = subprocess.run(
        ["sudo", "-u", USER, "sbatch", "--parsable", "--job-name=aifactory-test-panel", "--partition=cpu",
         "--account=uni-research", "--qos=interactive", "--time=00:10:00", "--mem=1G", "--nodelist=vm",
         f"--chdir={path}", f"--output={path}/job.log", "--wrap", command],
        capture_output=True, text=True, check=True).stdout.strip()
    jobs.append(job_id)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(60_000)
        log = path / "job.log"
        deadline = time.monotonic() + 90
        while not log.exists() or "is running at" not in log.read_text(errors="replace"):
            assert time.monotonic() < deadline, "the lab server of the job did not start"
            time.sleep(1)
        page.goto(f"http://127.0.0.1:{port}/lab/tree/{notebook.name}?token={token}")
        page.get_by_text("Python 3 (ipykernel) | Idle").wait_for()  # a cell run before the kernel is up is dropped
        page.locator(".jp-Notebook .jp-Cell .cm-content").first.click()
        page.keyboard.press("Shift+Enter")
        row = page.locator(".widget-hbox", has_text="Wall time left").locator(".widget-label").nth(1)
        row.wait_for()
        job_row = page.locator(".widget-hbox", has_text="Job").locator(".widget-label").nth(1)
        assert job_row.inner_text() == job_id
        first = row.inner_text()
        # the clock ticks in the page by itself (a thread of the kernel), no cell runs
        deadline = time.monotonic() + 10
        while row.inner_text() == first and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _seconds(row.inner_text()) < _seconds(first)
        browser.close()
