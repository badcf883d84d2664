"""``aifactory-singleuser COMMAND...``: tell the hub the session's port, then become COMMAND.

What batchspawner's ``batchspawner-singleuser`` does, without importing JupyterHub (0.8 s of
CPU per session start, which thirty workshop sessions starting at once on a small node feel):
choose a free port on the node, POST ``{"port": N}`` to the hub's ``/api/batchspawner`` with the
session's token, put the port into ``JUPYTERHUB_SERVICE_URL`` and exec the single-user server.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from urllib.parse import urlparse


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def register_port(api_url: str, token: str, port: int, attempts: int = 5) -> None:
    request = urllib.request.Request(
        api_url.rstrip("/") + "/batchspawner", data=json.dumps({"port": port}).encode(), method="POST",
        headers={"Authorization": f"token {token}", "Content-Type": "application/json"})
    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(request, timeout=30):
                return
        except urllib.error.HTTPError:
            raise  # the hub answered no: retrying will not change that
        except OSError as e:  # the hub is busy or restarting: try again shortly
            if attempt == attempts - 1:
                raise SystemExit(f"aifactory-singleuser: cannot reach the hub at {api_url}: {e}") from e
            time.sleep(2**attempt)


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit("usage: aifactory-singleuser COMMAND [ARGS...]")
    service_url = urlparse(os.environ["JUPYTERHUB_SERVICE_URL"])
    port = free_port()
    register_port(os.environ["JUPYTERHUB_API_URL"], os.environ["JUPYTERHUB_API_TOKEN"], port)
    os.environ["JUPYTERHUB_SERVICE_URL"] = service_url._replace(netloc=f"{service_url.hostname}:{port}").geturl()
    os.execvp(sys.argv[1], sys.argv[1:])


if __name__ == "__main__":
    main()
