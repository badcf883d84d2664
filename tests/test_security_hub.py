"""Issue 8's findings against a real hub, proxy and Slurm: each test fails without its fix.

Its own hub (port 28000) and only the users t-researcher1, t-partner1 and t-admin1, so it can run
beside the other hub tests and the demo.
"""

from __future__ import annotations

import re
import stat
import threading
import time
from pathlib import Path

import pytest
import requests
from conftest import HUB_SITE_FILE, SITE_FILE
from hubtools import PASSWORDS, Hub, user_jobs
from requests.adapters import HTTPAdapter

pytestmark = [pytest.mark.slurm, pytest.mark.hub, pytest.mark.slow]

USERS = ("t-researcher1", "t-partner1", "t-admin1")
COURSE = "ml-foundations"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture(scope="module")
def sec_hub(slurm_cluster, tmp_path_factory):
    state = tmp_path_factory.mktemp("sechub")
    state.chmod(0o755)  # as a plain `mkdir` leaves it: the hub must close it itself
    hub = Hub(state, HUB_SITE_FILE, port=28000, extra_args=[
        "--ThrottledPAMAuthenticator.failure_delay_seconds=0.5",
        "--AIFactorySpawner.failed_server_keep_seconds=2",
    ])
    hub.start()
    yield hub
    for user in ("t-researcher1", "t-admin1"):
        servers = hub.api(user, "GET", f"/users/{user}").json().get("servers", {})
        for name in servers:
            hub.api(user, "DELETE", hub.server_path(user, name))
    hub.stop()


def named_servers(hub: Hub, user: str) -> set[str]:
    model = hub.api(user, "GET", f"/users/{user}?include_stopped_servers=1").json()
    return set(model.get("servers", {})) - {""}


# ---------------------------------------------------------------- 1, 2, 3: secrets and private files


def test_demo_passwords_live_in_a_root_only_file(sec_hub):
    from aifactory.security import DEMO_PASSWORDS_FILE

    assert mode(DEMO_PASSWORDS_FILE.parent) == 0o700 and mode(DEMO_PASSWORDS_FILE) == 0o600
    assert DEMO_PASSWORDS_FILE.stat().st_uid == 0
    assert set(USERS) <= set(PASSWORDS)
    assert "password" not in SITE_FILE.read_text().split("demo_users:")[1].split("authentication:")[0]


def test_hub_state_is_private(sec_hub):
    assert mode(sec_hub.state) == 0o700
    for name in ("jupyterhub.sqlite", "jupyterhub_cookie_secret", "hub.log"):
        assert mode(sec_hub.state / name) == 0o600, name


def test_demo_homes_are_private(sec_hub):
    for user in USERS:
        assert mode(Path(f"/home/{user}")) == 0o700, user


# ---------------------------------------------------------------- 5, 3, 12: a link, a confirmed start


def test_a_spawn_link_shows_a_confirmation_and_starts_nothing(sec_hub):
    session = sec_hub.login("t-researcher1")
    r = session.get(f"{sec_hub.url}/hub/spawn/t-researcher1/linked?opt-partition=gpu&opt-gpus=2&opt-hours=8",
                    timeout=30)
    assert r.status_code == 200, r.text[:300]
    assert 'id="spawn_form"' in r.text and re.search(r'name="gpus"[^>]*value="2"', r.text)
    time.sleep(2)
    assert sec_hub.server("t-researcher1", "linked") is None
    assert not [j for j in user_jobs("t-researcher1") if j["name"] == "jupyter-linked"]
    sec_hub.api("t-researcher1", "DELETE", "/users/t-researcher1/servers/linked", json={"remove": True})


def test_a_course_link_is_confirmed_by_a_post_and_its_files_are_private(sec_hub):
    hub = sec_hub
    session = hub.login("t-researcher1")
    url = f"{hub.url}/hub/spawn/t-researcher1/{COURSE}"
    page = session.get(f"{url}?opt-course={COURSE}", timeout=30)
    assert page.status_code == 200 and 'id="aif-confirm-course"' in page.text
    assert f'<input type="hidden" name="course" value="{COURSE}">' in page.text
    assert hub.server("t-researcher1", COURSE) is None
    # the confirmation is the form's POST, filled in from the page, with the XSRF token
    data = dict(re.findall(r'type="number" name="(\w+)"[^>]*value="(\d+)"', page.text))
    data.update(course=COURSE, _xsrf=session.xsrf)
    without_xsrf = requests.post(url, data={"course": COURSE}, cookies=session.cookies, timeout=30,
                                 allow_redirects=False)
    assert without_xsrf.status_code == 403, without_xsrf.status_code
    r = session.post(url, data=data, timeout=30, allow_redirects=False)
    assert r.status_code == 302, r.text[:500]
    hub.wait_ready("t-researcher1", COURSE, timeout=120)
    job = next(j for j in user_jobs("t-researcher1") if j["name"] == f"jupyter-{COURSE}")

    home = Path("/home/t-researcher1")
    assert mode(home / f".aifactory-session-{job['job_id']}.log") == 0o600
    copy = home / "courses" / COURSE
    assert mode(copy) == 0o700
    assert {p.name: mode(p) for p in copy.iterdir()} == {p.name: 0o600 for p in copy.iterdir()}

    # 12: the port is accepted once, while starting, from a body without duplicate keys
    pids = [p for p in Path("/proc").iterdir() if p.name.isdigit()]
    token = None
    for pid in pids:
        try:
            environ = dict(item.split("=", 1) for item in (pid / "environ").read_text().split("\0") if "=" in item)
        except OSError:
            continue
        if environ.get("JUPYTERHUB_USER") == "t-researcher1" and environ.get("JUPYTERHUB_SERVER_NAME") == COURSE \
                and f":{hub.hub_port}/" in environ.get("JUPYTERHUB_API_URL", ""):
            token = environ["JUPYTERHUB_API_TOKEN"]
            break
    assert token, "the course server's process was not found"
    callback = f"{hub.url}/hub/api/batchspawner"
    headers = {"Authorization": f"token {token}", "Content-Type": "application/json"}
    r = requests.post(callback, headers=headers, data=b'{"port": 23456, "port": 23457}', timeout=10)
    assert r.status_code == 400 and "duplicate" in r.text
    r = requests.post(callback, headers=headers, json={"port": 23456}, timeout=10)
    assert r.status_code == 409, r.text
    lab = requests.get(f"{hub.url}/user/t-researcher1/{COURSE}/api/status",
                       headers={"Authorization": f"token {hub.token('t-researcher1')}"}, timeout=10)
    assert lab.status_code == 200
    hub.api("t-researcher1", "DELETE", f"/users/t-researcher1/servers/{COURSE}")
    hub.wait_stopped("t-researcher1", COURSE)


# ---------------------------------------------------------------- 7, 8: huge values, refused starts


def test_huge_values_come_back_short_and_leave_nothing_behind(sec_hub):
    hub = sec_hub
    r = hub.spawn("t-researcher1", {"partition": "x" * 1_000_000}, name="huge")
    assert r.status_code == 413 and len(r.content) < 1000, (r.status_code, len(r.content))
    r = hub.spawn("t-researcher1", {"partition": "y" * 10_000}, name="long")
    assert r.status_code == 400 and len(r.content) < 1000, (r.status_code, len(r.content))
    session = hub.login("t-researcher1")
    r = session.post(f"{hub.url}/hub/spawn/t-researcher1/longform", timeout=30,
                     data={"partition": "z" * 10_000, "_xsrf": session.xsrf})
    assert r.status_code == 400 and "z" * 100 not in r.text
    log = (hub.state / "hub.log").read_text(errors="replace")
    for letter in "xyz":
        assert letter * 100 not in log
    time.sleep(1)
    assert not named_servers(hub, "t-researcher1") & {"huge", "long", "longform"}


def test_refused_starts_do_not_use_up_the_named_servers(sec_hub):
    hub = sec_hub
    for i in range(7):  # more than named_server_limit_per_user (5)
        r = hub.spawn("t-admin1", {"gpus": 99}, name=f"refused{i}")
        assert r.status_code == 400 and "gpus:" in r.json()["message"], r.text
        time.sleep(0.2)
    session = hub.login("t-admin1")
    r = session.post(f"{hub.url}/hub/spawn/t-admin1/refusedform", timeout=30,
                     data={"gpus": "99", "_xsrf": session.xsrf})
    assert r.status_code == 400 and "gpus:" in r.text
    deadline = time.monotonic() + 10
    while named_servers(hub, "t-admin1") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert named_servers(hub, "t-admin1") == set()


# ---------------------------------------------------------------- 6: login throttling


class SourceAddress(HTTPAdapter):
    """Connect from another loopback address (127.0.0.N): the hub sees N clients."""

    def __init__(self, address: str):
        self.address = address
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        kwargs["source_address"] = (self.address, 0)
        super().init_poolmanager(*args, **kwargs)


def try_login(hub: Hub, user: str, password: str, address: str) -> tuple[int, float]:
    session = requests.Session()
    session.mount("http://", SourceAddress(address))
    session.get(f"{hub.url}/hub/login", timeout=30)
    start = time.monotonic()
    r = session.post(f"{hub.url}/hub/login", allow_redirects=False, timeout=60,
                     data={"username": user, "password": password, "_xsrf": session.cookies.get("_xsrf")})
    return r.status_code, time.monotonic() - start


def test_wrong_passwords_are_throttled_per_user(sec_hub):
    answers = [try_login(sec_hub, "t-partner1", f"wrong{i}", "127.0.0.10")[0] for i in range(30)]
    print(f"30 wrong passwords for t-partner1: {answers.count(403)} tried, {answers.count(429)} throttled")
    assert answers.count(403) <= 5 and answers.count(429) >= 25, answers
    # the user is locked for the window, whatever the address and even with the right password
    assert try_login(sec_hub, "t-partner1", PASSWORDS["t-partner1"], "127.0.0.11")[0] == 429
    assert "Login throttled" in sec_hub.log_tail(200)


def test_wrong_password_clients_do_not_starve_a_real_login(sec_hub):
    stop = threading.Event()
    attempts = []

    def attacker(n: int):
        i = 0
        while not stop.is_set():
            attempts.append(try_login(sec_hub, f"intruder{n}x{i}", "wrong", f"127.0.0.{20 + n}")[0])
            i += 1

    threads = [threading.Thread(target=attacker, args=(n,), daemon=True) for n in range(8)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(2)  # every attacker has a wrong password in PAM now
        took = []
        for _ in range(3):
            status, seconds = try_login(sec_hub, "t-admin1", PASSWORDS["t-admin1"], "127.0.0.1")
            assert status == 302, status
            took.append(seconds)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    print(f"t-admin1's login while 8 clients send wrong passwords: {', '.join(f'{t:.2f}' for t in took)} s "
          f"({len(attempts)} wrong attempts meanwhile)")
    assert attempts and 403 in attempts
    assert max(took) < 2.0, took
