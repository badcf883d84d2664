"""The port wrapper in the job: registers a free port with the hub, then becomes the server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path


def fake_hub(status: int) -> tuple[HTTPServer, list]:
    """A hub API that answers one POST with ``status`` and records it."""
    received = []

    class Hub(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, self.headers["Authorization"], json.loads(body)))
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args):
            pass

    hub = HTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=hub.handle_request, daemon=True).start()
    return hub, received


def wrapper(hub: HTTPServer, *command: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, JUPYTERHUB_API_URL=f"http://127.0.0.1:{hub.server_port}/hub/api",
               JUPYTERHUB_API_TOKEN="secret-token", JUPYTERHUB_SERVICE_URL="http://127.0.0.1:8888/user/x/",
               PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    return subprocess.run([sys.executable, "-m", "aifactory.singleuser", *command], env=env,
                          capture_output=True, text=True, timeout=30)


def test_registers_a_free_port_and_execs_the_server_with_it():
    hub, received = fake_hub(201)
    out = wrapper(hub, sys.executable, "-c", "import os; print(os.environ['JUPYTERHUB_SERVICE_URL'])")
    assert out.returncode == 0, out.stderr
    (path, auth, body), = received
    assert path == "/hub/api/batchspawner" and auth == "token secret-token"
    assert set(body) == {"port"} and 1024 <= body["port"] <= 65535
    assert out.stdout.strip() == f"http://127.0.0.1:{body['port']}/user/x/"


def test_a_hub_that_refuses_the_port_ends_the_job_with_an_error():
    hub, _ = fake_hub(403)
    out = wrapper(hub, "true")
    assert out.returncode != 0 and "403" in out.stderr


def test_the_server_gets_the_lab_shims_and_jsonschema_loads_the_iri_check_only_when_used():
    hub, _ = fake_hub(201)
    probe = ("import sys, jsonschema\n"
             "loaded_at_import = any('syntax_helpers' in m for m in sys.modules)\n"
             "v = jsonschema.Draft7Validator({'format': 'iri'}, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)\n"
             "print(loaded_at_import, v.is_valid('http://example.org/a'), v.is_valid('not an iri ::'))\n"
             "import rfc3987_syntax\n"
             "print(rfc3987_syntax.__file__)\n")
    out = wrapper(hub, sys.executable, "-c", probe)
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.splitlines()
    # not compiled at import; when used, the real checker answers (and later imports get the real module)
    assert first == "False True False", first
    assert "site-packages" in second and "labshims" not in second
