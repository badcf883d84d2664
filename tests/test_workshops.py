"""Workshops on the real cluster: GPU slices, reservations, walk-in logins, the overview, the CLI."""

from __future__ import annotations

import pwd
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import requests
from hubtools import PASSWORDS, privileged, user_jobs

from aifactory.workshops.privileged import user_exists

pytestmark = [pytest.mark.slurm, pytest.mark.hub, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
COURSE = "deep-learning-pytorch"
SLICE = {"partition": "gpu", "gpu_slices": 1, "gpus": 0, "cpus": 1, "memory_gb": 1, "hours": 1}


def job_log(user: str, job_id: str) -> str:
    return Path(pwd.getpwnam(user).pw_dir, f".aifactory-session-{job_id}.log").read_text()


def job_node(job_id: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%N"], capture_output=True, text=True).stdout.strip()


def visible_gpus(user: str, job_id: str) -> str:
    match = re.search(r"GPUs: (\S+)", job_log(user, job_id))
    assert match, job_log(user, job_id)
    return match.group(1)


def test_gpu_slices_share_gpus_and_a_whole_gpu_still_works(clean_hub):
    hub = clean_hub
    # five one-slice sessions on a node of four GPUs: at least two of them share a GPU
    sessions = [("t-student1", ""), ("t-student1", "slice2"), ("t-student2", ""), ("t-student2", "slice2"),
                ("t-instructor1", "slice")]
    for user, name in sessions:
        assert hub.spawn(user, SLICE, name=name).status_code in (201, 202)
    assert hub.spawn("t-instructor1", {"gpus": 1, "gpu_type": "a100", "cpus": 1, "memory_gb": 1,
                                     "hours": 1}).status_code in (201, 202)
    for user, name in [*sessions, ("t-instructor1", "")]:
        hub.wait_ready(user, name)
    jobs = {(j["user"], j["name"]): j for u in ("t-student1", "t-student2", "t-instructor1") for j in user_jobs(u)}
    slices = [jobs[(u, f"jupyter-{n}" if n else "jupyter")] for u, n in sessions]
    whole = jobs[("t-instructor1", "jupyter")]
    assert {j["state"] for j in slices} == {"RUNNING"}
    assert {j["gres"] for j in slices} == {"gres:shard:1"}
    assert whole["gres"] == "gres:gpu:a100:1" and whole["state"] == "RUNNING"
    # every slice sees a GPU (CUDA_VISIBLE_DEVICES is set); fewer GPUs than slices: shared
    # CUDA_VISIBLE_DEVICES counts from 0 on each node: a GPU is (node, index)
    devices = [(job_node(j["job_id"]), visible_gpus(j["user"], j["job_id"])) for j in slices]
    assert all(index.isdigit() for _, index in devices), devices
    assert len(set(devices)) < len(devices), devices
    whole_gpu = (job_node(whole["job_id"]), visible_gpus("t-instructor1", whole["job_id"]))
    assert whole_gpu not in devices, (whole_gpu, devices)  # a whole GPU is not shared
    node = subprocess.run(["scontrol", "show", "node", "-o"], capture_output=True, text=True).stdout
    assert int(re.search(r"AllocTRES=\S*gres/shard=(\d+)", node).group(1)) >= 5


# ---------------------------------------------------------------- workshops


def service(hub, user: str, method: str, path: str = "", **kwargs) -> requests.Response:
    return requests.request(method, f"{hub.url}/services/workshops/api/workshops{path}",
                            headers={"Authorization": f"token {hub.token(user)}"}, timeout=180, **kwargs)


def window(start_minutes: int = -1, hours: int = 1) -> dict:
    start = datetime.now() + timedelta(minutes=start_minutes)
    return {"start": start.strftime("%Y-%m-%dT%H:%M"),
            "end": (start + timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M")}


def reservation(name: str) -> str:
    result = subprocess.run(["scontrol", "show", "reservation", name, "-o"], capture_output=True, text=True)
    return result.stdout if result.returncode == 0 else ""


@pytest.fixture
def workshops(clean_hub):
    """Create workshops through the API; every one still open is ended afterwards."""
    created = []

    def create(owner: str = "t-instructor1", **body) -> dict:
        r = service(clean_hub, owner, "POST", json=body)
        assert r.status_code == 201, r.text
        data = r.json()
        created.append((owner, data["workshop"]))
        for c in data["credentials"]:
            PASSWORDS[c["username"]] = c["password"]
        return data

    yield create
    for owner, workshop in created:
        if service(clean_hub, owner, "GET", f"/{workshop['id']}").json()["workshop"]["state"] != "ended":
            service(clean_hub, owner, "POST", f"/{workshop['id']}/end", json={})
    leftovers = [u for _, w in created for u in w["walkins"] if user_exists(u)]
    if leftovers:
        privileged("walkin-remove", "--users", ",".join(leftovers))


def test_a_workshop_from_creation_to_end(clean_hub, workshops):
    hub = clean_hub
    data = workshops(name="ws-e2e", title="Deep learning hands-on", course=COURSE,
                     participants="t-student1,t-student2", walkins=4, cpus=1, memory_gb=1, **window())
    workshop, credentials = data["workshop"], data["credentials"]
    walkins = [c["username"] for c in credentials]
    assert walkins == ["wk-ws-e2e-01", "wk-ws-e2e-02", "wk-ws-e2e-03", "wk-ws-e2e-04"]
    assert all(re.fullmatch(r"[a-z2-9]{4}-[a-z2-9]{4}-[a-z2-9]{4}", c["password"]) for c in credentials)

    # Slurm has the reservation with the participants and the window
    res = reservation("ws-ws-e2e")
    assert "State=ACTIVE" in res, res
    users = re.search(r"Users=(\S+)", res).group(1).split(",")
    assert sorted(users) == sorted(["t-student1", "t-student2", *walkins])
    assert f"StartTime={workshop['start']}:00" in res and f"EndTime={workshop['end']}:00" in res
    assert "CoreCnt=6" in res
    # walk-ins: private homes, a Slurm association in the workshop account, a hub group
    home = Path(pwd.getpwnam(walkins[0]).pw_dir)
    assert oct(home.stat().st_mode & 0o777) == "0o700"
    assoc = subprocess.run(["sacctmgr", "-n", "-P", "show", "assoc", f"user={walkins[0]}", "format=account,qos"],
                           capture_output=True, text=True).stdout
    assert assoc.strip() == "uni-teaching|workshop"
    group = hub.api("t-admin1", "GET", "/groups/workshop-ws-e2e").json()
    assert sorted(group["users"]) == sorted(["t-student1", "t-student2", *walkins])

    # a walk-in logs in with the generated password and starts the course: it runs in the reservation
    participant = walkins[0]
    r = hub.spawn(participant, {"course": COURSE}, name=COURSE)
    assert r.status_code in (201, 202), r.text
    hub.wait_ready(participant, COURSE)
    job = subprocess.run(["squeue", "-h", "-u", participant, "-o", "%i|%v|%b|%L"],
                         capture_output=True, text=True).stdout.strip().split("|")
    assert job[1] == "ws-ws-e2e" and job[2] == "gres:shard:1", job
    assert (Path(pwd.getpwnam(participant).pw_dir) / "courses" / COURSE).is_dir()

    # the overview (instructor) lists the participant running, the others stopped
    status = service(hub, "t-instructor1", "GET", f"/{workshop['id']}").json()
    rows = {p["user"]: p for p in status["participants"]}
    assert rows[participant]["state"] == "running" and rows[participant]["reservation"] == "ws-ws-e2e"
    assert rows[participant]["time_left"], rows[participant]
    assert rows["t-student1"]["state"] == "stopped"
    page = requests.get(f"{hub.url}/services/workshops/{workshop['id']}/status",
                        headers={"Authorization": f"token {hub.token('t-instructor1')}"}, timeout=30)
    assert page.status_code == 200 and page.json()["participants"][0]["user"]

    # extend: the reservation's end moves, and the running session's time limit with it
    limit_before = subprocess.run(["squeue", "-h", "-u", participant, "-o", "%l"], capture_output=True,
                                  text=True).stdout.strip()
    r = service(hub, "t-instructor1", "POST", f"/{workshop['id']}/extend", json={"minutes": 30})
    assert r.status_code == 200, r.text
    new_end = (datetime.fromisoformat(workshop["end"]) + timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M")
    assert f"EndTime={new_end}:00" in reservation("ws-ws-e2e")
    limit_after = subprocess.run(["squeue", "-h", "-u", participant, "-o", "%l"], capture_output=True,
                                 text=True).stdout.strip()
    assert limit_after != limit_before, (limit_before, limit_after)

    # end: sessions stopped, reservation gone, walk-in logins refused
    r = service(hub, "t-instructor1", "POST", f"/{workshop['id']}/end", json={})
    assert r.status_code == 200, r.text
    assert reservation("ws-ws-e2e") == ""
    assert user_jobs(participant) == []
    assert hub.api("t-admin1", "GET", f"/users/{participant}").status_code == 404
    login = requests.Session()
    login.get(f"{hub.url}/hub/login", timeout=10)
    refused = login.post(f"{hub.url}/hub/login", allow_redirects=False, timeout=30,
                         data={"username": participant, "password": PASSWORDS[participant],
                               "_xsrf": login.cookies.get("_xsrf")})
    assert refused.status_code != 302
    # their files are kept for the retention period
    assert (Path(pwd.getpwnam(participant).pw_dir) / "courses" / COURSE).is_dir()
    assert service(hub, "t-instructor1", "GET", f"/{workshop['id']}").json()["workshop"]["state"] == "ended"


def test_outside_the_window_a_participant_queues_normally_with_the_reason(clean_hub, workshops):
    hub = clean_hub
    workshops(name="later", title="Later today", course=COURSE, participants="t-student2", cpus=1, memory_gb=1,
              **window(start_minutes=120))
    assert "State=INACTIVE" in reservation("ws-later")
    messages = spawn_watching_progress(hub, "t-student2", {"course": COURSE}, COURSE)
    assert any("starts at" in m and "queues like any other" in m for m in messages), messages
    jobs = subprocess.run(["squeue", "-h", "-u", "t-student2", "-o", "%v"], capture_output=True, text=True).stdout
    assert "ws-later" not in jobs


def spawn_watching_progress(hub, user: str, options: dict, name: str) -> list[str]:
    """Start a server and read its progress messages from the first one on (the POST blocks a while)."""
    hub.token(user)  # log in first: the two threads share the token
    with ThreadPoolExecutor(1) as pool:
        started = pool.submit(hub.spawn, user, options, name)
        messages: list[str] = []
        deadline = time.monotonic() + 60
        while not messages and time.monotonic() < deadline:
            try:
                messages = [e.get("message", "") for e in hub.progress_events(user, name, timeout=60)]
            except requests.RequestException:
                time.sleep(0.2)
        assert started.result().status_code in (201, 202)
    return messages


def _refusal(hub, user, body) -> tuple[int, str]:
    r = service(hub, user, "POST", json=body)
    return r.status_code, r.json().get("error", "")


def test_refusals_through_the_api_change_nothing(clean_hub, workshops):
    hub = clean_hub
    ok = {"name": "refused", "title": "T", "course": COURSE, "participants": "t-student1", **window()}
    cases = [
        ({"course": "nope"}, "course: unknown course"),
        ({"participants": "t-student1,ghost"}, "unknown user(s): ghost"),
        ({"gpus": 1, "walkins": 4}, "5 GPUs, but the site has 4"),
        ({"end": ok["start"]}, "end: the workshop must end after it starts"),
        ({**window(start_minutes=-300)}, "in the past"),
        ({"name": "bad;name"}, "name:"),
        ({"title": "<b>hi</b>"}, "title:"),
    ]
    for overrides, message in cases:
        status, error = _refusal(hub, "t-instructor1", {**ok, **overrides, "walkins": overrides.get("walkins", 2)})
        assert status == 400 and message in error, (overrides, error)
    assert reservation("ws-refused") == "" and not user_exists("wk-refused-01")

    # overlapping: the second workshop does not fit beside the first in the same window
    workshops(name="first", title="First", course=COURSE, participants="t-student1", walkins=2, gpus=1,
              gpu_slices=0, cpus=1, memory_gb=1, **window())
    status, error = _refusal(hub, "t-instructor1", {**ok, "name": "second", "gpus": 1, "gpu_slices": 0,
                                                  "walkins": 1, "participants": "t-student2"})
    assert status == 400 and "booked by 'first'" in error, error
    assert reservation("ws-second") == ""


def test_a_failure_after_the_reservation_leaves_nothing_behind(clean_hub):
    hub = clean_hub
    # a hub group of that name exists: the last step fails after scontrol and the walk-ins
    assert hub.api("t-admin1", "POST", "/groups/workshop-clash").status_code == 201
    try:
        status, error = _refusal(hub, "t-instructor1", {"name": "clash", "title": "Clash", "course": COURSE,
                                                      "walkins": 2, "cpus": 1, "memory_gb": 1, **window()})
        assert status == 400 and "cluster:" in error, error
        assert reservation("ws-clash") == ""
        assert not user_exists("wk-clash-01") and not user_exists("wk-clash-02")
        assert hub.api("t-admin1", "GET", "/users/wk-clash-01").status_code == 404
    finally:
        hub.api("t-admin1", "DELETE", "/groups/workshop-clash")


def test_rights_students_are_refused_and_instructors_see_only_their_own(clean_hub, workshops):
    hub = clean_hub
    mine = workshops(name="mine", title="Mine", course="ml-foundations", participants="t-student1", **window())
    admins = workshops(owner="t-admin1", name="admins", title="Admins", course="ml-foundations",
                       participants="t-student2", **window())
    listed = [w["name"] for w in service(hub, "t-instructor1", "GET").json()["workshops"]]
    assert "mine" in listed and "admins" not in listed
    assert {"mine", "admins"} <= {w["name"] for w in service(hub, "t-admin1", "GET").json()["workshops"]}
    other = admins["workshop"]["id"]
    for method, path in (("GET", f"/{other}"), ("POST", f"/{other}/end"), ("POST", f"/{other}/extend")):
        r = service(hub, "t-instructor1", method, path, json={"minutes": 10} if method == "POST" else None)
        assert r.status_code == 403 and "another instructor" in r.json()["error"], r.text
    assert "State=ACTIVE" in reservation("ws-admins")
    # students: the hub does not let them into the service at all; the API refuses too
    browser = hub.login("t-student1")
    page = browser.get(f"{hub.url}/services/workshops/", timeout=30)
    assert page.status_code == 403
    assert service(hub, "t-student1", "GET").status_code == 403
    assert service(hub, "t-student1", "POST", f"/{mine['workshop']['id']}/end", json={}).status_code == 403


def _page_session(hub, user):
    browser = hub.login(user)
    page = browser.get(f"{hub.url}/services/workshops/", timeout=30)
    assert page.status_code == 200, page.text[:300]
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page.text).group(1)
    return browser, xsrf


def test_refusals_through_the_page_keep_the_values_and_escape_them(clean_hub):
    hub = clean_hub
    browser, xsrf = _page_session(hub, "t-instructor1")
    form = {"_xsrf": xsrf, "name": "pagews", "title": "Page workshop", "course": COURSE,
            "participants": "t-student1", "walkins": "4", "gpus": "1", **window()}
    r = browser.post(f"{hub.url}/services/workshops/", data=form, timeout=60)
    assert r.status_code == 400
    assert "Not created." in r.text and "5 GPUs, but the site has 4" in r.text
    assert 'value="Page workshop"' in r.text  # nothing lost
    r = browser.post(f"{hub.url}/services/workshops/", data={**form, "title": "<script>x</script>"}, timeout=60)
    assert r.status_code == 400 and "<script>x" not in r.text and "&lt;script&gt;" in r.text
    # without the XSRF token the post is not accepted as the instructor's
    r = browser.post(f"{hub.url}/services/workshops/", data={**form, "_xsrf": "forged", "gpus": "0"},
                     timeout=60, allow_redirects=False)
    assert r.status_code in (302, 403)
    assert reservation("ws-pagews") == ""


def _cli(hub, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aifactory.cli", "--site", str(ROOT / "hub_config/site.yaml"),
                           "workshop", "--hub-url", hub.url, "--token", hub.token("t-instructor1"), *args],
                          capture_output=True, text=True, timeout=240, cwd=ROOT,
                          env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})


def test_the_cli_creates_extends_and_ends_with_the_same_validation(clean_hub):
    hub = clean_hub
    w = window()
    bad = _cli(hub, "create", "--name", "cliws", "--title", "CLI", "--course", "nope", "--start", w["start"],
               "--end", w["end"], "--participants", "t-student1")
    assert bad.returncode == 1 and "course: unknown course 'nope'" in bad.stderr, bad.stderr
    created = _cli(hub, "create", "--name", "cliws", "--title", "CLI workshop", "--course", "ml-foundations",
                   "--start", w["start"], "--end", w["end"], "--participants", "t-student1", "--walkins", "1")
    try:
        assert created.returncode == 0, created.stderr
        assert "ws-cliws" in created.stdout and re.search(r"login wk-cliws-01\s+password \S{14}", created.stdout)
        assert "cliws" in _cli(hub, "list").stdout
        extended = _cli(hub, "extend", "cliws", "--minutes", "15")
        assert extended.returncode == 0 and "now ends at" in extended.stdout, extended.stderr
        too_long = _cli(hub, "extend", "cliws", "--minutes", "100000")
        assert too_long.returncode == 1 and "minutes:" in too_long.stderr
        shown = _cli(hub, "show", "cliws")
        assert "wk-cliws-01" in shown.stdout and "stopped" in shown.stdout
    finally:
        ended = _cli(hub, "end", "cliws")
        # ended workshops keep their walk-ins' files for a while: this test removes them now
        if user_exists("wk-cliws-01"):
            privileged("walkin-remove", "--users", "wk-cliws-01")
    assert ended.returncode == 0 and "has ended" in ended.stdout, ended.stderr
    assert reservation("ws-cliws") == ""
