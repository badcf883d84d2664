"""A stand-in single-user server for load tests and workshop rehearsals.

It runs where ``jupyterhub-singleuser`` would (inside the Slurm job, after the port wrapper
has told the hub its port) and answers the hub's and the proxy's
HTTP checks, without JupyterLab's start-up cost: thirty of them fit on a 2-core machine where
thirty labs would not. Everything else about the session is real: the hub, sbatch, Slurm's
scheduling and reservation, the job's environment, the port callback and the proxy route.

It prints when it listens (``standin listening <unix time>``) so benchmarks can tell the hub's
share of the start-up time from the job's.
"""

from __future__ import annotations

import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse


class StandinHandler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's naming)
        body = json.dumps({"standin": True, "user": os.environ.get("JUPYTERHUB_USER", ""),
                           "path": self.path[:200]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, format, *args):  # quiet: the job log is for the session's own lines
        pass


def main() -> None:
    url = urlparse(os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:8888"))
    server = ThreadingHTTPServer((url.hostname or "127.0.0.1", url.port or 8888), StandinHandler)
    print(f"standin listening {time.time():.3f} on {url.hostname}:{url.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
