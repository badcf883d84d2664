"""Wall-time end loses no work: Slurm's warning signal has JupyterLab save the open notebooks and
show a notice (aifactory.walltime, the batch script's --signal, spawn.walltime_warning_minutes)."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import uuid
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from conftest import HUB_SITE_FILE, chromium_path
from hubtools import PASSWORDS, Hub, user_jobs

from aifactory import walltime
from aifactory.hub import batchscript
from aifactory.hub.options import SessionOptions
from aifactory.site import SiteError, load_site
from aifactory.walltime.extension import notice

HUB_PORT = 21500
USER = "t-partner1"
LAB_READY = "#jp-main-dock-panel"


# ---------------------------------------------------------------- unit tests


def _site_with_spawn(tmp_path, **spawn) -> Path:
    raw = yaml.safe_load(HUB_SITE_FILE.read_text())
    raw["spawn"] = {k: v for k, v in raw["spawn"].items() if k != "walltime_warning_minutes"} | spawn
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_site_warning_minutes_default_and_value(tmp_path):
    assert load_site(_site_with_spawn(tmp_path)).walltime_warning_minutes == 5
    assert load_site(_site_with_spawn(tmp_path, walltime_warning_minutes=0)).walltime_warning_minutes == 0
    assert load_site(_site_with_spawn(tmp_path, walltime_warning_minutes=12)).walltime_warning_minutes == 12


@pytest.mark.parametrize("value", [-1, 61, "5", True, 2.5])
def test_site_refuses_bad_warning_minutes(tmp_path, value):
    with pytest.raises(SiteError, match=r"spawn\.walltime_warning_minutes"):
        load_site(_site_with_spawn(tmp_path, walltime_warning_minutes=value))


def _script(warning_seconds: int, minutes: int = 0, srun: str = "srun") -> str:
    options = SessionOptions(partition="cpu", account="uni-research", qos="interactive", gpu_type="any", gpus=0,
                             cpus=1, memory_gb=1, hours=1, minutes=minutes)
    ctx = batchscript.JobContext(username="t-partner1", homedir="/home/t-partner1", cmd="/v/bin/server --x",
                                 keepvars=["PATH"], walltime_warning_seconds=warning_seconds, srun=srun)
    return batchscript.render(options, ctx)


def test_batch_script_asks_slurm_for_the_warning():
    assert "#SBATCH --signal=URG@300\n" in _script(300)
    assert "#SBATCH --signal" not in _script(0)
    # a session (in a workshop window) no longer than the lead gets no warning, nor one without srun
    assert "#SBATCH --signal" not in _script(600, minutes=10)
    assert "#SBATCH --signal=URG@600\n" in _script(600, minutes=11)
    assert "#SBATCH --signal" not in _script(300, srun="")
    with pytest.raises(ValueError, match="wall-time warning"):
        _script(70000)


def test_notice_names_the_end_and_the_minutes_left():
    now = datetime(2026, 5, 4, 13, 55, 10)
    warning = notice(datetime(2026, 5, 4, 14, 0, 0), now)
    assert warning.minutes_left == 5 and warning.end_time == "2026-05-04T14:00:00"
    assert "at 14:00 (in about 5 minutes)" in warning.message and "saved" in warning.message
    assert notice(None, now).minutes_left == -1


def test_lab_plugin_files_are_where_the_server_is_told_to_look():
    args = walltime.singleuser_args()
    assert f"--ServerApp.jpserver_extensions={walltime.EXTENSION_MODULE}=True" in args
    folder = Path(args[1].split("=", 1)[1])
    package = json.loads((folder / "aifactory-walltime" / "package.json").read_text())
    assert (folder / "aifactory-walltime" / package["jupyterlab"]["_build"]["load"]).is_file()
    assert batchscript.PATH_RE.match(str(folder))


# ---------------------------------------------------------------- a real session, a real browser


ROOT = Path(__file__).resolve().parents[1]
# sudo drops PYTHONPATH even with -E (sudo -V: "Environment variables to remove"), so the jobs a
# test hub submits would import the venv's copy of aifactory: the server command sets it itself
SERVER_OF_THIS_CHECKOUT = ["--Spawner.cmd=/usr/bin/env", f"--Spawner.cmd=PYTHONPATH={ROOT / 'src'}",
                           "--Spawner.cmd=/opt/aifactory/venv/bin/jupyterhub-singleuser"]


@pytest.fixture(scope="module")
def walltime_hub(slurm_cluster, tmp_path_factory):
    hub = Hub(tmp_path_factory.mktemp("walltime-hub"), HUB_SITE_FILE, port=HUB_PORT,
              extra_args=SERVER_OF_THIS_CHECKOUT)
    hub.start()
    yield hub
    hub.stop_all_servers()
    hub.stop()


@pytest.fixture
def unsaved_notebook():
    """A notebook in the user's home, and their lab's autosave off (so only the warning can save)."""
    import nbformat

    user = pwd.getpwnam(USER)
    home = Path(user.pw_dir)
    notebook = home / f"walltime-{uuid.uuid4().hex[:8]}.ipynb"
    nbformat.write(nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell("answer = 41")],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}), notebook)
    settings = home / ".jupyter/lab/user-settings/@jupyterlab/docmanager-extension/plugin.jupyterlab-settings"
    earlier = settings.read_bytes() if settings.exists() else None
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text('{"autosave": false}')
    for path in [notebook, settings, *settings.parents]:
        if path == home:
            break
        os.chown(path, user.pw_uid, user.pw_gid)
    yield notebook
    notebook.unlink(missing_ok=True)
    if earlier is None:
        settings.unlink(missing_ok=True)
    else:
        settings.write_bytes(earlier)


def _cell_source(notebook: Path) -> str:
    return "".join(json.loads(notebook.read_text())["cells"][0]["source"])


def _elapsed_seconds(job_id: str) -> int:
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%M"], capture_output=True, text=True, check=True)
    parts = [int(p) for p in out.stdout.strip().replace("-", ":").split(":")]
    return sum(p * 60**i for i, p in enumerate(reversed(parts)))


@pytest.mark.slurm
@pytest.mark.hub
@pytest.mark.browser
@pytest.mark.slow
def test_walltime_warning_saves_the_edited_notebook_and_tells_the_user(walltime_hub, unsaved_notebook):
    from playwright.sync_api import sync_playwright

    hub = walltime_hub
    minutes = hub.site.walltime_warning_minutes
    assert minutes > 0
    # other tests (other hubs) may run sessions of the same user: ours is the new one
    earlier = {j["job_id"] for j in user_jobs(USER)}
    r = hub.spawn(USER, {"partition": "cpu", "gpus": 0, "cpus": 1, "memory_gb": 1, "hours": 1})
    assert r.status_code in (201, 202), r.text
    hub.wait_ready(USER, timeout=120)
    [job] = [j for j in user_jobs(USER) if j["name"] == "jupyter" and j["job_id"] not in earlier]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(60_000)
        page.goto(f"{hub.url}/hub/login")
        page.fill("#username_input", USER)
        page.fill("#password_input", PASSWORDS[USER])
        page.click("#login_submit")
        page.wait_for_url("**/hub/**")
        page.goto(f"{hub.url}/user/{USER}/lab/tree/{unsaved_notebook.name}")
        editor = page.locator(".jp-Notebook .jp-Cell .cm-content").first
        editor.wait_for()
        # a cell run before the kernel is up is dropped
        page.get_by_text("Python 3 (ipykernel) | Idle").wait_for()
        editor.click()
        page.keyboard.press("End")
        page.keyboard.type(" + 1  # typed before the wall-time warning")
        page.keyboard.press("Shift+Enter")  # run it: the kernel holds answer = 42 (a new cell below)
        page.wait_for_selector(".jp-mod-dirty", timeout=10_000)
        page.locator(".jp-Notebook .jp-Cell .jp-InputPrompt", has_text="[1]").wait_for()
        edited = "answer = 41 + 1  # typed before the wall-time warning"
        assert _cell_source(unsaved_notebook) == "answer = 41"  # the edit is in the browser only

        # bring the job's end within the warning lead: Slurm signals at its next time-limit check
        # (every 30 s); a session cannot be shorter than an hour through the form
        limit = (_elapsed_seconds(job["job_id"]) + minutes * 60) // 60
        subprocess.run(["scontrol", "update", f"JobId={job['job_id']}", f"TimeLimit={limit}"], check=True)
        end = subprocess.run(["squeue", "-h", "-j", job["job_id"], "-o", "%e"], capture_output=True, text=True,
                             check=True).stdout.strip()
        print(f"job {job['job_id']}: time limit {limit} min, ends {end}; waiting for Slurm's warning")
        toast = page.locator(".Toastify__toast", has_text="wall-time limit")
        toast.wait_for(timeout=150_000)
        page.screenshot(path=str(hub.state / "walltime-notice.png"))
        text = toast.inner_text()
        assert f"at {end[11:16]}" in text and "saved" in text, text
        assert _cell_source(unsaved_notebook) == edited
        # the kernel lives on through the warning, with its state
        page.locator(".jp-Notebook .jp-Cell .cm-content").nth(1).click()
        page.keyboard.type("print(answer * 10)")
        page.keyboard.press("Shift+Enter")
        page.locator(".jp-Notebook .jp-OutputArea-output", has_text="420").wait_for(timeout=30_000)

        # a lab page opened after the warning shows it as well (asked from the server)
        page.reload()
        page.locator(".Toastify__toast", has_text="wall-time limit").wait_for(timeout=60_000)
        browser.close()
    log = Path(pwd.getpwnam(USER).pw_dir) / f".aifactory-session-{job['job_id']}.log"
    assert "wall-time warning: This session reaches its wall-time limit at" in log.read_text()
