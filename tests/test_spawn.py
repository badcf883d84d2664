"""End to end on the real cluster: hub -> SlurmSpawner -> sbatch -> JupyterLab -> proxy."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
import requests
from hubtools import user_jobs

pytestmark = [pytest.mark.slurm, pytest.mark.hub, pytest.mark.slow]

GPU_SESSION = {"partition": "gpu", "gpu_type": "h100", "gpus": 1, "cpus": 1, "memory_gb": 1, "hours": 1}


def job_log(user: str, job_id: str) -> str:
    return Path(f"/home/{user}/.aifactory-session-{job_id}.log").read_text()


def test_gpu_session_runs_as_the_user_with_what_was_asked(clean_hub):
    hub = clean_hub
    r = hub.spawn("t-student1", GPU_SESSION)
    assert r.status_code in (201, 202), r.text
    hub.wait_ready("t-student1")

    jobs = user_jobs("t-student1")
    assert len(jobs) == 1, jobs
    job = jobs[0]
    assert job["user"] == "t-student1"
    assert job["account"] == "uni-teaching"
    assert job["partition"] == "gpu"
    assert job["gres"] == "gres:gpu:h100:1"
    assert job["state"] == "RUNNING"
    # CUDA_VISIBLE_DEVICES is set inside the job (printed by the batch script)
    assert re.search(r"GPUs: \d", job_log("t-student1", job["job_id"])), job_log("t-student1", job["job_id"])

    # JupyterLab through the proxy
    headers = {"Authorization": f"token {hub.token('t-student1')}"}
    lab = requests.get(f"{hub.url}/user/t-student1/lab", headers=headers, timeout=30)
    assert lab.status_code == 200
    assert "JupyterLab" in lab.text

    assert hub.api("t-student1", "DELETE", "/users/t-student1/server").status_code in (202, 204)
    hub.wait_stopped("t-student1")
    deadline = time.monotonic() + 20
    while user_jobs("t-student1") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert user_jobs("t-student1") == []


BAD_OPTIONS = [
    ({"gpus": "1; rm -rf ~"}, "gpus"),
    ({"partition": "gpu\n#SBATCH --uid=0"}, "partition"),
    ({"qos": "interactive$(id)"}, "qos"),
    ({"account": "uni-research"}, "account"),  # not t-student1's association
    ({"account": "regional-energy"}, "account"),
    ({"gpus": 9}, "gpus"),
    ({"gpus": -1}, "gpus"),
    ({"hours": 99}, "hours"),
    ({"memory_gb": 1.5}, "memory_gb"),
    ({"cpus": True}, "cpus"),
    ({"partition": "cpu", "gpus": 1}, "gpus"),
    ({"gpu_type": "v100"}, "gpu_type"),
    ({"reservation": "not-mine"}, "reservation"),
    ({"course": "../../etc"}, "course"),
    ({"cmd": ["/bin/sh"]}, "cmd"),
    ({"homedir": "/root"}, "homedir"),
]


@pytest.mark.parametrize("options,field", BAD_OPTIONS, ids=[f for _, f in BAD_OPTIONS])
def test_bad_options_via_rest_api_are_refused(clean_hub, options, field):
    before = subprocess.run(["sacct", "-X", "-n", "-u", "t-student1", "-o", "JobID"], capture_output=True, text=True).stdout
    r = clean_hub.spawn("t-student1", options, name="bad")
    assert r.status_code == 400, r.text
    message = r.json()["message"]
    assert f"{field}:" in message, message
    assert clean_hub.server("t-student1", "bad") is None
    after = subprocess.run(["sacct", "-X", "-n", "-u", "t-student1", "-o", "JobID"], capture_output=True, text=True).stdout
    assert after == before, "a job was submitted for refused options"


@pytest.mark.parametrize(
    "form,field",
    [
        ({"gpus": "2 --uid=0"}, "gpus"),
        ({"partition": "gpu\r\n#SBATCH --account=regional-health"}, "partition"),
        ({"account": "regional-health"}, "account"),
        ({"hours": "100"}, "hours"),
        ({"evil": "1"}, "evil"),
    ],
    ids=["gpus", "partition", "account", "hours", "unknown"],
)
def test_bad_options_via_form_are_refused_and_the_form_keeps_the_values(clean_hub, form, field):
    session = clean_hub.login("t-student1")
    data = {"partition": "gpu", "account": "uni-teaching", "qos": "workshop", "gpu_type": "any",
            "gpus": "1", "cpus": "1", "memory_gb": "3", "hours": "1", "reservation": ""}
    data.update(form)
    data["_xsrf"] = session.xsrf
    r = session.post(f"{clean_hub.url}/hub/spawn/t-student1/formbad", data=data, timeout=30)
    assert r.status_code == 400, r.text[:500]
    assert f"{field}:" in r.text
    assert 'name="partition"' in r.text  # the form is shown again
    if field != "memory_gb":
        assert 'value="3"' in r.text  # with what the user typed
    assert clean_hub.server("t-student1", "formbad") is None
    assert user_jobs("t-student1") == []


def test_form_lists_the_users_own_accounts_and_free_gpus(clean_hub):
    page = clean_hub.login("t-instructor1").get(f"{clean_hub.url}/hub/spawn", timeout=30).text
    assert 'value="uni-teaching"' in page and 'value="uni-research"' in page
    assert 'value="regional-health"' not in page
    assert re.search(r"h100 .* \(\d of 2 free now\)", page)
    page = clean_hub.login("t-partner1").get(f"{clean_hub.url}/hub/spawn", timeout=30).text
    assert 'value="regional-energy"' in page and 'value="uni-teaching"' not in page


def test_external_scancel_is_noticed_within_one_poll(clean_hub):
    hub = clean_hub
    assert hub.spawn("t-student2", GPU_SESSION).status_code in (201, 202)
    hub.wait_ready("t-student2")
    job_id = user_jobs("t-student2")[0]["job_id"]
    subprocess.run(["scancel", job_id], check=True)
    took = hub.wait_stopped("t-student2", timeout=30)
    # one poll interval, plus the time squeue and the API take
    assert took <= hub.poll_interval + 4, f"noticed after {took:.1f} s"


def test_hub_restart_keeps_running_sessions(clean_hub):
    hub = clean_hub
    assert hub.spawn("t-researcher1", {"partition": "gpu", "gpus": 1, "memory_gb": 1, "cpus": 1}).status_code in (201, 202)
    hub.wait_ready("t-researcher1")
    job_before = user_jobs("t-researcher1")[0]["job_id"]
    hub.restart()
    server = hub.server("t-researcher1")
    assert server and server["ready"], server
    assert [j["job_id"] for j in user_jobs("t-researcher1")] == [job_before]
    headers = {"Authorization": f"token {hub.token('t-researcher1')}"}
    r = requests.get(f"{hub.url}/user/t-researcher1/api/status", headers=headers, timeout=30)
    assert r.status_code == 200, r.text


def test_pending_session_shows_reason_then_gives_up_after_max_queue_wait(clean_hub, blocker):
    hub = clean_hub
    blocker("t-student2", "gpu:h100:2")
    r = hub.spawn("t-student1", GPU_SESSION, name="queued")
    assert r.status_code in (201, 202), r.text
    messages = [event.get("message", "") for event in hub.progress_events("t-student1", "queued")]
    waiting = [m for m in messages if "Waiting in the Slurm queue" in m]
    assert waiting, messages
    assert any("Resources" in m for m in waiting), waiting
    final = messages[-1]
    assert "waited" in final and "was cancelled" in final and "Resources" in final, final
    assert hub.server("t-student1", "queued") is None
    assert user_jobs("t-student1") == []


def test_port_callback_accepts_only_the_port(clean_hub):
    hub = clean_hub
    assert hub.spawn("t-student2", {"gpus": 0, "memory_gb": 1, "cpus": 1}).status_code in (201, 202)
    hub.wait_ready("t-student2")
    pid = subprocess.run(["pgrep", "-u", "t-student2", "-f", "jupyterhub-singleuser"],
                         capture_output=True, text=True).stdout.split()[0]
    environ = dict(item.split("=", 1) for item in
                   Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item)
    server_token = environ["JUPYTERHUB_API_TOKEN"]
    url = f"{hub.url}/hub/api/batchspawner"
    headers = {"Authorization": f"token {server_token}"}
    r = requests.post(url, headers=headers, json={"port": 23456, "cmd": ["/bin/sh", "-c", "id"]}, timeout=10)
    assert r.status_code == 400 and "only the key 'port'" in r.text
    r = requests.post(url, headers=headers, json={"port": "23456; id"}, timeout=10)
    assert r.status_code == 400
    r = requests.post(url, headers={"Authorization": f"token {hub.token('t-student2')}"},
                      json={"port": 23456}, timeout=10)
    assert r.status_code == 403
    # the session still works on its real port
    lab = requests.get(f"{hub.url}/user/t-student2/api/status",
                       headers={"Authorization": f"token {hub.token('t-student2')}"}, timeout=10)
    assert lab.status_code == 200


def test_named_course_server_copies_the_course_and_opens_the_first_notebook(clean_hub, site):
    from aifactory.courses import load_courses

    courses, _ = load_courses(site)
    course = courses["ml-foundations"]
    hub = clean_hub
    r = hub.spawn("t-student2", {"course": course.slug}, name=course.slug)
    assert r.status_code in (201, 202), r.text
    hub.wait_ready("t-student2", course.slug)
    job = user_jobs("t-student2")[0]
    assert job["partition"] == course.resources.partition
    copy = Path("/home/t-student2/courses") / course.slug / course.first_notebook
    assert copy.is_file() and copy.owner() == "t-student2"
    headers = {"Authorization": f"token {hub.token('t-student2')}"}
    r = requests.get(f"{hub.url}/user/t-student2/{course.slug}/api/contents/courses/{course.slug}",
                     headers=headers, timeout=30)
    assert r.status_code == 200
    assert course.first_notebook in {item["name"] for item in r.json()["content"]}
    r = requests.get(f"{hub.url}/user/t-student2/{course.slug}/", headers=headers, timeout=30,
                     allow_redirects=False)
    assert urlparse(r.headers["Location"]).path.endswith(
        f"/lab/tree/courses/{course.slug}/{course.first_notebook}")


def test_instructors_see_who_is_running_and_students_do_not(clean_hub):
    hub = clean_hub
    assert hub.spawn("t-student2", {"gpus": 1, "memory_gb": 1, "cpus": 1}).status_code in (201, 202)
    hub.wait_ready("t-student2")
    job_id = user_jobs("t-student2")[0]["job_id"]
    instructor = hub.login("t-instructor1")
    page = instructor.get(f"{hub.url}/services/catalogue/running", timeout=30)
    assert page.status_code == 200, page.text[:300]
    row = re.search(r'<tr data-user="t-student2">(.*?)</tr>', page.text, re.S)
    assert row, page.text
    assert f"<td>{job_id}</td>" in row.group(1) and "RUNNING" in row.group(1) and "gpu:" in row.group(1)
    assert "Who is running" in instructor.get(f"{hub.url}/services/catalogue/", timeout=30).text
    student = hub.login("t-student1")
    assert student.get(f"{hub.url}/services/catalogue/running", timeout=30).status_code == 403
    assert "Who is running" not in student.get(f"{hub.url}/services/catalogue/", timeout=30).text


def test_job_cancelled_while_pending_is_reported(clean_hub, blocker):
    hub = clean_hub
    blocker("t-student2", "gpu:a100:2")
    assert hub.spawn("t-student1", dict(GPU_SESSION, gpu_type="a100"), name="doomed").status_code in (201, 202)
    deadline = time.monotonic() + 30
    while not user_jobs("t-student1"):
        assert time.monotonic() < deadline, "no job was submitted"
        time.sleep(0.3)
    job = user_jobs("t-student1")[0]
    assert job["state"] == "PENDING"
    subprocess.run(["scancel", job["job_id"]], check=True)
    final = list(hub.progress_events("t-student1", "doomed"))[-1]
    assert final.get("failed") and "ended before JupyterLab was ready" in final["message"], final
    assert "CANCELLED" in final["message"], final
    assert hub.server("t-student1", "doomed") is None
