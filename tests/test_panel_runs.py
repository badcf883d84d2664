"""The session panel's "Batch runs" section (aifactory.runs.panel): the form, the table with its
Cancel buttons and the plot of a sweep, against a fake in unit tests and against real sweeps on
the cluster (as t-researcher1), and in a real lab of a hub session in a browser."""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest
from conftest import HUB_SITE_FILE, ROOT

from aifactory.runs import RunError, RunInputError
from aifactory.runs.api import Run, Task
from aifactory.runs.panel import BatchRunsSection, current_notebook, parameters_from_rows, plot_series
from aifactory.site import load_site
from aifactory.slurm.queries import SlurmUnavailable

USER = "t-researcher1"
EXAMPLE = ROOT / "tests" / "data" / "sweep-example.ipynb"
HUB_PORT = 21000

# ---------------------------------------------------------------- unit tests (a fake BatchRuns)


def test_parameter_rows_become_fixed_values_and_sweeps():
    fixed, sweep = parameters_from_rows([("LR", "0.05, 0.2, 0.5"), ("", ""), ("EPOCHS", "10"),
                                         ("MODEL", "resnet-18"), ("SIZES", "[1, 2]"), ("NAMES", "'a', 'b c'")])
    assert fixed == {"EPOCHS": 10, "MODEL": "resnet-18", "SIZES": [1, 2]}
    assert sweep == {"LR": [0.05, 0.2, 0.5], "NAMES": ["a", "b c"]}
    for rows, says in [
        ([("LR", "0.1,,0.2")], "parameter LR: has an empty value"),
        ([("LR", "0.1 0.2")], "parameter LR: '0.1 0.2' is not a Python literal"),
        ([("LR", "1, 1")], "parameter LR: lists a value twice"),
        ([("LR", "")], "parameter LR: has no value"),
        ([("LR", "1"), ("LR", "2")], "parameter LR: is given in two rows"),
        ([("", "1")], "parameter row 1: has values but no parameter name"),
        ([("x", "1"), ("rm -rf", "1")], "parameter row 2: 'rm -rf' is not a Python name"),
    ]:
        with pytest.raises(RunInputError) as error:
            parameters_from_rows(rows)
        assert str(error.value).startswith(says), str(error.value)


def test_the_kernels_notebook_is_the_default():
    home = str(Path.home())
    assert current_notebook({"JPY_SESSION_NAME": f"{home}/project/train.ipynb"}) == "project/train.ipynb"
    assert current_notebook({"JPY_SESSION_NAME": "/srv/shared/x.ipynb"}) == "/srv/shared/x.ipynb"
    assert current_notebook({}, lambda: {"__session__": f"{home}/a.ipynb"}) == "a.ipynb"
    assert current_notebook({"JPY_SESSION_NAME": f"{home}/console-1"}) == ""  # a console, not a notebook
    assert current_notebook({}) == ""


def test_plot_series_sorts_numbers_and_splits_by_the_other_swept_parameter():
    rows = [{"task": 0, "state": "COMPLETED", "LR": 0.5, "SEED": 0, "loss": 1.0},
            {"task": 1, "state": "COMPLETED", "LR": 0.1, "SEED": 0, "loss": 3.0},
            {"task": 2, "state": "FAILED", "LR": 0.2, "SEED": 0, "loss": None},
            {"task": 3, "state": "COMPLETED", "LR": 0.1, "SEED": 1, "loss": 2.0}]
    assert plot_series(rows, "LR", "loss", ["LR", "SEED"]) == {"SEED=0": [(0.1, 3.0), (0.5, 1.0)],
                                                               "SEED=1": [(0.1, 2.0)]}


@dataclass
class FakeRuns:
    """The BatchRuns protocol over a list: the section's side of the interface, without Slurm."""

    made: list[Run] = field(default_factory=list)
    rows: dict = field(default_factory=dict)
    cancelled: list[str] = field(default_factory=list)
    controller_down: bool = False

    def runs(self):
        if self.controller_down:
            raise SlurmUnavailable("Unable to contact slurm controller")
        return list(self.made)

    def submit(self, notebook, parameters=None, sweep=None, resources=None):
        if "BATCH_SIZE" in (parameters or {}):
            raise RunInputError("parameter BATCH_SIZE", "is not assigned in the notebook's parameters cell")
        if resources["partition"] == "cpu" and resources["gpus"]:
            raise RunError("resources: gpus: partition 'cpu' has no GPUs")
        grid = [{**parameters, "LR": lr} for lr in (sweep or {}).get("LR", [0.1])]
        run = Run(f"run-{len(self.made)}", notebook, Path("/nonexistent"), str(500 + len(self.made)), "", resources,
                  [Task(i, p, "PENDING") for i, p in enumerate(grid)])
        self.made.append(run)
        return run

    def cancel(self, run_id):
        self.cancelled.append(run_id)
        run = next(r for r in self.made if r.run_id == run_id)
        for task in run.tasks:
            task.state = "CANCELLED"
        return run

    def collect(self, run_id):
        return self.rows[run_id]


def test_form_submits_lists_cancels_and_plots_through_the_interface():
    fake = FakeRuns()
    section = BatchRunsSection(fake, load_site(HUB_SITE_FILE), notebook="nb/train.ipynb",
                               defaults={"partition": "cpu", "gpus": 1, "account": "uni-research"},
                               refresh_seconds=3600)
    try:
        assert (section.partition.value, section.gpus.value, section.account.value) == ("cpu", 0, "uni-research")
        section.refresh()
        assert [c.value for c in section.table.children] == ["No batch runs yet."]
        (name, values), (name2, values2) = section.parameter_rows[:2]
        name.value, values.value = "BATCH_SIZE", "2"
        section.submit_button.click()
        assert "Not submitted: parameter BATCH_SIZE" in section.message.value and fake.made == []
        section.gpus.value = 1
        name.value, values.value = "LR", "0.1, 0.2, 0.3"
        section.submit_button.click()
        assert "partition &#x27;cpu&#x27; has no GPUs" in section.message.value and fake.made == []
        section.gpus.value = 0
        name2.value, values2.value = "EPOCHS", "4"
        section.submit_button.click()
        assert "Submitted run run-0: job array 500 with 3 task(s) on partition cpu" in section.message.value
        [run] = fake.made
        assert run.notebook == str(Path.home() / "nb/train.ipynb")
        assert [t.parameters for t in run.tasks] == [{"EPOCHS": 4, "LR": lr} for lr in (0.1, 0.2, 0.3)]
        assert run.options == {"partition": "cpu", "gpus": 0, "hours": 1, "account": "uni-research"}
        assert section.listed() == [{"run_id": "run-0", "job_id": "500", "notebook": "train.ipynb",
                                     "state": "PENDING (3 pending)"}]
        section.cancel_buttons["run-0"].click()
        assert fake.cancelled == ["run-0"] and "Cancelled run run-0" in section.message.value
        assert section.listed()[0]["state"] == "CANCELLED (3 cancelled)" and section.cancel_buttons == {}
        assert section.results_box.children == ()  # no results: nothing to plot

        for task, loss in zip(run.tasks, (3.0, 2.0, 1.0), strict=True):
            task.state, task.results = "COMPLETED", {"loss": loss, "note": "ok"}
        fake.rows["run-0"] = [{"task": t.index, "state": t.state, **t.parameters, **t.results} for t in run.tasks]
        section.refresh()
        assert section.plot_run.value == "run-0" and section.plot_x.options == ("LR",)
        assert section.plot_y.options == ("loss",)  # numbers only
        [line] = section.figure.axes[0].lines
        assert list(line.get_xdata()) == [0.1, 0.2, 0.3] and list(line.get_ydata()) == [3.0, 2.0, 1.0]
        assert section.plot.outputs[0]["data"]["image/png"]

        fake.controller_down = True
        section.refresh()
        assert "Slurm did not answer" in section.table.children[0].value
    finally:
        section.close()


# ---------------------------------------------------------------- real sweeps, as the researcher

PANEL_SCRIPT = r'''
import json, os, re, sys, time
from aifactory import runs
from aifactory.widgets import SessionPanel

out, mode, notebook = sys.argv[1:4]

def dump(name, data):
    with open(f"{out}/{name}.json.part", "w") as f:
        json.dump(data, f, default=str)
    os.rename(f"{out}/{name}.json.part", f"{out}/{name}.json")

def until(condition, what, seconds=180):
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            dump("timeout", {"what": what, "listed": section.listed(), "message": section.message.value})
            sys.exit(f"timed out: {what}")
        time.sleep(0.5)

panel = SessionPanel(environ={}, tick_seconds=3600, refresh_seconds=2)   # on the login node: no job
section = panel.runs
section.notebook_path.value = notebook
section.partition.value, section.gpus.value, section.hours.value = "cpu", 0, 1

def fill(rows):
    for (name, values), (n, v) in zip(section.parameter_rows, rows + [("", "")] * 3):
        name.value, values.value = n, v

def submitted():
    match = re.search(r"Submitted run (\S+): job array (\d+)", section.message.value)
    if match:
        with open(f"{out}/jobs", "a") as f:
            f.write(f"{match[1]} {match[2]}\n")   # the test cancels these, whatever happens next
    return match

if mode == "bad":
    until(lambda: section.listed() or "No batch runs" in str(section.table.children[0].value), "first table")
    before = section.listed()
    shown = []
    for rows in ([("BATCH_SIZE", "2")], [("LR", "0.1,,0.2")], [("LR", "0.05 0.2")]):
        fill(rows)
        section.submit_button.click()
        shown.append(section.message.value)
        submitted()
    section.refresh()
    dump("bad", {"messages": shown, "before": before, "after": section.listed()})
    sys.exit(0)

fill([("LR", "0.05, 0.2, 0.5"), ("EPOCHS", "10")])
section.submit_button.click()
match = submitted()
if not match:
    dump("timeout", {"what": "submit", "message": section.message.value})
    sys.exit(1)
run_id, job_id = match[1], match[2]
dump("submitted", {"run_id": run_id, "job_id": job_id, "listed": section.listed()})

fill([("SLEEP_SECONDS", "300")])
section.submit_button.click()
sleeper, sleeper_job = submitted().group(1, 2)
until(lambda: sleeper in section.cancel_buttons, "Cancel button of the sleeping run")
section.cancel_buttons[sleeper].click()
cancel_message = section.message.value

def state(run):
    return next((r["state"] for r in section.listed() if r["run_id"] == run), "")

until(lambda: state(sleeper).startswith("CANCELLED") and state(run_id).startswith("COMPLETED"),
      "the sweep completed and the sleeping run cancelled")
until(lambda: section.plot_run.value == run_id and section.figure is not None, "the plot")
section.plot_y.value = "loss"   # the result to compare, picked from the dropdown as a user does
lines = [[line.get_xdata().tolist(), line.get_ydata().tolist()] for line in section.figure.axes[0].lines]
dump("done", {"listed": section.listed(), "cancel_message": cancel_message, "sleeper": [sleeper, sleeper_job],
              "plot": {"run": section.plot_run.value, "x": section.plot_x.value, "y": section.plot_y.value,
                       "results": list(section.plot_y.options), "lines": lines,
                       "png": bool(section.plot.outputs[0]["data"]["image/png"])},
              "collect": runs.collect(run_id)})
panel.close()
'''


@pytest.fixture
def as_researcher(slurm_cluster):
    """Run the panel script as the researcher; afterwards cancel its runs' jobs and remove their folders."""
    user = pwd.getpwnam(USER)
    path = Path("/tmp/aifactory-tests") / f"panel-runs-{uuid.uuid4().hex[:8]}"
    path.mkdir(mode=0o700, parents=True)
    os.chown(path, user.pw_uid, user.pw_gid)
    script = path / "panel_runs.py"
    script.write_text(PANEL_SCRIPT)
    # a notebook of this test's own: its runs' job names and folders tell them from other tests' runs
    notebook = path / f"panelrun-{path.name[-8:]}.ipynb"
    shutil.copy(EXAMPLE, notebook)
    os.chown(notebook, user.pw_uid, user.pw_gid)

    def run(mode: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["sudo", "-E", "-u", USER, "env", f"PYTHONPATH={ROOT / 'src'}", f"AIFACTORY_SITE={HUB_SITE_FILE}",
             "MPLBACKEND=Agg", sys.executable, str(script), str(path), mode, str(notebook)],
            capture_output=True, text=True, cwd="/tmp", timeout=300)

    run.path, run.notebook = path, notebook
    yield run
    jobs = (path / "jobs").read_text().split() if (path / "jobs").exists() else []
    for run_id, job_id in zip(jobs[::2], jobs[1::2], strict=True):
        subprocess.run(["scancel", job_id], check=False)
        shutil.rmtree(Path(user.pw_dir) / "aifactory-runs" / run_id, ignore_errors=True)
    shutil.rmtree(path, ignore_errors=True)


def _sacct(job_id: str) -> list[list[str]]:
    """sacct's rows of the job array once accounting has every task's end (slurmdbd is a little late)."""
    deadline = time.monotonic() + 60
    while True:
        out = subprocess.run(["sacct", "-X", "-n", "-P", "-j", job_id, "-o", "JobID,JobName,User,State"],
                             capture_output=True, text=True, check=True).stdout
        rows = [line.split("|") for line in out.splitlines() if line]
        if rows and not any(r[3] in ("PENDING", "RUNNING", "COMPLETING") for r in rows) \
                or time.monotonic() > deadline:
            return rows
        time.sleep(1)


def _result(path: Path, name: str, proc: subprocess.CompletedProcess) -> dict:
    file = path / f"{name}.json"
    assert file.exists(), f"{proc.stdout}\n{proc.stderr}\n" + \
        ((path / "timeout.json").read_text() if (path / "timeout.json").exists() else "")
    return json.loads(file.read_text())


@pytest.mark.slurm
@pytest.mark.slow
def test_a_sweep_submitted_from_the_panel_is_listed_cancellable_and_plotted(as_researcher):
    proc = as_researcher("sweep")
    path = as_researcher.path
    submitted, done = _result(path, "submitted", proc), _result(path, "done", proc)
    run_id, job_id = submitted["run_id"], submitted["job_id"]
    # the row shows the real job array: sacct knows it as the researcher's run, three tasks
    assert {"run_id": run_id, "job_id": job_id, "notebook": as_researcher.notebook.name} == {
        k: v for k, v in submitted["listed"][0].items() if k != "state"}
    rows = _sacct(job_id)
    assert [r[0] for r in rows] == [f"{job_id}_{i}" for i in range(3)], rows
    assert {(r[1], r[2], r[3]) for r in rows} == {(f"aifactory-run-{run_id}", USER, "COMPLETED")}
    listed = {r["run_id"]: r for r in done["listed"]}
    assert listed[run_id] == {"run_id": run_id, "job_id": job_id, "notebook": as_researcher.notebook.name,
                              "state": "COMPLETED (3 completed)"}

    # the sleeping run was cancelled by its button: Slurm says so too
    sleeper, sleeper_job = done["sleeper"]
    assert f"Cancelled run {sleeper} (job array {sleeper_job})" in done["cancel_message"]
    assert listed[sleeper]["state"] == "CANCELLED" and listed[sleeper]["job_id"] == sleeper_job
    assert {r[3].split()[0] for r in _sacct(sleeper_job)} == {"CANCELLED"}

    # the plot shows what runs.collect returns: the loss against the swept learning rate
    plot, collected = done["plot"], done["collect"]
    assert (plot["run"], plot["x"], plot["y"], plot["png"]) == (run_id, "LR", "loss", True)
    assert sorted(plot["results"]) == ["b", "loss", "w"]
    assert plot["lines"] == [[[row["LR"] for row in collected], [row["loss"] for row in collected]]]
    assert [row["LR"] for row in collected] == [0.05, 0.2, 0.5] and {r["state"] for r in collected} == {"COMPLETED"}


def _run_jobs(since: str) -> dict[str, str]:
    """The researcher's batch-run jobs (job id -> job name), queued or accounted since ``since``."""
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-u", USER, "-S", since, "-o", "JobID,JobName"],
                         capture_output=True, text=True, check=True).stdout
    queued = subprocess.run(["squeue", "-h", "-u", USER, "-o", "%i|%j"], capture_output=True, text=True,
                            check=True).stdout
    return dict(line.split("|", 1) for line in (out + queued).splitlines() if "|aifactory-run-" in line)


@pytest.mark.slurm
def test_bad_input_in_the_form_is_shown_and_submits_nothing(as_researcher):
    runs_folder = Path(pwd.getpwnam(USER).pw_dir) / "aifactory-runs"
    start = datetime.now().strftime("%Y-%m-%dT%H:%M:%S")
    before = _run_jobs(start)
    proc = as_researcher("bad")
    bad = _result(as_researcher.path, "bad", proc)
    says = ["Not submitted: parameter BATCH_SIZE: is not assigned in the notebook&#x27;s parameters cell",
            "Not submitted: parameter LR: has an empty value",
            "Not submitted: parameter LR: &#x27;0.05 0.2&#x27; is not a Python literal"]
    for message, expected in zip(bad["messages"], says, strict=True):
        assert expected in message, message
    assert not (as_researcher.path / "jobs").exists()
    assert bad["after"] == bad["before"]
    # the lead's suite may submit runs of the same user meanwhile: ours carry the notebook's name
    stem = as_researcher.notebook.stem
    after = _run_jobs(start)
    assert [name for job, name in after.items() if job not in before and stem in name] == []
    assert list(runs_folder.glob(f"{stem}-*")) == []


# ---------------------------------------------------------------- in a real lab, in a browser

# sudo drops PYTHONPATH even with -E: the session's server command sets it, so the lab's kernels
# import this checkout (as in test_walltime.py)
SERVER_OF_THIS_CHECKOUT = ["--Spawner.cmd=/usr/bin/env", f"--Spawner.cmd=PYTHONPATH={ROOT / 'src'}",
                           "--Spawner.cmd=/opt/aifactory/venv/bin/jupyterhub-singleuser"]


@pytest.fixture
def panel_session(slurm_cluster, tmp_path_factory):
    """A hub on this test's ports, a notebook in the researcher's home that shows the panel; afterwards
    the session stops and every run submitted from it is cancelled and removed."""
    import nbformat
    from hubtools import Hub

    user = pwd.getpwnam(USER)
    notebook = Path(user.pw_dir) / f"panelruns-{uuid.uuid4().hex[:8]}.ipynb"
    parameters = nbformat.v4.new_code_cell("LR = 0.1")
    parameters.metadata["tags"] = ["parameters"]
    results = nbformat.v4.new_code_cell("results = {'loss': (1 - LR) ** 2}")
    results.metadata["tags"] = ["results"]
    nbformat.write(nbformat.v4.new_notebook(
        cells=[parameters, nbformat.v4.new_code_cell("from aifactory.widgets import panel\npanel()"), results],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}), notebook)
    os.chown(notebook, user.pw_uid, user.pw_gid)
    hub = Hub(tmp_path_factory.mktemp("panel-runs-hub"), HUB_SITE_FILE, port=HUB_PORT,
              extra_args=SERVER_OF_THIS_CHECKOUT)
    hub.start()
    submitted: list[tuple[str, str]] = []
    yield hub, notebook, submitted
    for run_id, job_id in submitted:
        subprocess.run(["scancel", job_id], check=False)
        shutil.rmtree(Path(user.pw_dir) / "aifactory-runs" / run_id, ignore_errors=True)
    hub.stop_all_servers()
    hub.stop()
    notebook.unlink(missing_ok=True)


@pytest.mark.slurm
@pytest.mark.hub
@pytest.mark.browser
@pytest.mark.slow
def test_a_sweep_submitted_from_the_panel_in_jupyterlab(panel_session):
    from conftest import chromium_path
    from hubtools import PASSWORDS
    from playwright.sync_api import sync_playwright

    hub, notebook, submitted = panel_session
    r = hub.spawn(USER, {"partition": "cpu", "gpus": 0, "cpus": 1, "memory_gb": 1, "hours": 1})
    assert r.status_code in (201, 202), r.text
    hub.wait_ready(USER, timeout=120)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(f"{hub.url}/hub/login")
        page.fill("#username_input", USER)
        page.fill("#password_input", PASSWORDS[USER])
        page.click("#login_submit")
        page.wait_for_url("**/hub/**")
        page.goto(f"{hub.url}/user/{USER}/lab/tree/{notebook.name}")
        page.locator(".jp-Notebook .jp-Cell .cm-content").first.wait_for()
        page.get_by_text("Python 3 (ipykernel) | Idle").wait_for()  # a cell run before the kernel is up is dropped
        page.locator(".jp-Notebook .jp-Cell .cm-content").nth(1).click()
        page.keyboard.press("Shift+Enter")

        # the form knows the notebook (JPY_SESSION_NAME) and the session's partition
        path_field = page.locator(".aif-runs-notebook input")
        path_field.wait_for()
        assert path_field.input_value() == notebook.name
        assert page.locator(".aif-runs-partition select").input_value() == "cpu"
        page.locator(".aif-runs-param-name-0 input").fill("LR")
        page.locator(".aif-runs-param-values-0 input").fill("0.2, 0.5")
        page.locator(".aif-runs-submit").click()
        message = page.locator(".aif-runs-message", has_text="Submitted run")
        message.wait_for()
        match = re.search(r"Submitted run (\S+): job array (\d+) with 2 task\(s\)", message.inner_text())
        assert match, message.inner_text()
        run_id, job_id = match[1], match[2]
        submitted.append((run_id, job_id))
        row = page.locator(".aif-runs-row", has_text=job_id)
        row.wait_for()
        assert run_id in row.inner_text() and notebook.name in row.inner_text()
        # the same job array for Slurm: the researcher's, named after the run
        sacct = _sacct(job_id)
        assert {(r[1], r[2]) for r in sacct} == {(f"aifactory-run-{run_id}", USER)} and len(sacct) == 2, sacct
        # the table follows the run by itself (the panel's refresh thread); its results get a plot
        page.locator(".aif-runs-row", has_text=job_id).filter(has_text="COMPLETED").wait_for(timeout=120_000)
        plot = page.locator(".aif-runs-plot img")
        plot.wait_for()
        plot.scroll_into_view_if_needed()
        page.screenshot(path=str(hub.state / "panel-runs.png"))
        browser.close()
    assert {r[3] for r in _sacct(job_id)} == {"COMPLETED"}
