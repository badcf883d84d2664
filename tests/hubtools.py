"""A real hub for tests: started from hub_config/jupyterhub_config.py on test ports.

Users log in through the real PAM login form and get API tokens through the REST API,
exactly as a person or a script would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import requests

VENV = Path(os.environ.get("AIFACTORY_VENV", "/opt/aifactory/venv"))
PASSWORDS = {}


class Hub:
    port = 18000
    hub_port = 18081
    proxy_api_port = 18001
    catalogue_port = 18101
    workshops_port = 18102
    poll_interval = 3
    max_queue_wait = 15

    def __init__(self, state: Path, site_file: Path, extra_args: list[str] | None = None, port: int | None = None):
        if port:
            self.port, self.hub_port, self.proxy_api_port, self.catalogue_port = port, port + 81, port + 1, port + 101
            self.workshops_port = port + 102
        self.extra_args = list(extra_args or [])
        self.state = Path(state)
        self.site_file = Path(site_file).resolve()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self._tokens: dict[str, str] = {}
        from aifactory.site import load_site

        self.site = load_site(site_file)
        for user in self.site.demo_users.values():
            PASSWORDS[user.name] = user.password

    # ------------------------------------------------------------ process

    def start(self, timeout: float = 60) -> None:
        env = dict(
            os.environ,
            AIFACTORY_STATE=str(self.state),
            AIFACTORY_BIND_URL=self.url,
            AIFACTORY_HUB_BIND_URL=f"http://127.0.0.1:{self.hub_port}",
            AIFACTORY_CATALOGUE_PORT=str(self.catalogue_port),
            AIFACTORY_WORKSHOPS_PORT=str(self.workshops_port),
            AIFACTORY_SITE=str(self.site_file),
            # the hub runs the code of this checkout, not whatever copy the venv holds
            PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"),
        )
        config = Path(__file__).resolve().parents[1] / "hub_config" / "jupyterhub_config.py"
        self.log = open(self.state / "hub.log", "ab")
        self.proc = subprocess.Popen(
            [str(VENV / "bin" / "jupyterhub"), "-f", str(config),
             f"--ConfigurableHTTPProxy.api_url=http://127.0.0.1:{self.proxy_api_port}",
             f"--Spawner.poll_interval={self.poll_interval}",
             f"--AIFactorySpawner.max_queue_wait={self.max_queue_wait}",
             "--AIFactorySpawner.context_cache_seconds=0",
             "--JupyterHub.last_activity_interval=5", *self.extra_args],
            cwd=self.state, env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the hub exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(f"{self.url}/hub/health", timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"the hub did not come up within {timeout} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, lines: int = 40) -> str:
        path = self.state / "hub.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    # ------------------------------------------------------------ users

    def login(self, user: str, password: str | None = None) -> requests.Session:
        session = requests.Session()
        session.get(f"{self.url}/hub/login", timeout=10)
        xsrf = session.cookies.get("_xsrf")
        r = session.post(f"{self.url}/hub/login", allow_redirects=False, timeout=30,
                         data={"username": user, "password": password or PASSWORDS[user], "_xsrf": xsrf})
        assert r.status_code == 302, f"login of {user} failed: {r.status_code} {r.text[:300]}"
        session.headers["X-XSRFToken"] = session.cookies.get("_xsrf") or xsrf
        session.xsrf = session.headers["X-XSRFToken"]
        return session

    def token(self, user: str) -> str:
        if user not in self._tokens:
            r = self.login(user).post(f"{self.url}/hub/api/users/{user}/tokens",
                                      json={"note": "tests", "expires_in": 3600}, timeout=10)
            assert r.status_code == 201, r.text
            self._tokens[user] = r.json()["token"]
        return self._tokens[user]

    def api(self, user: str, method: str, path: str, **kwargs) -> requests.Response:
        headers = {"Authorization": f"token {self.token(user)}"}
        return requests.request(method, f"{self.url}/hub/api{path}", headers=headers, timeout=30, **kwargs)

    def server_path(self, user: str, name: str = "") -> str:
        return f"/users/{user}/servers/{name}" if name else f"/users/{user}/server"

    def spawn(self, user: str, options: dict | None = None, name: str = "") -> requests.Response:
        return self.api(user, "POST", self.server_path(user, name), json=options or {})

    def server(self, user: str, name: str = "") -> dict | None:
        return self.api(user, "GET", f"/users/{user}").json()["servers"].get(name)

    def wait_ready(self, user: str, name: str = "", timeout: float = 90) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            server = self.server(user, name)
            if server and server.get("ready"):
                return server
            if server is None:
                raise AssertionError(f"server {user}/{name} stopped while starting:\n{self.log_tail()}")
            time.sleep(0.5)
        raise AssertionError(f"server {user}/{name} not ready after {timeout} s:\n{self.log_tail()}")

    def wait_stopped(self, user: str, name: str = "", timeout: float = 60) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.server(user, name) is None:
                return time.monotonic() - start
            time.sleep(0.2)
        raise AssertionError(f"server {user}/{name} still listed after {timeout} s")

    def progress_events(self, user: str, name: str = "", timeout: float = 120):
        """The spawn progress stream (server-sent events), as dicts."""
        path = self.server_path(user, name) + "/progress"
        headers = {"Authorization": f"token {self.token(user)}"}
        with requests.get(f"{self.url}/hub/api{path}", headers=headers, stream=True, timeout=timeout) as r:
            for line in r.iter_lines(decode_unicode=True):
                if line and line.startswith("data:"):
                    yield json.loads(line[5:])

    def stop_all_servers(self) -> None:
        for user in self.site.demo_users:
            try:
                servers = self.api(user, "GET", f"/users/{user}").json().get("servers", {})
            except (requests.RequestException, ValueError, AssertionError):
                continue
            for name in servers:
                self.api(user, "DELETE", self.server_path(user, name))
            for name in servers:
                try:
                    self.wait_stopped(user, name, timeout=30)
                except AssertionError:
                    pass


def user_jobs(user: str) -> list[dict]:
    """The user's jobs as squeue lists them (id, account, partition, gres, state)."""
    out = subprocess.run(
        ["squeue", "-h", "-u", user, "-o", "%i|%u|%a|%P|%b|%T|%j"], capture_output=True, text=True, check=True
    ).stdout
    keys = ("job_id", "user", "account", "partition", "gres", "state", "name")
    return [dict(zip(keys, line.split("|"), strict=True)) for line in out.splitlines() if line.strip()]
